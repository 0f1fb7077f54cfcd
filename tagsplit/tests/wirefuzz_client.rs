#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `tagsplit fuzz-client` and `tagsplit replay --serve`: the mutating stub against our own
//! console, clients that crash, hang and loop, replay, determinism, Ctrl-C, and real gdb
//! (skipped with a notice when gdb is absent, unless `CI=true`).

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tagsplit");

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tagsplit-fuzz-client-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Our own console as the fuzzed client.
fn console_client() -> String {
    format!(
        "{BIN} console --target gdb://{{addr}} -c 'lm; db nt!PoolHitTag; u nt!ExAllocatePoolWithTag'"
    )
}

fn fuzz(command: &str, out: &Path, extra: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(["fuzz-client", "--command", command, "--quiet", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run fuzz-client");
    assert!(
        output.status.success(),
        "fuzz-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary json")
}

fn transcripts(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn our_console_survives_a_short_campaign() {
    let out = out_dir("ours");
    fuzz(
        &console_client(),
        &out,
        &["--seed", "7", "--time", "120", "--max-iterations", "12"],
    );
    let s = summary(&out);
    assert_eq!(s["executions"], 12, "{s}");
    assert!(s["distinct_states"].as_u64().expect("states") >= 2, "{s}");
    assert_eq!(s["findings"], 0, "our console misbehaved: {s}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_crashing_client_is_a_crash_finding_and_replay_reproduces_it() {
    let out = out_dir("crash");
    fuzz(
        r#"sh -c "kill -SEGV \$\$""#,
        &out,
        &["--seed", "1", "--time", "60", "--max-iterations", "2"],
    );
    let s = summary(&out);
    assert_eq!(s["findings"], 2, "{s}");
    assert_eq!(s["found"][0]["kind"]["crashed"]["signal"], 11, "{s}");
    let _ = std::fs::remove_dir_all(&out);
}

/// All the bytes a transcript says the client sent, and all the stub sent. (How they
/// interleave in the log depends on how the client's pipelined packets were read.)
fn directions(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
    let (mut w, mut r) = (Vec::new(), Vec::new());
    for record in parse_remote_log(log) {
        if let LogRecord::Bytes { direction, bytes } = record {
            match direction {
                LogDirection::Write => w.extend(bytes),
                LogDirection::Read => r.extend(bytes),
            }
        }
    }
    (w, r)
}

/// Where `a` and `b` first differ, and what each holds there.
fn diff(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let show = |v: &[u8]| {
        String::from_utf8_lossy(&v[at.saturating_sub(40)..(at + 80).min(v.len())]).into_owned()
    };
    format!(
        "at byte {at} of {}/{}: {:?} vs {:?}",
        a.len(),
        b.len(),
        show(a),
        show(b)
    )
}

/// A client that talks to the stub, then crashes: every iteration is a finding, so every
/// iteration's bytes are on disk. Two runs with the same seed serve the same bytes to the
/// same client bytes, and the replay serves them again to the same client and sees the
/// same crash. (Our console sends a read again when its reply is late, so under a heavy
/// load the client's bytes, and then the stub's, may differ: such pairs are not compared.
/// The stub's own determinism, without a client's timing, is a unit test of
/// `wirefuzz::fuzz_client`.)
#[test]
fn same_seed_same_bytes_and_replay_reproduces() {
    let client = format!("{}; kill -SEGV $$", console_client());
    let a = out_dir("det-a");
    let b = out_dir("det-b");
    for out in [&a, &b] {
        fuzz(
            &client,
            out,
            &["--seed", "42", "--time", "120", "--max-iterations", "3"],
        );
    }
    let ta = transcripts(&a);
    let tb = transcripts(&b);
    assert!(!ta.is_empty());
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        let (wx, rx) = directions(&std::fs::read(x).expect("read"));
        let (wy, ry) = directions(&std::fs::read(y).expect("read"));
        assert!(rx.len() > 100, "nothing served in {x:?}");
        if wx != wy {
            eprintln!(
                "NOTICE: the console sent different bytes: {}",
                diff(&wx, &wy)
            );
            continue;
        }
        assert!(rx == ry, "different bytes served: {}", diff(&rx, &ry));
    }
    let replay = Command::new(BIN)
        .args(["replay", "--serve", "--timeout", "30", "--command", &client])
        .arg(&ta[0])
        .output()
        .expect("replay");
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{text}");
    assert!(text.contains("listening on 127.0.0.1:"), "{text}");
    assert!(text.contains("reproduced"), "{text}");
    // The replayed client was answered from the transcript, not left waiting.
    assert!(!text.contains("0 bytes served"), "{text}");
    // A client that does not crash does not reproduce it: exit 1.
    let replay = Command::new(BIN)
        .args(["replay", "--serve", "--timeout", "30", "--command", "true"])
        .arg(&ta[0])
        .output()
        .expect("replay");
    assert_eq!(replay.status.code(), Some(1));
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// One iteration of `command` with a client time-out of `timeout` seconds: its one
/// finding, as summary.json lists it.
fn one_finding(name: &str, command: &str, timeout: &str, kind: &str) -> serde_json::Value {
    let out = out_dir(name);
    let args = ["--seed", "1", "--time", "120", "--max-iterations", "1"];
    fuzz(
        command,
        &out,
        &[&args[..], &["--client-timeout", timeout]].concat(),
    );
    let s = summary(&out);
    assert_eq!(s["findings"], 1, "{s}");
    assert_eq!(s["found"][0]["kind"], kind, "{s}");
    let _ = std::fs::remove_dir_all(&out);
    s["found"][0].clone()
}

#[test]
fn a_client_that_never_exits_is_a_hang() {
    one_finding("hang", "exec sleep 1000", "1", "hang");
}

#[test]
fn a_client_that_repeats_a_packet_is_a_loop() {
    let found = one_finding(
        "loop",
        r#"exec bash -c 'exec 3<>/dev/tcp/{host}/{port}; while :; do printf "\$g#67" >&3 || exit 0; done'"#,
        "60",
        "loop",
    );
    assert_eq!(found["signature"], "loop after g", "{found}");
}

#[test]
fn ctrl_c_stops_the_campaign_and_the_client_and_keeps_findings() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let out = out_dir("sigint");
    std::fs::create_dir_all(&out).expect("dir");
    let flag = out.join("flag");
    let pidfile = out.join("pid");
    // First iteration: a crash (a finding). Then a client that sleeps, its pid on disk.
    let client = format!(
        "if [ -e {f} ]; then echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 1000; else touch {f}; kill -SEGV $$; fi",
        f = flag.display(),
        p = pidfile.display()
    );
    let mut child = Command::new(BIN)
        .args([
            "fuzz-client",
            "--command",
            &client,
            "--quiet",
            "--time",
            "600",
        ])
        .args(["--client-timeout", "500", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while !pidfile.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "client never slept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sleeper: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fuzz-client did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // 128 + SIGINT, as every tagsplit command stopped by a signal.
    assert_eq!(status.code(), Some(130), "{status:?}");
    let s = summary(&out);
    assert_eq!(s["cancelled"], true, "{s}");
    assert_eq!(s["findings"], 1, "{s}");
    assert_eq!(transcripts(&out).len(), 1);
    // The sleeping client was stopped with the campaign.
    assert!(
        !Path::new(&format!("/proc/{sleeper}")).exists(),
        "client {sleeper} still runs"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn real_gdb_as_the_client() {
    if !common::have_tool("gdb", "the fuzz-client real-gdb test") {
        return;
    }
    let out = out_dir("gdb");
    fuzz(
        r#"gdb -batch -nx -ex "set architecture i386:x86-64" -ex "target remote {addr}" -ex "info registers rip" -ex "x/4i \$pc" -ex "info sharedlibrary" -ex detach"#,
        &out,
        &[
            "--seed",
            "3",
            "--time",
            "120",
            "--max-iterations",
            "5",
            "--client-timeout",
            "20",
        ],
    );
    let s = summary(&out);
    assert_eq!(s["executions"], 5, "{s}");
    assert!(s["distinct_states"].as_u64().expect("states") >= 1, "{s}");
    let _ = std::fs::remove_dir_all(&out);
}
