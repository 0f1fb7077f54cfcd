//! KDNET: KD over UDP.
//!
//! A datagram is a clear 6-byte header (`"MDBG"`, version, channel), an AES-256-CBC body
//! and a clear 16-byte tag (the first half of an HMAC-SHA256 over header and plaintext,
//! keyed with the bitwise-inverted initial key). The tag is also the CBC IV. The
//! plaintext is an 8-byte prefix (56-bit big-endian sequence number, then the direction
//! bit `0x80` and the pad count) followed by the payload and zero padding to 16 bytes.
//!
//! The control channel (1) is encrypted with the initial key (from the key string);
//! the target pokes until the debugger answers, and both derive the data key as
//! SHA-256(initial key ‖ 322-byte response body). The data channel (0) carries one KD
//! packet per datagram without the `0xAA` trailer, or the break-in byte.
//!
//! ```
//! use tagsplit_protocol::kdnet::{Channel, Key, Keys, Message};
//!
//! let key: Key = "1.2.3.4".parse().unwrap();
//! let keys = Keys::new(key);
//! let msg = Message::new(Channel::Control, 4, 3, false, vec![1, 1, 0xAB]);
//! let datagram = keys.seal(&msg).unwrap();
//! assert_eq!(keys.open(&datagram).unwrap(), msg);
//! ```

pub mod control;
pub mod endpoint;

use std::fmt;
use std::str::FromStr;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use control::{ControlMessage, Poke, Response, derive_data_key};
pub use endpoint::{Endpoint, EndpointConfig, EndpointEvent, EndpointStats};

/// `"MDBG"`, the first four bytes of every KDNET datagram.
pub const MAGIC: [u8; 4] = *b"MDBG";
/// The magic read as a big-endian u32.
pub const MAGIC_U32: u32 = 0x4D44_4247;
/// Clear header length (magic, version, channel).
pub const HEADER_LEN: usize = 6;
/// Integrity tag length.
pub const TAG_LEN: usize = 16;
/// Plaintext prefix length (sequence number, direction and pad).
pub const PREFIX_LEN: usize = 8;
/// Direction bit in prefix byte 7: set on datagrams from the debugger.
pub const DIRECTION_DEBUGGER: u8 = 0x80;
/// The KDNET version Windows 10 1511 speaks (what our stub sends by default).
pub const DEFAULT_VERSION: u8 = 4;
/// Largest datagram we accept (a KD packet of `PACKET_MAX_SIZE` plus framing, rounded).
pub const MAX_DATAGRAM: usize = 4096 + HEADER_LEN + TAG_LEN + PREFIX_LEN + 16 + 16;
/// Largest payload [`Keys::seal`] accepts: the one that fills the largest whole number of
/// 16-byte blocks a [`MAX_DATAGRAM`]-byte datagram can carry.
pub const MAX_PAYLOAD: usize = (MAX_DATAGRAM - HEADER_LEN - TAG_LEN) / 16 * 16 - PREFIX_LEN;
/// Largest sequence number (the prefix carries 56 bits).
pub const MAX_SEQ: u64 = 0x00FF_FFFF_FFFF_FFFF;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// Errors from KDNET keys and datagrams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdnetError {
    /// The key string does not have four dot-separated parts.
    #[error("a kdnet key has four parts separated by dots, found {0}")]
    KeyParts(usize),
    /// A key part is empty, too long or not base-36.
    #[error("key part {0:?} is not a base-36 number of 1 to 13 digits")]
    KeyDigits(String),
    /// A key part does not fit 64 bits.
    #[error("key part {0:?} does not fit in 64 bits")]
    KeyOverflow(String),
    /// Not a KDNET datagram (magic missing).
    #[error("not a kdnet datagram")]
    BadMagic,
    /// The datagram is too short or its body is not a multiple of 16.
    #[error("bad datagram length {0}")]
    BadLength(usize),
    /// The integrity tag does not verify (wrong key or damaged datagram).
    #[error("integrity tag does not verify")]
    BadTag,
    /// The pad count in the prefix is larger than the body allows.
    #[error("bad pad count {0}")]
    BadPad(u8),
    /// The channel byte is neither data (0) nor control (1).
    #[error("unknown channel {0}")]
    BadChannel(u8),
    /// A data-channel datagram arrived before the data key is known.
    #[error("no data key yet")]
    NoDataKey,
    /// A payload is too large to send.
    #[error("payload of {0} bytes is too large")]
    TooLarge(usize),
    /// A sequence number does not fit the prefix's 56 bits.
    #[error("sequence number {0:#x} does not fit in 56 bits")]
    BadSequence(u64),
    /// A control message is malformed.
    #[error("malformed control message")]
    BadControl,
    /// A data datagram whose sequence number is not above the highest one accepted from
    /// the peer on this connection: a replay (or a duplicate).
    #[error("replayed data datagram: sequence {seq} is not above {highest}")]
    Replayed {
        /// The datagram's sequence number.
        seq: u64,
        /// The highest one accepted so far on this connection.
        highest: u64,
    },
    /// A datagram from an address other than the peer's.
    #[error("datagram from {from}, not from the peer {peer}")]
    WrongPeer {
        /// Where it came from.
        from: std::net::SocketAddr,
        /// The peer of this connection.
        peer: std::net::SocketAddr,
    },
    /// A datagram going the other way (marked as sent by our own side): reflected or
    /// forged.
    #[error("datagram of the other direction")]
    WrongDirection,
}

