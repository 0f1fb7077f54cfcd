#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The KD wire fuzzer against our own KD targets (KDCOM and KDNET simulator stubs), a
//! fake target that goes silent, a client that crashes, and our own KD console as the
//! client.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tagsplit::wirefuzz::kd::{self, KdLink, KdSeeds};
use tagsplit::wirefuzz::{Campaign, CampaignOptions, FindingKind, Summary};
use tagsplit_protocol::kd::payload::Exception64;
use tagsplit_protocol::kd::{
    Manipulate, ManipulateApi, PacketType, Payload, Role, Session, SessionConfig, SessionEvent,
    StateChange, StateChangeKind, status,
};
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::kd::{KdStub, KdStubHandle, KdStubOptions};

const KEY: &str = "1.2.3.4";
const REPLY: Duration = Duration::from_secs(10);

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wirefuzz-kd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn machine() -> Machine {
    Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
}

fn options() -> KdStubOptions {
    KdStubOptions {
        // A continue stops by itself after one slice: the same ticks in every run.
        stop_after_ticks: Some(10),
        ..KdStubOptions::default()
    }
}

fn campaign(name: &str, seed: u64, iterations: u64) -> Campaign {
    let mut o = CampaignOptions::new(name, seed, Duration::from_secs(600), out_dir(name));
    o.max_iterations = Some(iterations);
    Campaign::new(o).unwrap()
}

fn kdcom_stub() -> KdStubHandle {
    KdStub::spawn_kdcom(machine(), options()).unwrap()
}

/// A free UDP port for the debugger, and a KDNET stub poking it.
fn kdnet_stub() -> (KdStubHandle, u16) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = SocketAddr::from(([127, 0, 0, 1], port));
    let stub = KdStub::spawn_kdnet(machine(), host, KEY.parse().unwrap(), options()).unwrap();
    (stub, port)
}

fn run_target(name: &str, spec: &str, seed: u64, iterations: u64) -> (Summary, Vec<u8>) {
    let mut c = campaign(name, seed, iterations);
    kd::fuzz_target(&mut c, spec, None, REPLY).unwrap();
    let out = c.out().to_path_buf();
    let summary = c.finish().unwrap();
    let last = std::fs::read(out.join("kd-last-iteration.log")).unwrap();
    if std::env::var_os("WIREFUZZ_KD_DUMP").is_some() {
        std::fs::write(std::env::temp_dir().join(format!("{name}.log")), &last).unwrap();
    }
    let _ = std::fs::remove_dir_all(&out);
    (summary, last)
}

#[test]
fn kdcom_target_no_findings_and_deterministic() {
    let mut runs = Vec::new();
    for i in 0..2 {
        let stub = kdcom_stub();
        let spec = format!("kdcom:{}", stub.addr());
        let (summary, last) = run_target(&format!("kdcom-{i}"), &spec, 7, 60);
        let _ = stub.shutdown();
        assert_eq!(summary.progress.executions, 60);
        assert_eq!(summary.progress.findings, 0, "{summary}");
        assert!(summary.progress.distinct_states > 20, "{summary}");
        assert!(kd::is_kd_transcript(&last));
        runs.push((summary.progress.distinct_states, last));
    }
    assert_eq!(runs[0], runs[1], "same seed, same states and packets");
}

#[test]
fn kdnet_target_no_findings_and_deterministic() {
    let mut runs = Vec::new();
    for i in 0..2 {
        let (stub, port) = kdnet_stub();
        let spec = format!("kdnet:port={port},key={KEY},host=127.0.0.1");
        let (summary, last) = run_target(&format!("kdnet-{i}"), &spec, 11, 60);
        let _ = stub.shutdown();
        assert_eq!(summary.progress.findings, 0, "{summary}");
        assert!(summary.progress.distinct_states > 20, "{summary}");
        runs.push((summary.progress.distinct_states, last));
    }
    assert_eq!(runs[0], runs[1], "same seed, same states and packets");
}

/// A KDCOM target that reports a breakpoint, answers every request with the request's
/// API and `STATUS_SUCCESS`, and goes silent for good after a `SearchMemory`.
fn silent_after_search() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { return };
            std::thread::spawn(move || fake_target(stream));
        }
    });
    addr
}

