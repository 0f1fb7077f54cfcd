//! A mutator for real packets: it takes one packet as it crossed the wire (a GDB frame, a
//! KD packet, a KDNET datagram with its key) and perturbs one field that matters, chosen
//! by the [`Unstructured`] it is given (the same bytes choose the same mutation).
//!
//! Each result says which [`Field`] changed and whether the packet still frames: whether
//! our own decoder (the GDB [`Decoder`](crate::gdb::Decoder), the KDCOM
//! [`StreamDecoder`](crate::kd::StreamDecoder), [`Keys::open`](crate::kdnet::Keys::open))
//! still delivers it as one packet. Mutations meant to frame re-encode the packet with a
//! good checksum (and, for KDNET, seal it again under the key), so the hostile content
//! reaches the parser behind the framing; the others (a wrong checksum, a dangling escape,
//! a byte count that disagrees) test the framing itself.
//!
//! | field | GDB frame | KD packet | KDNET datagram |
//! |---|---|---|---|
//! | [`Field::Number`] | one number of the payload (an address, a length, a count, an offset, a register, a thread id, a descriptor: any run of hex digits between separators) becomes an edge value, its neighbour, or a run of up to 40 digits that overflows; frames | one declared field of the payload (`count`, `address`, `actual`, `pattern_length`, `byte_count`, `path_name_length`, …, by the structure's field table) becomes an edge value or its neighbour; checksum fixed; frames | (the inner KD packet, resealed) |
//! | [`Field::Length`] | the data after the last separator cut short or repeated (a length that disagrees with the data it counts); frames | the payload cut short or grown, `ByteCount` and checksum made to agree; frames while within `PACKET_MAX_SIZE` | the datagram cut to a length that is not header + 16 n + tag; does not open |
//! | [`Field::ByteCount`] | — | `ByteCount` disagrees with the bytes; does not frame | — |
//! | [`Field::Escape`] | a byte that needs no escape written escaped (frames, same payload), or a dangling `}` before `#` (does not) | — | — |
//! | [`Field::RunLength`] | the frame run-length encoded (frames, same payload), a run of an edge count (3, 5, 8, 97 copies) inserted (frames), a run with nothing to repeat or a count below the bias or equal to `#` (does not) | — | — |
//! | [`Field::Xml`] | for a payload carrying XML (a `qXfer` document): an element repeated, deep unclosed nesting, a huge attribute, an entity declaration and references, the document cut; frames | — | — |
//! | [`Field::Checksum`] | the checksum wrong or not hex (does not frame), or in upper case (frames) | the checksum wrong; does not frame | — |
//! | [`Field::Sequence`] | — | `PacketId`: the sync bit flipped, one off, zero, the other side's scheme; frames | the sequence number replayed, one back, zero, the largest; resealed, opens |
//! | [`Field::PacketType`] | — | `PacketType` another type or unknown; checksum fixed; frames | — |
//! | [`Field::Trailer`] | — | the `0xAA` after a data packet (KDCOM) replaced; does not frame | — |
//! | [`Field::Direction`] | — | — | the direction bit flipped; resealed, opens |
//! | [`Field::Version`] | — | — | the version byte changed; resealed, opens |
//! | [`Field::Tag`] | — | — | a byte of the tag, the body or the channel flipped (not resealed); does not open |
//!
//! A mutated packet is at most [`MAX_GROWTH`] bytes longer than its input (plus the
//! re-encoding of a GDB frame, at most twice its payload).

use arbitrary::{Result, Unstructured};

use super::INTERESTING;

/// Most bytes a mutation adds to a packet.
pub const MAX_GROWTH: usize = 4096;

/// The field a mutation changed (see the [module docs](self) for what each does to
/// each protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// A number: an address, length, count, offset or id. For KD, the name its
    /// structure's field table gives it (`count`, `address`, `pattern_length`, …); for
    /// GDB, whose numbers are found by position, `"number"`.
    Number(&'static str),
    /// The length of the data.
    Length,
    /// The KD `ByteCount`, disagreeing with the bytes.
    ByteCount,
    /// A GDB escape.
    Escape,
    /// A GDB run length.
    RunLength,
    /// An XML document.
    Xml,
    /// The checksum.
    Checksum,
    /// A packet id or sequence number.
    Sequence,
    /// The KD packet type.
    PacketType,
    /// The KDCOM trailer byte.
    Trailer,
    /// The KDNET direction bit.
    Direction,
    /// The KDNET version byte.
    Version,
    /// The KDNET tag, body or channel (the datagram no longer authenticates).
    Tag,
}