/// A 256-bit KDNET key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", hex(&self.0))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .chunks_exact(8)
            .map(|c| {
                let mut v = [0u8; 8];
                v.copy_from_slice(c);
                to_base36(u64::from_le_bytes(v))
            })
            .collect();
        f.write_str(&parts.join("."))
    }
}

fn to_base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        let d = usize::try_from(v % 36).unwrap_or(0);
        out.push(DIGITS.get(d).copied().unwrap_or(b'0'));
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

impl FromStr for Key {
    type Err = KdnetError;

    /// Parses `a.b.c.d`: four base-36 numbers, each written little-endian into 8 bytes.
    fn from_str(s: &str) -> Result<Key, KdnetError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts.len() != 4 {
            return Err(KdnetError::KeyParts(parts.len()));
        }
        let mut key = [0u8; 32];
        for (part, dst) in parts.iter().zip(key.chunks_exact_mut(8)) {
            if part.is_empty()
                || part.len() > 13
                || !part.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(KdnetError::KeyDigits((*part).to_string()));
            }
            let v = u64::from_str_radix(&part.to_ascii_lowercase(), 36)
                .map_err(|_| KdnetError::KeyOverflow((*part).to_string()))?;
            dst.copy_from_slice(&v.to_le_bytes());
        }
        Ok(Key(key))
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which channel a datagram travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Channel {
    /// 0: KD packets, encrypted with the data key.
    Data,
    /// 1: the handshake, encrypted with the initial key.
    Control,
}

impl Channel {
    /// The channel byte.
    pub fn value(self) -> u8 {
        match self {
            Channel::Data => 0,
            Channel::Control => 1,
        }
    }

    /// The channel for a byte.
    pub fn from_value(v: u8) -> Result<Channel, KdnetError> {
        match v {
            0 => Ok(Channel::Data),
            1 => Ok(Channel::Control),
            other => Err(KdnetError::BadChannel(other)),
        }
    }
}

/// Byte ranges of a datagram's clear parts.
pub mod field {
    use std::ops::Range;
    /// `"MDBG"`.
    pub const MAGIC: Range<usize> = 0..4;
    /// Version byte.
    pub const VERSION: usize = 4;
    /// Channel byte.
    pub const CHANNEL: usize = 5;
}

