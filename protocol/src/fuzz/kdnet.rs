//! The KDNET datagram generator: arbitrary payloads sealed under a key the caller gives.

use std::net::{Ipv4Addr, SocketAddr};

use arbitrary::{Result, Unstructured};

use super::number;
use crate::kd::{BREAKIN_PACKET_BYTE, Repr};
use crate::kdnet::{Channel, DEFAULT_VERSION, Keys, MAX_SEQ, Message, Poke, Response};

/// A sealed KDNET datagram and the message it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdnetDatagram {
    /// What was sealed.
    pub message: Message,
    /// The datagram, as it goes on the wire.
    pub bytes: Vec<u8>,
}

impl KdnetDatagram {
    /// An arbitrary datagram sealed under `keys`: [`Keys::open`] with the same keys gives
    /// [`message`](Self::message) back.
    ///
    /// With a data key installed, mostly the data channel: an arbitrary KD packet
    /// ([`Repr`], without the KDCOM trailer) or, one time in sixteen, the break-in byte.
    /// Otherwise (and one time in eight with one), the control channel: a poke or a
    /// response with arbitrary nonces and addresses. Sequence numbers are mostly small,
    /// sometimes any 56-bit value; the direction bit and the version byte (mostly 4) are
    /// arbitrary too.
    pub fn generate(u: &mut Unstructured<'_>, keys: &Keys) -> Result<KdnetDatagram> {
        let data = keys.data_key().is_some() && !u.ratio(1u8, 8)?;
        let payload = if data {
            if u.ratio(1u8, 16)? {
                vec![BREAKIN_PACKET_BYTE]
            } else {
                u.arbitrary::<Repr>()?.to_bytes()
            }
        } else if u.arbitrary()? {
            let addr = |u: &mut Unstructured<'_>| -> Result<SocketAddr> {
                Ok(SocketAddr::from((
                    Ipv4Addr::from(u.arbitrary::<u32>()?),
                    u.arbitrary::<u16>()?,
                )))
            };
            Poke::new(u.arbitrary()?, addr(u)?, addr(u)?, addr(u)?).to_bytes()
        } else {
            Response::new(u.arbitrary()?, u.arbitrary()?).to_bytes()
        };
        let seq = if u.ratio(7u8, 8)? {
            u64::from(u.arbitrary::<u16>()?)
        } else {
            number(u)? & MAX_SEQ
        };
        let version = if u.ratio(7u8, 8)? {
            DEFAULT_VERSION
        } else {
            u.arbitrary()?
        };
        let channel = if data {
            Channel::Data
        } else {
            Channel::Control
        };
        let message = Message::new(channel, version, seq, u.arbitrary()?, payload);
        // The payload is a KD packet of at most `PACKET_MAX_SIZE` bytes or a control
        // message, and the sequence number fits 56 bits: sealing cannot fail.
        let bytes = keys
            .seal(&message)
            .map_err(|_| arbitrary::Error::IncorrectFormat)?;
        Ok(KdnetDatagram { message, bytes })
    }
}
