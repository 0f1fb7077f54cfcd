//! Starting, watching and restarting a peer from a command line (`--launch 'gdbserver
//! 127.0.0.1:{port} /bin/true'`, `--command 'gdb … -ex "target remote {addr}"'`).
//!
//! The command runs under `sh -c` in a process group of its own, so stopping it stops
//! everything it started (QEMU under a wrapper script, gdb and its inferior). Nothing else
//! is ever signalled.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why a peer could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The command could not be run.
    #[error("running `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The peer exited before it listened.
    #[error("`{command}` exited ({status}) before listening on {addr}")]
    Exited {
        /// The command line.
        command: String,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// How it ended.
        status: ExitStatus,
    },
    /// The peer did not listen within the limit.
    #[error("`{command}` did not listen on {addr} within {secs} s")]
    NotListening {
        /// The command line.
        command: String,
        /// The address it was to listen on.
        addr: SocketAddr,
        /// The limit.
        secs: u64,
    },
    /// No free port could be found.
    #[error("finding a free port: {0}")]
    Port(std::io::Error),
}

/// How long a launched peer may take to listen.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A peer the tool starts and restarts itself.
#[derive(Debug)]
pub struct Launcher {
    template: String,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    command: String,
    starts: u64,
    quiet: bool,
}

impl Launcher {
    /// A launcher for `template`: `{port}` becomes a free TCP port on 127.0.0.1, `{host}`
    /// becomes `127.0.0.1` and `{addr}` becomes `127.0.0.1:PORT`.
    pub fn new(template: impl Into<String>) -> Launcher {
        Launcher {
            template: template.into(),
            child: None,
            addr: None,
            command: String::new(),
            starts: 0,
            quiet: true,
        }
    }

    /// Lets the peer's stdout and stderr through (by default they are discarded).
    pub fn show_output(mut self, show: bool) -> Launcher {
        self.quiet = !show;
        self
    }

    /// The command line with `addr` put in.
    pub fn expand(template: &str, addr: SocketAddr) -> String {
        template
            .replace("{port}", &addr.port().to_string())
            .replace("{host}", &addr.ip().to_string())
            .replace("{addr}", &addr.to_string())
    }

    /// A free port on 127.0.0.1 (bound and released: a peer started at once gets it).
    pub fn free_port() -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.local_addr()
    }

    /// Starts the peer on a free port and waits until it listens there (checked in
    /// `/proc/net/tcp`, without connecting: a single-connection peer such as gdbserver
    /// keeps its one connection for the fuzzer). Stops any previous instance first.
    pub fn start(&mut self) -> Result<SocketAddr, LaunchError> {
        self.stop();
        let addr = Launcher::free_port().map_err(LaunchError::Port)?;
        let mut child = self.spawn_at(addr)?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LaunchError::Exited {
                    command: self.command.clone(),
                    addr,
                    status,
                });
            }
            if listening(addr) {
                break;
            }
            if started.elapsed() > LISTEN_TIMEOUT {
                kill_group(&mut child);
                return Err(LaunchError::NotListening {
                    command: self.command.clone(),
                    addr,
                    secs: LISTEN_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        self.addr = Some(addr);
        self.starts += 1;
        Ok(addr)
    }

    /// Runs the command with `addr` put in, without waiting for anything (a client: it
    /// connects to us). Stops any previous instance first.
    pub fn run_client(&mut self, addr: SocketAddr) -> Result<(), LaunchError> {
        self.stop();
        let child = self.spawn_at(addr)?;
        self.child = Some(child);
        self.addr = Some(addr);
        self.starts += 1;
        Ok(())
    }

    fn spawn_at(&mut self, addr: SocketAddr) -> Result<Child, LaunchError> {
        self.command = Launcher::expand(&self.template, addr);
        let mut command = Command::new("sh");
        command.arg("-c").arg(&self.command).stdin(Stdio::null());
        if self.quiet {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        command.spawn().map_err(|source| LaunchError::Spawn {
            command: self.command.clone(),
            source,
        })
    }

    /// The address of the running instance.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The command line of the last start.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// How many times the peer was started.
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// How the peer ended, if it has (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the peer to end; `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if self.child.is_none() || started.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the peer and everything it started (SIGTERM to its process group, then
    /// SIGKILL after a second), and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        self.addr = None;
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The signal that ended a process, if one did.
pub fn exit_signal(status: ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        status.signal()
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

/// The signals that mean a crash: SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV,
/// SIGSYS.
pub const CRASH_SIGNALS: [i32; 7] = [4, 5, 6, 7, 8, 11, 31];

/// The crash signal that ended a peer, if one did: the signal it died by, or an exit code
/// of 128 + one of [`CRASH_SIGNALS`], which is how `sh -c` reports the death of a
/// command it ran without `exec` (a launched command line such as `ulimit -Hc 0; gdb …`
/// is run that way). Any other ending is not a crash.
pub fn crash_signal(status: ExitStatus) -> Option<i32> {
    exit_signal(status).or_else(|| {
        status
            .code()
            .and_then(|c| c.checked_sub(128))
            .filter(|s| CRASH_SIGNALS.contains(s))
    })
}

fn kill_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        // The leader is gone; its group may live on, so still signal it.
        signal_group(child.id(), true);
        return;
    }
    signal_group(child.id(), false);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if let Ok(Some(_)) = child.try_wait() {
            signal_group(child.id(), true);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signal_group(child.id(), true);
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(unix)]
fn signal_group(pid: u32, kill: bool) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let signal = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    // The group is the child's own (`process_group(0)`): nothing else is in it.
    let _ = killpg(Pid::from_raw(pid), signal);
}

#[cfg(not(unix))]
fn signal_group(_pid: u32, _kill: bool) {}

/// Whether something listens on `addr` (TCP, IPv4), by `/proc/net/tcp`; where that file
/// cannot be read, by connecting.
fn listening(addr: SocketAddr) -> bool {
    match std::fs::read_to_string("/proc/net/tcp") {
        Ok(table) => {
            let port = format!(":{:04X}", addr.port());
            table.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                // State 0A is LISTEN.
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&port) && state == "0A"
            })
        }
        Err(_) => std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn expands_the_address() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(
            Launcher::expand("x {host} {port} {addr}", addr),
            "x 127.0.0.1 4321 127.0.0.1:4321"
        );
    }

    #[test]
    fn a_peer_that_exits_at_once_is_reported() {
        let mut l = Launcher::new("exit 3");
        match l.start() {
            Err(LaunchError::Exited { status, .. }) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[test]
    fn a_crashing_client_reports_its_signal() {
        let mut l = Launcher::new("kill -SEGV $$");
        l.run_client("127.0.0.1:1".parse().expect("addr"))
            .expect("run");
        let status = l.wait_exit(Duration::from_secs(30)).expect("exits");
        assert_eq!(exit_signal(status), Some(11));
    }
}
