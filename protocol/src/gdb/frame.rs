//! RSP framing: `$payload#cs`, `%notification#cs`, `+`/`-`, the 0x03 interrupt byte,
//! `}` escapes and `*` run-length encoding.
//!
//! [`Decoder`] is a streaming byte-at-a-time state machine: feed it arbitrary chunks and it
//! yields the same [`Event`]s however the bytes were split. The checksum is computed over
//! the bytes actually received (the escaped, run-length-encoded form), and a packet longer
//! than the configured maximum is dropped as it streams in, never buffered.

/// Starts a packet.
pub const PACKET_START: u8 = b'$';
/// Starts a notification.
pub const NOTIFICATION_START: u8 = b'%';
/// Ends the payload; two hex checksum digits follow.
pub const PAYLOAD_END: u8 = b'#';
/// Escape prefix: the next byte is XOR-ed with [`ESCAPE_XOR`].
pub const ESCAPE: u8 = b'}';
/// The value escaped bytes are XOR-ed with.
pub const ESCAPE_XOR: u8 = 0x20;
/// Run-length marker: repeat the previous byte `count - 29` more times.
pub const RUN_LENGTH: u8 = b'*';
/// Positive acknowledgement.
pub const ACK: u8 = b'+';
/// Negative acknowledgement (please retransmit).
pub const NAK: u8 = b'-';
/// The interrupt (Ctrl-C) byte a client sends while the target runs.
pub const INTERRUPT: u8 = 0x03;
/// The default maximum payload size (decoded and raw), 16 KiB + slack.
pub const DEFAULT_MAX_PACKET: usize = 0x4000 + 0x100;

/// The offset between a run-length count character and the number of extra copies.
const RUN_BIAS: u8 = 29;
/// The smallest number of extra copies a count character can express (`' '`).
const MIN_REPEAT: usize = 3;
/// The largest number of extra copies a count character can express (`'~'`).
const MAX_REPEAT: usize = 97;

/// The modulo-256 sum of `bytes`, the RSP checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Whether `byte` must be escaped inside a packet payload.
pub fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'#' | b'$' | b'}' | b'*')
}

/// Appends `payload` escaped (no run-length encoding) to `out`.
pub fn escape_into(payload: &[u8], out: &mut Vec<u8>) {
    for &b in payload {
        if needs_escape(b) {
            out.push(ESCAPE);
            out.push(b ^ ESCAPE_XOR);
        } else {
            out.push(b);
        }
    }
}

/// Whether a count character for `repeat` extra copies is allowed: it must be printable
/// and must not be `#` or `$` (which would end or restart the frame).
fn repeat_allowed(repeat: usize) -> bool {
    if !(MIN_REPEAT..=MAX_REPEAT).contains(&repeat) {
        return false;
    }
    let c = repeat as u8 + RUN_BIAS;
    c != b'#' && c != b'$'
}

/// Appends `payload` escaped and run-length encoded to `out`.
///
/// Runs of a byte that needs no escape are written as `c*N`; a count that would be `#` or
/// `$` (6 or 7 extra copies) is shortened to 5 and the rest written out, so the encoded
/// text never contains a frame delimiter.
pub fn escape_rle_into(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len());
    // Bytes from `literal` to `i` go out unchanged; they are copied in one piece when
    // an escape or a run worth encoding interrupts them (the common case for hex data).
    let mut literal = 0;
    let mut i = 0;
    while let Some(&b) = payload.get(i) {
        if needs_escape(b) {
            out.extend_from_slice(payload.get(literal..i).unwrap_or_default());
            out.push(ESCAPE);
            out.push(b ^ ESCAPE_XOR);
            i += 1;
            literal = i;
            continue;
        }
        let run = payload
            .get(i..)
            .map_or(1, |rest| rest.iter().take_while(|&&x| x == b).count());
        if run <= MIN_REPEAT {
            // Too short to encode: it stays part of the literal stretch.
            i += run;
            continue;
        }
        out.extend_from_slice(payload.get(literal..i).unwrap_or_default());
        encode_run(b, run, |x| out.push(x));
        i += run;
        literal = i;
    }
    out.extend_from_slice(payload.get(literal..).unwrap_or_default());
}