/// A view over a KDNET datagram.
#[derive(Debug, Clone)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps and checks magic and length (6 + 16n + 16, n ≥ 1).
    pub fn new_checked(buffer: T) -> Result<Datagram<T>, KdnetError> {
        let d = Datagram { buffer };
        let b = d.buffer.as_ref();
        if b.get(field::MAGIC) != Some(&MAGIC[..]) {
            return Err(KdnetError::BadMagic);
        }
        check_datagram_len(b.len())?;
        Ok(d)
    }

    /// Whether `bytes` starts with the KDNET magic.
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.get(field::MAGIC) == Some(&MAGIC[..])
    }

    /// The version byte.
    pub fn version(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::VERSION)
            .copied()
            .unwrap_or(0)
    }

    /// The channel byte.
    pub fn channel_byte(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::CHANNEL)
            .copied()
            .unwrap_or(0)
    }

    /// The clear header (6 bytes).
    pub fn header(&self) -> &[u8] {
        self.buffer.as_ref().get(..HEADER_LEN).unwrap_or(&[])
    }

    /// The encrypted body.
    pub fn body(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(HEADER_LEN..b.len().saturating_sub(TAG_LEN))
            .unwrap_or(&[])
    }

    /// The integrity tag (= CBC IV).
    pub fn tag(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(b.len().saturating_sub(TAG_LEN)..).unwrap_or(&[])
    }
}

/// The datagram-length rule both [`Keys::seal`] and [`Keys::open`] apply: header, tag
/// and a body of at least one 16-byte block, at most [`MAX_DATAGRAM`] in all.
fn check_datagram_len(len: usize) -> Result<(), KdnetError> {
    let body = len
        .checked_sub(HEADER_LEN + TAG_LEN)
        .filter(|&b| b >= 16 && b.is_multiple_of(16) && len <= MAX_DATAGRAM);
    match body {
        Some(_) => Ok(()),
        None => Err(KdnetError::BadLength(len)),
    }
}

/// The 8-byte plaintext prefix: 56-bit big-endian sequence number, then the direction
/// bit and the pad count. [`Keys::seal`] writes it and [`Keys::open`] reads it through
/// the same checks, so seal never emits a prefix open would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Prefix {
    seq: u64,
    from_debugger: bool,
    pad: u8,
}

impl Prefix {
    /// Checks the fields against a padded plaintext of `plain_len` bytes.
    fn validate(self, plain_len: usize) -> Result<Prefix, KdnetError> {
        if self.seq > MAX_SEQ {
            return Err(KdnetError::BadSequence(self.seq));
        }
        let fits = usize::from(self.pad) < 16
            && plain_len
                .checked_sub(usize::from(self.pad))
                .is_some_and(|end| end >= PREFIX_LEN);
        if !fits {
            return Err(KdnetError::BadPad(self.pad));
        }
        Ok(self)
    }

    /// Reads and checks the prefix at the start of a padded plaintext.
    fn parse(plain: &[u8]) -> Result<Prefix, KdnetError> {
        let mut seq = [0u8; 8];
        let head = plain
            .get(..PREFIX_LEN)
            .ok_or(KdnetError::BadLength(plain.len()))?;
        let (seq_bytes, flags) = head.split_at(7);
        if let Some(dst) = seq.get_mut(1..) {
            dst.copy_from_slice(seq_bytes);
        }
        let flags = flags.first().copied().unwrap_or(0);
        Prefix {
            seq: u64::from_be_bytes(seq),
            from_debugger: flags & DIRECTION_DEBUGGER != 0,
            pad: flags & !DIRECTION_DEBUGGER,
        }
        .validate(plain.len())
    }

    /// Checks the prefix and writes it.
    fn emit(self, plain_len: usize) -> Result<[u8; PREFIX_LEN], KdnetError> {
        let p = self.validate(plain_len)?;
        let mut out = [0u8; PREFIX_LEN];
        let seq = p.seq.to_be_bytes();
        if let (Some(dst), Some(src)) = (out.get_mut(..7), seq.get(1..)) {
            dst.copy_from_slice(src);
        }
        if let Some(flags) = out.get_mut(7) {
            *flags = p.pad
                | if p.from_debugger {
                    DIRECTION_DEBUGGER
                } else {
                    0
                };
        }
        Ok(out)
    }
}

/// A decrypted datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Channel.
    pub channel: Channel,
    /// Version byte.
    pub version: u8,
    /// Sequence number (56 bits).
    pub seq: u64,
    /// Direction bit: set on datagrams from the debugger.
    pub from_debugger: bool,
    /// The payload (padding removed).
    pub payload: Vec<u8>,
}

