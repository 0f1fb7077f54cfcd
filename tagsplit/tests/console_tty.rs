//! The interactive console in a real terminal (tmux): line editing, Tab completion of
//! commands and module names, history kept across runs, Ctrl-C at the prompt.
//!
//! Skipped with a notice when tmux is not installed, unless `CI=true`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux {
            socket: format!("tagsplit-{name}-{}", std::process::id()),
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the console in a new session of the size given.
    fn start(&self, session: &str, state: &Path) {
        let cmd = format!(
            "env XDG_STATE_HOME={} {} console --target sim:part4",
            state.display(),
            env!("CARGO_BIN_EXE_tagsplit")
        );
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "160",
            "-y",
            "50",
            &cmd,
        ]);
    }

    fn keys(&self, session: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", session];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    fn screen(&self, session: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-t", session])
    }

    /// Waits until the screen shows what `ready` accepts (a generous bound only so that
    /// a broken console cannot hang the suite).
    fn wait_for(&self, session: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen(session);
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the console never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self, session: &str) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", session])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The last line of the screen that is not empty.
fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[test]
fn the_console_edits_completes_and_remembers() {
    if !common::have_tool_with("tmux", "-V", "the terminal console test") {
        return;
    }
    let state = common::temp_dir("console-tty");
    let tmux = Tmux::new("console");
    tmux.start("one", &state);
    tmux.wait_for("one", "its prompt", |s| last_line(s) == "0: kd>");

    // Tab completes a command word, then a module name.
    tmux.keys("one", &["!poolu", "Tab"]);
    tmux.wait_for("one", "!poolused completed", |s| {
        last_line(s).ends_with("!poolused")
    });
    tmux.keys("one", &["C-u", "db myf", "Tab"]);
    tmux.wait_for("one", "myfault completed", |s| {
        last_line(s).ends_with("db myfault")
    });
    tmux.keys("one", &[" l2", "Enter"]);
    // myfault.sys starts with its MZ header.
    tmux.wait_for("one", "the MZ bytes", |s| s.contains("4d 5a"));

    // Ctrl-C at the prompt clears the line and keeps the console.
    tmux.keys("one", &["lm junk", "C-c"]);
    tmux.wait_for("one", "a fresh prompt", |s| last_line(s) == "0: kd>");
    assert!(tmux.alive("one"));

    // The Up key brings back the last command; editing it works.
    tmux.keys("one", &["Up"]);
    tmux.wait_for("one", "the last command again", |s| {
        last_line(s).ends_with("db myfault l2")
    });
    tmux.keys("one", &["BSpace", "4", "Enter"]);
    tmux.wait_for("one", "four bytes", |s| s.contains("4d 5a 90 00"));
    tmux.keys("one", &["q", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while tmux.alive("one") {
        assert!(Instant::now() < deadline, "the console did not quit");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A new run remembers the commands of the last.
    let history = std::fs::read_to_string(state.join("tagsplit/console_history")).unwrap();
    assert!(history.contains("db myfault l4"), "{history}");
    tmux.start("two", &state);
    tmux.wait_for("two", "its prompt", |s| last_line(s) == "0: kd>");
    tmux.keys("two", &["Up"]);
    tmux.wait_for("two", "the last run's command", |s| {
        last_line(s).ends_with("db myfault l4")
    });
    tmux.keys("two", &["C-u", "q", "Enter"]);
    let _ = std::fs::remove_dir_all(&state);
}
