//! Stub bytes into a ClientSession waiting for replies of every kind; no panic.

use tagsplit_protocol::gdb::{ClientEvent, ClientSession, Command, Features, HexBytes, XferObject};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let commands = [
        Command::QSupported(Features::default()),
        Command::StartNoAckMode,
        Command::ReadMemory {
            addr: 0x1000,
            len: 16,
        },
        Command::ReadMemoryBinary {
            addr: 0x1000,
            len: 16,
        },
        Command::XferRead {
            object: XferObject::Libraries,
            annex: b"",
            offset: 0,
            length: 0x100,
        },
        Command::SearchMemory {
            addr: 0,
            len: 0x1000,
            pattern: b"Leak",
        },
        Command::Monitor(HexBytes::raw(b"lm")),
        Command::Continue(None),
        Command::ThreadInfoFirst,
        Command::Attached(None),
    ];
    let mut session = ClientSession::default();
    let mut next = commands.iter().cycle();
    for chunk in data.chunks(5) {
        if !session.awaiting_reply()
            && let Some(cmd) = next.next()
        {
            session.send(cmd);
        }
        session.receive(chunk);
        while let Some(ev) = session.poll_event() {
            if let ClientEvent::Output(text) = ev {
                assert!(text.len() <= data.len());
            }
        }
        let _ = session.poll_transmit();
    }
}
