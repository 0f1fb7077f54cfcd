#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `fuzz-stub` against GDB stubs: our simulator's (in process and launched), hostile fake
//! stubs written here (one that drops the connection, one that never answers, one that
//! answers with a bad checksum), and gdbserver where it is installed (required under
//! `CI=true`); `replay --target` of a finding.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tagsplit::wirefuzz::fuzz_stub::{self, StubFuzzOptions};
use tagsplit::wirefuzz::{Campaign, CampaignOptions, FindingKind, Summary};
use tagsplit_protocol::gdb::frame::{self, Decoder, Event};

fn sim_stub(
    log: Option<Box<dyn std::io::Write + Send>>,
) -> tagsplit_target_sim::server::gdb::GdbStubHandle {
    let scenario = tagsplit_target_sim::scenario::Scenario::builtin("part4").expect("scenario");
    tagsplit::target::gdb::serve_scenario_logged(
        &scenario,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(100_000),
        tagsplit_target_sim::server::gdb::StubFeatures::FULL,
        log,
    )
    .expect("stub")
}

fn campaign(dir: &Path, seed: u64, iterations: u64) -> Campaign {
    let _ = std::fs::remove_dir_all(dir);
    let mut options = CampaignOptions::new("test", seed, Duration::from_secs(600), dir);
    options.max_iterations = Some(iterations);
    Campaign::new(options).expect("campaign")
}

fn run(spec: &str, dir: &Path, seed: u64, iterations: u64, timeout: Duration) -> Summary {
    let mut c = campaign(dir, seed, iterations);
    fuzz_stub::fuzz_target(&mut c, spec, None, &StubFuzzOptions::new(timeout)).expect("fuzz");
    c.finish().expect("finish")
}

/// A `Write` into a shared buffer (the stub's packet log).
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn our_stub_gives_no_findings_and_many_states() {
    let stub = sim_stub(None);
    let dir = common::temp_dir("fzstub-ours");
    let s = run(
        &format!("gdb://{}", stub.addr()),
        &dir,
        7,
        80,
        Duration::from_secs(30),
    );
    assert_eq!(s.progress.executions, 80);
    assert_eq!(s.progress.findings, 0, "{s}");
    assert!(s.progress.distinct_states > 40, "{s}");
    assert!(dir.join("summary.json").exists());
    drop(stub.shutdown());
}

#[test]
fn the_same_seed_sends_the_same_bytes() {
    let logs: Vec<(Vec<u8>, u64)> = (0..2)
        .map(|i| {
            let log = Shared::default();
            let stub = sim_stub(Some(Box::new(log.clone())));
            let dir = common::temp_dir(&format!("fzstub-same-{i}"));
            let s = run(
                &format!("gdb://{}", stub.addr()),
                &dir,
                11,
                25,
                Duration::from_secs(30),
            );
            drop(stub.shutdown());
            let bytes = log.0.lock().expect("lock").clone();
            std::fs::write(dir.join("stub.log"), &bytes).expect("write");
            (sent(&bytes), s.progress.distinct_states)
        })
        .collect();
    assert!(logs[0].0.len() > 1000);
    assert!(logs[0].0 == logs[1].0, "the two sessions differ");
    assert_eq!(logs[0].1, logs[1].1);
    // Another seed sends something else.
    let log = Shared::default();
    let stub = sim_stub(Some(Box::new(log.clone())));
    let dir = common::temp_dir("fzstub-other");
    run(
        &format!("gdb://{}", stub.addr()),
        &dir,
        12,
        25,
        Duration::from_secs(30),
    );
    drop(stub.shutdown());
    assert!(sent(&log.0.lock().expect("lock")) != logs[0].0);
}

/// The bytes the client sent in a stub's log, session by session (how the stub's reads
/// cut them into records depends on timing; the bytes do not).
fn sent(log: &[u8]) -> Vec<u8> {
    use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
    let mut out = Vec::new();
    for record in parse_remote_log(log) {
        match record {
            LogRecord::Bytes {
                direction: LogDirection::Write,
                bytes,
            } => out.extend(bytes),
            LogRecord::End => out.extend_from_slice(b"\n--\n"),
            _ => {}
        }
    }
    out
}

/// How a fake stub misbehaves on `m` packets.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Hostile {
    /// Closes the connection.
    Drop,
    /// Never answers.
    Silent,
    /// Answers with a wrong checksum.
    BadChecksum,
}

/// A fake stub on 127.0.0.1:0 that answers everything plainly (empty, `OK`, `S05`) and
/// misbehaves on `m`; a thread per connection. Stopped when the returned flag is set
/// (and a connection wakes it).
fn fake_stub(how: Hostile) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || serve_fake(stream, how));
        }
    });
    (addr, stop)
}

