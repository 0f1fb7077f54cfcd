//! The Windows kernel-debugger (KD) protocol: KDCOM framing and x64 payloads.
//!
//! * [`packet`] — the 16-byte `KD_PACKET` header as a view over bytes ([`Packet`]) and as a
//!   validated value ([`Repr`]), with the 32-bit byte-sum checksum.
//! * [`stream`] — a streaming KDCOM decoder that hunts for leaders, reports noise,
//!   break-in bytes and bad packets as events, and caps every length before buffering.
//! * [`payload`] — the x64 `DBGKD_*` payloads: manipulate state (every API number),
//!   `DBGKD_GET_VERSION64`, state changes, debug/file/trace I/O and control requests.
//! * [`session`] — the reliability layer (packet ids, ACK/RESEND/RESET, retries) for both
//!   roles, in the KDCOM and KDNET id schemes.
//! * [`stub`] — the target side of KD over any [`Target`](crate::stub::Target): the attach
//!   sequence, manipulate-state answers, run control and break-in, over KDCOM or KDNET.
//!
//! ```
//! use tagsplit_protocol::kd::{PacketType, Repr, StreamDecoder, StreamEvent};
//!
//! let repr = Repr::data(PacketType::DebugIo, 0x8080_0800, b"hi".to_vec());
//! let mut decoder = StreamDecoder::new();
//! decoder.push(&repr.to_kdcom_bytes());
//! assert_eq!(decoder.next_event(), Some(StreamEvent::Packet(repr)));
//! ```

pub mod context;
pub mod packet;
pub mod payload;
pub mod session;
pub mod stream;
pub mod stub;

pub use packet::{Leader, Packet, PacketType, Repr, checksum};
pub use payload::{
    ApiNumber, ContextEx, ControlRequest, DebugIo, Field, FileIo, GetVersion64, Manipulate,
    ManipulateApi, MemoryTransfer, Payload, ReadWriteIo64, ReadWriteMsr, StateChange,
    StateChangeKind, TraceIo,
};
pub use session::{
    IdScheme, MAX_STRAY_DUPLICATES, Role, Session, SessionConfig, SessionEvent, SessionStats,
};
pub use stream::{StreamDecoder, StreamEvent};

/// Leader of a data packet: `"0000"`.
pub const PACKET_LEADER: u32 = 0x3030_3030;
/// One byte of the data leader.
pub const PACKET_LEADER_BYTE: u8 = 0x30;
/// Leader of a control packet: `"iiii"`.
pub const CONTROL_PACKET_LEADER: u32 = 0x6969_6969;
/// One byte of the control leader.
pub const CONTROL_PACKET_LEADER_BYTE: u8 = 0x69;
/// The break-in constant (`"bbbb"`); a lone `0x62` byte on the wire asks the target to stop.
pub const BREAKIN_PACKET: u32 = 0x6262_6262;
/// The break-in byte the debugger sends.
pub const BREAKIN_PACKET_BYTE: u8 = 0x62;
/// The byte that ends every KDCOM data packet.
pub const PACKET_TRAILING_BYTE: u8 = 0xAA;
/// Largest payload (`ByteCount`) a receiver accepts.
pub const PACKET_MAX_SIZE: usize = 4000;
/// Length of the `KD_PACKET` header.
pub const HEADER_LEN: usize = 16;
/// Packet id of the first packet after initialisation (with [`SYNC_PACKET_ID`]).
pub const INITIAL_PACKET_ID: u32 = 0x8080_0000;
/// Bit set in the first packet id after initialisation or reset.
pub const SYNC_PACKET_ID: u32 = 0x0000_0800;
/// Largest memory transfer a target returns in one reply (`PACKET_MAX_SIZE - 56`).
pub const MAX_TRANSFER: usize = PACKET_MAX_SIZE - payload::MANIPULATE_LEN;

/// NTSTATUS values used on the wire (they live in [`crate::nt::status`]).
pub use crate::nt::status;

/// Errors from parsing KD packets and payloads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdError {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The first four bytes are not a packet leader.
    #[error("bad packet leader {0:#010x}")]
    BadLeader(u32),
    /// `ByteCount` is larger than [`PACKET_MAX_SIZE`].
    #[error("byte count {0} exceeds the packet limit")]
    TooLong(usize),
    /// The checksum field does not match the payload.
    #[error("bad checksum: header says {expected:#x}, payload sums to {actual:#x}")]
    BadChecksum {
        /// The checksum in the header.
        expected: u32,
        /// The sum of the payload bytes.
        actual: u32,
    },
    /// The byte after a data packet is not `0xAA`.
    #[error("bad trailer byte {0:#04x}")]
    BadTrailer(u8),
}

/// Little-endian field access on byte blocks: reads outside the slice give zero, writes
/// outside it are ignored (offsets are compile-time constants
/// inside the block, so a miss only happens on a programming error and yields zero).
pub mod le {
    /// Reads a `u16` at `off`.
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        b.get(off..off + 2)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u16::from_le_bytes)
    }
    /// Reads a `u32` at `off`.
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        b.get(off..off + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }
    /// Reads a `u64` at `off`.
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        b.get(off..off + 8)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
    /// Reads a byte at `off`.
    pub fn u8_at(b: &[u8], off: usize) -> u8 {
        b.get(off).copied().unwrap_or(0)
    }
    /// Writes bytes at `off` (ignored if out of range).
    pub fn put(b: &mut [u8], off: usize, v: &[u8]) {
        if let Some(dst) = b.get_mut(off..off + v.len()) {
            dst.copy_from_slice(v);
        }
    }
    /// Writes a `u16` at `off`.
    pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
        put(b, off, &v.to_le_bytes());
    }
    /// Writes a `u32` at `off`.
    pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
        put(b, off, &v.to_le_bytes());
    }
    /// Writes a `u64` at `off`.
    pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
        put(b, off, &v.to_le_bytes());
    }
}

/// Tagsplit's own extensions, not part of KD: exact-length runs, carried in standard
/// control-space requests so a real target simply refuses them (Windows answers
/// control-space selectors it does not know with `STATUS_UNSUCCESSFUL`). The [`stub`]
/// answers them only for a target with the optional
/// [`RunLimitOps`](crate::stub::RunLimitOps) capability.
pub mod ext {
    /// `WriteControlSpace` selector: 8 bytes, little-endian — the next Continue runs
    /// exactly this many ticks, then reports a breakpoint exception (like a break-in).
    pub const RUN_LIMIT_SELECTOR: u64 = 0x5453_0001;
    /// `ReadControlSpace` selector: 8 bytes — the run length the target suggests
    /// ([`RunLimitOps::default_run`](crate::stub::RunLimitOps::default_run)).
    pub const DEFAULT_RUN_SELECTOR: u64 = 0x5453_0002;
}