/// Emits the run-length encoding of `run` copies of `b` (a byte needing no escape): `b`,
/// then as many `*N` groups as fit, each after a fresh `b` to repeat, then the few
/// copies left over. Never longer than the run itself.
fn encode_run(b: u8, run: usize, mut emit: impl FnMut(u8)) {
    emit(b);
    let mut extra = run.saturating_sub(1);
    while extra >= MIN_REPEAT {
        let mut take = extra.min(MAX_REPEAT);
        while !repeat_allowed(take) {
            take -= 1;
        }
        emit(RUN_LENGTH);
        emit(take as u8 + RUN_BIAS);
        extra -= take;
        if extra > 0 {
            // The next group needs a fresh literal to repeat.
            emit(b);
            extra -= 1;
        }
    }
    for _ in 0..extra {
        emit(b);
    }
}

/// Writes a whole `$payload#cs` frame (escaped, optionally run-length encoded) to `out`.
pub fn encode_packet_into(payload: &[u8], rle: bool, out: &mut Vec<u8>) {
    encode_frame_into(PACKET_START, payload, rle, out);
}

/// Writes a whole `%payload#cs` notification frame to `out`.
pub fn encode_notification_into(payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_into(NOTIFICATION_START, payload, false, out);
}

/// Returns a whole `$payload#cs` frame.
pub fn encode_packet(payload: &[u8], rle: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    encode_packet_into(payload, rle, &mut out);
    out
}

fn encode_frame_into(start: u8, payload: &[u8], rle: bool, out: &mut Vec<u8>) {
    out.push(start);
    let body_start = out.len();
    if rle {
        escape_rle_into(payload, out);
    } else {
        escape_into(payload, out);
    }
    let cs = out.get(body_start..).map_or(0, checksum);
    out.push(PAYLOAD_END);
    out.push(hex_digit(cs >> 4));
    out.push(hex_digit(cs & 0xf));
}

/// Writes a whole `$hex#cs` frame of `data` as lowercase hex to `out` (what an `m` or
/// `g` reply is): SIMD hex ([`faster_hex`]), then, with `rle`, run-length encoding in
/// place where it pays. The bytes are exactly those of [`encode_packet_into`] on the hex
/// text (hex digits never need escaping), at a fraction of the cost: runs are looked for
/// in the data (see `run_start`), a block of bytes at a time, not digit by digit.
pub fn encode_hex_packet_into(data: &[u8], rle: bool, out: &mut Vec<u8>) {
    out.push(PACKET_START);
    let start = out.len();
    let hex_len = data.len().saturating_mul(2);
    out.resize(start.saturating_add(hex_len), 0);
    let (len, cs) = match out.get_mut(start..) {
        Some(body) => {
            super::hex::hex_into(data, body);
            let cs = checksum(body);
            if rle {
                run_length_hex_in_place(data, body, cs)
            } else {
                (body.len(), cs)
            }
        }
        None => (0, 0),
    };
    out.truncate(start.saturating_add(len));
    out.push(PAYLOAD_END);
    out.push(hex_digit(cs >> 4));
    out.push(hex_digit(cs & 0xf));
}

/// Bytes of data [`RunStarts`] tests per step.
const RUN_BLOCK: usize = 64;

/// A block with the byte before it and the byte after it.
const RUN_WINDOW: usize = RUN_BLOCK + 2;

/// Whether a run of four or more equal hex digits starts at digit `2k - 1` or `2k` of
/// the hex of some data, from its bytes `k - 1` (`prev`, `None` at the start), `k` (`x`)
/// and `k + 1` (`next`): the digits of `x` equal the first digit of `next` and either the
/// second digit of `prev` or of `next`. Every run starting at digit `p` is found at byte
/// `ceil(p / 2)`. In random data one byte in 4,096 starts a run.
fn run_start(prev: Option<u8>, x: u8, next: u8) -> bool {
    let n = x & 0xf;
    x >> 4 == n && next >> 4 == n && (prev.is_some_and(|p| p & 0xf == n) || next & 0xf == n)
}