fn serve_fake(mut stream: TcpStream, how: Hostile) {
    let mut decoder = Decoder::new(1 << 16);
    let mut no_ack = false;
    let mut buf = [0u8; 4096];
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for event in decoder.decode(&buf[..n]) {
            let payload = match event {
                Event::Packet(p) => p,
                Event::BadChecksum { .. } if !no_ack => {
                    let _ = stream.write_all(b"-");
                    continue;
                }
                _ => continue,
            };
            if !no_ack {
                let _ = stream.write_all(b"+");
            }
            let reply: Vec<u8> = if payload.first() == Some(&b'm') {
                match how {
                    Hostile::Drop => return,
                    Hostile::Silent => continue,
                    Hostile::BadChecksum => {
                        let _ = stream.write_all(b"$00#00");
                        continue;
                    }
                }
            } else if payload.starts_with(b"qSupported") {
                b"PacketSize=1000;QStartNoAckMode+".to_vec()
            } else if payload == b"QStartNoAckMode" {
                no_ack = true;
                b"OK".to_vec()
            } else if payload == b"qSymbol::" {
                // Asks for the symbol "ab" (as gdbserver asks for its agent's).
                b"qSymbol:6162".to_vec()
            } else if payload == b"qSymbol::6162" {
                b"OK".to_vec()
            } else if payload.first() == Some(&b'?') {
                b"S05".to_vec()
            } else if payload.starts_with(b"H") {
                b"OK".to_vec()
            } else {
                Vec::new()
            };
            let _ = stream.write_all(&frame::encode_packet(&reply, false));
        }
    }
}

fn stop_fake(addr: SocketAddr, stop: &AtomicBool) {
    stop.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
}

/// Campaigns a fake stub until the first finding, checks its kind and signature, and
/// replays its transcript against a fresh fake stub.
fn hostile(how: Hostile, kind: FindingKind, name: &str) {
    let (addr, stop) = fake_stub(how);
    let dir = common::temp_dir(name);
    let s = run(
        &format!("gdb://{addr}"),
        &dir,
        3,
        30,
        Duration::from_secs(2),
    );
    stop_fake(addr, &stop);
    let found = s
        .found
        .iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} finding: {s}"));
    assert!(found.signature.ends_with("after m"), "{}", found.signature);
    assert!(
        s.found.iter().all(|f| f.kind == kind),
        "only {kind} findings expected: {s}"
    );
    let file = dir.join(&found.transcripts[0]);
    let transcript = std::fs::read(&file).expect("transcript");
    assert!(
        transcript.trim_ascii_start().starts_with(b"w $qSupported"),
        "{}",
        String::from_utf8_lossy(&transcript)
    );
    assert!(transcript.ends_with(b"End of log\n"));

    let outcome = replay_fake(how, &transcript, Duration::from_secs(2));
    let (k, signature) = outcome
        .finding
        .unwrap_or_else(|| panic!("not reproduced: {}", outcome.log));
    assert_eq!(k, kind);
    assert_eq!(signature, found.signature);
    assert!(outcome.sent >= 2);

    // The same transcript against our own stub: nothing.
    let stub = sim_stub(None);
    let outcome = fuzz_stub::replay_target(
        &transcript,
        &format!("gdb://{}", stub.addr()),
        None,
        Duration::from_secs(30),
    )
    .expect("replay");
    drop(stub.shutdown());
    assert!(outcome.finding.is_none(), "{}", outcome.log);
}

#[test]
fn a_stub_that_drops_the_connection_is_a_death_that_replays() {
    hostile(Hostile::Drop, FindingKind::Died, "fzstub-drop");
}

#[test]
fn a_stub_that_never_answers_is_a_hang() {
    hostile(Hostile::Silent, FindingKind::Hang, "fzstub-silent");
}

#[test]
fn a_bad_checksum_is_out_of_protocol() {
    hostile(
        Hostile::BadChecksum,
        FindingKind::OutOfProtocol,
        "fzstub-badsum",
    );
}

/// `transcript` replayed to a fresh fake stub.
fn replay_fake(
    how: Hostile,
    transcript: &[u8],
    timeout: Duration,
) -> tagsplit::wirefuzz::ReplayOutcome {
    let (addr, stop) = fake_stub(how);
    let outcome = fuzz_stub::replay_target(transcript, &format!("gdb://{addr}"), None, timeout)
        .expect("replay");
    stop_fake(addr, &stop);
    outcome
}

/// `commands` replayed to a fake stub that is silent only on `m`.
fn replay_to_fake(name: &str, commands: &[&[u8]]) -> tagsplit::wirefuzz::ReplayOutcome {
    let dir = common::temp_dir(name);
    let log = std::fs::read(log_of(&dir, commands)).expect("log");
    replay_fake(Hostile::Silent, &log, Duration::from_secs(30))
}

