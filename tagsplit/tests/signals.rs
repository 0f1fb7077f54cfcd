#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Real signals sent to the real `tagsplit run` at each phase, over GDB, KDCOM, KDNET and
//! in process; the target's bytes are checked afterwards. Phases are reached with the
//! test hook `TAGSPLIT_TEST_PAUSE_AT` (the run pauses there until a signal arrives), never
//! with sleeps. Journals go to a temporary `XDG_STATE_HOME`.

mod common;
mod gdb_support;

use gdb_support::{kd_options, part4};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tagsplit::VirtAddr;
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};
use tagsplit_target_sim::server::kd::{KdStub, KdStubHandle};

/// The two `Leak` sites of part4 (offsets in myfault.sys).
const SITES: [u64; 2] = [0x13aa, 0x1621];
/// How long a step may take before the test gives up (a safety net against a hung
/// child, never a pass/fail criterion).
const PATIENCE: Duration = Duration::from_secs(120);

/// A served part4 machine the test can inspect.
enum Served {
    Sim,
    Gdb(GdbStubHandle),
    Kdcom(KdStubHandle),
    /// KDNET: the child binds; the stub is started once the child says where.
    Kdnet(Option<KdStubHandle>),
}

impl Served {
    fn new(kind: &str) -> Served {
        match kind {
            "sim" => Served::Sim,
            "gdb" => Served::Gdb(gdb_support::part4_stub(StubFeatures::FULL)),
            "kdcom" => Served::Kdcom(KdStub::spawn_kdcom(part4(), kd_options()).unwrap()),
            "kdnet" => Served::Kdnet(None),
            other => panic!("unknown backend {other}"),
        }
    }

    fn spec(&self) -> String {
        match self {
            Served::Sim => "sim:part4".into(),
            Served::Gdb(s) => format!("gdb://{}", s.addr()),
            Served::Kdcom(s) => format!("kdcom:{}", s.addr()),
            Served::Kdnet(_) => format!("kdnet:port=0,key={KEY},host=127.0.0.1,timeout=60"),
        }
    }

    /// The four bytes at each site, or `None` for the in-process simulator (gone with
    /// the child).
    fn sites(&self) -> Option<Vec<[u8; 4]>> {
        let read = |m: &mut Machine| {
            let base = m
                .modules()
                .into_iter()
                .find(|x| x.name == "myfault.sys")
                .unwrap()
                .base;
            SITES
                .iter()
                .map(|off| {
                    let mut b = [0u8; 4];
                    m.read(VirtAddr(base.get() + off), &mut b).unwrap();
                    b
                })
                .collect()
        };
        match self {
            Served::Sim | Served::Kdnet(None) => None,
            Served::Gdb(s) => Some(s.with_machine(read)),
            Served::Kdcom(s) | Served::Kdnet(Some(s)) => Some(s.with_machine(read)),
        }
    }
}

const KEY: &str = "1.2.3.4";

/// A running `tagsplit` child with its stderr lines arriving on a channel.
struct Run {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    fn start(args: &[&str], state: &Path, pause: Option<&str>) -> Run {
        let mut cmd = common::bin();
        cmd.args(args)
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match pause {
            Some(p) => cmd.env("TAGSPLIT_TEST_PAUSE_AT", p),
            None => cmd.env_remove("TAGSPLIT_TEST_PAUSE_AT"),
        };
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stderr until a line containing `what`; returns that line.
    fn wait_line(&mut self, what: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {what:?} ({e}); stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the exit; returns the status and the whole stderr. A child that has not
    /// exited after [`PATIENCE`] is killed (the test then fails on its status).
    fn finish(mut self) -> (ExitStatus, String) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let (done, watch) = channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(PATIENCE).is_err() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        });
        let status = self.child.wait().unwrap();
        let _ = done.send(());
        watchdog.join().unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }
}

/// For KDNET, starts the stub toward the port the child reports.
fn attach_kdnet(served: &mut Served, run: &mut Run) {
    if let Served::Kdnet(slot) = served {
        let line = run.wait_line("waiting for a KDNET target on ");
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .expect("an address");
        let key: Key = KEY.parse().unwrap();
        *slot = Some(KdStub::spawn_kdnet(part4(), addr, key, kd_options()).unwrap());
    }
}

fn state_dir(name: &str) -> PathBuf {
    common::temp_dir(&format!("signals-{name}"))
}

