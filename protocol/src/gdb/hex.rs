//! Hex text helpers shared by commands and replies, and the mode-generic nom pieces.

use nom::bytes::take_while_m_n;
use nom::combinator::map;
use nom::error::Error;
use nom::{AsChar, Parser};

use super::frame::{hex_digit, hex_value};

/// Input of the packet grammars.
pub(crate) type In<'a> = &'a [u8];
/// Error of the packet grammars.
pub(crate) type PErr<'a> = Error<&'a [u8]>;

/// Appends `bytes` as lowercase hex to `out`.
pub fn encode_hex_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start.saturating_add(bytes.len().saturating_mul(2)), 0);
    if let Some(dst) = out.get_mut(start..) {
        hex_into(bytes, dst);
    }
}

/// Writes `bytes` as lowercase hex into `dst` (twice as long): SIMD by `faster-hex`,
/// digit by digit only if it refuses the buffer.
pub(crate) fn hex_into(bytes: &[u8], dst: &mut [u8]) {
    if faster_hex::hex_encode(bytes, dst).is_ok() {
        return;
    }
    for (pair, &b) in dst.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = hex_digit(b >> 4);
            *lo = hex_digit(b & 0xf);
        }
    }
}

/// Returns `bytes` as lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_hex_into(bytes, &mut out);
    out
}

/// Decodes hex text (an even number of digits); `None` if it is not hex.
pub fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| match pair {
            [h, l] => Some((hex_value(*h)? << 4) | hex_value(*l)?),
            _ => None,
        })
        .collect()
}

/// Decodes register-style hex where `xx` marks an unavailable byte (read as 0).
pub fn decode_register_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| match pair {
            [b'x', b'x'] => Some(0),
            [h, l] => Some((hex_value(*h)? << 4) | hex_value(*l)?),
            _ => None,
        })
        .collect()
}

/// Appends `value` in minimal lowercase hex (at least one digit).
pub fn push_hex_u64(value: u64, out: &mut Vec<u8>) {
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(hex_digit((value >> (i * 4)) as u8));
    }
}

/// Appends `value` as exactly two hex digits.
pub fn push_hex_u8(value: u8, out: &mut Vec<u8>) {
    out.push(hex_digit(value >> 4));
    out.push(hex_digit(value & 0xf));
}

/// Appends an op byte then `value` as two hex digits (`S05`, `W00`, `C02`).
pub fn push_op_hex_u8(op: u8, value: u8, out: &mut Vec<u8>) {
    out.push(op);
    push_hex_u8(value, out);
}

fn fold_hex(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &c| {
        (acc << 4) | u64::from(hex_value(c).unwrap_or(0))
    })
}

/// A hex number of 1 to 16 digits.
pub(crate) fn hex_u64<'a>() -> impl Parser<In<'a>, Output = u64, Error = PErr<'a>> {
    map(take_while_m_n(1, 16, |c: u8| c.is_hex_digit()), fold_hex)
}

/// A hex number of 1 to 8 digits.
pub(crate) fn hex_u32<'a>() -> impl Parser<In<'a>, Output = u32, Error = PErr<'a>> {
    map(take_while_m_n(1, 8, |c: u8| c.is_hex_digit()), |d| {
        fold_hex(d) as u32
    })
}

/// A hex number of 1 to 2 digits.
pub(crate) fn hex_u8<'a>() -> impl Parser<In<'a>, Output = u8, Error = PErr<'a>> {
    map(take_while_m_n(1, 2, |c: u8| c.is_hex_digit()), |d| {
        fold_hex(d) as u8
    })
}

/// Parses a whole slice as a hex number (1 to 16 digits).
pub fn parse_hex_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.iter().all(|c| c.is_hex_digit()) {
        return None;
    }
    Some(fold_hex(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(encode_hex(&[0x4c, 0x00, 0xff]), b"4c00ff");
        assert_eq!(decode_hex(b"4C00ff").unwrap(), vec![0x4c, 0, 0xff]);
        assert_eq!(decode_hex(b"4"), None);
        assert_eq!(decode_hex(b"zz"), None);
        assert_eq!(decode_register_hex(b"xx01").unwrap(), vec![0, 1]);
    }

    #[test]
    fn minimal_hex_numbers() {
        let mut out = Vec::new();
        push_hex_u64(0, &mut out);
        out.push(b',');
        push_hex_u64(0x1400_01010, &mut out);
        assert_eq!(out, b"0,140001010");
        assert_eq!(parse_hex_u64(b"140001010"), Some(0x1_4000_1010));
        assert_eq!(parse_hex_u64(b"11112222333344445"), None);
    }
}