/// A stub that reads `????` (what our decoder makes of `$?*\x23…`) as `?` answers with a
/// stop reply: that is its reply, not a stop reply unasked and then a hang.
#[test]
fn a_stop_reply_to_a_question_mark_packet_is_its_reply() {
    let outcome = replay_to_fake("fzstub-question", &[b"qSupported", b"????", b"?x"]);
    assert!(outcome.finding.is_none(), "{}", outcome.log);
    assert_eq!(outcome.sent, 3);
}

/// A stub that asks for a symbol is told it is unknown (as gdb does), so its next
/// answer is the reply to the command after, not another request.
#[test]
fn symbol_lookups_are_answered() {
    let outcome = replay_to_fake("fzstub-symbol", &[b"qSupported", b"qSymbol::", b"Hg0"]);
    assert!(outcome.finding.is_none(), "{}", outcome.log);
    assert!(
        outcome.log.contains("-> qSymbol::6162\n  <- OK"),
        "{}",
        outcome.log
    );
    assert!(outcome.log.contains("-> Hg0\n  <- OK"), "{}", outcome.log);
}

#[test]
fn nothing_unsafe_is_ever_sent() {
    for bad in [
        &b"c"[..],
        b"s",
        b"C05",
        b"vCont;c",
        b"vRun;2f62696e2f7368",
        b"vAttach;1",
        b"vFile:unlink:2f746d70",
        b"vFile:open:2f746d70,241,1ff",
        b"vFile:pwrite:0,0:x",
        b"qRcmd,71756974",
        b"QEnvironmentHexEncoded:41",
        b"qXfer:siginfo:write::0:00",
        b"QTStart",
        b"k",
        b"D",
    ] {
        assert!(
            !fuzz_stub::is_safe(bad, false),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    for good in [
        &b"m0,1"[..],
        b"vCont?",
        b"vFile:open:2f,0,0",
        b"qRcmd,68656c70",
        b"?",
    ] {
        assert!(
            fuzz_stub::is_safe(good, false),
            "{}",
            String::from_utf8_lossy(good)
        );
    }
    assert!(fuzz_stub::is_safe(b"k", true));
    assert!(fuzz_stub::load_seeds(Path::new("/nonexistent")).is_empty());
}

/// Runs `fuzz-stub` for `time` seconds against the peer `launch` starts; checks it exits
/// 0 and returns its summary.json.
fn fuzz_cli(
    name: &str,
    target: &str,
    launch: &str,
    seed: &str,
    time: &str,
    extra: &[&str],
) -> serde_json::Value {
    let dir = common::temp_dir(name);
    let out = dir.join("out");
    let mut args = vec![
        "fuzz-stub",
        "--target",
        target,
        "--launch",
        launch,
        "--seed",
        seed,
        "--time",
        time,
        "--out",
        out.to_str().expect("path"),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let o = common::tagsplit(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("executions"), "{stdout}");
    common::summary_json(&out)
}

/// A remote log in which the client sent `commands` (and nothing came back).
fn log_of(dir: &Path, commands: &[&[u8]]) -> std::path::PathBuf {
    let mut text = String::new();
    for c in commands {
        text.push_str("w ");
        text.push_str(&String::from_utf8_lossy(&frame::encode_packet(c, false)));
        text.push('\n');
    }
    text.push_str("End of log\n");
    let path = dir.join("commands.log");
    std::fs::write(&path, text).expect("write");
    path
}

/// `tagsplit replay` of `commands` against the peer `launch` starts: its exit code and
/// stdout.
fn replay_cli(
    name: &str,
    commands: &[&[u8]],
    launch: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let dir = common::temp_dir(name);
    let log = log_of(&dir, commands);
    let mut args = vec![
        "replay",
        log.to_str().expect("path"),
        "--target",
        "gdb",
        "--launch",
        launch,
    ];
    args.extend_from_slice(extra);
    let o = common::tagsplit(&args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn our_launch() -> String {
    format!(
        "{} serve --gdb 127.0.0.1:{{port}}",
        env!("CARGO_BIN_EXE_tagsplit")
    )
}

#[test]
fn cli_fuzzes_a_launched_stub_of_ours() {
    let v = fuzz_cli("fzstub-cli", "gdb", &our_launch(), "5", "2", &[]);
    assert!(v["executions"].as_u64().expect("executions") > 0, "{v}");
    assert_eq!(v["findings"].as_u64(), Some(0), "{v}");
    assert_eq!(v["seed"].as_u64(), Some(5));
}

/// `--fresh-peer`: a new peer for every iteration.
#[test]
fn a_fresh_peer_for_every_iteration() {
    let v = fuzz_cli(
        "fzstub-fresh",
        "gdb",
        &our_launch(),
        "6",
        "60",
        &["--fresh-peer", "--max-iterations", "6"],
    );
    assert_eq!(v["executions"].as_u64(), Some(6), "{v}");
    assert!(v["restarts"].as_u64().expect("restarts") >= 5, "{v}");
    assert_eq!(v["findings"].as_u64(), Some(0), "{v}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_campaign_and_keeps_the_summary() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = common::temp_dir("fzstub-sigint");
    let out = dir.join("out");
    let mut child = common::bin()
        .args([
            "fuzz-stub",
            "--target",
            "gdb",
            "--launch",
            &our_launch(),
            "--time",
            "600",
            "--out",
            out.to_str().expect("path"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = common::lines_of(child.stderr.take().expect("stderr"));
    // The first progress line: the campaign runs.
    common::wait_for(&lines, "executions");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fuzz-stub did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    // 128 + SIGINT, as every command stopped by a signal.
    assert_eq!(status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("stopped early"), "{stdout}");
    let v = common::summary_json(&out);
    assert_eq!(v["cancelled"].as_bool(), Some(true), "{v}");
    assert!(v["executions"].as_u64().expect("executions") > 0);
}

/// gdbserver as the peer: it exits on `D` and `k` and is restarted; the findings it gives
/// are real ones of gdbserver 13 (see the README), never a hang nor a closed connection
/// without a crash.
#[test]
fn gdbserver_is_fuzzed_and_restarted() {
    if !common::have_tool("gdbserver", "fuzz-stub against gdbserver") {
        return;
    }
    let v = fuzz_cli(
        "fzstub-gdbserver",
        "gdb",
        "gdbserver 127.0.0.1:{port} /bin/true",
        "1",
        "4",
        &[],
    );
    assert!(v["executions"].as_u64().expect("executions") > 5, "{v}");
    assert!(v["restarts"].as_u64().expect("restarts") > 0, "{v}");
    for f in v["found"].as_array().expect("found") {
        assert!(!f["kind"].to_string().contains("hang"), "{f}");
    }

    // Two of gdbserver 13.1's findings, replayed (see the README).
    for (commands, expected) in [
        (
            &[&b"qSupported:xmlRegisters=i386"[..], b"qCRC:c4f,1"][..],
            "reproduced: crash (signal 11) crash after qCRC",
        ),
        (
            &[
                &b"qSupported:xmlRegisters=i386"[..],
                b"QStartNoAckMode",
                b"Hgp-1.0",
                b"qC",
            ][..],
            "reproduced: out-of-protocol out-of-protocol: a + in no-ack mode",
        ),
    ] {
        let (code, stdout) = replay_cli(
            "fzstub-gdbserver-replay",
            commands,
            "gdbserver 127.0.0.1:{port} /bin/true",
            &[],
        );
        assert_eq!(code, Some(0), "{stdout}");
        assert!(stdout.contains(expected), "{stdout}");
    }
}

/// QEMU's gdbstub as the peer: its stop reply on connect is not a finding; its own
/// findings (see the README) are crashes and hangs that replay.
#[test]
fn qemu_is_fuzzed_and_its_findings_replay() {
    if !common::have_tool("qemu-system-x86_64", "fuzz-stub against QEMU") {
        return;
    }
    const QEMU: &str = "qemu-system-x86_64 -S -display none -gdb tcp:127.0.0.1:{port} -nodefaults -machine q35 -m 64";
    let v = fuzz_cli("fzstub-qemu", "gdb://127.0.0.1:{port}", QEMU, "1", "4", &[]);
    assert!(v["executions"].as_u64().expect("executions") > 5, "{v}");
    for f in v["found"].as_array().expect("found") {
        assert!(!f["kind"].to_string().contains("out-of-protocol"), "{f}");
    }

    // QEMU 7.2 never answers a bare `q` (it acks it and says nothing).
    let (code, stdout) = replay_cli(
        "fzstub-qemu-q",
        &[b"qSupported:multiprocess+", b"q"],
        QEMU,
        &["--timeout", "3"],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("reproduced: hang hang after q"), "{stdout}");
}

/// A replay that finds nothing says so and exits 1.
#[test]
fn a_replay_that_finds_nothing_exits_1() {
    let (code, stdout) = replay_cli(
        "fzstub-nothing",
        &[b"qSupported", b"m0,4"],
        &our_launch(),
        &[],
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("not reproduced"), "{stdout}");
    assert!(stdout.contains("-> m0,4"), "{stdout}");
}