/// One mutated packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// The packet's new bytes.
    pub bytes: Vec<u8>,
    /// What changed.
    pub field: Field,
    /// Whether our own decoder still delivers it as one packet (see the
    /// [module docs](self)).
    pub frames: bool,
}

/// An edge value for a number that was `old`: one of [`INTERESTING`], or a neighbour.
#[cfg_attr(not(any(feature = "gdb", feature = "kd")), allow(dead_code))]
fn edge(u: &mut Unstructured<'_>, old: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        _ => *u.choose(INTERESTING)?,
    })
}

#[cfg(feature = "gdb")]
pub use self::gdb::gdb_frame;
#[cfg(feature = "kd")]
pub use self::kd::kd_packet;
#[cfg(feature = "kdnet")]
pub use self::kdnet::kdnet_datagram;

#[cfg(feature = "gdb")]
mod gdb {
    use arbitrary::{Result, Unstructured};

    use super::{Field, MAX_GROWTH, Mutation, edge};
    use crate::gdb::frame::{self, Decoder, Event};
    use crate::gdb::hex::parse_hex_u64;

    /// Bytes that end a number in a payload.
    fn separator(c: u8) -> bool {
        matches!(c, b',' | b':' | b';' | b'=' | b'.' | b'#')
    }

    /// The runs of hex digits of `payload` that stand between separators (or follow the
    /// packet's first letter): its numbers.
    fn numbers(payload: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < payload.len() {
            let start = i;
            while payload.get(i).is_some_and(u8::is_ascii_hexdigit) {
                i += 1;
            }
            if i > start {
                let before_ok = start <= 1
                    || payload
                        .get(start.wrapping_sub(1))
                        .is_some_and(|&c| separator(c));
                let after_ok = payload.get(i).is_none_or(|&c| separator(c));
                if before_ok && after_ok {
                    out.push((start, i));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// The payload of `packet` (a whole `$…#cs` frame), or `packet` itself when it is
    /// not one frame (then it is taken as a payload).
    fn payload_of(packet: &[u8]) -> Vec<u8> {
        let mut decoder = Decoder::new(packet.len().max(frame::DEFAULT_MAX_PACKET));
        match decoder.decode(packet).as_slice() {
            [Event::Packet(p)] | [Event::Notification(p)] => p.clone(),
            _ => packet.to_vec(),
        }
    }

    /// A frame around `body` (already escaped) with its checksum.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 4);
        out.push(frame::PACKET_START);
        out.extend_from_slice(body);
        out.push(frame::PAYLOAD_END);
        out.extend_from_slice(format!("{:02x}", frame::checksum(body)).as_bytes());
        out
    }

    fn escaped(payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(payload.len() + 8);
        frame::escape_into(payload, &mut body);
        body
    }

    /// Mutates one field of a GDB packet: `packet` is one whole `$payload#cs` frame (or,
    /// when it is not, a payload to frame). See the [module docs](super) for each field.
    pub fn gdb_frame(packet: &[u8], u: &mut Unstructured<'_>) -> Result<Mutation> {
        let mut payload = payload_of(packet);
        let has_xml = payload.contains(&b'<');
        let choice = u.int_in_range(0u8..=if has_xml { 6 } else { 5 })?;
        let (field, frames, body) = match choice {
            0 | 1 => {
                let spots = numbers(&payload);
                if spots.is_empty() {
                    return length(payload, u);
                }
                let &(start, end) = u.choose(&spots)?;
                let old = payload.get(start..end).and_then(parse_hex_u64).unwrap_or(0);
                let new = match u.int_in_range(0u8..=4)? {
                    0 => {
                        let mut long = vec![b'0'; u.int_in_range(16..=39)?];
                        long.push(b'1');
                        long
                    }
                    1 => Vec::new(),
                    _ => format!("{:x}", edge(u, old)?).into_bytes(),
                };
                payload.splice(start..end, new);
                (Field::Number("number"), true, escaped(&payload))
            }
            2 => return length(payload, u),
            3 => {
                let plain: Vec<usize> = (0..payload.len())
                    .filter(|&i| payload.get(i).is_some_and(|&b| !frame::needs_escape(b)))
                    .collect();
                if u.arbitrary()? || plain.is_empty() {
                    let mut body = escaped(&payload);
                    body.push(frame::ESCAPE);
                    (Field::Escape, false, body)
                } else {
                    // A byte that needs no escape, escaped: the same payload, unless the
                    // escaped form is a frame delimiter (`#`, `$`) on the wire.
                    let at = *u.choose(&plain)?;
                    let (head, tail) = payload.split_at(at);
                    let (b, tail) = tail.split_first().unwrap_or((&0, &[]));
                    let wire = b ^ frame::ESCAPE_XOR;
                    let mut body = escaped(head);
                    body.extend([frame::ESCAPE, wire]);
                    body.extend(escaped(tail));
                    (Field::Escape, !matches!(wire, b'#' | b'$'), body)
                }
            }
            4 => {
                let mut body = Vec::new();
                match u.int_in_range(0u8..=3)? {
                    0 => {
                        frame::escape_rle_into(&payload, &mut body);
                        (Field::RunLength, true, body)
                    }
                    1 => {
                        // A run of an edge count after a plain byte.
                        let plain: Vec<usize> = (0..payload.len())
                            .filter(|&i| payload.get(i).is_some_and(|&b| !frame::needs_escape(b)))
                            .collect();
                        let count = *u.choose(b" \"%~")?;
                        match plain.as_slice() {
                            [] => {
                                body.extend([frame::RUN_LENGTH, count]);
                                body.extend(escaped(&payload));
                                (Field::RunLength, false, body)
                            }
                            spots => {
                                let at = *u.choose(spots)?;
                                let (head, tail) = payload.split_at(at + 1);
                                body.extend(escaped(head));
                                body.extend([frame::RUN_LENGTH, count]);
                                body.extend(escaped(tail));
                                (Field::RunLength, true, body)
                            }
                        }
                    }
                    2 => {
                        // Nothing to repeat.
                        body.extend([frame::RUN_LENGTH, b'"']);
                        body.extend(escaped(&payload));
                        (Field::RunLength, false, body)
                    }
                    _ => {
                        body.extend(escaped(&payload));
                        body.extend([b'x', frame::RUN_LENGTH, *u.choose(&[0x10, 0x1c, b'#'])?]);
                        (Field::RunLength, false, body)
                    }
                }
            }
            5 => {
                let body = escaped(&payload);
                let mut out = framed(&body);
                let n = out.len();
                let frames = match u.int_in_range(0u8..=2)? {
                    0 => {
                        let wrong = frame::checksum(&body).wrapping_add(u.int_in_range(1..=255)?);
                        out.truncate(n - 2);
                        out.extend_from_slice(format!("{wrong:02x}").as_bytes());
                        false
                    }
                    1 => {
                        if let Some(d) = out.get_mut(n - 1) {
                            *d = b'g';
                        }
                        false
                    }
                    _ => {
                        if let Some(tail) = out.get_mut(n - 2..) {
                            tail.make_ascii_uppercase();
                        }
                        true
                    }
                };
                return Ok(Mutation {
                    bytes: out,
                    field: Field::Checksum,
                    frames,
                });
            }
            _ => {
                xml(&mut payload, u)?;
                (Field::Xml, true, escaped(&payload))
            }
        };
        Ok(Mutation {
            bytes: framed(&body),
            field,
            frames,
        })
    }

    /// The data after the payload's last separator cut short or repeated.
    fn length(mut payload: Vec<u8>, u: &mut Unstructured<'_>) -> Result<Mutation> {
        let start = payload
            .iter()
            .rposition(|&c| separator(c))
            .map_or(usize::from(!payload.is_empty()), |p| p + 1);
        let data = payload.split_off(start.min(payload.len()));
        let most = MAX_GROWTH / data.len().max(1);
        if u.arbitrary()? || most < 2 {
            let keep = u.int_in_range(0..=data.len().saturating_sub(1))?;
            payload.extend(data.get(..keep).unwrap_or_default());
        } else {
            let times = u.int_in_range(2..=most.min(64))?;
            for _ in 0..times {
                payload.extend_from_slice(&data);
            }
        }
        Ok(Mutation {
            bytes: framed(&escaped(&payload)),
            field: Field::Length,
            frames: true,
        })
    }

    /// One XML perturbation of a payload that carries XML.
    fn xml(payload: &mut Vec<u8>, u: &mut Unstructured<'_>) -> Result<()> {
        let tags: Vec<usize> = (0..payload.len())
            .filter(|&i| payload.get(i) == Some(&b'<'))
            .collect();
        let at = *u.choose(&tags)?;
        match u.int_in_range(0u8..=4)? {
            0 => {
                // An element repeated.
                let end = payload
                    .get(at..)
                    .and_then(|t| t.iter().position(|&c| c == b'>'))
                    .map_or(payload.len(), |p| at + p + 1);
                let element = payload.get(at..end).unwrap_or_default().to_vec();
                let times = (MAX_GROWTH / element.len().max(1)).clamp(1, 256);
                let times = u.int_in_range(1..=times)?;
                let copies: Vec<u8> = element
                    .iter()
                    .copied()
                    .cycle()
                    .take(element.len() * times)
                    .collect();
                payload.splice(end..end, copies);
            }
            1 => {
                // Deep nesting, never closed.
                let depth = u.int_in_range(1..=MAX_GROWTH / 4)?;
                let nest: Vec<u8> = b"<a>".iter().copied().cycle().take(3 * depth).collect();
                payload.splice(at..at, nest);
            }
            2 => {
                // A huge attribute value (or an unterminated one).
                let quote = payload
                    .iter()
                    .position(|&c| c == b'"')
                    .unwrap_or(payload.len());
                let n = u.int_in_range(1..=MAX_GROWTH)?;
                let fill = if u.arbitrary()? { b'A' } else { b'"' };
                payload.splice(quote..quote, std::iter::repeat_n(fill, n));
            }
            3 => {
                // Entities.
                let decl =
                    b"<!DOCTYPE t [<!ENTITY e \"&#x41;&#x42;\"><!ENTITY f \"&e;&e;&e;&e;\">]>";
                let refs = u.int_in_range(1..=64)?;
                let uses: Vec<u8> = b"&f;".iter().copied().cycle().take(3 * refs).collect();
                let close = payload
                    .iter()
                    .rposition(|&c| c == b'<')
                    .unwrap_or(payload.len());
                payload.splice(close..close, uses);
                payload.splice(at..at, decl.iter().copied());
            }
            _ => {
                // The document cut.
                let cut = u.int_in_range(at..=payload.len())?;
                payload.truncate(cut);
            }
        }
        Ok(())
    }
}

#[cfg(feature = "kd")]
mod kd {
    use arbitrary::{Result, Unstructured};

    use super::{Field, MAX_GROWTH, Mutation, edge};
    use crate::kd::packet::field as header;
    use crate::kd::payload::{
        ControlReport, MANIPULATE_UNION_OFFSET, STATE_REPORT_OFFSET, STATE_UNION_OFFSET,
    };
    use crate::kd::{
        Field as Declared, INITIAL_PACKET_ID, Leader, Manipulate, PACKET_MAX_SIZE,
        PACKET_TRAILING_BYTE, PacketType, Repr, SYNC_PACKET_ID, StateChange, le,
    };

    /// The declared fields of a payload of type `ty` (offsets from the payload's start).
    fn declared(ty: PacketType, payload: &[u8]) -> Vec<(Declared, usize)> {
        let mut out: Vec<(Declared, usize)> = Vec::new();
        match ty {
            PacketType::StateManipulate => {
                out.extend(Manipulate::FIELDS.iter().map(|f| (*f, 0)));
                if let Ok(m) = Manipulate::parse(payload) {
                    let union = crate::kd::ManipulateApi::union_fields(m.api_number());
                    out.extend(union.iter().map(|f| (*f, MANIPULATE_UNION_OFFSET)));
                }
            }
            PacketType::StateChange64 => {
                out.extend(StateChange::FIELDS.iter().map(|f| (*f, 0)));
                out.extend(
                    crate::kd::payload::Exception64::FIELDS
                        .iter()
                        .chain(crate::kd::payload::LoadSymbols64::FIELDS)
                        .map(|f| (*f, STATE_UNION_OFFSET)),
                );
                out.extend(
                    ControlReport::FIELDS
                        .iter()
                        .map(|f| (*f, STATE_REPORT_OFFSET)),
                );
            }
            PacketType::DebugIo => out.extend(crate::kd::DebugIo::FIELDS.iter().map(|f| (*f, 0))),
            PacketType::FileIo => out.extend(crate::kd::FileIo::FIELDS.iter().map(|f| (*f, 0))),
            PacketType::TraceIo => out.extend(crate::kd::TraceIo::FIELDS.iter().map(|f| (*f, 0))),
            PacketType::ControlRequest => {
                out.extend(crate::kd::ControlRequest::FIELDS.iter().map(|f| (*f, 0)));
            }
            _ => {}
        }
        out.retain(|(f, base)| f.width <= 8 && base + f.offset + f.width <= payload.len());
        out
    }

    /// Mutates one field of a KD packet: `packet` is a header and its payload, with or
    /// without the KDCOM `0xAA` trailer (the result keeps it as it was). A packet that
    /// does not parse gets a byte flipped. See the [module docs](super) for each field.
    pub fn kd_packet(packet: &[u8], u: &mut Unstructured<'_>) -> Result<Mutation> {
        let Ok(repr) = Repr::parse_bytes(packet) else {
            let mut bytes = packet.to_vec();
            if !bytes.is_empty() {
                let at = u.choose_index(bytes.len())?;
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << u.int_in_range(0..=7)?;
                }
            }
            return Ok(Mutation {
                bytes,
                field: Field::Tag,
                frames: false,
            });
        };
        let trailer = repr.leader == Leader::Data
            && packet.len() > repr.buffer_len()
            && packet.get(repr.buffer_len()) == Some(&PACKET_TRAILING_BYTE);
        let data = repr.leader == Leader::Data;
        let mut repr = repr;
        let (field, frames, mut bytes) = match u.int_in_range(0u8..=7)? {
            0 | 1 if data => {
                let fields = declared(repr.packet_type, &repr.payload);
                if fields.is_empty() {
                    return kd_packet_length(repr, trailer, u);
                }
                let &(f, base) = u.choose(&fields)?;
                let at = base + f.offset;
                let old = f
                    .value(repr.payload.get(base..).unwrap_or_default())
                    .unwrap_or(0);
                let new = edge(u, old)?.to_le_bytes();
                if let (Some(dst), Some(src)) =
                    (repr.payload.get_mut(at..at + f.width), new.get(..f.width))
                {
                    dst.copy_from_slice(src);
                }
                (Field::Number(f.name), true, repr.to_bytes())
            }
            2 if data => return kd_packet_length(repr, trailer, u),
            3 => {
                let id = repr.id;
                repr.id = match u.int_in_range(0u8..=4)? {
                    0 => id ^ SYNC_PACKET_ID,
                    1 => id.wrapping_add(1),
                    2 => id.wrapping_sub(1),
                    3 => 0,
                    _ => id ^ INITIAL_PACKET_ID,
                };
                (Field::Sequence, true, repr.to_bytes())
            }
            4 => {
                repr.packet_type = PacketType::from_value(
                    *u.choose(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xffff])?,
                );
                (Field::PacketType, true, repr.to_bytes())
            }
            5 if data => {
                let mut bytes = repr.to_bytes();
                let wrong = repr.checksum().wrapping_add(u.int_in_range(1..=u32::MAX)?);
                le::put_u32(&mut bytes, header::CHECKSUM.start, wrong);
                (Field::Checksum, false, bytes)
            }
            6 if data => {
                let mut bytes = repr.to_bytes();
                let count = le::u16_at(&bytes, header::BYTE_COUNT.start);
                let delta = u.int_in_range(1..=u16::MAX)?;
                le::put_u16(
                    &mut bytes,
                    header::BYTE_COUNT.start,
                    count.wrapping_add(delta),
                );
                (Field::ByteCount, false, bytes)
            }
            _ if trailer => {
                let mut bytes = repr.to_bytes();
                bytes.push(*u.choose(&[0x00, 0xab, 0x30, 0x69])?);
                return Ok(Mutation {
                    bytes,
                    field: Field::Trailer,
                    frames: false,
                });
            }
            _ => {
                let id = repr.id;
                repr.id = id.wrapping_add(1);
                (Field::Sequence, true, repr.to_bytes())
            }
        };
        if trailer {
            bytes.push(PACKET_TRAILING_BYTE);
        }
        Ok(Mutation {
            bytes,
            field,
            frames,
        })
    }

    /// The payload cut short or grown (by up to [`MAX_GROWTH`] bytes), the header made to
    /// agree.
    fn kd_packet_length(
        mut repr: Repr,
        trailer: bool,
        u: &mut Unstructured<'_>,
    ) -> Result<Mutation> {
        if u.arbitrary()? || repr.payload.is_empty() {
            let grow = u.int_in_range(1..=MAX_GROWTH)?;
            let fill = u.arbitrary::<u8>()?;
            repr.payload.extend(std::iter::repeat_n(fill, grow));
        } else {
            let keep = u.int_in_range(0..=repr.payload.len() - 1)?;
            repr.payload.truncate(keep);
        }
        let frames = repr.payload.len() <= PACKET_MAX_SIZE;
        let mut bytes = repr.to_bytes();
        if trailer {
            bytes.push(PACKET_TRAILING_BYTE);
        }
        Ok(Mutation {
            bytes,
            field: Field::Length,
            frames,
        })
    }
}

#[cfg(feature = "kdnet")]
mod kdnet {
    use arbitrary::{Result, Unstructured};

