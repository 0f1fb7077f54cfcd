//! The `KD_PACKET` header: a view over bytes ([`Packet`]) and a validated value ([`Repr`]).

use nom::Parser;
use nom::number::{le_u16, le_u32};

use super::{
    CONTROL_PACKET_LEADER, HEADER_LEN, KdError, PACKET_LEADER, PACKET_MAX_SIZE,
    PACKET_TRAILING_BYTE, le,
};

/// Byte ranges of the header fields.
pub mod field {
    use std::ops::{Range, RangeFrom};
    /// `PacketLeader` (u32).
    pub const LEADER: Range<usize> = 0..4;
    /// `PacketType` (u16).
    pub const TYPE: Range<usize> = 4..6;
    /// `ByteCount` (u16).
    pub const BYTE_COUNT: Range<usize> = 6..8;
    /// `PacketId` (u32).
    pub const ID: Range<usize> = 8..12;
    /// `Checksum` (u32).
    pub const CHECKSUM: Range<usize> = 12..16;
    /// The payload.
    pub const PAYLOAD: RangeFrom<usize> = 16..;
}

/// The 32-bit wrapping sum of every byte (the KD packet checksum).
pub fn checksum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
}

/// Which kind of packet a leader announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Leader {
    /// `"0000"`: a data packet (payload, checksum, `0xAA` trailer on KDCOM).
    Data,
    /// `"iiii"`: a control packet (header only).
    Control,
}

impl Leader {
    /// The leader as it appears in the header.
    pub fn value(self) -> u32 {
        match self {
            Leader::Data => PACKET_LEADER,
            Leader::Control => CONTROL_PACKET_LEADER,
        }
    }

    /// The leader for a header value, if it is one.
    pub fn from_value(v: u32) -> Option<Leader> {
        match v {
            PACKET_LEADER => Some(Leader::Data),
            CONTROL_PACKET_LEADER => Some(Leader::Control),
            _ => None,
        }
    }
}

macro_rules! packet_types {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $text:literal; )*) => {
        /// `PacketType`: what the payload is.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
        #[non_exhaustive]
        pub enum PacketType {
            $( $(#[$doc])* $name, )*
            /// A value outside the table, kept as is.
            Unknown(u16),
        }

        impl PacketType {
            /// The wire value.
            pub fn value(self) -> u16 {
                match self {
                    $( PacketType::$name => $val, )*
                    PacketType::Unknown(v) => v,
                }
            }

            /// The type for a wire value.
            pub fn from_value(v: u16) -> PacketType {
                match v {
                    $( $val => PacketType::$name, )*
                    other => PacketType::Unknown(other),
                }
            }

            /// The Windows name (`KD_ACKNOWLEDGE`).
            pub fn name(self) -> &'static str {
                match self {
                    $( PacketType::$name => $text, )*
                    PacketType::Unknown(_) => "UNKNOWN",
                }
            }
        }
    };
}

packet_types! {
    /// 0: unused (KDNET's first "hello" packet uses it).
    Unused = 0, "UNUSED";
    /// 1: 32-bit state change.
    StateChange32 = 1, "KD_STATE_CHANGE32";
    /// 2: `DBGKD_MANIPULATE_STATE64`.
    StateManipulate = 2, "KD_STATE_MANIPULATE";
    /// 3: `DBGKD_DEBUG_IO`.
    DebugIo = 3, "KD_DEBUG_IO";
    /// 4: acknowledge (control).
    Acknowledge = 4, "KD_ACKNOWLEDGE";
    /// 5: resend (control).
    Resend = 5, "KD_RESEND";
    /// 6: reset (control).
    Reset = 6, "KD_RESET";
    /// 7: `DBGKD_ANY_WAIT_STATE_CHANGE` (64-bit).
    StateChange64 = 7, "KD_STATE_CHANGE64";
    /// 8: poll break-in (local only, never on the wire).
    PollBreakin = 8, "KD_POLL_BREAKIN";
    /// 9: `DBGKD_TRACE_IO`.
    TraceIo = 9, "KD_TRACE_IO";
    /// 10: `DBGKD_CONTROL_REQUEST`.
    ControlRequest = 10, "KD_CONTROL_REQUEST";
    /// 11: `DBGKD_FILE_IO`.
    FileIo = 11, "KD_FILE_IO";
}

