//! Test helpers: a target wrapper that records writes and injects failures.

#![allow(dead_code)]

use std::process::{Command, Stdio};

use tagsplit::VirtAddr;
use tagsplit::target::{DebugTarget, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError};

/// Which operation to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Run,
}

/// Wraps a target: records every write, fails the `n`-th operation of a kind (1-based),
/// or, once `disconnect_after_run` runs have happened, fails everything.
pub struct Faulty<T> {
    pub inner: T,
    pub writes: Vec<(VirtAddr, Vec<u8>)>,
    pub counts: [u64; 3],
    pub fail: Option<(Op, u64)>,
    pub disconnect_after_runs: Option<u64>,
    pub disconnected: bool,
}

impl<T> Faulty<T> {
    pub fn new(inner: T) -> Faulty<T> {
        Faulty {
            inner,
            writes: Vec::new(),
            counts: [0; 3],
            fail: None,
            disconnect_after_runs: None,
            disconnected: false,
        }
    }

    fn step(&mut self, op: Op) -> Result<(), TargetError> {
        if self.disconnected {
            return Err(TargetError::Disconnected);
        }
        let i = op as usize;
        self.counts[i] += 1;
        if self.fail == Some((op, self.counts[i])) {
            return Err(TargetError::Protocol(format!(
                "injected failure of {op:?} #{}",
                self.counts[i]
            )));
        }
        Ok(())
    }
}

impl<T: DebugTarget> DebugTarget for Faulty<T> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.step(Op::Read)?;
        self.inner.read_memory(addr, buf)
    }
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.step(Op::Write)?;
        self.writes.push((addr, data.to_vec()));
        self.inner.write_memory(addr, data)
    }
    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        if self.disconnected {
            return Err(TargetError::Disconnected);
        }
        self.inner.kernel_info()
    }
    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        if self.disconnected {
            return Err(TargetError::Disconnected);
        }
        self.inner.modules()
    }
    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        self.step(Op::Read)?;
        self.inner.search_memory(start, end, pattern, max_hits)
    }
    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        self.step(Op::Run)?;
        let r = self.inner.run(how_long);
        if self
            .disconnect_after_runs
            .is_some_and(|n| self.counts[Op::Run as usize] >= n)
        {
            self.disconnected = true;
        }
        r
    }
    fn default_run(&self) -> RunFor {
        self.inner.default_run()
    }
}

/// A fresh temporary directory for journals.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tagsplit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `tagsplit` binary, with its state directory (where journals go by default) in a
/// temporary directory of this test process, never the user's.
pub fn bin() -> std::process::Command {
    let state = std::env::temp_dir().join(format!("tagsplit-test-state-{}", std::process::id()));
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tagsplit"));
    c.env("XDG_STATE_HOME", state)
        .env_remove("TAGSPLIT_TEST_PAUSE_AT");
    c
}

/// Runs the `tagsplit` binary with `args` and returns its output.
pub fn tagsplit(args: &[&str]) -> std::process::Output {
    bin().args(args).output().unwrap()
}

/// The `summary.json` a wire-fuzzing campaign wrote to `dir`.
pub fn summary_json(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("json")
}

/// Whether `tool --version` runs. When it does not, prints a notice that `what` is skipped
/// and returns false, except under `CI=true`, where a missing tool fails the test.
pub fn have_tool(tool: &str, what: &str) -> bool {
    have_tool_with(tool, "--version", what)
}

/// [`have_tool`] for a tool that tells its version with another flag (`tmux -V`).
pub fn have_tool_with(tool: &str, version_flag: &str, what: &str) -> bool {
    let ok = Command::new(tool)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required when CI=true"
        );
        eprintln!("NOTICE: {tool} is not installed; skipping {what}");
    }
    ok
}

/// Waits for `child` (killing it after `timeout`, then failing) and returns its stdout
/// followed by its stderr.
pub fn finish(mut child: std::process::Child, timeout: std::time::Duration) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{child:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// A `tagsplit serve` process, killed when dropped.
pub struct Server(pub std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tagsplit serve ARGS` (binding port 0); returns the server and the address it
/// printed after `marker` (`over KDCOM (TCP) on`).
pub fn serve(args: &[&str], marker: &str) -> (Server, String) {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let server = Server(child);
    let addr = wait_for(&lines, marker);
    (server, addr)
}

/// The lines of a child's pipe, read on a thread (so the child never blocks on it).
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first word after `marker` on the first line that has it.
pub fn wait_for(lines: &std::sync::mpsc::Receiver<String>, marker: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("no line with {marker:?}: {e}"));
        if let Some((_, rest)) = line.split_once(marker) {
            return rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    }
}

/// Runs `tagsplit ARGS` to its end; `before` runs once it has started, with its stderr lines
/// (a KDNET debugger prints its port there). Fails unless it succeeded; returns its stdout
/// and its stderr.
pub fn run_watching<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    before: impl FnOnce(&std::sync::mpsc::Receiver<String>),
) -> (Vec<u8>, String) {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    before(&stderr);
    let out = child.wait_with_output().unwrap();
    let stderr: Vec<String> = stderr.iter().collect();
    let stderr = stderr.join("\n");
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    assert!(out.status.success(), "{shown:?}: {stderr}");
    (out.stdout, stderr)
}
