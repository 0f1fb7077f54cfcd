#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Every command real gdb 13.1 sent in the recorded transcripts, replayed against the
//! simulator's stub over TCP: each gets a well-formed reply of the kind its command expects.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tagsplit_protocol::gdb::transcript::parse_log;
use tagsplit_protocol::gdb::{BreakpointType, ClientEvent, ClientSession, Command, Reply, xml};
use tagsplit_protocol::nt::VirtAddr;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubHandle, GdbStubOptions};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/reference/gdb-transcripts/"
);

/// Sends `cmd` and returns its reply (after any `O` output).
fn exchange(stream: &mut TcpStream, session: &mut ClientSession, cmd: &Command) -> Reply {
    session.send(cmd);
    stream.write_all(&session.poll_transmit().unwrap()).unwrap();
    let mut buf = [0u8; 0x10000];
    loop {
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Reply(r) => {
                    if let Some(acks) = session.poll_transmit() {
                        stream.write_all(&acks).unwrap();
                    }
                    return r;
                }
                ClientEvent::Output(_) => {}
                other => panic!("{cmd:?}: {other:?}"),
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stub closed the connection during {cmd:?}");
        session.receive(&buf[..n]);
    }
}

/// The bytes of `[addr, addr + len)` the machine can read, up to the first hole.
fn readable_prefix(stub: &GdbStubHandle, addr: u64, len: u64) -> Vec<u8> {
    stub.with_machine(|m| {
        let mut out = Vec::new();
        for a in addr..addr.saturating_add(len.min(0x10000)) {
            let mut b = [0u8; 1];
            if m.read(VirtAddr(a), &mut b).is_err() {
                break;
            }
            out.push(b[0]);
        }
        out
    })
}

/// Commands the stub answers with the empty reply on purpose.
fn answered_empty(cmd: &Command) -> bool {
    match cmd {
        // `Monitor`: no handler here, so the stub does not offer monitor commands.
        Command::Unknown(_) | Command::MustReplyEmpty | Command::TraceStatus => true,
        Command::Monitor(_) => true,
        Command::InsertBreakpoint(bp) | Command::RemoveBreakpoint(bp) => {
            !matches!(bp.kind, BreakpointType::Software | BreakpointType::Hardware)
        }
        _ => false,
    }
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn logs_in(dir: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

/// A client connection to `stub` (no delay, reads time out after 10 s).
fn connect(stub: &GdbStubHandle) -> TcpStream {
    let stream = TcpStream::connect(stub.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[test]
fn recorded_gdb_sessions_replay_against_the_stub() {
    let machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let options = GdbStubOptions {
        stop_after_ticks: Some(20),
        ..GdbStubOptions::default()
    };
    let stub = GdbStub::spawn(machine, options).unwrap();
    let names = logs_in(DIR, ".server.log");
    assert!(names.len() >= 12);
    let mut replayed = 0;
    for name in names {
        let log = parse_log(&std::fs::read(format!("{DIR}{name}")).unwrap());
        let mut stream = connect(&stub);
        let mut session = ClientSession::default();
        for ex in &log {
            let cmd = Command::parse(&ex.command);

            let reply = exchange(&mut stream, &mut session, &cmd);
            replayed += 1;

            assert_eq!(
                reply == Reply::Empty,
                answered_empty(&cmd),
                "{name}: {cmd:?} -> {reply:?}"
            );
            match (&cmd, &reply) {
                (Command::ReadRegisters, Reply::Hex(g)) => assert_eq!(g.len(), xml::G_PACKET_LEN),
                (Command::ReadRegisters, other) => panic!("{name}: g -> {other:?}"),
                (Command::XferRead { annex, .. }, Reply::Xfer { data, .. })
                    if *annex == b"target.xml" =>
                {
                    assert!(String::from_utf8_lossy(data).contains("i386:x86-64"));
                }
                // The transcripts' addresses (0x140000000...) are mostly not mapped in
                // part4: the reply must be what the machine holds there, byte for byte.
                (Command::ReadMemory { addr, len }, r) => {
                    let want = readable_prefix(&stub, *addr, *len);
                    if want.is_empty() {
                        assert!(matches!(r, Reply::Error(_)), "{name}: {cmd:?} -> {r:?}");
                    } else {
                        assert_eq!(*r, Reply::Hex(want), "{name}: {cmd:?}");
                    }
                }
                // gdb probes `X` support with a zero-length write: always OK.
                (Command::WriteMemoryBinary { data: [], .. }, r) => assert_eq!(*r, Reply::Ok),
                // Writes: OK where the machine has memory, an error where it has none.
                (
                    Command::WriteMemory { addr, .. } | Command::WriteMemoryBinary { addr, .. },
                    r,
                ) => {
                    if readable_prefix(&stub, *addr, 1).is_empty() {
                        assert!(matches!(r, Reply::Error(_)), "{name}: {cmd:?} -> {r:?}");
                    } else {
                        assert_eq!(*r, Reply::Ok, "{name}: {cmd:?}");
                    }
                }
                (Command::SearchMemory { .. }, r) => assert_eq!(*r, Reply::SearchResult(None)),
                (Command::Detach(_), r) => assert_eq!(*r, Reply::Ok),
                (c, Reply::Stop(_)) => assert!(c.resumes() || *c == Command::HaltReason, "{c:?}"),
                // Every other command the transcripts hold is one the stub serves.
                (c, r) => assert!(!matches!(r, Reply::Error(_)), "{name}: {c:?} -> {r:?}"),
            }
        }
        drop(stream);
        // The stub is free again for the next session.
        let t0 = std::time::Instant::now();
        while stub.client_attached() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{name}: stub still busy"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(replayed > 400, "{replayed}");
    drop(stub.shutdown());
}

/// The sessions real gdb 13 logged itself (`set remotelogfile`) against this stub
/// (serving part4, every resume stopped after 20 ticks), in gdb's format, the replay
/// format: replayed command by command against a fresh stub, every reply is the one
/// gdb got.
#[test]
fn sessions_gdb_logged_replay_against_the_stub_with_the_same_replies() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/tests/data/");
    let names = logs_in(dir, ".remotelog");
    assert!(!names.is_empty());
    for name in names {
        let log = parse_log(&std::fs::read(format!("{dir}{name}")).unwrap());
        assert!(log.len() > 100, "{name}");
        // As `tagsplit serve --stop-after-ticks 20` serves it.
        let scenario = Scenario::builtin("part4").unwrap();
        let machine = Machine::boot(&scenario).unwrap();
        let options = GdbStubOptions {
            stop_after_ticks: Some(20),
            default_run_ticks: Some(scenario.default_run_ticks()),
            ..GdbStubOptions::default()
        };
        let stub = GdbStub::spawn(machine, options).unwrap();
        let mut stream = connect(&stub);
        let mut session = ClientSession::default();
        let mut resumed = 0;
        for ex in &log {
            let cmd = Command::parse(&ex.command);
            let got = exchange(&mut stream, &mut session, &cmd);
            let want = Reply::parse(cmd.reply_kind(), ex.reply.as_deref().unwrap()).unwrap();
            // `monitor` is answered by the console in `tagsplit serve`, not here.
            if matches!(cmd, Command::Monitor(_)) {
                assert_eq!(got, Reply::Empty, "{name}");
                continue;
            }
            resumed += usize::from(cmd.resumes());
            assert_eq!(got, want, "{name}: {cmd:?}");
        }
        assert!(resumed > 0, "{name}: the session ran the target");
        drop(stream);
        drop(stub.shutdown());
    }
}