/// Whether [`run_start`] holds for any of the [`RUN_BLOCK`] bytes in the middle of
/// `window`. The same test, phrased as whole-byte compares so that it vectorises into
/// few instructions: `x` has two equal digits, and either `next` equals `x` or the
/// second digit of `prev` and the first of `next` equal those of `x`. Blocks without a
/// run (nearly all in data that is not mostly runs) cost a few vector instructions.
fn block_has_run_start(window: &[u8; RUN_WINDOW]) -> bool {
    let prev = window.first_chunk::<RUN_BLOCK>();
    let x = window.get(1..).and_then(<[u8]>::first_chunk::<RUN_BLOCK>);
    let next = window.last_chunk::<RUN_BLOCK>();
    let (Some(prev), Some(x), Some(next)) = (prev, x, next) else {
        return true;
    };
    let mut any = 0u8;
    for ((&p, &x), &y) in prev.iter().zip(x).zip(next) {
        any |= run_start_bytewise(p, x, y);
    }
    any != 0
}

/// [`run_start`] with a byte before `x`, as whole-byte compares (1 or 0).
#[inline(always)]
fn run_start_bytewise(prev: u8, x: u8, next: u8) -> u8 {
    let doubled = (x ^ (x >> 4)) & 0xf == 0;
    let around = (prev & 0x0f) | (next & 0xf0);
    u8::from(doubled) & (u8::from(x == next) | u8::from(x == around))
}

/// The bytes of some data where runs of hex digits start (see [`run_start`]), in order,
/// found a block at a time.
struct RunStarts<'a> {
    data: &'a [u8],
    /// The block being looked at starts here; `mask` holds its starts not yet returned.
    block: usize,
    mask: u64,
}

impl<'a> RunStarts<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut starts = RunStarts {
            data,
            block: 0,
            mask: 0,
        };
        starts.load();
        starts
    }

    /// The block at `at` with its neighbouring bytes, unless it is the first block
    /// (no byte before it) or the tail (no whole block and byte after it).
    fn window(&self, at: usize) -> Option<&'a [u8; RUN_WINDOW]> {
        let data: &'a [u8] = self.data;
        data.get(at.checked_sub(1)?..)?.first_chunk::<RUN_WINDOW>()
    }

    /// The window of the first block or the tail, padded with bytes that start no run
    /// and make none start: before the data, the first byte with its second digit
    /// changed (so only `next` can make byte 0 a start, as [`run_start`] says); after
    /// it, a byte without two equal digits whose first digit differs from the last
    /// byte's.
    fn padded_window(&self, at: usize) -> [u8; RUN_WINDOW] {
        let first = self.data.first().map_or(0, |b| b ^ 0x01);
        let after = match self.data.last() {
            Some(last) if last >> 4 == 0 => 0x12,
            _ => 0x01,
        };
        let mut window = [after; RUN_WINDOW];
        let (slots, from) = match (window.split_first_mut(), at.checked_sub(1)) {
            (Some((before, rest)), None) => {
                *before = first;
                (rest, 0)
            }
            (_, from) => (window.as_mut_slice(), from.unwrap_or(0)),
        };
        let bytes = self.data.get(from..).unwrap_or_default();
        for (slot, &b) in slots.iter_mut().zip(bytes) {
            *slot = b;
        }
        window
    }

    /// Whether the block at `at` may hold a run start (exact for its bytes; the
    /// vector test of [`block_has_run_start`]).
    fn may_start(&self, at: usize) -> bool {
        match self.window(at) {
            Some(window) => block_has_run_start(window),
            None => block_has_run_start(&self.padded_window(at)),
        }
    }

    /// The first block from `at` on that may hold a run start: a tight loop of vector
    /// tests over whole blocks, stopping at the tail.
    fn skip_clean_blocks(&self, mut at: usize) -> usize {
        while let Some(window) = self.window(at) {
            if block_has_run_start(window) {
                break;
            }
            at += RUN_BLOCK;
        }
        at
    }

    /// The run starts of the block at `self.block`: a vector test of the whole block,
    /// then byte by byte where it finds one.
    fn load(&mut self) {
        let i = self.block;
        if !self.may_start(i) {
            self.mask = 0;
            return;
        }
        self.mask = (0..RUN_BLOCK).fold(0, |m, j| {
            let k = i + j;
            let prev = k.checked_sub(1).and_then(|p| self.data.get(p)).copied();
            match (self.data.get(k), self.data.get(k + 1)) {
                (Some(&x), Some(&next)) if run_start(prev, x, next) => m | (1 << j),
                _ => m,
            }
        });
    }

    /// The next run start at or after byte `from`.
    fn next_from(&mut self, from: usize) -> Option<usize> {
        loop {
            if from >= self.block.saturating_add(RUN_BLOCK) {
                // Skip whole blocks up to the one holding `from`.
                self.block = from - from % RUN_BLOCK;
                self.load();
            }
            if from > self.block {
                let below = from - self.block;
                self.mask &= u64::MAX.checked_shl(below as u32).unwrap_or(0);
            }
            if self.mask != 0 {
                let k = self.block + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
                return Some(k);
            }
            if self.block.saturating_add(RUN_BLOCK) >= self.data.len() {
                return None;
            }
            self.block = self.skip_clean_blocks(self.block + RUN_BLOCK);
            self.load();
        }
    }
}