/// Journal files left in the state directory.
fn journals(state: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(state.join("tagsplit")) {
        Ok(d) => d.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_original(served: &Served, context: &str) {
    if let Some(sites) = served.sites() {
        assert_eq!(
            sites,
            vec![*b"Leak"; 2],
            "{context}: the sites hold their tag"
        );
    }
}

/// The sites hold split tags (`Lea?`, not `Leak`): a run left them patched.
fn assert_split(served: &Served) {
    let sites = served.sites().unwrap();
    assert!(
        sites.iter().all(|t| t.starts_with(b"Lea") && t != b"Leak") && sites[0] != sites[1],
        "{sites:?}"
    );
}

/// "restore: N of N patches restored and verified" with N > 0.
fn restored_all(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.split("restore: ").skip(1).any(|rest| {
            let w: Vec<&str> = rest.split(' ').collect();
            w.len() > 5 && w[0] == w[2] && w[0] != "0" && w[3..6] == ["patches", "restored", "and"]
        })
    })
}

/// `tagsplit run --tag Leak` on `spec` with `extra` arguments, SIGKILLed while paused
/// after its first sample: the journal stays, and so do the patches.
fn kill_while_sampling(spec: &str, state: &Path, extra: &[&str]) {
    let mut args = vec!["run", "--target", spec, "--tag", "Leak"];
    args.extend(extra);
    kill_at(&args, state, "sampling");
}

/// `tagsplit ARGS`, SIGKILLed while paused at `phase`.
fn kill_at(args: &[&str], state: &Path, phase: &str) {
    let mut run = Run::start(args, state, Some(phase));
    run.wait_line(&format!("test pause at {phase}"));
    run.signal(Signal::SIGKILL);
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), None, "killed: {stderr}");
}

/// Runs `tagsplit ARGS` to the end with the state directory `state`.
fn run_to_end(args: &[&str], state: &Path) -> (ExitStatus, String) {
    Run::start(args, state, None).finish()
}

/// Waits for `run` to pause at `phase`, sends `sig`, waits for the exit, checks it is
/// 128 + the signal, and returns stderr.
fn signalled(mut run: Run, phase: &str, sig: Signal, context: &str) -> String {
    run.wait_line(&format!("test pause at {phase}"));
    run.signal(sig);
    let (status, stderr) = run.finish();
    assert_eq!(
        status.code(),
        Some(128 + sig as i32),
        "{context}: exit code; stderr:\n{stderr}"
    );
    stderr
}

/// `nt!PoolHitTag` of the machine behind a GDB stub.
fn pool_hit_tag(served: &Served) -> [u8; 4] {
    served_pool_hit_tag(served).expect("a served machine")
}

/// `nt!PoolHitTag` of a served machine; `None` for the in-process simulator.
fn served_pool_hit_tag(served: &Served) -> Option<[u8; 4]> {
    let read = |m: &mut Machine| {
        let mut v = [0u8; 4];
        m.read(m.kernel().pool_hit_tag, &mut v).unwrap();
        v
    };
    match served {
        Served::Sim | Served::Kdnet(None) => None,
        Served::Gdb(s) => Some(s.with_machine(read)),
        Served::Kdcom(s) | Served::Kdnet(Some(s)) => Some(s.with_machine(read)),
    }
}

