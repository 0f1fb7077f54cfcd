//! A `tokio_util::codec` adapter for KDCOM framing on a byte stream.
//!
//! Decoding yields every [`StreamEvent`] (packets, break-ins, noise, bad checksums):
//! recoverable trouble is an item, never an `Err` that ends the stream. Encoding writes
//! a [`Repr`] with the `0xAA` trailer on data packets.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::kd::{Repr, StreamDecoder, StreamEvent};

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