/// How many bytes equal to `b` start `buf` (compared eight at a time).
fn run_len(buf: &[u8], b: u8) -> usize {
    let splat = u64::from_ne_bytes([b; 8]);
    let mut n = 0;
    for chunk in buf.chunks_exact(8) {
        let word = chunk.try_into().map_or(0, u64::from_ne_bytes);
        if word != splat {
            break;
        }
        n += 8;
    }
    n + buf
        .get(n..)
        .map_or(0, |rest| rest.iter().take_while(|&&x| x == b).count())
}

/// Run-length encodes `hex`, the hex of `data` whose checksum is `cs`, in place, exactly
/// as [`escape_rle_into`] would; returns the encoded length and its checksum. Only where
/// `data` says a run starts are digits looked at one by one.
fn run_length_hex_in_place(data: &[u8], hex: &mut [u8], mut cs: u8) -> (usize, u8) {
    // Encoded output ends at `w`; digits from `lit` on are not encoded yet (they go out
    // unchanged up to the next run); the next run starts at or after byte `start_from`.
    let (mut w, mut lit, mut start_from) = (0usize, 0usize, 0usize);
    let mut starts = RunStarts::new(data);
    while let Some(k) = starts.next_from(start_from) {
        start_from = k + 1;
        let Some(&digit) = hex.get(2 * k) else {
            break;
        };
        // The run starts one digit early when the previous digit (not yet encoded) is
        // the same; never earlier (such a run is found at an earlier byte).
        let p = if 2 * k > lit && hex.get(2 * k - 1) == Some(&digit) {
            2 * k - 1
        } else {
            2 * k
        };
        let run = hex.get(p..).map_or(0, |rest| run_len(rest, digit));
        if run <= MIN_REPEAT {
            continue;
        }
        if w != lit {
            hex.copy_within(lit..p, w);
        }
        w += p - lit;
        // The run's digits leave the checksum, the encoding's bytes join it. The encoding
        // is never longer than the run, so it fits where the run was.
        cs = cs.wrapping_sub(digit.wrapping_mul(run as u8));
        encode_run(digit, run, |x| {
            if let Some(slot) = hex.get_mut(w) {
                *slot = x;
            }
            cs = cs.wrapping_add(x);
            w += 1;
        });
        lit = p + run;
        start_from = start_from.max(lit.div_ceil(2));
    }
    let n = hex.len();
    if w != lit {
        hex.copy_within(lit..n, w);
    }
    (w + (n - lit), cs)
}