/// Runs `tagsplit run` paused at `phase`, sends `sig`, and checks the outcome.
fn signal_at(kind: &str, phase: &str, sig: Signal) {
    let context = format!("{kind}/{phase}/{sig}");
    let state = state_dir(&format!("{kind}-{phase}"));
    let mut served = Served::new(kind);
    let spec = served.spec();
    let mut args = vec!["run", "--target", &spec, "--tag", "Leak"];
    if phase == "running" {
        // A run far too long to end by itself: only the break-in stops it.
        args.extend(["--ticks", "1000000000000000"]);
    }
    let mut run = Run::start(&args, &state, Some(phase));
    if phase != "connecting" {
        attach_kdnet(&mut served, &mut run);
    }
    let stderr = signalled(run, phase, sig, &context);
    let patched_possible = !matches!(phase, "connecting" | "checking" | "surveying");
    if patched_possible {
        assert!(restored_all(&stderr), "{context}: restore line:\n{stderr}");
        assert!(
            stderr.contains("journal was removed") || stderr.contains("the restore finished"),
            "{context}:\n{stderr}"
        );
    } else {
        assert!(
            stderr.contains("nothing was patched"),
            "{context}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("os error 4"),
        "{context}: EINTR surfaced:\n{stderr}"
    );
    assert_eq!(
        journals(&state),
        Vec::<PathBuf>::new(),
        "{context}: journal left"
    );
    assert_original(&served, &context);
}

fn every_phase(kind: &str) {
    let phases = [
        ("connecting", Signal::SIGTERM),
        ("surveying", Signal::SIGHUP),
        ("patching", Signal::SIGINT),
        ("running", Signal::SIGTERM),
        ("sampling", Signal::SIGHUP),
        ("restoring", Signal::SIGINT),
    ];
    for (phase, sig) in phases {
        signal_at(kind, phase, sig);
    }
}

#[test]
fn signals_in_every_phase_in_process() {
    every_phase("sim");
}

#[test]
fn signals_in_every_phase_over_gdb() {
    every_phase("gdb");
}

#[test]
fn signals_in_every_phase_over_kdcom() {
    every_phase("kdcom");
}

#[test]
fn signals_in_every_phase_over_kdnet() {
    every_phase("kdnet");
}

#[test]
fn a_second_signal_is_ignored_and_a_third_exits_keeping_the_journal() {
    // Two signals while restoring: the second is reported, the restore still finishes.
    let state = state_dir("second");
    let served = Served::new("gdb");
    let spec = served.spec();
    let mut run = Run::start(
        &["run", "--target", &spec, "--tag", "Leak"],
        &state,
        Some("restoring:2"),
    );
    run.wait_line("test pause at restoring");
    run.signal(Signal::SIGTERM);
    run.wait_line("breaking in and restoring");
    run.signal(Signal::SIGINT);
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("SIGINT again: ignored"), "{stderr}");
    assert!(stderr.contains("the restore finished"), "{stderr}");
    assert!(journals(&state).is_empty());
    assert_original(&served, "second signal");

    // Three: exit at once, patches and journal stay, and the printed command finishes.
    let state = state_dir("third");
    let mut run = Run::start(
        &["run", "--target", &spec, "--tag", "Leak"],
        &state,
        Some("restoring:3"),
    );
    run.wait_line("test pause at restoring");
    run.signal(Signal::SIGHUP);
    run.wait_line("breaking in and restoring");
    run.signal(Signal::SIGHUP);
    run.wait_line("again: ignored");
    run.signal(Signal::SIGINT);
    let (status, stderr) = run.finish();
    assert_eq!(status.code(), Some(128 + 2), "{stderr}");
    assert!(stderr.contains("a third time"), "{stderr}");
    let command = format!("tagsplit restore --target '{spec}'");
    assert!(stderr.contains(&command), "{stderr}");
    assert_eq!(journals(&state).len(), 1, "the journal is kept");
    assert_split(&served);
    let restore = Run::start(&["restore", "--target", &spec], &state, None);
    let (status, out) = restore.finish();
    assert!(status.success(), "{out}");
    assert!(journals(&state).is_empty());
    assert_original(&served, "restore after a third signal");
}

#[test]
fn sigkill_leaves_a_journal_that_restore_finds_and_a_second_run_refuses() {
    let state = state_dir("kill");
    let served = Served::new("gdb");
    let spec = served.spec();
    kill_while_sampling(&spec, &state, &[]);
    let left = journals(&state);
    assert_eq!(left.len(), 1);
    let before = std::fs::read(&left[0]).unwrap();
    assert_split(&served);

    // A run on the same target for another tag refuses, naming the journal and the
    // command; the journal is untouched.
    for tag in ["TcpE", "Leak"] {
        let (status, stderr) = run_to_end(&["run", "--target", &spec, "--tag", tag], &state);
        assert!(!status.success(), "{tag}: {stderr}");
        assert!(stderr.contains(&left[0].display().to_string()), "{stderr}");
        assert!(stderr.contains("tagsplit restore --target"), "{stderr}");
        assert!(stderr.contains("--restore-first"), "{stderr}");
        assert_eq!(std::fs::read(&left[0]).unwrap(), before);
    }
    assert_split(&served);

    // Without the journal (another state directory), the patched sites are recognised
    // instead of reporting "0 hits".
    let elsewhere = state_dir("kill-elsewhere");
    let (status, stderr) = run_to_end(&["run", "--target", &spec, "--tag", "Leak"], &elsewhere);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("look like a split of 'Leak'")
            && stderr.contains("Lea1 at myfault.sys+0x13aa")
            && stderr.contains("Lea2 at myfault.sys+0x1621")
            && stderr.contains("tagsplit restore"),
        "{stderr}"
    );

    // --restore-first restores the journal, then splits.
    let (status, stderr) = run_to_end(
        &["run", "--target", &spec, "--tag", "Leak", "--restore-first"],
        &state,
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("restored the journal"), "{stderr}");
    assert!(journals(&state).is_empty());
    assert_original(&served, "after --restore-first");
}

