//! Bytes into a ServerSession that answers every command; no panic, bounded output.

use tagsplit_protocol::gdb::{Command, Reply, ServerEvent, ServerSession, SessionConfig};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut session = ServerSession::new(SessionConfig {
        max_packet: 512,
        ..SessionConfig::default()
    });
    for chunk in data.chunks(7) {
        session.receive(chunk);
        while let Some(ev) = session.poll_event() {
            let ServerEvent::Command(packet) = ev else {
                continue;
            };
            let reply = match packet.command() {
                Command::StartNoAckMode => Reply::Ok,
                Command::ReadMemory { len, .. } => {
                    Reply::Hex(vec![0xcc; usize::try_from(len.min(64)).unwrap_or(0)])
                }
                Command::Malformed(_) => Reply::Error(0x16),
                _ => Reply::Empty,
            };
            session.send(&reply);
        }
        let out = session.poll_transmit().unwrap_or_default();
        assert!(out.len() <= 64 * 1024);
    }
}