/// The lowercase hex digit for a nibble.
pub(crate) fn hex_digit(nibble: u8) -> u8 {
    match nibble & 0xf {
        n @ 0..=9 => b'0' + n,
        n => b'a' + n - 10,
    }
}

/// The value of a hex digit, if it is one.
pub(crate) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes an escaped, run-length-encoded payload (the body of a frame) on its own.
///
/// Returns `None` if it is malformed (a dangling escape, a run with nothing to repeat, a
/// bad count) or would expand beyond `max` bytes.
pub fn unescape(body: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len().min(max));
    let mut it = body.iter();
    while let Some(&b) = it.next() {
        match b {
            ESCAPE => out.push(it.next()? ^ ESCAPE_XOR),
            RUN_LENGTH => {
                let count = *it.next()?;
                let repeat = usize::from(count.checked_sub(RUN_BIAS)?);
                let last = *out.last()?;
                if out.len().checked_add(repeat)? > max {
                    return None;
                }
                out.extend(std::iter::repeat_n(last, repeat));
                continue;
            }
            other => out.push(other),
        }
        if out.len() > max {
            return None;
        }
    }
    Some(out)
}

/// One thing the [`Decoder`] recognised in the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A `$…#cs` packet with a good checksum; the payload is unescaped and expanded.
    Packet(Vec<u8>),
    /// A `%…#cs` notification with a good checksum.
    Notification(Vec<u8>),
    /// A `+`.
    Ack,
    /// A `-`.
    Nak,
    /// The 0x03 interrupt byte (outside a packet).
    Interrupt,
    /// A frame whose checksum did not match (or whose body was malformed).
    BadChecksum {
        /// The checksum computed over the received bytes.
        computed: u8,
        /// The checksum the frame carried (0 if the digits were not hex).
        received: u8,
    },
    /// A frame longer than the maximum packet size; it was dropped as it streamed in.
    Oversize {
        /// How many body bytes had arrived when the frame ended.
        len: usize,
    },
    /// Bytes outside any frame that mean nothing (line noise, an aborted frame).
    Garbage {
        /// How many bytes.
        len: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// Inside a body; `notification` says which kind of frame.
    Body,
    /// Inside a body, right after `}`.
    BodyEscape,
    /// Inside a body, right after `*`: the next byte is the count.
    BodyRun,
    /// After `#`: the first checksum digit.
    Check1,
    /// The second checksum digit; holds the first.
    Check2(u8),
}

/// A streaming RSP frame decoder (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Decoder {
    max_packet: usize,
    state: State,
    notification: bool,
    /// The decoded payload so far (unescaped, runs expanded).
    payload: Vec<u8>,
    /// The running checksum of the raw body bytes.
    sum: u8,
    /// Raw body bytes received for this frame.
    raw_len: usize,
    /// The frame outgrew `max_packet` or was malformed; keep counting, stop storing.
    overflow: bool,
    malformed: bool,
    /// Length of a pending run of garbage bytes between frames.
    garbage: usize,
    /// An empty buffer handed back by [`Decoder::recycle`], the next payload's home.
    spare: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET)
    }
}

impl Decoder {
    /// A decoder that drops frames whose raw or decoded body exceeds `max_packet` bytes.
    pub fn new(max_packet: usize) -> Self {
        Self {
            max_packet,
            state: State::Idle,
            notification: false,
            payload: Vec::new(),
            sum: 0,
            raw_len: 0,
            overflow: false,
            malformed: false,
            garbage: 0,
            spare: Vec::new(),
        }
    }

