//! The typed command parser: never panics, and what it recognises re-encodes to a packet
//! that parses to the same command.

use tagsplit_protocol::gdb::{Command, Reply, ReplyKind};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let cmd = Command::parse(data);
    if let Command::Unknown(raw) | Command::Malformed(raw) = cmd {
        assert_eq!(raw, data);
    } else {
        assert_eq!(Command::parse(&cmd.encode()), cmd);
    }
    for kind in [
        ReplyKind::Status,
        ReplyKind::Hex,
        ReplyKind::Binary,
        ReplyKind::Stop,
        ReplyKind::Xfer,
        ReplyKind::Supported,
        ReplyKind::Search,
        ReplyKind::ThreadInfo,
        ReplyKind::CurrentThread,
        ReplyKind::Attached,
        ReplyKind::Monitor,
        ReplyKind::VContSupported,
        ReplyKind::HostIo,
    ] {
        let _ = Reply::parse(kind, data);
    }
}
