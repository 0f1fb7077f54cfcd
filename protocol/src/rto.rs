//! A retransmission / reply timer that adapts to the link, sans-IO: TCP's smoothed round
//! trip and its variation (RFC 6298, with Karn's rule left to the caller: sample only
//! exchanges that were not sent again) over the quickest round trip seen, plus the time
//! the bytes in flight need on the link, learned from how much longer large exchanges
//! take than the quickest one. A slow but healthy link (a 9,600 bit/s serial line, 200 ms
//! of latency) therefore never looks dead, and a fast one detects a loss within a few
//! round trips.
//!
//! The KD session ([`kd::Session`](crate::kd::Session)) and the GDB client in `tagsplit`
//! use it; time is whatever `Duration`s the caller measures, so it is tested with a
//! fake clock:
//!
//! ```
//! use std::time::Duration;
//! use tagsplit_protocol::rto::{RttEstimator, RtoBounds};
//!
//! let bounds = RtoBounds::new(Duration::from_millis(500), Duration::from_millis(25), Duration::from_secs(2));
//! let mut rtt = RttEstimator::default();
//! assert_eq!(rtt.timeout(&bounds, 100), Duration::from_millis(500)); // nothing measured yet
//! for _ in 0..20 {
//!     rtt.sample(Duration::from_millis(40), 100);
//! }
//! let t = rtt.timeout(&bounds, 100);
//! // A steady link: three times its round trip.
//! assert!(t >= Duration::from_millis(120) && t < Duration::from_millis(130));
//! rtt.back_off();
//! assert!(rtt.timeout(&bounds, 100) >= 2 * t - Duration::from_millis(1));
//! ```

use std::time::Duration;

/// The least a timer allows on top of the smoothed round trip for its variation (a
/// link measured as steady still jitters: a thread is scheduled late, a segment waits).
/// A slow link's timers get far more (at least the expected round trip); this is for fast
/// ones: 2 ms doubled the cost of every loss on a lossy loopback link (KDNET median 0.036
/// -> 0.083 s), to save a few timers fired early on a busy machine at a 1 ms round trip.
pub const MIN_VARIATION_ALLOWANCE: Duration = Duration::from_micros(500);

/// A 115,200-baud serial line (8N1: ten bits a byte) in bytes per second: 11,520.
pub const SERIAL_115200: u64 = 115_200 / 10;

/// The timer's first guess, floor and ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtoBounds {
    /// The timer until a round trip has been measured.
    pub initial: Duration,
    /// The floor.
    pub min: Duration,
    /// The ceiling of the round-trip part (also caps the back-off); the time the bytes
    /// need on the link is added on top.
    pub max: Duration,
}

impl RtoBounds {
    /// Bounds from a first guess, a floor and a ceiling.
    pub const fn new(initial: Duration, min: Duration, max: Duration) -> RtoBounds {
        RtoBounds { initial, min, max }
    }
}

/// The round-trip estimate behind an adaptive timer (see the [module](self) docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The quickest round trip seen and its size in bytes.
    min_rtt: Option<(Duration, usize)>,
    /// Nanoseconds per byte on the wire, smoothed (0 until measured).
    per_byte_ns: u64,
    /// Nanoseconds per byte assumed until a measurement replaces it
    /// ([`assume_rate`](Self::assume_rate)).
    assumed_per_byte_ns: u64,
    /// Time-outs in a row since the last answer: each doubles the timer.
    backoff: u32,
    samples: u64,
    /// Samples that measured the per-byte time.
    rate_samples: u64,
}

impl RttEstimator {
    /// Assumes the link carries `bytes_per_s` until the time bytes need on it has been
    /// measured: a serial line of unknown speed is taken for the slowest one a kernel
    /// debugger commonly uses (115,200 baud, [`SERIAL_115200`]), so the first large packet
    /// on it is not sent again before it could have arrived. The first measurement
    /// replaces the assumption (a fast link is fast from then on). `0`: no assumption.
    pub fn assume_rate(&mut self, bytes_per_s: u64) {
        self.assumed_per_byte_ns = 1_000_000_000u64.checked_div(bytes_per_s).unwrap_or(0);
    }