    /// Hands back the buffer of a packet that is done with, so the next packet is decoded
    /// into it instead of a new allocation (a stub that recycles allocates nothing per
    /// packet once warm).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > self.spare.capacity() && buf.capacity() <= self.max_packet {
            buf.clear();
            self.spare = buf;
        }
    }

    /// The configured maximum packet size.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Payload bytes of the frame being decoded (never more than the maximum packet).
    pub fn buffered(&self) -> usize {
        self.payload.len()
    }

    /// Whether the decoder is in the middle of a frame.
    pub fn in_frame(&self) -> bool {
        self.state != State::Idle
    }

    /// Consumes bytes from `input` until one event is complete.
    ///
    /// Returns how many bytes were consumed and the event, if any. When no event is
    /// returned, all of `input` was consumed and buffered.
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        for (i, &b) in input.iter().enumerate() {
            match self.step(b) {
                Step::Consumed => {}
                Step::Event(ev) => return (i + 1, Some(ev)),
                // Report the pending garbage first; this byte is looked at again.
                Step::Retry(ev) => return (i, Some(ev)),
            }
        }
        (input.len(), None)
    }

    /// Decodes all of `input`, appending every completed event to `out`.
    pub fn decode_into(&mut self, mut input: &[u8], out: &mut Vec<Event>) {
        while !input.is_empty() {
            let (used, ev) = self.push(input);
            out.extend(ev);
            input = input.get(used..).unwrap_or_default();
        }
    }

    /// Decodes all of `input` and returns the completed events.
    pub fn decode(&mut self, input: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        self.decode_into(input, &mut out);
        out
    }

    /// Ends the stream: reports pending garbage or a truncated frame as [`Event::Garbage`].
    pub fn finish(&mut self) -> Option<Event> {
        let pending = match self.state {
            State::Idle => self.garbage,
            // The start byte plus the raw body plus any checksum digit.
            State::Check2(_) => self.garbage + self.raw_len + 3,
            State::Check1 => self.garbage + self.raw_len + 2,
            _ => self.garbage + self.raw_len + 1,
        };
        self.reset_frame();
        self.state = State::Idle;
        self.garbage = 0;
        (pending > 0).then_some(Event::Garbage { len: pending })
    }

    fn reset_frame(&mut self) {
        self.payload.clear();
        self.sum = 0;
        self.raw_len = 0;
        self.overflow = false;
        self.malformed = false;
    }

    fn take_garbage(&mut self) -> Option<Event> {
        let len = std::mem::take(&mut self.garbage);
        (len > 0).then_some(Event::Garbage { len })
    }

    fn store(&mut self, byte: u8) {
        if self.overflow {
            return;
        }
        if self.payload.len() >= self.max_packet {
            self.overflow = true;
            self.payload = Vec::new();
        } else {
            self.payload.push(byte);
        }
    }

    fn step(&mut self, b: u8) -> Step {
        match self.state {
            State::Idle => {
                let ev = match b {
                    PACKET_START | NOTIFICATION_START => None,
                    ACK => Some(Event::Ack),
                    NAK => Some(Event::Nak),
                    INTERRUPT => Some(Event::Interrupt),
                    _ => {
                        self.garbage = self.garbage.saturating_add(1);
                        return Step::Consumed;
                    }
                };
                if let Some(g) = self.take_garbage() {
                    return Step::Retry(g);
                }
                match ev {
                    Some(ev) => Step::Event(ev),
                    None => {
                        self.reset_frame();
                        self.notification = b == NOTIFICATION_START;
                        self.state = State::Body;
                        Step::Consumed
                    }
                }
            }
            State::Body | State::BodyEscape | State::BodyRun => self.body_byte(b),
            State::Check1 => match b {
                PACKET_START | NOTIFICATION_START => self.restart(b),
                _ => {
                    self.state = State::Check2(b);
                    Step::Consumed
                }
            },
            State::Check2(first) => match b {
                PACKET_START | NOTIFICATION_START => self.restart(b),
                _ => {
                    self.state = State::Idle;
                    Step::Event(self.finish_frame(first, b))
                }
            },
        }
    }

    /// A `$`/`%` arrived inside a frame: the partial frame was garbage; start over.
    fn restart(&mut self, start: u8) -> Step {
        let aborted = 1 + self.raw_len + usize::from(matches!(self.state, State::Check2(_))) + {
            usize::from(matches!(self.state, State::Check1 | State::Check2(_)))
        };
        self.reset_frame();
        self.notification = start == NOTIFICATION_START;
        self.state = State::Body;
        self.garbage = 0;
        Step::Event(Event::Garbage { len: aborted })
    }

    fn body_byte(&mut self, b: u8) -> Step {
        if b == PAYLOAD_END {
            if self.state != State::Body {
                self.malformed = true;
            }
            self.state = State::Check1;
            return Step::Consumed;
        }
        if b == PACKET_START {
            return self.restart(b);
        }
        self.raw_len = self.raw_len.saturating_add(1);
        self.sum = self.sum.wrapping_add(b);
        if self.raw_len > self.max_packet {
            self.overflow = true;
            self.payload = Vec::new();
        }
        match self.state {
            State::BodyEscape => {
                self.state = State::Body;
                self.store(b ^ ESCAPE_XOR);
            }
            State::BodyRun => {
                self.state = State::Body;
                match (b.checked_sub(RUN_BIAS), self.payload.last().copied()) {
                    (Some(repeat), Some(last)) if !self.overflow => {
                        let repeat = usize::from(repeat);
                        if self.payload.len().saturating_add(repeat) > self.max_packet {
                            self.overflow = true;
                            self.payload = Vec::new();
                        } else {
                            self.payload.extend(std::iter::repeat_n(last, repeat));
                        }
                    }
                    (_, _) if self.overflow => {}
                    _ => self.malformed = true,
                }
            }
            _ => match b {
                ESCAPE => self.state = State::BodyEscape,
                RUN_LENGTH => self.state = State::BodyRun,
                _ => self.store(b),
            },
        }
        Step::Consumed
    }

    fn finish_frame(&mut self, hi: u8, lo: u8) -> Event {
        let received = match (hex_value(hi), hex_value(lo)) {
            (Some(h), Some(l)) => Some((h << 4) | l),
            _ => None,
        };
        let computed = self.sum;
        let ev = if self.overflow {
            Event::Oversize { len: self.raw_len }
        } else if self.malformed || received != Some(computed) {
            Event::BadChecksum {
                computed,
                received: received.unwrap_or(0),
            }
        } else {
            let payload = std::mem::replace(&mut self.payload, std::mem::take(&mut self.spare));
            if self.notification {
                Event::Notification(payload)
            } else {
                Event::Packet(payload)
            }
        };
        self.reset_frame();
        ev
    }
}

