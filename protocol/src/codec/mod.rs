//! `tokio_util::codec` adapters over the sans-IO state machines (feature `tokio`).
//!
//! The session codecs ([`gdb::GdbServerCodec`], [`gdb::GdbClientCodec`],
//! [`kd::KdSessionCodec`]) put a whole session behind `Framed`: acks, retransmission,
//! packet ids and resynchronisation happen inside, recoverable trouble is a decoded item
//! and never an `Err`. The framing codecs ([`gdb::GdbCodec`], [`kd::KdCodec`]) only cut
//! the stream into frames, for tools that do their own acknowledging.

use bytes::{BufMut, BytesMut};

#[cfg(feature = "gdb")]
pub mod gdb;
#[cfg(feature = "kd")]
pub mod kd;

/// The bytes a session queued by itself (acks, NAKs, retransmissions), held between a
/// decode (which cannot write) and the next encode (which writes them first).
#[derive(Clone, Debug, Default)]
struct Outbox {
    pending: Vec<u8>,
    /// A `Transmit` item was handed out and nothing was written since.
    announced: bool,
}

impl Outbox {
    /// Takes what `next` yields; true when a `Transmit` item should be handed out.
    fn stash(&mut self, mut next: impl FnMut() -> Option<Vec<u8>>) -> bool {
        while let Some(bytes) = next() {
            self.pending.extend_from_slice(&bytes);
        }
        let due = !self.pending.is_empty() && !self.announced;
        self.announced |= due;
        due
    }

    /// Writes the held bytes, then what `next` yields.
    fn write(&mut self, dst: &mut BytesMut, mut next: impl FnMut() -> Option<Vec<u8>>) {
        dst.put_slice(&self.pending);
        self.pending.clear();
        while let Some(bytes) = next() {
            dst.put_slice(&bytes);
        }
        self.announced = false;
    }
}
