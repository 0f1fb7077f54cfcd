//! `tagsplit console`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use tagsplit::console::{Console, PROMPT, completions, expression_names, split_commands};

/// Arguments of `console`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target: sim:NAME, sim:FILE.toml, gdb://HOST:PORT[?ack], kdnet:port=N,key=K, kdcom:HOST:PORT.
    #[arg(long, default_value = "sim:part4")]
    target: String,
    /// Commands to run (separated by `;`), then exit.
    #[arg(short = 'c', long = "command")]
    commands: Option<String>,
    /// A pooltag.txt file for tag descriptions.
    #[arg(long)]
    pooltag: Option<PathBuf>,
    /// Recording the traffic (--log-packets, --pcap).
    #[command(flatten)]
    record: super::RecordArgs,
}

/// Runs the console.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let mut target = super::open_target_with(&a.target, &a.record.options())?;
    let mut console = Console::with_pooltag(super::load_pooltag(a.pooltag.as_deref())?);
    let mut out = std::io::stdout().lock();
    if let Some(cmds) = a.commands {
        // A batch: every command runs until the connection is lost; if any failed, the
        // batch fails with its error.
        let mut failed = Vec::new();
        let cmds: Vec<&str> = split_commands(&cmds)
            .into_iter()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let mut lost_in = None;
        for (i, cmd) in cmds.iter().enumerate() {
            let outcome = console.run(target.as_mut(), cmd);
            write!(out, "{PROMPT}{cmd}\n{}", outcome.output)?;
            failed.extend(outcome.failed);
            if let Some(lost) = outcome.link_lost {
                lost_in = Some((lost, *cmd, cmds.len() - i - 1));
                break;
            }
        }
        out.flush()?;
        for f in &failed {
            let message = f.message.strip_prefix("error: ").unwrap_or(&f.message);
            eprintln!("error in '{}': {message}", f.command);
        }
        if let Some((lost, cmd, not_run)) = lost_in {
            anyhow::bail!(
                "the connection to {} was lost ({lost}) in '{cmd}'; {not_run} later command(s) not run",
                a.target
            );
        }
        if let Some(first) = failed.first() {
            anyhow::bail!(
                "{} of the batch's commands failed (first: '{}')",
                failed.len(),
                first.command
            );
        }
        return Ok(());
    }
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        return interactive(&a, target.as_mut(), &mut console);
    }
    // Commands from a pipe: each is echoed after the prompt, as a transcript.
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        write!(out, "{PROMPT}")?;
        out.flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        let cmd = line.trim();
        writeln!(out, "{cmd}")?;
        if matches!(cmd, "q" | "qq" | "quit" | "exit") {
            break;
        }
        let outcome = console.run(target.as_mut(), cmd);
        write!(out, "{}", outcome.output)?;
        if let Some(lost) = outcome.link_lost {
            out.flush()?;
            anyhow::bail!("the connection to {} was lost ({lost})", a.target);
        }
    }
    writeln!(out)?;
    Ok(())
}

/// Line editing, history and completion for a console people type into.
#[derive(rustyline::Helper, rustyline::Hinter, rustyline::Highlighter, rustyline::Validator)]
struct Editing {
    /// Module names as expressions take them, for completion.
    modules: Vec<String>,
}

impl rustyline::completion::Completer for Editing {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(completions(line, pos, &self.modules))
    }
}

/// Where the console's history is kept across runs: `console_history` in the state
/// directory (`$XDG_STATE_HOME/tagsplit`), if there is one.
fn history_path() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "tagsplit")?;
    let dir = dirs
        .state_dir()
        .map_or_else(|| dirs.data_local_dir().to_path_buf(), PathBuf::from);
    Some(dir.join("console_history"))
}

/// The console at a terminal: line editing and history (kept across runs), Tab completes
/// commands and module names, Ctrl-C while a command runs breaks into the target (at
/// the prompt it clears the line), Ctrl-D or `q` leaves.
fn interactive(
    a: &Args,
    target: &mut dyn tagsplit::target::DebugTarget,
    console: &mut Console,
) -> anyhow::Result<()> {
    let modules = target
        .modules()
        .map(|m| expression_names(&m))
        .unwrap_or_default();
    let mut editor: rustyline::Editor<Editing, rustyline::history::DefaultHistory> =
        rustyline::Editor::with_config(
            rustyline::Config::builder()
                .history_ignore_dups(true)?
                .completion_type(rustyline::CompletionType::List)
                .max_history_size(10_000)?
                .build(),
        )?;
    editor.set_helper(Some(Editing { modules }));
    let history = history_path();
    if let Some(path) = &history {
        // No history yet is not an error.
        let _ = editor.load_history(path);
    }
    let mut out = std::io::stdout();
    let result = loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break Ok(()),
            Err(e) => break Err(anyhow::Error::from(e)),
        };
        let cmd = line.trim();
        if matches!(cmd, "q" | "qq" | "quit" | "exit") {
            break Ok(());
        }
        if !cmd.is_empty() {
            let _ = editor.add_history_entry(cmd);
        }
        // Ctrl-C while the command runs breaks in; then signals exit at once again.
        let interrupt = tagsplit::target::Interrupt::new();
        target.set_interrupt(Some(interrupt.clone()));
        super::signals::break_in_on_sigint(interrupt);
        let outcome = console.run(target, cmd);
        super::signals::exit_at_once();
        target.set_interrupt(None);
        write!(out, "{}", outcome.output)?;
        out.flush()?;
        if let Some(lost) = outcome.link_lost {
            break Err(anyhow::anyhow!(
                "the connection to {} was lost ({lost})",
                a.target
            ));
        }
    };
    if let Some(path) = &history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = editor.save_history(path) {
            eprintln!(
                "tagsplit: could not keep the history in {}: {e}",
                path.display()
            );
        }
    }
    result
}