#[test]
fn a_journal_at_a_chosen_path_blocks_runs_and_is_recognised_by_its_bytes() {
    let state = state_dir("explicit");
    let served = Served::new("gdb");
    let spec = served.spec();
    let journal = state.join("mine.json");
    let journal_arg = journal.display().to_string();
    kill_while_sampling(&spec, &state, &["--journal", &journal_arg]);
    assert!(journal.exists());
    // A run that names the path refuses to start.
    let (status, stderr) = run_to_end(
        &[
            "run",
            "--target",
            &spec,
            "--tag",
            "Leak",
            "--journal",
            &journal_arg,
        ],
        &state,
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("unfinished run") && stderr.contains(&journal_arg),
        "{stderr}"
    );
    // A run that knows the journal only from the store sees its bytes on the target.
    let store = state.join("tagsplit");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(&journal, store.join("journal-copied.json")).unwrap();
    let (status, stderr) = run_to_end(
        &["run", "--target", "gdb://127.0.0.1:1", "--tag", "Leak"],
        &state,
    );
    assert!(!status.success(), "{stderr}");
    std::fs::remove_file(store.join("journal-copied.json")).unwrap();
    let (status, out) = run_to_end(
        &["restore", "--target", &spec, "--journal", &journal_arg],
        &state,
    );
    assert!(status.success(), "{out}");
    assert!(!journal.exists());
    assert_original(&served, "explicit journal");
}

#[test]
fn a_path_that_is_not_a_journal_is_never_replaced() {
    let state = state_dir("not-a-journal");
    let precious = state.join("notes.json");
    std::fs::write(&precious, b"my notes").unwrap();
    let path = precious.display().to_string();
    for target in ["sim:part4", "gdb://127.0.0.1:9"] {
        let (status, stderr) = run_to_end(
            &[
                "run",
                "--target",
                target,
                "--tag",
                "Leak",
                "--journal",
                &path,
            ],
            &state,
        );
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("not a tagsplit journal"), "{stderr}");
        assert_eq!(std::fs::read(&precious).unwrap(), b"my notes");
    }
}

#[test]
fn a_leftover_simulator_journal_is_reported_not_blocking() {
    let state = state_dir("sim-leftover");
    kill_while_sampling("sim:part4", &state, &[]);
    let left = journals(&state);
    assert_eq!(left.len(), 1);
    let (status, stderr) = run_to_end(&["run", "--target", "sim:part4", "--tag", "Leak"], &state);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&left[0].display().to_string()) && stderr.contains("boots fresh"),
        "{stderr}"
    );
    assert_eq!(
        journals(&state),
        left,
        "the leftover is kept, the new one removed"
    );
}

#[test]
fn restore_refuses_a_journal_of_another_target() {
    let state = state_dir("other-target");
    let served = Served::new("gdb");
    let spec = served.spec();
    let journal = state.join("j.json");
    let journal_arg = journal.display().to_string();
    kill_while_sampling(&spec, &state, &["--journal", &journal_arg]);
    let (status, stderr) = run_to_end(
        &[
            "restore",
            "--target",
            "gdb://127.0.0.1:9",
            "--journal",
            &journal_arg,
        ],
        &state,
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("belongs to gdb://127.0.0.1:"), "{stderr}");
    assert!(journal.exists());
    let (status, out) = run_to_end(
        &["restore", "--target", &spec, "--journal", &journal_arg],
        &state,
    );
    assert!(status.success(), "{out}");
    assert_original(&served, "restore");
}

/// `tagsplit stacks` over GDB, signalled before its first run and after its first break:
/// it breaks in, writes `nt!PoolHitTag` back, removes its journal, and exits with 128 +
/// the signal.
#[test]
fn stacks_writes_pool_hit_tag_back_on_a_signal() {
    for (phase, sig) in [
        ("collecting", Signal::SIGINT),
        ("breaking", Signal::SIGTERM),
    ] {
        let context = format!("stacks/{phase}/{sig}");
        let state = state_dir(&format!("stacks-{phase}"));
        let served = Served::new("gdb");
        let spec = served.spec();
        let run = Run::start(
            &[
                "stacks", "--target", &spec, "--tag", "Leak", "--breaks", "1000",
            ],
            &state,
            Some(phase),
        );
        let stderr = signalled(run, phase, sig, &context);
        assert!(
            stderr.contains("nt!PoolHitTag was written back"),
            "{context}:\n{stderr}"
        );
        assert_eq!(
            journals(&state),
            Vec::<PathBuf>::new(),
            "{context}: journal left"
        );
        assert_eq!(
            pool_hit_tag(&served),
            0xffff_ff0f_u32.to_le_bytes(),
            "{context}: PoolHitTag written back"
        );
    }
}