impl Message {
    /// A message.
    pub fn new(
        channel: Channel,
        version: u8,
        seq: u64,
        from_debugger: bool,
        payload: Vec<u8>,
    ) -> Message {
        Message {
            channel,
            version,
            seq,
            from_debugger,
            payload,
        }
    }

    /// The pad count this message gets (0..=15).
    pub fn pad(&self) -> usize {
        (16 - (PREFIX_LEN + self.payload.len()) % 16) % 16
    }

    /// The padded plaintext (prefix, payload, zeros), after the checks [`Keys::open`]
    /// applies: a sequence number of at most 56 bits and a datagram of at most
    /// [`MAX_DATAGRAM`] bytes.
    pub fn plaintext(&self) -> Result<Vec<u8>, KdnetError> {
        let mut p = Vec::with_capacity(PREFIX_LEN + self.payload.len() + self.pad());
        self.plaintext_into(&mut p)?;
        Ok(p)
    }

    /// Appends the plaintext ([`plaintext`](Self::plaintext)) to `out`.
    pub fn plaintext_into(&self, out: &mut Vec<u8>) -> Result<(), KdnetError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(KdnetError::TooLarge(self.payload.len()));
        }
        let pad = self.pad();
        let plain_len = PREFIX_LEN + self.payload.len() + pad;
        check_datagram_len(HEADER_LEN + plain_len + TAG_LEN)?;
        let prefix = Prefix {
            seq: self.seq,
            from_debugger: self.from_debugger,
            pad: u8::try_from(pad).map_err(|_| KdnetError::TooLarge(self.payload.len()))?,
        }
        .emit(plain_len)?;
        let start = out.len();
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&self.payload);
        out.resize(start + plain_len, 0);
        Ok(())
    }

    /// Datagram length once sealed.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + PREFIX_LEN + self.payload.len() + self.pad() + TAG_LEN
    }
}

/// The keys of a KDNET session.
#[derive(Clone)]
pub struct Keys {
    initial: [u8; 32],
    data: Option<[u8; 32]>,
    /// HMAC-SHA256 keyed with the complement of the initial key, and AES-256 under each
    /// key: key schedules done once, cloned per datagram.
    mac: HmacSha256,
    initial_aes: aes::Aes256,
    data_aes: Option<aes::Aes256>,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        // The MAC state follows from the initial key.
        self.initial == other.initial && self.data == other.data
    }
}

