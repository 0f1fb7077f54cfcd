//! A streaming KDCOM decoder: bytes in, [`StreamEvent`]s out.
//!
//! The decoder hunts for four identical leader bytes (`0x30` or `0x69`), so it resyncs
//! after line noise; a `0x62` seen while hunting is a break-in. `ByteCount` is checked
//! against [`PACKET_MAX_SIZE`] before anything is buffered, so the buffer never holds more
//! than one maximal packet. Trouble is an event, never an error: the stream goes on.
//! The events depend only on the bytes, not on how they were chunked.

use std::collections::VecDeque;

use nom::Parser;

use super::packet::{Leader, PacketType, Repr, checksum, header};
use super::{
    BREAKIN_PACKET_BYTE, CONTROL_PACKET_LEADER_BYTE, HEADER_LEN, PACKET_LEADER_BYTE,
    PACKET_MAX_SIZE, PACKET_TRAILING_BYTE,
};

/// Something the decoder found in the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// A complete packet with a good checksum (and trailer, for data packets).
    Packet(Repr),
    /// A lone break-in byte (`0x62`) outside a packet.
    BreakIn,
    /// Bytes that were not part of any packet were skipped (reported before the next
    /// packet or break-in, or by [`StreamDecoder::finish`]).
    Noise {
        /// How many bytes.
        bytes: usize,
    },
    /// A data packet whose checksum does not match; the receiver should ask for a resend.
    BadChecksum {
        /// `PacketType` of the damaged packet.
        packet_type: PacketType,
        /// `PacketId` of the damaged packet.
        id: u32,
        /// The checksum in the header.
        expected: u32,
        /// The sum of the received payload.
        actual: u32,
    },
    /// A data packet not followed by `0xAA`.
    BadTrailer {
        /// `PacketId` of the packet.
        id: u32,
        /// The byte found instead.
        found: u8,
    },
    /// A header announced more than [`PACKET_MAX_SIZE`] bytes; the header was dropped.
    TooLong {
        /// The announced `ByteCount`.
        byte_count: usize,
    },
    /// At the end of input, a data packet was complete except for its trailer (seen in
    /// captures that cut the `0xAA`); the packet is still delivered after this event.
    MissingTrailer {
        /// `PacketId` of the packet.
        id: u32,
    },
}

/// The most a [`StreamDecoder`] holds between calls: one header and the largest payload
/// a header may announce, and its trailer. A header that announces more is dropped at
/// once ([`StreamEvent::TooLong`]), and bytes that are not a leader are noise.
pub const MAX_BUFFERED: usize = HEADER_LEN + PACKET_MAX_SIZE + 1;

/// The streaming decoder.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes received; those before `start` are consumed (dropped from the front once
    /// per [`push`](Self::push), not once per packet).
    buf: Vec<u8>,
    start: usize,
    noise: usize,
    events: VecDeque<StreamEvent>,
    /// The header at the front announced a data packet of this many bytes (with its
    /// trailer) that has not all arrived: until it has, a push only counts bytes.
    awaiting: Option<usize>,
}

enum Step {
    /// Need more bytes.
    Wait,
    /// Progress was made; go on.
    Again,
}

