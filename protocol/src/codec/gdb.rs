//! A `tokio_util::codec` adapter for GDB RSP.
//!
//! [`GdbCodec`] decodes a byte stream into framing [`Event`]s (packets, acks, interrupts,
//! and recoverable trouble as events) and encodes [`Frame`]s. Sessions with ack handling sit
//! on top: [`ServerSession`](crate::gdb::ServerSession) and
//! [`ClientSession`](crate::gdb::ClientSession) work on plain bytes and need no codec.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder as CodecDecoder, Encoder};

use crate::gdb::frame::{ACK, INTERRUPT, NAK, encode_notification_into, encode_packet_into};
use crate::gdb::{Command, Decoder, Event, Reply};

/// Something to put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A `$…#cs` packet with this (unescaped) payload.
    Packet(Vec<u8>),
    /// A `%…#cs` notification.
    Notification(Vec<u8>),
    /// `+`.
    Ack,
    /// `-`.
    Nak,
    /// The 0x03 interrupt byte.
    Interrupt,
}

impl From<&Reply> for Frame {
    fn from(reply: &Reply) -> Self {
        Frame::Packet(reply.encode())
    }
}

impl From<&Command<'_>> for Frame {
    fn from(cmd: &Command<'_>) -> Self {
        Frame::Packet(cmd.encode())
    }
}

/// RSP framing as a tokio codec.
#[derive(Clone, Debug, Default)]
pub struct GdbCodec {
    decoder: Decoder,
    run_length: bool,
}

impl GdbCodec {
    /// A codec that drops frames longer than `max_packet`; `run_length` selects `*`
    /// compression for outgoing packets (stubs use it, clients usually do not).
    pub fn new(max_packet: usize, run_length: bool) -> Self {
        Self {
            decoder: Decoder::new(max_packet),
            run_length,
        }
    }
}

impl CodecDecoder for GdbCodec {
    type Item = Event;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Self::Error> {
        let (used, event) = self.decoder.push(src);
        src.advance(used);
        Ok(event)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Self::Error> {
        match self.decode(src)? {
            Some(ev) => Ok(Some(ev)),
            None => Ok(self.decoder.finish()),
        }
    }
}

impl Encoder<Frame> for GdbCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let mut out = Vec::new();
        match frame {
            Frame::Packet(p) => encode_packet_into(&p, self.run_length, &mut out),
            Frame::Notification(p) => encode_notification_into(&p, &mut out),
            Frame::Ack => out.push(ACK),
            Frame::Nak => out.push(NAK),
            Frame::Interrupt => out.push(INTERRUPT),
        }
        dst.put_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_one_event_at_a_time_and_keeps_the_rest() {
        let mut codec = GdbCodec::default();
        let mut buf = BytesMut::from(&b"+$OK#9a$g#6"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Event::Ack));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Event::Packet(b"OK".to_vec()))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.put_slice(b"7");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Event::Packet(b"g".to_vec()))
        );
        buf.put_slice(b"$trunc");
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Event::Garbage { len: 6 })
        );
    }

    #[test]
    fn encodes_frames() {
        let mut codec = GdbCodec::new(0x4000, true);
        let mut buf = BytesMut::new();
        codec.encode(Frame::Ack, &mut buf).unwrap();
        codec.encode(Frame::from(&Reply::Ok), &mut buf).unwrap();
        codec.encode(Frame::Interrupt, &mut buf).unwrap();
        codec
            .encode(Frame::from(&Command::ReadRegisters), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"+$OK#9a\x03$g#67");
    }
}