enum Step {
    Consumed,
    Event(Event),
    Retry(Event),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs at the very start and end of every length around the block size (the
    /// padded first block and tail) are found as the generic encoder finds them.
    #[test]
    fn runs_at_the_edges_of_blocks_are_found() {
        let fills: [&[u8]; 5] = [
            &[0x12, 0x34],
            &[0x11],
            &[0x01, 0x10],
            &[0xaa, 0xa0],
            &[0x0a],
        ];
        for len in 0..3 * RUN_BLOCK + 3 {
            for edge in fills {
                for body in fills {
                    let data: Vec<u8> = (0..len)
                        .map(|i| {
                            let pick = if i < 3 || i + 3 >= len { edge } else { body };
                            pick.get(i % pick.len()).copied().unwrap_or(0)
                        })
                        .collect();
                    let hex = crate::gdb::hex::encode_hex(&data);
                    let mut got = Vec::new();
                    encode_hex_packet_into(&data, true, &mut got);
                    assert_eq!(got, encode_packet(&hex, true), "{data:02x?}");
                }
            }
        }
    }

    /// The whole-byte form of the run test is the digit form, for every three bytes.
    #[test]
    fn the_vector_run_test_is_the_digit_test() {
        for prev in 0..=255u8 {
            for x in 0..=255u8 {
                for next in 0..=255u8 {
                    assert_eq!(
                        run_start_bytewise(prev, x, next) == 1,
                        run_start(Some(prev), x, next),
                        "{prev:02x} {x:02x} {next:02x}"
                    );
                }
            }
        }
    }

    #[test]
    fn encodes_a_plain_packet() {
        assert_eq!(encode_packet(b"OK", false), b"$OK#9a");
        assert_eq!(encode_packet(b"", false), b"$#00");
    }

    #[test]
    fn escapes_the_four_special_bytes() {
        let mut out = Vec::new();
        escape_into(b"a#$}*b", &mut out);
        assert_eq!(out, b"a}\x03}\x04}\x5d}\x0ab");
        assert_eq!(unescape(&out, 100).unwrap(), b"a#$}*b");
    }

    #[test]
    fn run_length_encodes_and_avoids_hash_and_dollar_counts() {
        let mut out = Vec::new();
        escape_rle_into(b"0000000", &mut out); // 1 + 6 extra: count 6 is '#', not allowed
        assert!(!out.contains(&b'#') && !out.contains(&b'$'), "{out:?}");
        assert_eq!(unescape(&out, 100).unwrap(), b"0000000");
        let mut out = Vec::new();
        escape_rle_into(b"00000000", &mut out); // 7 extra: '$' not allowed either
        assert!(!out.contains(&b'#') && !out.contains(&b'$'), "{out:?}");
        assert_eq!(unescape(&out, 100).unwrap(), b"00000000");
        let mut out = Vec::new();
        escape_rle_into(b"00000", &mut out);
        assert_eq!(out, b"0*!"); // 4 extra copies: 4 + 29 = '!'
    }

    #[test]
    fn decodes_the_spec_example_of_run_length() {
        // "0* " means '0' plus 3 more.
        let mut d = Decoder::default();
        let cs = checksum(b"0* ");
        let frame = format!("$0* #{cs:02x}");
        assert_eq!(
            d.decode(frame.as_bytes()),
            vec![Event::Packet(b"0000".to_vec())]
        );
    }

    #[test]
    fn acks_interrupt_and_garbage() {
        let mut d = Decoder::default();
        let evs = d.decode(b"+-xx\x03$OK#9a");
        assert_eq!(
            evs,
            vec![
                Event::Ack,
                Event::Nak,
                Event::Garbage { len: 2 },
                Event::Interrupt,
                Event::Packet(b"OK".to_vec())
            ]
        );
    }

    #[test]
    fn bad_checksum_is_an_event() {
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(b"$OK#00"),
            vec![Event::BadChecksum {
                computed: 0x9a,
                received: 0
            }]
        );
        assert_eq!(d.decode(b"$OK#9a"), vec![Event::Packet(b"OK".to_vec())]);
    }

