#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Replays the packet logs recorded from real gdb 13.1 (`shared/reference/gdb-transcripts`)
//! and the sessions real gdb 13 logged itself with `set remotelogfile` against our stub
//! (`tests/data/*.remotelog`, gdb's own format, the replay format) through the command
//! parser, the reply parser and a `ServerSession`/`ClientSession` pair.

use std::path::PathBuf;

use tagsplit_protocol::gdb::remotelog::{LogDirection, LogRecord, parse_remote_log};
use tagsplit_protocol::gdb::transcript::{LoggedExchange, parse_log};
use tagsplit_protocol::gdb::{
    ClientEvent, ClientSession, Command, HexBytes, Reply, ReplyKind, ServerEvent, ServerSession,
    frame,
};

fn transcript_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/gdb-transcripts/"
    ))
}

fn load(name: &str) -> Vec<LoggedExchange> {
    let raw = std::fs::read(transcript_dir().join(name)).unwrap();
    let exchanges = parse_log(&raw);
    let commands = raw.windows(4).filter(|w| w == b" <- ").count();
    assert_eq!(
        exchanges.len(),
        commands,
        "{name}: every command line is read (none truncated)"
    );
    exchanges
}

fn transcripts() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(transcript_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".server.log"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 12,
        "expected the 12 recorded transcripts, found {names:?}"
    );
    names
}

/// The sessions gdb logged in its own format (`set remotelogfile`): every command of each
/// was answered (they end with a detach).
fn remote_logs() -> Vec<(String, Vec<LoggedExchange>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".remotelog"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no gdb remote logs in {}", dir.display());
    names
        .into_iter()
        .map(|name| {
            let raw = std::fs::read(dir.join(&name)).unwrap();
            let exchanges = parse_log(&raw);
            // Every frame gdb sent starts with a `$` (one inside a packet is escaped).
            let frames_sent: usize = parse_remote_log(&raw)
                .iter()
                .map(|r| match r {
                    LogRecord::Bytes {
                        direction: LogDirection::Write,
                        bytes,
                    } => bytes.iter().filter(|&&b| b == b'$').count(),
                    _ => 0,
                })
                .sum();
            assert_eq!(
                exchanges.len(),
                frames_sent,
                "{name}: every command is read"
            );
            assert!(
                exchanges.len() > 100,
                "{name}: {} exchanges",
                exchanges.len()
            );
            assert!(
                exchanges.iter().all(|e| e.reply.is_some()),
                "{name}: a command without its reply"
            );
            assert_eq!(exchanges.last().map(|e| &e.command[..]), Some(&b"D"[..]));
            (name, exchanges)
        })
        .collect()
}

/// Every logged session, in both formats.
fn sessions() -> Vec<(String, Vec<LoggedExchange>)> {
    transcripts()
        .into_iter()
        .map(|name| {
            let ex = load(&name);
            (name, ex)
        })
        .chain(remote_logs())
        .collect()
}

/// Packets gdb sent that we deliberately do not model: test markers, `qOffsets` (the stub
/// answers it empty, so gdb relocates nothing: the modules are where they say) and
/// `qSymbol` (answered empty: the stub looks up no symbols in gdb).
fn expected_unknown(cmd: &[u8]) -> bool {
    cmd.starts_with(b"qMARK:") || cmd == b"qOffsets" || cmd.starts_with(b"qSymbol:")
}

#[test]
fn every_recorded_gdb_packet_parses_as_its_typed_command() {
    let mut typed = 0;
    for (name, exchanges) in sessions() {
        for ex in exchanges {
            let cmd = Command::parse(&ex.command);
            if expected_unknown(&ex.command) {
                assert_eq!(cmd, Command::Unknown(&ex.command), "{name}");
                continue;
            }
            assert!(
                !matches!(cmd, Command::Unknown(_) | Command::Malformed(_)),
                "{name}: {:?} parsed as {cmd:?}",
                String::from_utf8_lossy(&ex.command)
            );
            // gdb's own spelling comes back byte for byte.
            assert_eq!(cmd.encode(), ex.command, "{name}: re-encoding {cmd:?}");
            // Host I/O (gdb asking for files) is typed as such.
            assert_eq!(
                ex.command.starts_with(b"vFile:"),
                matches!(cmd, Command::HostIo(_)),
                "{name}: {cmd:?}"
            );
            typed += 1;
        }
    }
    assert!(typed > 400, "only {typed} typed packets");
}

