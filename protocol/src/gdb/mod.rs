//! The GDB remote serial protocol (RSP), sans-IO.
//!
//! Layers, bottom up:
//!
//! * [`frame`] — `$payload#cs` framing with the checksum computed over the bytes received,
//!   `}` escapes, `*` run-length encoding (never with a `#` or `$` count), `+`/`-`, the
//!   0x03 interrupt byte and `%` notifications. [`Decoder`] is a streaming decoder that
//!   yields the same [`Event`]s however its input is chunked, and drops a frame longer than
//!   its maximum as it arrives instead of buffering it. Trouble (bad checksums, noise,
//!   oversize frames) is an event, never an error that ends the stream.
//! * [`Command`] and [`Reply`] — typed packets. Commands are parsed with nom from an
//!   already framed payload and borrow from it (a packet it does not know becomes
//!   [`Command::Unknown`], answered with the empty reply; a known one with malformed
//!   arguments [`Command::Malformed`], answered with an `E` reply); replies are parsed
//!   against the [`ReplyKind`] their command expects.
//! * [`stub`] — a complete stub over any [`Target`](crate::stub::Target): everything
//!   negotiated and encoded on the target side, answering only what the target supports.
//! * [`xml`] — the x86-64 target description (explicit registers, 536-byte `g`, no
//!   `<osabi>`), the library list and the memory map.
//! * [`ServerSession`] and [`ClientSession`] — ack/no-ack mode, retransmission on `-` with
//!   a resend limit, the switch to no-ack mode after `QStartNoAckMode`, interrupts, and
//!   traffic counters.
//!
//! # Driving a `ServerSession` by hand
//!
//! A stub is a loop: feed the bytes from the socket, answer each command, write what the
//! session wants to send. Here the "socket" is a byte string gdb 13.1 really sends.
//!
//! ```
//! use tagsplit_protocol::gdb::{
//!     Command, Feature, Reply, ServerEvent, ServerSession, StopReply, frame, xml,
//! };
//!
//! let mut stub = ServerSession::default();
//! let mut wire = Vec::new();
//! for payload in [&b"qSupported:swbreak+;xmlRegisters=i386"[..], b"QStartNoAckMode", b"?", b"m1000,4"] {
//!     wire.extend(frame::encode_packet(payload, false));
//! }
//! stub.receive(&wire);
//!
//! let memory = *b"Leak";
//! let mut sent = Vec::new();
//! while let Some(event) = stub.poll_event() {
//!     let ServerEvent::Command(packet) = event else { continue };
//!     // The command borrows from the packet: parsing it allocates nothing.
//!     let reply = match packet.command() {
//!         Command::QSupported(_) => Reply::Supported(vec![
//!             Feature::with_value("PacketSize", "4000"),
//!             Feature::supported("QStartNoAckMode"),
//!         ]),
//!         Command::StartNoAckMode => Reply::Ok,
//!         Command::HaltReason => Reply::Stop(StopReply::thread(5, 1, None)),
//!         Command::ReadMemory { addr: 0x1000, len: 4 } => Reply::Hex(memory.to_vec()),
//!         _ => Reply::Empty,
//!     };
//!     stub.send(&reply);
//!     sent.extend(stub.poll_transmit().unwrap_or_default());
//! }
//!
//! // Acks stop after the OK to QStartNoAckMode; the memory comes back as hex.
//! let mut decoder = frame::Decoder::default();
//! let events = decoder.decode(&sent);
//! assert_eq!(events.last(), Some(&frame::Event::Packet(b"4c65616b".to_vec())));
//! assert!(!stub.ack_mode());
//! assert_eq!(stub.stats().packets_received, 4);
//! assert!(xml::target_description_x86_64().contains("i386:x86-64"));
//! ```

pub mod command;
pub mod frame;
pub mod hex;
pub mod remotelog;
pub mod reply;
pub mod session;
pub mod stub;
pub mod transcript;
pub mod xml;

pub use command::{
    Breakpoint, BreakpointType, Command, Feature, FeatureValue, Features, HexBytes, HostIo,
    RUN_LIMIT_FEATURE, ResumeAction, ResumeActions, ResumeKind, ThreadId, ThreadOp, ThreadSel,
    XferObject,
};
pub use frame::{Decoder, Event};

/// gdb's CRC-32, the one `qCRC` answers and `compare-sections` checks (gdb's `xcrc32`):
/// CRC-32/MPEG-2 — polynomial `0x04c11db7`, initial value all ones, no reflection, no
/// final xor. Feed it in pieces with `CRC32.digest()`.
pub const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);

/// [`CRC32`] of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}
pub use reply::{
    Expedited, HostIoReply, Reply, ReplyError, ReplyKind, SIGINT, SIGTRAP, StopKind, StopReply,
    packet_text,
};
pub use session::{
    ClientEvent, ClientSession, CommandPacket, ServerEvent, ServerSession, SessionConfig,
    SessionStats,
};