    #[test]
    fn oversize_is_dropped_without_buffering() {
        let mut d = Decoder::new(8);
        let frame = encode_packet(&[b'a'; 32], false);
        assert_eq!(d.decode(&frame), vec![Event::Oversize { len: 32 }]);
        assert!(d.payload.capacity() <= 16);
        assert_eq!(d.decode(b"$OK#9a"), vec![Event::Packet(b"OK".to_vec())]);
        // A run that would expand past the limit is oversize too.
        let mut d = Decoder::new(8);
        let frame = encode_packet(&[b'a'; 40], true);
        assert!(frame.len() < 10);
        assert!(matches!(
            d.decode(&frame).as_slice(),
            [Event::Oversize { .. }]
        ));
    }

    #[test]
    fn notification_and_restart() {
        let mut d = Decoder::default();
        // A `$` inside a frame aborts it; `%` inside a frame is data.
        let mut bytes = b"$a%c".to_vec();
        encode_packet_into(b"OK", false, &mut bytes);
        encode_notification_into(b"Stop:T05", &mut bytes);
        let evs = d.decode(&bytes);
        assert_eq!(evs[0], Event::Garbage { len: 4 });
        assert_eq!(evs[1], Event::Packet(b"OK".to_vec()));
        assert_eq!(evs[2], Event::Notification(b"Stop:T05".to_vec()));
    }

    #[test]
    fn finish_reports_truncated_frame() {
        let mut d = Decoder::default();
        assert!(d.decode(b"$ab").is_empty());
        assert_eq!(d.finish(), Some(Event::Garbage { len: 3 }));
        assert_eq!(d.finish(), None);
    }
}