fn fake_target(mut stream: std::net::TcpStream) {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut s = Session::new(SessionConfig::kdcom(Role::Target));
    let sc = StateChange::new(
        &StateChangeKind::Exception(Exception64 {
            code: status::BREAKPOINT,
            ..Exception64::default()
        }),
        0,
        1,
        0,
        0x1000,
    );
    s.send(start.elapsed(), PacketType::StateChange64, sc.to_bytes());
    let mut silent = false;
    let mut buf = [0u8; 8192];
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    loop {
        while let Some(unit) = s.poll_transmit() {
            if !silent && stream.write_all(&unit).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => s.handle_bytes(start.elapsed(), &buf[..n]),
            Err(_) => {}
        }
        s.handle_timeout(start.elapsed());
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::Packet {
                packet_type: PacketType::StateManipulate,
                payload,
                ..
            } = ev
                && let Ok(Payload::Manipulate(m)) =
                    Payload::parse(PacketType::StateManipulate, &payload)
            {
                if matches!(m.api(), ManipulateApi::SearchMemory { .. }) {
                    silent = true;
                }
                if matches!(
                    m.api(),
                    ManipulateApi::Continue { .. } | ManipulateApi::Continue2 { .. }
                ) {
                    s.send(start.elapsed(), PacketType::StateChange64, sc.to_bytes());
                    continue;
                }
                let r: Manipulate = m.reply(status::SUCCESS, &m.api(), Vec::new());
                s.send(start.elapsed(), PacketType::StateManipulate, r.to_bytes());
            }
        }
    }
}

/// A campaign against [`silent_after_search`]: its spec, output directory, and the
/// transcript of its hang after a `SearchMemory`.
fn silent_hang(name: &str) -> (String, PathBuf, PathBuf) {
    let addr = silent_after_search();
    let spec = format!("kdcom:{addr}");
    let mut c = campaign(name, 3, 20);
    kd::fuzz_target(&mut c, &spec, None, Duration::from_secs(2)).unwrap();
    let out = c.out().to_path_buf();
    let summary = c.finish().unwrap();
    let hang = summary
        .found
        .iter()
        .find(|f| f.kind == FindingKind::Hang && f.signature.contains("SearchMemory"))
        .unwrap_or_else(|| panic!("{summary}"));
    let file = out.join(&hang.transcripts[0]);
    (spec, out, file)
}