    /// Takes a round trip of `rtt` for an exchange of `bytes` bytes on the wire (both
    /// ways). Ends any back-off.
    pub fn sample(&mut self, rtt: Duration, bytes: usize) {
        let (min, min_len) = match self.min_rtt {
            Some((m, l)) if m <= rtt => (m, l),
            _ => (rtt, bytes),
        };
        self.min_rtt = Some((min, min_len));
        // The per-byte time from how much longer a larger exchange took than the
        // quickest one (only from exchanges clearly larger than it).
        if bytes >= min_len.saturating_mul(2).max(min_len.saturating_add(64)) {
            let extra = u64::try_from(rtt.saturating_sub(min).as_nanos()).unwrap_or(u64::MAX);
            let more = u64::try_from(bytes - min_len).unwrap_or(u64::MAX).max(1);
            let per_byte = extra / more;
            self.per_byte_ns = if self.rate_samples == 0 {
                per_byte
            } else {
                self.per_byte_ns - self.per_byte_ns / 8 + per_byte / 8
            };
            self.rate_samples = self.rate_samples.saturating_add(1);
        }
        let base = rtt.saturating_sub(self.transfer_time(bytes));
        match self.srtt {
            None => {
                self.srtt = Some(base);
                self.rttvar = base / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(base);
                self.rttvar = self.rttvar * 3 / 4 + err / 4;
                self.srtt = Some(srtt * 7 / 8 + base / 8);
            }
        }
        self.backoff = 0;
        self.samples = self.samples.saturating_add(1);
    }

    /// The timer for an exchange of `bytes` bytes: `bounds.initial` until a round trip
    /// is measured, then SRTT + 4·RTTVAR (at least [`MIN_VARIATION_ALLOWANCE`], and at
    /// least twice the round trip expected for these bytes, SRTT plus their time on the
    /// link: a link as steady as a serial line measures a tiny variation, and the 2 ms a
    /// busy machine stalls a thread then sent a 30 ms state change again; once the
    /// expected round trip sent 40 of 1,505 KDNET packets again at a 1 ms round trip),
    /// doubled per
    /// [`back_off`](Self::back_off) in a row, within `bounds.min` and `bounds.max`; plus
    /// the time `bytes` bytes need on the link as learned (on top of the ceiling: a large
    /// exchange on a slow link is given the time it needs).
    pub fn timeout(&self, bounds: &RtoBounds, bytes: usize) -> Duration {
        let base = match self.srtt {
            None => bounds.initial,
            Some(srtt) => {
                let expected = srtt.saturating_add(self.transfer_time(bytes));
                let allowance = (self.rttvar * 4)
                    .max(MIN_VARIATION_ALLOWANCE)
                    .max(expected.saturating_mul(2));
                srtt.saturating_add(allowance)
            }
        };
        base.saturating_mul(1u32 << self.backoff.min(16))
            .clamp(bounds.min, bounds.max.max(bounds.min))
            .saturating_add(self.transfer_time(bytes))
    }

    /// How long `bytes` bytes take on the link, as measured so far. Before the per-byte
    /// time is measured, the assumed rate ([`assume_rate`](Self::assume_rate)) covers
    /// only the bytes beyond those of the quickest exchange: the smoothed round trip
    /// already holds the time of exchanges that size (a debugger that sends only small
    /// requests would otherwise add 7 ms of an assumed serial line to every timer, and a
    /// lost request on a fast link would cost that).
    pub fn transfer_time(&self, bytes: usize) -> Duration {
        let (per_byte, len) = if self.measured_rate() {
            (self.per_byte_ns, bytes)
        } else {
            let measured = self.min_rtt.map_or(0, |(_, l)| l);
            (self.assumed_per_byte_ns, bytes.saturating_sub(measured))
        };
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        Duration::from_nanos(per_byte.saturating_mul(len))
    }

    /// Whether the time bytes need on the link has been measured (an exchange clearly
    /// larger than the quickest one came back without being sent again).
    pub fn measured_rate(&self) -> bool {
        self.rate_samples > 0
    }