/// `tagsplit stacks` SIGKILLed while `nt!PoolHitTag` is set leaves its journal; a second
/// `stacks` refuses the target, and `tagsplit restore` writes the value back.
#[test]
fn a_killed_stacks_leaves_a_journal_that_restore_finishes() {
    let state = state_dir("stacks-kill");
    let served = Served::new("gdb");
    let spec = served.spec();
    kill_at(
        &["stacks", "--target", &spec, "--tag", "Leak"],
        &state,
        "breaking",
    );
    assert_eq!(pool_hit_tag(&served), *b"Leak", "left set");
    assert_eq!(journals(&state).len(), 1);
    let (status, stderr) = run_to_end(&["stacks", "--target", &spec, "--tag", "Leak"], &state);
    assert!(
        !status.success() && stderr.contains("left its journal"),
        "{stderr}"
    );
    let (status, stderr) = run_to_end(&["restore", "--target", &spec], &state);
    assert!(status.success(), "{stderr}");
    assert_eq!(pool_hit_tag(&served), 0xffff_ff0f_u32.to_le_bytes());
    assert_eq!(journals(&state), Vec::<PathBuf>::new());
}

/// `tagsplit run --stacks` in process, over GDB, KDCOM and KDNET, signalled after its
/// first `PoolHitTag` break (the leaking site still patched, `nt!PoolHitTag` set, both in
/// the split's journal): it breaks in, restores the patches and `nt!PoolHitTag`, removes
/// the journal, and exits with 128 + the signal.
#[test]
fn run_with_stacks_restores_everything_on_a_signal_while_breaking() {
    for (kind, sig) in [
        ("sim", Signal::SIGHUP),
        ("gdb", Signal::SIGINT),
        ("kdcom", Signal::SIGTERM),
        ("kdnet", Signal::SIGINT),
    ] {
        let context = format!("run --stacks/{kind}/breaking/{sig}");
        let state = state_dir(&format!("run-stacks-{kind}"));
        let mut served = Served::new(kind);
        let spec = served.spec();
        let mut run = Run::start(
            &[
                "run", "--target", &spec, "--tag", "Leak", "--stacks", "--breaks", "1000",
            ],
            &state,
            Some("breaking"),
        );
        attach_kdnet(&mut served, &mut run);
        let stderr = signalled(run, "breaking", sig, &context);
        assert!(restored_all(&stderr), "{context}: restore line:\n{stderr}");
        assert!(
            stderr.contains("journal was removed"),
            "{context}:\n{stderr}"
        );
        assert_eq!(journals(&state), Vec::<PathBuf>::new(), "{context}");
        assert_original(&served, &context);
        if kind != "sim" {
            assert_eq!(
                served_pool_hit_tag(&served),
                Some(0xffff_ff0f_u32.to_le_bytes()),
                "{context}"
            );
        }
    }
}

/// `tagsplit run --stacks` SIGKILLed after its first break leaves one journal that
/// records both the leaking site's patch and `nt!PoolHitTag`; `tagsplit restore` puts
/// back both.
#[test]
fn a_killed_run_with_stacks_leaves_one_journal_that_restore_finishes() {
    let state = state_dir("run-stacks-kill");
    let served = Served::new("gdb");
    let spec = served.spec();
    kill_at(
        &["run", "--target", &spec, "--tag", "Leak", "--stacks"],
        &state,
        "breaking",
    );
    let sites = served.sites().unwrap();
    assert_eq!(
        (sites[0], sites[1]),
        (*b"Leak", *b"Lea2"),
        "the leaking site alone stays split"
    );
    assert_eq!(pool_hit_tag(&served), *b"Lea2", "left set");
    let left = journals(&state);
    assert_eq!(left.len(), 1, "one journal: {left:?}");
    let j = tagsplit::split::journal::Journal::read(&left[0]).unwrap();
    assert_eq!(j.patches.len(), 3, "two sites and nt!PoolHitTag");
    assert_eq!(j.patches[2].module, "ntoskrnl.exe");
    let (status, stderr) = run_to_end(&["restore", "--target", &spec], &state);
    assert!(status.success(), "{stderr}");
    assert_original(&served, "restore");
    assert_eq!(pool_hit_tag(&served), 0xffff_ff0f_u32.to_le_bytes());
    assert_eq!(journals(&state), Vec::<PathBuf>::new());
}