#[test]
fn specific_recorded_packets_have_the_right_meaning() {
    let b = load("B-full.server.log");
    let cmds: Vec<Command> = b.iter().map(|e| Command::parse(&e.command)).collect();
    assert!(cmds.contains(&Command::SearchMemory {
        addr: 0x1_4000_1011,
        len: 0x2fef,
        pattern: b"Leak"
    }));
    assert!(cmds.contains(&Command::WriteMemoryBinary {
        addr: 0x1_4000_1010,
        data: &[0x31]
    }));
    assert!(cmds.contains(&Command::Monitor(HexBytes::raw(b"help"))));
    assert_eq!(cmds.last(), Some(&Command::Detach(None)));
    let f = load("F-no-x.server.log");
    assert!(f.iter().any(|e| Command::parse(&e.command)
        == Command::WriteMemory {
            addr: 0x1_4000_1010,
            data: HexBytes::raw(&[0x31])
        }));
}

#[test]
fn every_recorded_reply_parses_for_its_command() {
    let mut checked = 0;
    for (name, exchanges) in sessions() {
        for ex in exchanges {
            let Some(reply) = &ex.reply else { continue };
            let cmd = Command::parse(&ex.command);
            let typed = Reply::parse(cmd.reply_kind(), reply)
                .unwrap_or_else(|e| panic!("{name}: reply to {cmd:?}: {e}"));
            if matches!(
                cmd,
                Command::Unknown(_) | Command::TraceStatus | Command::MustReplyEmpty
            ) {
                assert_eq!(typed, Reply::Empty, "{name}: {cmd:?}");
            }
            // Our encoding of the parsed reply is what the logging stub sent.
            assert_eq!(typed.encode(), *reply, "{name}: {typed:?}");
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} replies");
}

/// Drives each transcript through a ClientSession (playing gdb) and a ServerSession (playing
/// the stub), with the stub answering what the log says, and checks both ends agree.
#[test]
fn transcripts_replay_through_both_sessions() {
    for (name, exchanges) in sessions() {
        let mut client = ClientSession::default();
        let mut server = ServerSession::default();
        for ex in &exchanges {
            let sent = Command::parse(&ex.command);
            client.send(&sent);
            let bytes = client.poll_transmit().unwrap();
            server.receive(&bytes);
            let packet = match server.poll_event() {
                Some(ServerEvent::Command(c)) => c,
                other => panic!("{name}: server saw {other:?}"),
            };
            let got = packet.command();
            assert_eq!(got, sent, "{name}");
            // Truncated logs keep the length: answer with that much data of the right kind.
            let reply = match (&ex.reply, ex.truncated_reply_len, got.reply_kind()) {
                (Some(r), _, kind) => Reply::parse(kind, r).unwrap(),
                (None, Some(n), ReplyKind::Hex) => Reply::Hex(vec![0x5a; n / 2]),
                (None, Some(n), ReplyKind::Xfer) => Reply::Xfer {
                    more: false,
                    data: vec![b'x'; n - 1],
                },
                (None, Some(_), kind) => panic!("{name}: unexpected truncated {kind:?} reply"),
                (None, None, _) => continue, // connection closed
            };
            server.send(&reply);
            let bytes = server.poll_transmit().unwrap();
            if !server.ack_mode() && got != Command::StartNoAckMode {
                assert_eq!(bytes.first(), Some(&b'$'), "{name}: no acks in no-ack mode");
            }
            // Every reply is a well-formed frame with a correct checksum.
            let mut d = frame::Decoder::default();
            assert!(
                d.decode(&bytes)
                    .iter()
                    .all(|e| matches!(e, frame::Event::Ack | frame::Event::Packet(_))),
                "{name}: malformed reply bytes {bytes:?}"
            );
            client.receive(&bytes);
            match client.poll_event() {
                Some(ClientEvent::Reply(r)) => assert_eq!(r, reply, "{name}: {got:?}"),
                Some(ClientEvent::Output(_)) if got.reply_kind() == ReplyKind::Monitor => {}
                other => panic!("{name}: client saw {other:?} for {got:?}"),
            }
            if let Some(acks) = client.poll_transmit() {
                server.receive(&acks);
            }
        }
        let uses_no_ack = exchanges.iter().any(|e| e.command == b"QStartNoAckMode");
        assert_eq!(!server.ack_mode(), uses_no_ack, "{name}");
        assert_eq!(server.stats().bad_checksums, 0);
        assert_eq!(client.stats().retransmissions, 0);
    }
}