impl Eq for Keys {}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("data_key", &self.data.map(|k| hex(&k)))
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys for an initial key (no data key yet).
    pub fn new(key: Key) -> Keys {
        // HMAC pads a key shorter than its block with zeros: keying it with the 64-byte
        // padded form is the same MAC, and infallible.
        let mut hmac = [0u8; 64];
        for (h, k) in hmac.iter_mut().zip(key.0) {
            *h = !k;
        }
        Keys {
            initial: key.0,
            data: None,
            mac: <HmacSha256 as KeyInit>::new(&hmac.into()),
            initial_aes: <aes::Aes256 as KeyInit>::new(&key.0.into()),
            data_aes: None,
        }
    }

    /// The initial key bytes.
    pub fn initial(&self) -> &[u8; 32] {
        &self.initial
    }

    /// The data key, once derived.
    pub fn data_key(&self) -> Option<&[u8; 32]> {
        self.data.as_ref()
    }

    /// Installs the data key.
    pub fn set_data_key(&mut self, key: [u8; 32]) {
        self.data = Some(key);
        self.data_aes = Some(<aes::Aes256 as KeyInit>::new(&key.into()));
    }

    /// The AES-256 cipher (key schedule done) for `channel`, borrowed: callers clone it
    /// straight into the CBC mode, so the large key schedule is copied once.
    fn cipher_for(&self, channel: Channel) -> Result<&aes::Aes256, KdnetError> {
        match channel {
            Channel::Control => Ok(&self.initial_aes),
            Channel::Data => self.data_aes.as_ref().ok_or(KdnetError::NoDataKey),
        }
    }

    fn tag(&self, header: &[u8], plaintext: &[u8]) -> Result<[u8; 16], KdnetError> {
        let mut mac = self.mac.clone();
        mac.update(header);
        mac.update(plaintext);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(full.get(..16).ok_or(KdnetError::BadTag)?);
        Ok(tag)
    }

    /// Encrypts and authenticates a message into a datagram.
    ///
    /// It refuses exactly what [`open`](Self::open) would refuse from a peer with the
    /// same keys: no data key yet, a payload over [`MAX_PAYLOAD`], a sequence number
    /// over 56 bits ([`Message::plaintext`] shares open's checks).
    pub fn seal(&self, msg: &Message) -> Result<Vec<u8>, KdnetError> {
        let mut out = Vec::with_capacity(msg.buffer_len());
        self.seal_into(msg, &mut out)?;
        Ok(out)
    }

    /// Like [`seal`](Self::seal), but writes the datagram into `out` (cleared first), so a
    /// caller that sends many datagrams reuses one buffer and allocates nothing once it
    /// has grown. On an error `out` is left empty.
    pub fn seal_into(&self, msg: &Message, out: &mut Vec<u8>) -> Result<(), KdnetError> {
        out.clear();
        let result = self.seal_appending(msg, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn seal_appending(&self, msg: &Message, out: &mut Vec<u8>) -> Result<(), KdnetError> {
        let cipher = self.cipher_for(msg.channel)?;
        let header = [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            msg.version,
            msg.channel.value(),
        ];
        // Header, plaintext and tag in one buffer; the plaintext is encrypted in place.
        out.reserve(msg.buffer_len());
        out.extend_from_slice(&header);
        msg.plaintext_into(out)?;
        let body = out.get_mut(HEADER_LEN..).ok_or(KdnetError::BadTag)?;
        let tag = self.tag(&header, body)?;
        let len = body.len();
        Aes256CbcEnc::inner_iv_init(cipher.clone(), (&tag).into())
            .encrypt_padded_mut::<NoPadding>(body, len)
            .map_err(|_| KdnetError::BadLength(len))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts a datagram and verifies its tag (in constant time).
    pub fn open(&self, bytes: &[u8]) -> Result<Message, KdnetError> {
        let (mut msg, (start, end)) = self.open_in_place(bytes)?;
        // The payload is the plaintext between prefix and padding: cut it out of the
        // decrypted buffer rather than copying it.
        msg.payload.truncate(end);
        msg.payload.drain(..start);
        Ok(msg)
    }

    /// Like [`open`](Self::open), also returning the full padded plaintext.
    pub fn open_raw(&self, bytes: &[u8]) -> Result<(Message, Vec<u8>), KdnetError> {
        let (mut msg, (start, end)) = self.open_in_place(bytes)?;
        let payload = msg.payload.get(start..end).unwrap_or_default().to_vec();
        let plain = std::mem::replace(&mut msg.payload, payload);
        Ok((msg, plain))
    }

    /// Decrypts and verifies `bytes`: the message with the whole padded plaintext as its
    /// payload, and where the payload proper starts and ends in it.
    fn open_in_place(&self, bytes: &[u8]) -> Result<(Message, (usize, usize)), KdnetError> {
        let d = Datagram::new_checked(bytes)?;
        let channel = Channel::from_value(d.channel_byte())?;
        let cipher = self.cipher_for(channel)?;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(d.tag());
        let mut plain = d.body().to_vec();
        let len = plain.len();
        Aes256CbcDec::inner_iv_init(cipher.clone(), (&iv).into())
            .decrypt_padded_mut::<NoPadding>(&mut plain)
            .map_err(|_| KdnetError::BadLength(len))?;
        let tag = self.tag(d.header(), &plain)?;
        if !bool::from(tag.ct_eq(&iv)) {
            return Err(KdnetError::BadTag);
        }
        let prefix = Prefix::parse(&plain)?;
        let payload_end = len.saturating_sub(usize::from(prefix.pad));
        let msg = Message {
            channel,
            version: d.version(),
            seq: prefix.seq,
            from_debugger: prefix.from_debugger,
            payload: plain,
        };
        Ok((msg, (PREFIX_LEN.min(payload_end), payload_end)))
    }
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a careless peer could put on the wire: seal without any check (the sequence
    /// number is cut to 56 bits, the length is not limited).
    fn seal_unchecked(keys: &Keys, msg: &Message) -> Vec<u8> {
        let key = match msg.channel {
            Channel::Control => keys.initial,
            Channel::Data => keys.data.unwrap(),
        };
        let header = [b'M', b'D', b'B', b'G', msg.version, msg.channel.value()];
        let pad = msg.pad();
        let mut body = (msg.seq & MAX_SEQ).to_be_bytes()[1..].to_vec();
        body.push(u8::try_from(pad).unwrap() | if msg.from_debugger { 0x80 } else { 0 });
        body.extend_from_slice(&msg.payload);
        body.resize(body.len() + pad, 0);
        let tag = keys.tag(&header, &body).unwrap();
        let len = body.len();
        <Aes256CbcEnc as aes::cipher::KeyIvInit>::new(&key.into(), (&tag).into())
            .encrypt_padded_mut::<NoPadding>(&mut body, len)
            .unwrap();
        [&header[..], &body, &tag].concat()
    }

    fn any_message() -> impl Strategy<Value = Message> {
        (
            prop_oneof![Just(Channel::Data), Just(Channel::Control)],
            any::<u8>(),
            prop_oneof![0..=MAX_SEQ, MAX_SEQ - 2..=MAX_SEQ + 2, any::<u64>()],
            any::<bool>(),
            prop_oneof![0..64usize, MAX_PAYLOAD - 20..MAX_PAYLOAD + 40],
            any::<u8>(),
        )
            .prop_map(|(channel, version, seq, dir, len, fill)| {
                Message::new(channel, version, seq, dir, vec![fill; len])
            })
    }

    proptest! {
        /// Seal refuses exactly what open would refuse: whatever seal accepts opens to the
        /// same message; whatever seal refuses is a typed error, and the same message sealed
        /// without checks does not open to it.
        #[test]
        fn seal_refuses_exactly_what_open_refuses(msg in any_message(), data_key in any::<bool>()) {
            let mut keys = Keys::new("1.2.3.4".parse().unwrap());
            if data_key {
                keys.set_data_key([0x42; 32]);
            }
            match keys.seal(&msg) {
                Ok(d) => {
                    prop_assert_eq!(d.len(), msg.buffer_len());
                    prop_assert_eq!(keys.open(&d), Ok(msg));
                }
                Err(KdnetError::NoDataKey) => {
                    prop_assert!(!data_key && msg.channel == Channel::Data);
                }
                Err(e) => {
                    prop_assert!(
                        matches!(e, KdnetError::TooLarge(_) | KdnetError::BadSequence(_)),
                        "unexpected error {:?}", e
                    );
                    let raw = seal_unchecked(&keys, &msg);
                    prop_assert_ne!(keys.open(&raw), Ok(msg));
                }
            }
        }
    }

    #[test]
    fn seal_limits_are_open_limits() {
        let keys = Keys::new("1.2.3.4".parse().unwrap());
        let big = Message::new(Channel::Control, 4, 1, false, vec![0; MAX_PAYLOAD]);
        let max_len = HEADER_LEN + PREFIX_LEN + MAX_PAYLOAD + TAG_LEN;
        assert!(max_len <= MAX_DATAGRAM && max_len + 16 > MAX_DATAGRAM);
        assert_eq!(keys.seal(&big).unwrap().len(), max_len);
        let bigger = Message::new(Channel::Control, 4, 1, false, vec![0; MAX_PAYLOAD + 1]);
        assert_eq!(
            keys.seal(&bigger),
            Err(KdnetError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            keys.open(&seal_unchecked(&keys, &bigger)),
            Err(KdnetError::BadLength(max_len + 16))
        );
        let wide = Message::new(Channel::Control, 4, MAX_SEQ + 1, false, vec![1]);
        assert_eq!(keys.seal(&wide), Err(KdnetError::BadSequence(MAX_SEQ + 1)));
        assert_eq!(keys.open(&seal_unchecked(&keys, &wide)).unwrap().seq, 0);
    }

    #[test]
    fn seal_into_reuses_its_buffer_and_is_empty_after_a_refusal() {
        let keys = Keys::new("1.2.3.4".parse().unwrap());
        let mut out = vec![0xee; 3];
        for len in [0, 1, 37, 500] {
            let msg = Message::new(Channel::Control, 4, len as u64, true, vec![7; len]);
            keys.seal_into(&msg, &mut out).unwrap();
            assert_eq!(out, keys.seal(&msg).unwrap());
            assert_eq!(keys.open(&out).unwrap(), msg);
        }
        let wide = Message::new(Channel::Control, 4, MAX_SEQ + 1, false, vec![1]);
        assert_eq!(
            keys.seal_into(&wide, &mut out),
            Err(KdnetError::BadSequence(MAX_SEQ + 1))
        );
        assert!(out.is_empty());
        let data = Message::new(Channel::Data, 4, 1, false, vec![1]);
        assert_eq!(keys.seal_into(&data, &mut out), Err(KdnetError::NoDataKey));
        assert!(out.is_empty());
    }

    fn key_hex(s: &str) -> String {
        hex(&s.parse::<Key>().unwrap().0)
    }

    #[test]
    fn key_vectors_from_reference() {
        assert_eq!(
            key_hex("17890.af3489a.9345kjm.lio147"),
            "84c61e0000000000ce21d6470500000042f7f19a04000000a7e18d4d00000000"
        );
        assert_eq!(
            key_hex("1m770ts6ru0p.3671pemyie4i.2b8djy3wt5et.1p99ir125v4q"),
            "b9569fcc7cf9f30202b242b33852cb05a5ac940b08223904da42f63667b01b03"
        );
        assert_eq!(
            key_hex("8.8.8.8"),
            "0800000000000000080000000000000008000000000000000800000000000000"
        );
        let k: Key = "17890.af3489a.9345kjm.lio147".parse().unwrap();
        assert_eq!(k.to_string(), "17890.af3489a.9345kjm.lio147");
    }

    #[test]
    fn bad_keys() {
        assert_eq!("1.2.3".parse::<Key>(), Err(KdnetError::KeyParts(3)));
        assert!(matches!(
            "1..2.3".parse::<Key>(),
            Err(KdnetError::KeyDigits(_))
        ));
        assert!(matches!(
            "1.2.3.+4".parse::<Key>(),
            Err(KdnetError::KeyDigits(_))
        ));
        assert!(matches!(
            "1.2.3.4-".parse::<Key>(),
            Err(KdnetError::KeyDigits(_))
        ));
        assert!(matches!(
            "1.2.3.zzzzzzzzzzzzz".parse::<Key>(),
            Err(KdnetError::KeyOverflow(_))
        ));
        assert!("1.2.3.3w5e11264sgsf".parse::<Key>().is_ok());
        assert!(matches!(
            "1.2.3.3w5e11264sgsg".parse::<Key>(),
            Err(KdnetError::KeyOverflow(_))
        ));
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let mut keys = Keys::new("1.2.3.4".parse().unwrap());
        keys.set_data_key([7u8; 32]);
        for len in [0usize, 1, 7, 8, 9, 24, 100] {
            let msg = Message::new(Channel::Data, 4, 42, len % 2 == 0, vec![0x5A; len]);
            let d = keys.seal(&msg).unwrap();
            assert_eq!(d.len(), msg.buffer_len());
            assert_eq!((d.len() - 22) % 16, 0);
            assert_eq!(keys.open(&d).unwrap(), msg);
            for i in [0usize, 5, 6, d.len() - 1] {
                let mut bad = d.clone();
                bad[i] ^= 0x01;
                assert!(keys.open(&bad).is_err(), "tampered byte {i} accepted");
            }
        }
        let other = Keys::new("1.2.3.5".parse().unwrap());
        let d = keys
            .seal(&Message::new(Channel::Control, 4, 1, false, vec![1, 1]))
            .unwrap();
        assert_eq!(other.open(&d), Err(KdnetError::BadTag));
        assert_eq!(
            Keys::new("1.2.3.4".parse().unwrap()).open(
                &keys
                    .seal(&Message::new(Channel::Data, 4, 1, false, vec![]))
                    .unwrap()
            ),
            Err(KdnetError::NoDataKey)
        );
    }
}
