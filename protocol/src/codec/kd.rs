//! `tokio_util::codec` adapters for KD over a byte stream (KDCOM framing, as a VM's
//! serial port carries it).
//!
//! * [`KdSessionCodec`] puts a whole [`Session`] behind `Framed`: packet ids, ACKs,
//!   RESEND on a damaged packet, RESET, retransmission of our packet on RESEND. Damaged
//!   packets, noise and duplicates are [`SessionEvent`]s, never an `Err`. Like the GDB
//!   session codecs it yields [`KdItem::Transmit`] when the session has bytes of its own
//!   to write (an ACK, a RESEND, a retransmission): answer with [`KdSend::Pending`].
//!   Timers: the codec reads the monotonic clock; ask [`KdSessionCodec::poll_timeout`]
//!   how long to wait for an ACK and call [`KdSessionCodec::handle_timeout`] then.
//! * [`KdCodec`] is bare framing: every [`StreamEvent`] (packets, break-ins, noise, bad
//!   checksums) as an item, and a [`Repr`] written with the `0xAA` trailer.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::Outbox;
use crate::kd::{
    PacketType, Repr, Session, SessionConfig, SessionEvent, StreamDecoder, StreamEvent,
};

/// What [`KdSessionCodec`] decodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KdItem {
    /// A packet, an acknowledgement, a break-in, a reset, or recoverable trouble (a
    /// damaged packet, noise, a duplicate) the session has already answered.
    Event(SessionEvent),
    /// The session has bytes to write: send [`KdSend::Pending`] (or any other item).
    Transmit,
}

/// What [`KdSessionCodec`] encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KdSend {
    /// A data packet; it goes out once the previous one is acknowledged.
    Packet {
        /// Its type.
        packet_type: PacketType,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The break-in byte (debugger role).
    BreakIn,
    /// A RESET: ids back to their initial values (a debugger sends it on connect).
    Reset,
    /// Only the bytes the session queued itself.
    Pending,
}

/// One end of a KDCOM session as a codec.
#[derive(Debug)]
pub struct KdSessionCodec {
    session: Session,
    start: Instant,
    outbox: Outbox,
}

impl KdSessionCodec {
    /// A codec over a session with `config` (use [`SessionConfig::kdcom`]: the stream
    /// carries KDCOM framing).
    pub fn new(config: SessionConfig) -> KdSessionCodec {
        KdSessionCodec {
            session: Session::new(config),
            start: Instant::now(),
            outbox: Outbox::default(),
        }
    }

    /// The session (counters, idle state).
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// How long until the packet in flight is due to be sent again (zero if overdue),
    /// `None` when nothing waits for an ACK.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let now = self.now();
        self.session
            .poll_timeout()
            .map(|deadline| deadline.saturating_sub(now))
    }

    /// Re-sends (or gives up) the packet in flight if its time has come; send
    /// [`KdSend::Pending`] afterwards (any [`SessionEvent::SendFailed`] comes out of the
    /// decoder).
    pub fn handle_timeout(&mut self) {
        let now = self.now();
        self.session.handle_timeout(now);
    }
}

impl Decoder for KdSessionCodec {
    type Item = KdItem;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<KdItem>, std::io::Error> {
        if !src.is_empty() {
            let now = self.now();
            self.session.handle_bytes(now, src);
            src.advance(src.len());
        }
        if let Some(ev) = self.session.poll_event() {
            return Ok(Some(KdItem::Event(ev)));
        }
        let session = &mut self.session;
        let due = self.outbox.stash(|| session.poll_transmit());
        Ok(due.then_some(KdItem::Transmit))
    }
}

impl Encoder<KdSend> for KdSessionCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: KdSend, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let now = self.now();
        match item {
            KdSend::Packet {
                packet_type,
                payload,
            } => self.session.send(now, packet_type, payload),
            KdSend::BreakIn => self.session.send_break_in(),
            KdSend::Reset => self.session.reset(now),
            KdSend::Pending => {}
        }
        let session = &mut self.session;
        self.outbox.write(dst, || session.poll_transmit());
        Ok(())
    }
}

/// KDCOM framing as a codec.
#[derive(Debug, Default)]
pub struct KdCodec {
    inner: StreamDecoder,
}

impl KdCodec {
    /// A codec with an empty buffer.
    pub fn new() -> KdCodec {
        KdCodec::default()
    }
}

impl Decoder for KdCodec {
    type Item = StreamEvent;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StreamEvent>, std::io::Error> {
        if let Some(ev) = self.inner.next_event() {
            return Ok(Some(ev));
        }
        if !src.is_empty() {
            self.inner.push(src);
            let n = src.len();
            src.advance(n);
        }
        Ok(self.inner.next_event())
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<StreamEvent>, std::io::Error> {
        if let Some(ev) = self.decode(src)? {
            return Ok(Some(ev));
        }
        self.inner.finish();
        Ok(self.inner.next_event())
    }
}

impl Encoder<Repr> for KdCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Repr, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.put_slice(&item.to_kdcom_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kd::PacketType;

    #[test]
    fn codec_round_trip_in_pieces() {
        let mut codec = KdCodec::new();
        let mut wire = BytesMut::new();
        let a = Repr::data(PacketType::DebugIo, 0x8080_0800, b"x".to_vec());
        let b = Repr::control(PacketType::Acknowledge, 0x8080_0000);
        codec.encode(a.clone(), &mut wire).unwrap();
        codec.encode(b.clone(), &mut wire).unwrap();
        let mut rx = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            rx.put_u8(*byte);
            while let Some(ev) = codec.decode(&mut rx).unwrap() {
                got.push(ev);
            }
        }
        assert_eq!(got, vec![StreamEvent::Packet(a), StreamEvent::Packet(b)]);
    }
}