    /// A time-out expired: the next timer is twice as long (up to the ceiling).
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }

    /// Something came back (without a usable sample): the back-off ends.
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// Time-outs in a row since the last answer.
    pub fn backoffs(&self) -> u32 {
        self.backoff
    }

    /// The smoothed round trip (without the per-byte part), once one has been measured.
    pub fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    /// The round trip's smoothed variation.
    pub fn variation(&self) -> Duration {
        self.rttvar
    }

    /// Round trips sampled so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bounds() -> RtoBounds {
        RtoBounds::new(500 * MS, 25 * MS, 2000 * MS)
    }

    #[test]
    fn first_guess_until_measured_then_srtt_plus_four_rttvar() {
        let mut r = RttEstimator::default();
        assert_eq!(r.timeout(&bounds(), 10), 500 * MS);
        r.sample(100 * MS, 10);
        // SRTT 100, RTTVAR 50: 100 + 200.
        assert_eq!(r.timeout(&bounds(), 10), 300 * MS);
        for _ in 0..50 {
            r.sample(100 * MS, 10);
        }
        // A steady link: three round trips (the variation allowance is at least twice the
        // expected round trip).
        let t = r.timeout(&bounds(), 10);
        assert!(t >= 300 * MS && t <= 302 * MS, "{t:?}");
    }

    #[test]
    fn a_slow_link_gets_the_time_its_bytes_need() {
        // 9,600 bit/s: about 1.04 ms a byte, 10 ms of latency. Small and large exchanges
        // alternate, as KD requests and memory reads do.
        let per_byte = Duration::from_micros(1042);
        let rtt = |bytes: u32| 10 * MS + per_byte * bytes;
        let mut r = RttEstimator::default();
        for _ in 0..40 {
            r.sample(rtt(40), 40);
            r.sample(rtt(1000), 1000);
        }
        let b = RtoBounds::new(500 * MS, 25 * MS, Duration::from_secs(60));
        // A 4,000-byte exchange takes 4.2 s on this link: the timer allows for it.
        let t = r.timeout(&b, 4000);
        assert!(t >= rtt(4000), "{t:?} < {:?}", rtt(4000));
        assert!(t <= rtt(4000) * 7 / 2, "{t:?}");
        // A small one is not held up by it.
        assert!(r.timeout(&b, 40) < rtt(40) * 4);
    }

    #[test]
    fn an_assumed_rate_holds_until_measured_then_the_measurement_rules() {
        let b = RtoBounds::new(500 * MS, MS, 2000 * MS);
        let mut r = RttEstimator::default();
        r.assume_rate(SERIAL_115200);
        // 1 ms each way, 11,520 bytes/s: a 56-byte request and its ACK.
        let per_byte = Duration::from_nanos(1_000_000_000 / SERIAL_115200);
        let rtt = |bytes: u32| 2 * MS + per_byte * bytes;
        r.sample(rtt(72), 56);
        assert!(!r.measured_rate());
        // A 3,944-byte reply takes 0.34 s on the line: its timer is longer.
        assert!(r.timeout(&b, 3944) > rtt(3944), "{:?}", r.timeout(&b, 3944));
        // Measured on the same line, it stays long enough.
        r.sample(rtt(3960), 3944);
        assert!(r.measured_rate());
        assert!(r.timeout(&b, 3944) > rtt(3944));
        // Loopback: the first large exchange that comes back at once ends the assumption.
        let mut fast = RttEstimator::default();
        fast.assume_rate(SERIAL_115200);
        fast.sample(MS / 10, 56);
        fast.sample(MS / 10, 3944);
        assert!(
            fast.timeout(&b, 3944) < 3 * MS,
            "{:?}",
            fast.timeout(&b, 3944)
        );
        // No assumption: nothing added before a measurement.
        let mut none = RttEstimator::default();
        none.assume_rate(0);
        assert_eq!(none.transfer_time(3944), Duration::ZERO);
    }

    #[test]
    fn backs_off_to_the_ceiling_and_an_answer_ends_it() {
        let mut r = RttEstimator::default();
        r.sample(100 * MS, 10);
        let mut last = r.timeout(&bounds(), 10);
        for _ in 0..10 {
            r.back_off();
            let t = r.timeout(&bounds(), 10);
            assert!(t >= last);
            last = t;
        }
        assert_eq!(last, 2000 * MS);
        r.reset_backoff();
        assert_eq!(r.timeout(&bounds(), 10), 300 * MS);
    }

    #[test]
    fn has_a_floor() {
        let mut r = RttEstimator::default();
        for _ in 0..10 {
            r.sample(Duration::ZERO, 10);
        }
        assert_eq!(r.timeout(&bounds(), 10), 25 * MS);
    }
}
