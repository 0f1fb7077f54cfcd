//! A seeded, sans-IO model of a bad link (feature `impair`), for tests and relays.
//!
//! One [`Impairment`] describes one direction of a link. A [`StreamLink`] models a byte
//! stream (GDB over TCP, KDCOM over a serial line): each byte may be dropped or have one
//! bit flipped, and bytes never change order. A [`DatagramLink`] models datagrams (KDNET
//! over UDP): each datagram may be lost, duplicated, delayed past later ones (reordered),
//! truncated or corrupted (one bit flipped). Both add a fixed latency and pace what they
//! carry at a bandwidth limit.
//!
//! Like the protocols, a link does no I/O and reads no clock: the caller passes `now` (a
//! `Duration` since any fixed instant), hands in what was sent with `send`, and takes out
//! what arrives with `poll_deliver` once `now` reaches `next_delivery`. The same seed, the
//! same inputs and the same `now`s always give the same output; with every rate at zero,
//! no latency and no bandwidth limit a link is the identity.
//!
//! ```
//! use std::time::Duration;
//! use tagsplit_protocol::impair::{DatagramLink, Impairment};
//!
//! let lossy = Impairment { loss: 0.1, duplicate: 0.02, corrupt: 0.02, ..Impairment::default() };
//! let mut link = DatagramLink::new(lossy.with_delay(Duration::from_millis(5)), 7);
//! link.send(Duration::ZERO, b"hello");
//! assert_eq!(link.poll_deliver(Duration::ZERO), None); // still on the wire
//! if let Some(at) = link.next_delivery() {
//!     assert!(at >= Duration::from_millis(5));
//!     assert!(link.poll_deliver(at).is_some());
//! }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use chacha20::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// What one direction of a link does to what crosses it. Rates are probabilities in
/// `[0, 1]` (values outside are clamped, NaN counts as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// Datagrams: the probability that a datagram is lost.
    pub loss: f64,
    /// Datagrams: the probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Datagrams: the probability that a datagram is held back by
    /// [`reorder_delay`](Self::reorder_delay), so later ones overtake it.
    pub reorder: f64,
    /// Datagrams: how long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Datagrams: the probability that a datagram is cut short (to a uniformly chosen
    /// shorter length).
    pub truncate: f64,
    /// Datagrams: the probability that one bit of a datagram is flipped.
    pub corrupt: f64,
    /// Streams: the probability that a byte has one bit flipped.
    pub bit_flip: f64,
    /// Streams: the probability that a byte is dropped.
    pub byte_drop: f64,
    /// The bandwidth in bytes per second (`None`: unlimited). What is sent waits for what
    /// was sent before it and arrives no earlier than its size over this rate.
    pub rate: Option<u64>,
    /// The latency added to everything that crosses.
    pub delay: Duration,
    /// The most bytes a link holds in flight: a datagram that would exceed it is dropped
    /// (and counted), and a stream's owner should stop reading while
    /// [`StreamLink::has_room`] is false.
    pub queue_limit: usize,
}

impl Default for Impairment {
    /// A perfect link: nothing lost, nothing changed, no latency, no bandwidth limit.
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            truncate: 0.0,
            corrupt: 0.0,
            bit_flip: 0.0,
            byte_drop: 0.0,
            rate: None,
            delay: Duration::ZERO,
            queue_limit: 16 << 20,
        }
    }
}

impl Impairment {
    /// The same impairment with `delay` of latency.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The same impairment limited to `bytes_per_s`.
    #[must_use]
    pub fn with_rate(mut self, bytes_per_s: u64) -> Self {
        self.rate = Some(bytes_per_s);
        self
    }
}