/// The header fields, parsed with nom so the same grammar serves streams
/// (`.parse()`, may return `Incomplete`) and framed packets (`.parse_complete()`).
pub(crate) fn header<'a, E: nom::error::ParseError<&'a [u8]>>()
-> impl Parser<&'a [u8], Output = (u32, u16, u16, u32, u32), Error = E> {
    (le_u32(), le_u16(), le_u16(), le_u32(), le_u32())
}

/// A read/write view of a KD packet in a buffer (header at offset 0).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the header and `ByteCount` payload bytes.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, KdError> {
        let packet = Packet { buffer };
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the buffer is long enough for the header and the payload it announces.
    pub fn check_len(&self) -> Result<(), KdError> {
        let have = self.buffer.as_ref().len();
        if have < HEADER_LEN {
            return Err(KdError::Truncated {
                need: HEADER_LEN,
                have,
            });
        }
        let need = HEADER_LEN + usize::from(self.byte_count());
        if have < need {
            return Err(KdError::Truncated { need, have });
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// `PacketLeader`.
    pub fn leader(&self) -> u32 {
        le::u32_at(self.buffer.as_ref(), field::LEADER.start)
    }

    /// `PacketType`.
    pub fn packet_type(&self) -> PacketType {
        PacketType::from_value(le::u16_at(self.buffer.as_ref(), field::TYPE.start))
    }

    /// `ByteCount`.
    pub fn byte_count(&self) -> u16 {
        le::u16_at(self.buffer.as_ref(), field::BYTE_COUNT.start)
    }

    /// `PacketId`.
    pub fn packet_id(&self) -> u32 {
        le::u32_at(self.buffer.as_ref(), field::ID.start)
    }

    /// `Checksum`.
    pub fn checksum(&self) -> u32 {
        le::u32_at(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The `ByteCount` payload bytes (shorter if the buffer is short).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.byte_count())).min(b.len());
        b.get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// Whether the checksum field equals the sum of the payload.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.payload()) == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets `PacketLeader`.
    pub fn set_leader(&mut self, v: u32) {
        le::put_u32(self.buffer.as_mut(), field::LEADER.start, v);
    }
    /// Sets `PacketType`.
    pub fn set_packet_type(&mut self, v: PacketType) {
        le::put_u16(self.buffer.as_mut(), field::TYPE.start, v.value());
    }
    /// Sets `ByteCount`.
    pub fn set_byte_count(&mut self, v: u16) {
        le::put_u16(self.buffer.as_mut(), field::BYTE_COUNT.start, v);
    }
    /// Sets `PacketId`.
    pub fn set_packet_id(&mut self, v: u32) {
        le::put_u32(self.buffer.as_mut(), field::ID.start, v);
    }
    /// Sets `Checksum`.
    pub fn set_checksum(&mut self, v: u32) {
        le::put_u32(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }
    /// The payload, mutable (as far as the buffer reaches).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let count = usize::from(self.byte_count());
        let b = self.buffer.as_mut();
        let end = (HEADER_LEN + count).min(b.len());
        b.get_mut(HEADER_LEN..end).unwrap_or(&mut [])
    }
    /// Recomputes the checksum field from the payload.
    pub fn fill_checksum(&mut self) {
        let sum = checksum(self.payload());
        self.set_checksum(sum);
    }
}

/// A validated KD packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Data or control.
    pub leader: Leader,
    /// `PacketType`.
    pub packet_type: PacketType,
    /// `PacketId`.
    pub id: u32,
    /// The payload (empty for control packets).
    pub payload: Vec<u8>,
}

impl Repr {
    /// A data packet.
    pub fn data(packet_type: PacketType, id: u32, payload: Vec<u8>) -> Repr {
        Repr {
            leader: Leader::Data,
            packet_type,
            id,
            payload,
        }
    }