#[test]
fn a_silent_target_is_a_hang_that_replays() {
    let (spec, out, file) = silent_hang("silent");
    let transcript = std::fs::read(file).unwrap();
    assert!(kd::is_kd_transcript(&transcript));
    let replay = kd::replay_target(&transcript, &spec, None, Duration::from_secs(2)).unwrap();
    let (kind, signature) = replay.finding.unwrap_or_else(|| panic!("{}", replay.log));
    assert_eq!(kind, FindingKind::Hang, "{}", replay.log);
    assert!(signature.contains("SearchMemory"), "{signature}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_crashing_client_is_a_crash() {
    for link in [
        KdLink::Com,
        KdLink::Net {
            key: KEY.parse::<Key>().unwrap(),
        },
    ] {
        let mut c = campaign("crash", 1, 2);
        kd::fuzz_client(&mut c, &link, "kill -SEGV $$", Duration::from_secs(30)).unwrap();
        let out = c.out().to_path_buf();
        let summary = c.finish().unwrap();
        assert_eq!(summary.progress.findings, 2, "{summary}");
        assert_eq!(summary.found[0].kind, FindingKind::Crashed { signal: 11 });
        let t = std::fs::read(out.join(&summary.found[0].transcripts[0])).unwrap();
        assert!(kd::is_kd_transcript(&t));
        let replay =
            kd::replay_serve(&t, Some("kill -SEGV $$"), None, Duration::from_secs(30)).unwrap();
        assert_eq!(
            replay.finding.map(|f| f.0),
            Some(FindingKind::Crashed { signal: 11 })
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Our own KD console as the client: it exits (with whatever code) every time.
#[test]
fn our_console_survives_a_hostile_kd_target() {
    let bin = env!("CARGO_BIN_EXE_tagsplit");
    let runs = [
        (
            KdLink::Com,
            format!("{bin} console --target kdcom:{{addr}} -c \"lm; !poolused 4 Leak\""),
        ),
        (
            KdLink::Net {
                key: KEY.parse::<Key>().unwrap(),
            },
            format!(
                "{bin} console --target kdnet:port={{port}},key={KEY},host=127.0.0.1,timeout=20 -c \"lm; !poolused 4 Leak\""
            ),
        ),
    ];
    for (link, command) in runs {
        let mut c = campaign("console", 5, 2);
        kd::fuzz_client(&mut c, &link, &command, Duration::from_secs(60)).unwrap();
        let out = c.out().to_path_buf();
        let summary = c.finish().unwrap();
        assert_eq!(summary.progress.executions, 2);
        assert_eq!(summary.progress.findings, 0, "{command}: {summary}");
        // The console got as far as asking different things of different targets.
        assert!(
            summary.progress.distinct_states >= 2,
            "{command}: {summary}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// The real captures (`../shared/captures`, next to the project).
fn captures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/captures");
    assert!(
        dir.join("kdnet-win10-10586-key-8.8.8.8.pcapng.gz").exists(),
        "the real KD captures are needed in {}",
        dir.display()
    );
    dir
}

#[test]
fn capture_seeds_are_the_real_debuggers_requests() {
    let seeds = KdSeeds::load(&captures());
    // WinDbg's requests to the Windows 10 boot debugger, as `tagsplit decode` lists them.
    let by_api = seeds.requests_by_api();
    let expected = [
        ("ReadVirtualMemory", 44),
        ("RestoreBreakPoint", 32),
        ("GetContext", 5),
        ("ReadControlSpace", 3),
        ("GetContextEx", 3),
        ("Continue2", 2),
        ("WriteControlSpace", 2),
        ("SetContext", 2),
        ("GetVersion", 1),
        ("Continue", 1),
    ];
    for (api, n) in expected {
        assert_eq!(by_api.get(api), Some(&n), "{api}: {by_api:?}");
    }
    assert_eq!(seeds.requests.len(), 95, "{by_api:?}");
    // A SetContext carries the captured context, a WriteControlSpace its 224 bytes.
    assert!(
        seeds
            .requests
            .iter()
            .any(|m| matches!(m.api(), ManipulateApi::SetContext { .. }) && m.data().len() == 1232)
    );
    // The KDCOM file's state change (a breakpoint exception) is among the other packets.
    assert!(
        seeds
            .packets
            .iter()
            .any(|(t, p)| *t == PacketType::StateChange64
                && matches!(
                    Payload::parse(*t, p),
                    Ok(Payload::StateChange(sc)) if matches!(
                        sc.kind(),
                        StateChangeKind::Exception(e) if e.code == status::BREAKPOINT
                    )
                )),
        "{:?}",
        seeds
            .packets
            .iter()
            .map(|(t, p)| (t.name(), p.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(seeds.sources.len(), 2, "{:?}", seeds.sources);
}

#[test]
fn a_kdnet_campaign_sends_the_captured_requests() {
    let seeds = KdSeeds::load(&captures());
    let (stub, port) = kdnet_stub();
    let spec = format!("kdnet:port={port},key={KEY},host=127.0.0.1");
    let mut c = campaign("kdnet-captured", 2, 40);
    kd::fuzz_target_with(&mut c, &spec, None, REPLY, &seeds).unwrap();
    let out = c.out().to_path_buf();
    let summary = c.finish().unwrap();
    let _ = stub.shutdown();
    assert_eq!(summary.progress.executions, 40);
    assert_eq!(summary.progress.findings, 0, "{summary}");
    let report = std::fs::read_to_string(out.join("kd-seeds.txt")).unwrap();
    assert!(report.contains("loaded 95 requests"), "{report}");
    let sent: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("sent ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(sent >= 5, "{report}");
    assert!(report.contains("sent ReadVirtualMemory"), "{report}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs a campaign through the CLI for three seconds; checks it exits 0 and returns its
/// summary.json.
fn cli_campaign(name: &str, args: &[&str]) -> serde_json::Value {
    let out = out_dir(name);
    let mut all = args.to_vec();
    let out_arg = out.to_str().unwrap().to_owned();
    all.extend_from_slice(&["--seed", "1", "--time", "3", "--quiet", "--out", &out_arg]);
    let o = common::tagsplit(&all);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = common::summary_json(&out);
    let _ = std::fs::remove_dir_all(&out);
    summary
}

#[test]
fn cli_fuzz_stub_launches_our_kd_targets() {
    let bin = env!("CARGO_BIN_EXE_tagsplit");
    let runs = [
        (
            "cli-kdcom".to_owned(),
            "kdcom:127.0.0.1:{port}".to_owned(),
            format!("{bin} serve --kdcom 127.0.0.1:{{port}}"),
        ),
        (
            "cli-kdnet".to_owned(),
            format!("kdnet:port={{port}},key={KEY}"),
            format!("{bin} serve --kdnet 127.0.0.1:{{port}} --key {KEY}"),
        ),
    ];
    for (name, target, launch) in runs {
        let seeds = captures();
        let s = cli_campaign(
            &name,
            &[
                "fuzz-stub",
                "--target",
                &target,
                "--launch",
                &launch,
                "--seeds",
                seeds.to_str().unwrap(),
            ],
        );
        assert!(s["executions"].as_u64().unwrap() > 0, "{target}: {s}");
        assert!(s["distinct_states"].as_u64().unwrap() > 1, "{target}: {s}");
        assert_eq!(s["findings"].as_u64(), Some(0), "{target}: {s}");
    }
}

#[test]
fn cli_fuzz_client_runs_our_console() {
    let bin = env!("CARGO_BIN_EXE_tagsplit");
    let kdcom = format!("{bin} console --target kdcom:{{addr}} -c \"lm\"");
    let kdnet = format!(
        "{bin} console --target kdnet:port={{port}},key={KEY},host=127.0.0.1,timeout=20 -c lm"
    );
    let runs: [(&str, Vec<&str>); 2] = [
        ("cli-client-kdcom", vec!["--kdcom", "--command", &kdcom]),
        (
            "cli-client-kdnet",
            vec!["--kdnet", "--key", KEY, "--command", &kdnet],
        ),
    ];
    for (name, args) in runs {
        let mut all = vec!["fuzz-client", "--client-timeout", "60"];
        all.extend_from_slice(&args);
        let s = cli_campaign(name, &all);
        assert!(s["executions"].as_u64().unwrap() > 0, "{name}: {s}");
        assert_eq!(s["findings"].as_u64(), Some(0), "{name}: {s}");
    }
}

#[test]
fn cli_replay_reproduces_a_kd_hang() {
    let (spec, out, file) = silent_hang("cli-silent");
    let o = common::tagsplit(&[
        "replay",
        file.to_str().unwrap(),
        "--target",
        &spec,
        "--timeout",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("reproduced: hang"), "{stdout}");
    assert!(stdout.contains("SearchMemory"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Our console through a whole fuzz-client session, recorded: the shell that ran it
/// kills itself afterwards, which makes the run a finding with a transcript.
#[test]
fn replay_serve_drives_our_console_through_a_recorded_session() {
    let bin = env!("CARGO_BIN_EXE_tagsplit");
    let console = format!("{bin} console --target kdcom:{{addr}} -c \"lm\"");
    let mut c = campaign("serve-console", 4, 1);
    kd::fuzz_client(
        &mut c,
        &KdLink::Com,
        &format!("{console}; kill -SEGV $$"),
        Duration::from_secs(60),
    )
    .unwrap();
    let out = c.out().to_path_buf();
    let summary = c.finish().unwrap();
    assert_eq!(summary.progress.findings, 1, "{summary}");
    let file = out.join(&summary.found[0].transcripts[0]);
    let transcript = std::fs::read(&file).unwrap();
    let (served, requests) = recorded_counts(&transcript);
    assert!(served > 3, "{}", String::from_utf8_lossy(&transcript));
    // The console alone exits normally: the finding is not reproduced (exit status 1),
    // after every recorded target packet was served to it.
    let o = common::tagsplit(&[
        "replay",
        file.to_str().unwrap(),
        "--serve",
        "--command",
        &console,
        "--timeout",
        "60",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("not reproduced"), "{stdout}");
    assert!(stdout.contains("client exited: exit status"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("r ")).collect();
    assert_eq!(lines.len(), served, "{stdout}");
    // Each packet went out once the console had sent what it had sent before it in the
    // recorded session (it is answered as the target did, ACKs included).
    let heard: usize = lines
        .last()
        .and_then(|l| l.split("after ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(heard >= requests, "{requests} recorded: {stdout}");
    // The same shell line as recorded reproduces it.
    let o = common::tagsplit(&[
        "replay",
        file.to_str().unwrap(),
        "--serve",
        "--command",
        &format!("{console}; kill -SEGV $$"),
        "--timeout",
        "60",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

/// How many target packets a client-side transcript holds, and how many client packets
/// came before the last of them.
fn recorded_counts(transcript: &[u8]) -> (usize, usize) {
    use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
    let (mut served, mut requests, mut before_last) = (0, 0, 0);
    for r in parse_remote_log(transcript) {
        match r {
            LogRecord::Bytes {
                direction: LogDirection::Read,
                ..
            } => {
                served += 1;
                before_last = requests;
            }
            LogRecord::Bytes {
                direction: LogDirection::Write,
                ..
            } => requests += 1,
            _ => {}
        }
    }
    (served, before_last)
}