/// What a link did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes handed to `send`.
    pub bytes_in: u64,
    /// Bytes handed out by `poll_deliver`.
    pub bytes_out: u64,
    /// Datagrams handed to `send`.
    pub datagrams_in: u64,
    /// Datagrams handed out by `poll_deliver`.
    pub datagrams_out: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Datagrams dropped because the link held [`Impairment::queue_limit`] bytes.
    pub overflowed: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back.
    pub reordered: u64,
    /// Datagrams cut short.
    pub truncated: u64,
    /// Bits flipped (one per corrupted datagram or per hit byte).
    pub flipped: u64,
    /// Stream bytes dropped.
    pub dropped_bytes: u64,
}

/// The seeded coin and the bandwidth clock both kinds of link share.
#[derive(Debug)]
struct Wire {
    config: Impairment,
    rng: ChaCha8Rng,
    /// When the wire finishes sending what it already carries.
    free_at: Duration,
    stats: LinkStats,
}

impl Wire {
    fn new(config: Impairment, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            free_at: Duration::ZERO,
            stats: LinkStats::default(),
        }
    }

    /// True with probability `p`; draws nothing when `p` is 0 (or NaN) or 1.
    fn chance(&mut self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // p * 2^64, exact enough: the threshold a uniform u64 must fall under.
        let threshold = (p * 18_446_744_073_709_551_616.0) as u64;
        self.rng.next_u64() < threshold
    }

    /// A uniform index below `len` (`len` > 0).
    fn below(&mut self, len: usize) -> usize {
        let len64 = u64::try_from(len).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.rng.next_u64() % len64).unwrap_or(0)
    }

    /// When `len` bytes handed over at `now` arrive: after what the wire already carries,
    /// plus their own time on the wire, plus the latency.
    fn schedule(&mut self, now: Duration, len: usize) -> Duration {
        let start = now.max(self.free_at);
        let on_wire = match self.config.rate {
            Some(rate) if rate > 0 => {
                // Rounded up: never earlier than size / rate.
                let nanos = (len as u128)
                    .saturating_mul(1_000_000_000)
                    .div_ceil(u128::from(rate));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        };
        self.free_at = start.saturating_add(on_wire);
        self.free_at.saturating_add(self.config.delay)
    }
}

/// The most bytes of a stream that arrive together on a link with a rate limit.
pub const STREAM_PIECE: usize = 64;

/// One direction of an impaired byte stream: bytes may be dropped or bit-flipped, never
/// reordered or duplicated. With a rate limit, bytes arrive in pieces of at most
/// [`STREAM_PIECE`] as they come off the wire.
#[derive(Debug)]
pub struct StreamLink {
    wire: Wire,
    /// (arrival, bytes), arrivals non-decreasing.
    queue: VecDeque<(Duration, Vec<u8>)>,
    queued: usize,
}

impl StreamLink {
    /// A link impaired by `config`, its coin seeded with `seed`.
    pub fn new(config: Impairment, seed: u64) -> Self {
        Self {
            wire: Wire::new(config, seed),
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Hands `bytes` to the link at `now`. The link takes them all: check
    /// [`has_room`](Self::has_room) before reading more from a peer.
    pub fn send(&mut self, now: Duration, bytes: &[u8]) {
        let mut out = Vec::with_capacity(bytes.len());
        let (drop_p, flip_p) = (self.wire.config.byte_drop, self.wire.config.bit_flip);
        for &b in bytes {
            self.wire.stats.bytes_in += 1;
            if self.wire.chance(drop_p) {
                self.wire.stats.dropped_bytes += 1;
                continue;
            }
            let mut b = b;
            if self.wire.chance(flip_p) {
                b ^= 1u8 << (self.wire.rng.next_u32() % 8);
                self.wire.stats.flipped += 1;
            }
            out.push(b);
        }
        if out.is_empty() {
            return;
        }
        self.queued = self.queued.saturating_add(out.len());
        if self.wire.config.rate.is_some_and(|r| r > 0) {
            // At a limited rate the bytes come off the wire as they go, a piece at a
            // time, as on a serial line (not all at once when the last one is through).
            for piece in out.chunks(STREAM_PIECE) {
                let at = self.wire.schedule(now, piece.len());
                self.queue.push_back((at, piece.to_vec()));
            }
        } else {
            let at = self.wire.schedule(now, out.len());
            self.queue.push_back((at, out));
        }
    }

    /// Every byte that has arrived by `now`, in order, or `None` when none has.
    pub fn poll_deliver(&mut self, now: Duration) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            let Some((_, chunk)) = self.queue.pop_front() else {
                break;
            };
            self.queued = self.queued.saturating_sub(chunk.len());
            match out.as_mut() {
                Some(o) => o.extend_from_slice(&chunk),
                None => out = Some(chunk),
            }
        }
        if let Some(o) = &out {
            self.wire.stats.bytes_out += o.len() as u64;
        }
        out
    }

