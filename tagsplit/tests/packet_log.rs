#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! GDB session logs in gdb's own `set remotelogfile` format: real gdb 13 logs a session
//! with our stub while the stub logs it too, and the two logs hold the same bytes; the
//! `gdb://` client's log and the stub's log of one session agree; our reader pairs the
//! log gdb wrote into the commands and replies of the session.
//!
//! The real-gdb test is skipped with a notice when `gdb` is not on PATH, unless `CI=true`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tagsplit::VirtAddr;
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::{GdbOptions, GdbTarget, serve_scenario_logged};
use tagsplit::target::record::PacketLog;
use tagsplit_protocol::gdb::Command as Rsp;
use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
use tagsplit_protocol::gdb::transcript::{LoggedExchange, parse_log};
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};

/// Serves part4 on 127.0.0.1:0, logging every session to `log`.
fn logged_stub(log: &Path) -> GdbStubHandle {
    let file = std::fs::File::create(log).unwrap();
    serve_scenario_logged(
        &Scenario::builtin("part4").unwrap(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(20),
        StubFeatures::FULL,
        Some(Box::new(file)),
    )
    .unwrap()
}

/// Waits until the stub has seen the client go (it ends its log then).
fn wait_detached(stub: &GdbStubHandle) {
    let t0 = std::time::Instant::now();
    while stub.client_attached() {
        assert!(t0.elapsed() < Duration::from_secs(10), "client never left");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Per session: the bytes each way, concatenated (gdb's `c` lines and how records are
/// cut apart do not matter).
fn bytes_per_session(log: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut sessions = vec![(Vec::new(), Vec::new())];
    for r in parse_remote_log(log) {
        match r {
            LogRecord::Bytes {
                direction: LogDirection::Write,
                bytes,
            } => sessions.last_mut().unwrap().0.extend(bytes),
            LogRecord::Bytes {
                direction: LogDirection::Read,
                bytes,
            } => sessions.last_mut().unwrap().1.extend(bytes),
            LogRecord::End => sessions.push((Vec::new(), Vec::new())),
            _ => {}
        }
    }
    sessions.retain(|(w, r)| !w.is_empty() || !r.is_empty());
    sessions
}

/// The byte records of a log, consecutive ones of one direction merged.
fn byte_records(log: &[u8]) -> Vec<(LogDirection, Vec<u8>)> {
    let mut out: Vec<(LogDirection, Vec<u8>)> = Vec::new();
    for r in parse_remote_log(log) {
        if let LogRecord::Bytes { direction, bytes } = r {
            match out.last_mut() {
                Some((d, b)) if *d == direction => b.extend(bytes),
                _ => out.push((direction, bytes)),
            }
        }
    }
    out
}

/// One session of our `gdb://` client with a logging stub, the client logging too; `use_it`
/// drives the client. Returns the client's log and the stub's.
fn client_session(name: &str, use_it: impl FnOnce(&mut GdbTarget)) -> (Vec<u8>, Vec<u8>) {
    let dir = common::temp_dir(name);
    let (client_log, stub_log) = (dir.join("client.log"), dir.join("stub.log"));
    let stub = logged_stub(&stub_log);
    let log = PacketLog::create(&client_log, false).unwrap();
    let mut t =
        GdbTarget::connect_logged(&stub.addr().to_string(), GdbOptions::default(), Some(log))
            .unwrap();
    use_it(&mut t);
    drop(t);
    wait_detached(&stub);
    drop(stub.shutdown());
    (
        std::fs::read(&client_log).unwrap(),
        std::fs::read(&stub_log).unwrap(),
    )
}

fn find<'a>(ex: &'a [LoggedExchange], command: &[u8]) -> &'a LoggedExchange {
    ex.iter()
        .find(|e| e.command == command)
        .unwrap_or_else(|| panic!("no {:?} in the log", String::from_utf8_lossy(command)))
}

#[test]
fn real_gdb_and_our_stub_log_the_same_session_and_our_reader_pairs_it() {
    if !common::have_tool("gdb", "the remotelogfile test with real gdb") {
        return;
    }
    let dir = common::temp_dir("remotelog-gdb");
    let (gdb_log, stub_log) = (dir.join("gdb.log"), dir.join("stub.log"));
    let stub = logged_stub(&stub_log);
    let site = 0xfffff880_0496e3aa_u64;
    let out = common::finish(
        Command::new("gdb")
            .args(["--batch", "-nx", "-ex", "set pagination off"])
            .arg("-ex")
            .arg(format!("set remotelogfile {}", gdb_log.display()))
            .arg("-ex")
            .arg(format!("target remote {}", stub.addr()))
            .args(["-ex", &format!("x/4xb {site:#x}")])
            .args(["-ex", &format!("set {{char}}{:#x} = 0x31", site + 3)])
            .args(["-ex", "monitor dc fffff880`0496e3aa l1"])
            .args(["-ex", "detach"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert!(out.contains("0x4c\t0x65\t0x61\t0x6b"), "{out}");
    wait_detached(&stub);
    drop(stub.shutdown());
    let (by_gdb, by_stub) = (
        std::fs::read(&gdb_log).unwrap(),
        std::fs::read(&stub_log).unwrap(),
    );
    // gdb's file: an empty first line, `w`/`r` records, its commands as `c` lines, and
    // `End of log` last; ours the same, less the `c` lines it cannot know.
    assert!(
        by_gdb.starts_with(b"\nw +$qSupported:"),
        "{:?}",
        &by_gdb[..40]
    );
    assert!(by_gdb.ends_with(b"\nEnd of log\n"));
    assert!(by_stub.starts_with(b"\nw +$qSupported:"));
    assert!(by_stub.ends_with(b"\nEnd of log\n"));
    let text = String::from_utf8_lossy(&by_gdb);
    assert!(text.contains(&format!("\nc x/4xb {site:#x}\n")), "{text}");
    // Every byte each way is the same in both logs.
    let (gdb_sessions, stub_sessions) = (bytes_per_session(&by_gdb), bytes_per_session(&by_stub));
    assert_eq!(gdb_sessions.len(), 1);
    assert!(gdb_sessions == stub_sessions, "the logs differ");
    // Record for record, the same directions in the same order (gdb's `c` lines and any
    // `<Timeout: …>` of a slow read aside).
    assert_eq!(byte_records(&by_gdb), byte_records(&by_stub));
    // Our reader pairs gdb's log into the session's commands and replies.
    let ex = parse_log(&by_gdb);
    assert_eq!(ex, parse_log(&by_stub));
    assert!(ex.len() > 20, "{} exchanges", ex.len());
    assert!(find(&ex, b"QStartNoAckMode").reply.as_deref() == Some(b"OK"));
    let read = find(&ex, format!("m{site:x},1").as_bytes());
    assert_eq!(read.reply.as_deref(), Some(&b"4c"[..]));
    let write = ex
        .iter()
        .find(|e| matches!(Rsp::parse(&e.command), Rsp::WriteMemoryBinary { addr, data: [0x31] } if addr == site + 3))
        .expect("gdb's X write of the new tag byte");
    assert_eq!(write.reply.as_deref(), Some(&b"OK"[..]));
    let monitor = find(&ex, b"qRcmd,6463206666666666383830603034393665336161206c31");
    assert_eq!(monitor.reply.as_deref(), Some(&b"OK"[..]));
    assert_eq!(ex.last().unwrap().command, b"D");
    assert!(
        ex.iter().all(|e| e.reply.is_some()),
        "every command answered"
    );
}

#[test]
fn the_gdb_client_and_the_stub_log_one_session_alike() {
    let (ours, theirs) = client_session("remotelog-client", |t| {
        let mut tag = [0u8; 4];
        assert_eq!(
            t.read_memory(VirtAddr(0xfffff880_0496e3aa), &mut tag)
                .unwrap(),
            4
        );
        assert_eq!(&tag, b"Leak");
        let modules = t.modules().unwrap();
        assert!(modules.iter().any(|m| m.name == "myfault.sys"));
    });
    // The same bytes each way (the records may be cut apart differently: the client
    // pipelines reads, the stub reads them as they come).
    let sessions = bytes_per_session(&ours);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions, bytes_per_session(&theirs));
    assert_eq!(parse_log(&ours), parse_log(&theirs));
    let ex = parse_log(&ours);
    assert!(
        ex.iter()
            .any(|e| e.command.starts_with(b"qXfer:libraries:read"))
    );
    let read = ex
        .iter()
        .find(|e| {
            matches!(Rsp::parse(&e.command), Rsp::ReadMemoryBinary { addr, .. } | Rsp::ReadMemory { addr, .. } if addr <= 0xfffff880_0496e3aa && addr + 0x1000 > 0xfffff880_0496e3aa)
        })
        .expect("the read of the tag");
    assert!(read.reply.is_some());
    assert_eq!(ex.last().unwrap().command, b"D");
}

#[test]
fn a_break_in_is_logged_as_the_interrupt_byte_gdb_sends() {
    let (ours, theirs) = client_session("remotelog-interrupt", |t| {
        // Triggered before the run: the run resumes and breaks in at once (from the
        // interrupt's waker, on its own clone of the socket).
        let interrupt = tagsplit::target::Interrupt::new();
        interrupt.trigger();
        t.set_interrupt(Some(interrupt));
        assert!(matches!(
            t.run(tagsplit::target::RunFor::Ticks(1 << 40)),
            Err(tagsplit::target::TargetError::Interrupted)
        ));
        t.set_interrupt(None);
    });
    let text = String::from_utf8_lossy(&ours);
    // Right after the resume, before anything was read: in the same `w` record.
    assert!(text.contains("\nw $vCont;c#a8\\x03\nr $T02"), "{text}");
    assert_eq!(bytes_per_session(&ours), bytes_per_session(&theirs));
    // The resume is paired with the stop reply, the interrupt byte is no packet.
    let ex = parse_log(&ours);
    let resume = ex
        .iter()
        .find(|e| e.command.starts_with(b"vCont;c"))
        .expect("the resume");
    assert!(
        resume.reply.as_deref().is_some_and(|r| r.starts_with(b"T")),
        "{resume:?}"
    );
}