    use super::{Field, Mutation};
    use crate::kdnet::{Channel, HEADER_LEN, Keys, MAX_SEQ, TAG_LEN, field};

    /// Mutates one field of a KDNET datagram, opened with `keys` and sealed again where
    /// the mutation is meant to authenticate: the KD packet inside (through
    /// [`kd_packet`](super::kd_packet)), the sequence number, the direction bit, the
    /// version; or, not resealed, the tag, body, channel or length. A datagram the keys
    /// do not open gets a byte flipped. See the [module docs](super) for each field.
    ///
    /// `frames` is whether [`Keys::open`] accepts the result and, for a mutated KD
    /// packet, whether that packet still frames (for a datagram that carried a KD packet
    /// to begin with).
    pub fn kdnet_datagram(
        datagram: &[u8],
        keys: &Keys,
        u: &mut Unstructured<'_>,
    ) -> Result<Mutation> {
        let opened = keys.open(datagram);
        let choice = u.int_in_range(0u8..=6)?;
        let Ok(mut msg) = opened else {
            return tamper(datagram, u);
        };
        let (field, frames) = match choice {
            0 | 1 if msg.channel == Channel::Data && msg.payload.len() > 1 => {
                let inner = super::kd_packet(&msg.payload, u)?;
                msg.payload = inner.bytes;
                (inner.field, inner.frames)
            }
            2 | 3 => {
                msg.seq = match u.int_in_range(0u8..=3)? {
                    0 => msg.seq,
                    1 => msg.seq.saturating_sub(1),
                    2 => 0,
                    _ => MAX_SEQ,
                };
                (Field::Sequence, true)
            }
            4 => {
                msg.from_debugger = !msg.from_debugger;
                (Field::Direction, true)
            }
            5 => {
                msg.version = msg.version.wrapping_add(u.int_in_range(1..=255)?);
                (Field::Version, true)
            }
            _ => return tamper(datagram, u),
        };
        match keys.seal(&msg) {
            Ok(bytes) => Ok(Mutation {
                bytes,
                field,
                frames,
            }),
            // A grown KD packet too large for one datagram.
            Err(_) => tamper(datagram, u),
        }
    }

