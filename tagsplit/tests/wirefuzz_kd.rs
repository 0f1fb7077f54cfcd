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

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use tagsplit::wirefuzz::kd::{self, KdLink};
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

#[test]
fn a_silent_target_is_a_hang_that_replays() {
    let addr = silent_after_search();
    let spec = format!("kdcom:{addr}");
    let mut c = campaign("silent", 3, 20);
    kd::fuzz_target(&mut c, &spec, None, Duration::from_secs(2)).unwrap();
    let out = c.out().to_path_buf();
    let summary = c.finish().unwrap();
    let hang = summary
        .found
        .iter()
        .find(|f| f.kind == FindingKind::Hang && f.signature.contains("SearchMemory"))
        .unwrap_or_else(|| panic!("{summary}"));
    let transcript = std::fs::read(out.join(&hang.transcripts[0])).unwrap();
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

/// Timed runs for the numbers in the report: `WIREFUZZ_KD_SECS=60 cargo test -p tagsplit
/// --test wirefuzz_kd -- --ignored --nocapture measure`.
fn measure_secs() -> Duration {
    Duration::from_secs(
        std::env::var("WIREFUZZ_KD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

fn measured(name: &str) -> Campaign {
    let mut o = CampaignOptions::new(name, 1, measure_secs(), out_dir(name));
    o.progress = Some(Duration::from_secs(10));
    Campaign::new(o).unwrap()
}

#[test]
#[ignore = "a timed run, for measurements"]
fn measure_target_kdcom() {
    let stub = kdcom_stub();
    let mut c = measured("measure-kdcom");
    kd::fuzz_target(&mut c, &format!("kdcom:{}", stub.addr()), None, REPLY).unwrap();
    println!("{}", c.finish().unwrap());
    let _ = stub.shutdown();
}

#[test]
#[ignore = "a timed run, for measurements"]
fn measure_target_kdnet() {
    let (stub, port) = kdnet_stub();
    let mut c = measured("measure-kdnet");
    let spec = format!("kdnet:port={port},key={KEY},host=127.0.0.1");
    kd::fuzz_target(&mut c, &spec, None, REPLY).unwrap();
    println!("{}", c.finish().unwrap());
    let _ = stub.shutdown();
}

#[test]
#[ignore = "a timed run, for measurements"]
fn measure_client_console() {
    let bin = env!("CARGO_BIN_EXE_tagsplit");
    for (name, link, command) in [
        (
            "measure-client-kdcom",
            KdLink::Com,
            format!("{bin} console --target kdcom:{{addr}} -c \"lm; !poolused 4 Leak\""),
        ),
        (
            "measure-client-kdnet",
            KdLink::Net {
                key: KEY.parse::<Key>().unwrap(),
            },
            format!(
                "{bin} console --target kdnet:port={{port}},key={KEY},host=127.0.0.1,timeout=20 -c \"lm; !poolused 4 Leak\""
            ),
        ),
    ] {
        let mut c = measured(name);
        kd::fuzz_client(&mut c, &link, &command, Duration::from_secs(60)).unwrap();
        println!("{}", c.finish().unwrap());
    }
}