impl StreamDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Feeds bytes; decode events become available through [`next_event`](Self::next_event).
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        // The common case on a serial line: a few more bytes of a packet whose header is
        // known and which is still not complete. Append and return.
        if let Some(total) = self.awaiting
            && self.buffered().saturating_add(bytes.len()) < total
        {
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.push_and_decode(bytes);
    }

    fn push_and_decode(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(PACKET_MAX_SIZE) {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.extend_from_slice(chunk);
            if self.awaiting.is_some_and(|total| self.buffered() < total) {
                continue;
            }
            while let Step::Again = self.step() {}
        }
    }

    /// The bytes not consumed yet.
    fn live(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// The next decode event, if any.
    pub fn next_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Bytes currently buffered (a partial packet): less than [`MAX_BUFFERED`] once
    /// [`push`](Self::push) returns, whatever the bytes claim.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes still missing from the packet whose header has arrived, if one is awaited.
    pub fn missing(&self) -> Option<usize> {
        self.awaiting
            .map(|total| total.saturating_sub(self.buffered()))
    }

    /// The input stalled in the middle of a packet (its header may claim more bytes than
    /// will ever come: KDCOM does not checksum it, and a dropped byte leaves a packet one
    /// short): drops the partial packet's first byte as noise and decodes what follows
    /// it again, so a packet inside the bytes taken for the broken one is found.
    pub fn resync(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.discard(1, true);
        while let Step::Again = self.step() {}
        self.flush_noise();
    }

    /// End of input: reports a data packet that only lacks its trailer, and any noise left.
    pub fn finish(&mut self) {
        if let Some((repr, len)) = self.complete_without_trailer() {
            self.flush_noise();
            self.events
                .push_back(StreamEvent::MissingTrailer { id: repr.id });
            self.events.push_back(StreamEvent::Packet(repr));
            self.discard(len, false);
        }
        self.noise += self.buffered();
        self.buf.clear();
        self.start = 0;
        self.awaiting = None;
        self.flush_noise();
    }

    fn complete_without_trailer(&self) -> Option<(Repr, usize)> {
        let live = self.live();
        let (_, (leader, ty, count, id, sum)) = header::<nom::error::Error<&[u8]>>()
            .parse_complete(live)
            .ok()?;
        if leader != super::PACKET_LEADER {
            return None;
        }
        let len = HEADER_LEN + usize::from(count);
        let payload = live.get(HEADER_LEN..len)?;
        if live.len() != len || checksum(payload) != sum {
            return None;
        }
        Some((
            Repr::data(PacketType::from_value(ty), id, payload.to_vec()),
            len,
        ))
    }

    fn flush_noise(&mut self) {
        if self.noise > 0 {
            self.events
                .push_back(StreamEvent::Noise { bytes: self.noise });
            self.noise = 0;
        }
    }

    fn emit(&mut self, event: StreamEvent) {
        self.flush_noise();
        self.events.push_back(event);
    }

    fn discard(&mut self, n: usize, as_noise: bool) {
        let n = n.min(self.buffered());
        self.start += n;
        self.awaiting = None;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if as_noise {
            self.noise += n;
        }
    }

    fn step(&mut self) -> Step {
        // Hunt for a leader at the front of the buffer.
        let live = self.live();
        let Some(&first) = live.first() else {
            return Step::Wait;
        };
        if first == BREAKIN_PACKET_BYTE {
            self.discard(1, false);
            self.emit(StreamEvent::BreakIn);
            return Step::Again;
        }
        if first != PACKET_LEADER_BYTE && first != CONTROL_PACKET_LEADER_BYTE {
            self.discard(1, true);
            return Step::Again;
        }
        let run = live.iter().take(4).take_while(|&&b| b == first).count();
        if run < 4 {
            if run == live.len() {
                return Step::Wait;
            }
            // A partial leader followed by something else: noise.
            self.discard(run, true);
            return Step::Again;
        }
        // Header: the streaming parser says Incomplete until 16 bytes are here.
        let parsed = header::<nom::error::Error<&[u8]>>().parse(live);
        let (_, ty, count, id, sum) = match parsed {
            Ok((_, h)) => h,
            Err(_) => return Step::Wait,
        };
        let packet_type = PacketType::from_value(ty);
        let count = usize::from(count);
        let leader = if first == PACKET_LEADER_BYTE {
            Leader::Data
        } else {
            Leader::Control
        };
        match leader {
            Leader::Control => {
                self.discard(HEADER_LEN, false);
                self.emit(StreamEvent::Packet(Repr::control(packet_type, id)));
                Step::Again
            }
            Leader::Data => {
                if count > PACKET_MAX_SIZE {
                    self.discard(HEADER_LEN, false);
                    self.emit(StreamEvent::TooLong { byte_count: count });
                    return Step::Again;
                }
                let total = HEADER_LEN + count + 1;
                if live.len() < total {
                    self.awaiting = Some(total);
                    return Step::Wait;
                }
                let payload = live.get(HEADER_LEN..HEADER_LEN + count).unwrap_or(&[]);
                let actual = checksum(payload);
                let trailer = live.get(HEADER_LEN + count).copied().unwrap_or(0);
                let (event, used) = if trailer != PACKET_TRAILING_BYTE {
                    // A byte of this packet was lost, most likely, and the byte where
                    // its trailer belongs starts the next packet (the sender's next
                    // copy): hunt on from that byte, not after it.
                    (StreamEvent::BadTrailer { id, found: trailer }, total - 1)
                } else if actual != sum {
                    let bad = StreamEvent::BadChecksum {
                        packet_type,
                        id,
                        expected: sum,
                        actual,
                    };
                    (bad, total)
                } else {
                    let good = Repr::data(packet_type, id, payload.to_vec());
                    (StreamEvent::Packet(good), total)
                };
                self.discard(used, false);
                self.emit(event);
                Step::Again
            }
        }
    }
}