    /// A byte of the tag, body or channel flipped, or the length broken.
    fn tamper(datagram: &[u8], u: &mut Unstructured<'_>) -> Result<Mutation> {
        let mut bytes = datagram.to_vec();
        let len = bytes.len();
        let field = match u.int_in_range(0u8..=3)? {
            0 if len > TAG_LEN => {
                let at = u.int_in_range(len - TAG_LEN..=len - 1)?;
                flip(&mut bytes, at, u)?;
                Field::Tag
            }
            1 if len > HEADER_LEN + TAG_LEN => {
                let at = u.int_in_range(HEADER_LEN..=len - TAG_LEN - 1)?;
                flip(&mut bytes, at, u)?;
                Field::Tag
            }
            2 if len > field::CHANNEL => {
                if let Some(c) = bytes.get_mut(field::CHANNEL) {
                    *c ^= *u.choose(&[1u8, 2, 0x80])?;
                }
                Field::Tag
            }
            _ => {
                let cut = u.int_in_range(1..=15usize.min(len.max(1)))?;
                bytes.truncate(len.saturating_sub(cut));
                Field::Length
            }
        };
        Ok(Mutation {
            bytes,
            field,
            frames: false,
        })
    }

    fn flip(bytes: &mut [u8], at: usize, u: &mut Unstructured<'_>) -> Result<()> {
        let bit = u.int_in_range(0..=7)?;
        if let Some(b) = bytes.get_mut(at) {
            *b ^= 1 << bit;
        }
        Ok(())
    }
}