    /// A control packet (ACK, RESEND, RESET).
    pub fn control(packet_type: PacketType, id: u32) -> Repr {
        Repr {
            leader: Leader::Control,
            packet_type,
            id,
            payload: Vec::new(),
        }
    }

    /// Parses a framed packet (header + payload, no trailer) and verifies the checksum.
    /// Bytes after the payload are ignored.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, KdError> {
        let bytes = packet.buffer.as_ref();
        let (_, (leader, ty, count, id, sum)) = header::<nom::error::Error<&[u8]>>()
            .parse_complete(bytes)
            .map_err(|_| KdError::Truncated {
                need: HEADER_LEN,
                have: bytes.len(),
            })?;
        let leader = Leader::from_value(leader).ok_or(KdError::BadLeader(leader))?;
        let count = usize::from(count);
        if count > PACKET_MAX_SIZE {
            return Err(KdError::TooLong(count));
        }
        packet.check_len()?;
        let payload = packet.payload();
        let actual = checksum(payload);
        if actual != sum {
            return Err(KdError::BadChecksum {
                expected: sum,
                actual,
            });
        }
        Ok(Repr {
            leader,
            packet_type: PacketType::from_value(ty),
            id,
            payload: payload.to_vec(),
        })
    }

    /// Parses a packet from a byte slice (header + payload, e.g. a KDNET datagram body).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Repr, KdError> {
        Repr::parse(&Packet::new_unchecked(bytes))
    }

    /// Header plus payload length (no trailer).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header and payload into `packet` (which must be [`buffer_len`](Self::buffer_len)
    /// bytes or longer). The checksum is computed.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_leader(self.leader.value());
        packet.set_packet_type(self.packet_type);
        packet.set_byte_count(u16::try_from(self.payload.len()).unwrap_or(u16::MAX));
        packet.set_packet_id(self.id);
        let dst = packet.payload_mut();
        let n = dst.len().min(self.payload.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), self.payload.get(..n)) {
            d.copy_from_slice(s);
        }
        packet.fill_checksum();
    }

    /// Header and payload, without a trailer (KDNET framing).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]));
        buf
    }

    /// The bytes as a KDCOM line carries them: data packets get the `0xAA` trailer.
    pub fn to_kdcom_bytes(&self) -> Vec<u8> {
        let mut buf = self.to_bytes();
        if self.leader == Leader::Data {
            buf.push(PACKET_TRAILING_BYTE);
        }
        buf
    }

    /// The payload checksum.
    pub fn checksum(&self) -> u32 {
        checksum(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_packet_bytes() {
        let ack = Repr::control(PacketType::Acknowledge, 0x8080_0000);
        assert_eq!(
            ack.to_kdcom_bytes(),
            [
                0x69, 0x69, 0x69, 0x69, 4, 0, 0, 0, 0, 0, 0x80, 0x80, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn data_packet_round_trip_and_checksum() {
        let p = Repr::data(PacketType::DebugIo, 0x8080_0001, vec![1, 2, 0xFF]);
        let bytes = p.to_kdcom_bytes();
        assert_eq!(bytes.last(), Some(&0xAA));
        assert_eq!(Packet::new_unchecked(&bytes[..]).checksum(), 0x102);
        assert_eq!(Repr::parse_bytes(&bytes).unwrap(), p);
        let mut bad = bytes.clone();
        bad[16] ^= 1;
        assert!(matches!(
            Repr::parse_bytes(&bad),
            Err(KdError::BadChecksum { .. })
        ));
    }

    #[test]
    fn rejects_oversized_and_truncated() {
        let mut h = [0u8; 16];
        let mut p = Packet::new_unchecked(&mut h[..]);
        p.set_leader(PACKET_LEADER);
        p.set_byte_count(4001);
        assert_eq!(Repr::parse_bytes(&h), Err(KdError::TooLong(4001)));
        assert!(matches!(
            Repr::parse_bytes(&h[..5]),
            Err(KdError::Truncated { .. })
        ));
    }
}