    /// When the next bytes arrive (`None`: nothing in flight).
    pub fn next_delivery(&self) -> Option<Duration> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// The bytes in flight.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether the link holds fewer than [`Impairment::queue_limit`] bytes.
    pub fn has_room(&self) -> bool {
        self.queued < self.wire.config.queue_limit
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.wire.stats
    }
}

/// One direction of an impaired datagram link: datagrams may be lost, duplicated,
/// reordered, delayed, truncated or corrupted.
#[derive(Debug)]
pub struct DatagramLink {
    wire: Wire,
    /// (arrival, sequence, datagram): the earliest arrival first, ties in sending order.
    queue: BinaryHeap<Reverse<(Duration, u64, Vec<u8>)>>,
    queued: usize,
    seq: u64,
}

impl DatagramLink {
    /// A link impaired by `config`, its coin seeded with `seed`.
    pub fn new(config: Impairment, seed: u64) -> Self {
        Self {
            wire: Wire::new(config, seed),
            queue: BinaryHeap::new(),
            queued: 0,
            seq: 0,
        }
    }

    /// Hands one datagram to the link at `now`.
    pub fn send(&mut self, now: Duration, datagram: &[u8]) {
        let c = self.wire.config.clone();
        self.wire.stats.datagrams_in += 1;
        self.wire.stats.bytes_in += datagram.len() as u64;
        if self.wire.chance(c.loss) {
            self.wire.stats.lost += 1;
            return;
        }
        let mut d = datagram.to_vec();
        if !d.is_empty() && self.wire.chance(c.truncate) {
            let len = self.wire.below(d.len());
            d.truncate(len);
            self.wire.stats.truncated += 1;
        }
        if !d.is_empty() && self.wire.chance(c.corrupt) {
            let at = self.wire.below(d.len());
            let bit = self.wire.rng.next_u32() % 8;
            if let Some(b) = d.get_mut(at) {
                *b ^= 1u8 << bit;
            }
            self.wire.stats.flipped += 1;
        }
        let mut at = self.wire.schedule(now, d.len());
        if self.wire.chance(c.reorder) {
            at = at.saturating_add(c.reorder_delay);
            self.wire.stats.reordered += 1;
        }
        if self.wire.chance(c.duplicate) {
            self.wire.stats.duplicated += 1;
            self.push(at, d.clone());
        }
        self.push(at, d);
    }

    fn push(&mut self, at: Duration, d: Vec<u8>) {
        if self.queued.saturating_add(d.len()) > self.wire.config.queue_limit {
            self.wire.stats.overflowed += 1;
            return;
        }
        self.queued = self.queued.saturating_add(d.len());
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, d)));
    }

    /// The next datagram that has arrived by `now`, or `None`.
    pub fn poll_deliver(&mut self, now: Duration) -> Option<Vec<u8>> {
        if self.next_delivery()? > now {
            return None;
        }
        let Reverse((_, _, d)) = self.queue.pop()?;
        self.queued = self.queued.saturating_sub(d.len());
        self.wire.stats.datagrams_out += 1;
        self.wire.stats.bytes_out += d.len() as u64;
        Some(d)
    }

    /// When the next datagram arrives (`None`: nothing in flight).
    pub fn next_delivery(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The bytes in flight.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.wire.stats
    }
}
