//! The impairment model: identity at zero rates, determinism per seed, rates within
//! statistical bounds, bandwidth pacing.

use std::time::Duration;

use proptest::prelude::*;
use tagsplit_protocol::impair::{DatagramLink, Impairment, StreamLink};

const FOREVER: Duration = Duration::from_secs(1 << 30);

fn drain_stream(link: &mut StreamLink) -> Vec<u8> {
    link.poll_deliver(FOREVER).unwrap_or_default()
}

fn drain_datagrams(link: &mut DatagramLink) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| link.poll_deliver(FOREVER)).collect()
}

fn lossy() -> Impairment {
    Impairment {
        loss: 0.1,
        duplicate: 0.02,
        reorder: 0.05,
        truncate: 0.01,
        corrupt: 0.02,
        bit_flip: 1e-3,
        byte_drop: 1e-3,
        ..Impairment::default()
    }
}

/// A deterministic, incompressible payload.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

proptest! {
    #[test]
    fn stream_at_zero_rates_is_identity(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20), seed: u64) {
        let mut link = StreamLink::new(Impairment::default(), seed);
        let mut got = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let now = Duration::from_millis(i as u64);
            link.send(now, c);
            // No latency, no limit: everything is there at once.
            got.extend(link.poll_deliver(now).unwrap_or_default());
            prop_assert_eq!(link.next_delivery(), None);
        }
        prop_assert_eq!(got, chunks.concat());
    }

    #[test]
    fn datagrams_at_zero_rates_are_identity(dgrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..20), seed: u64) {
        let mut link = DatagramLink::new(Impairment::default(), seed);
        let mut got = Vec::new();
        for (i, d) in dgrams.iter().enumerate() {
            let now = Duration::from_millis(i as u64);
            link.send(now, d);
            got.extend(std::iter::from_fn(|| link.poll_deliver(now)));
        }
        prop_assert_eq!(got, dgrams);
    }

    #[test]
    fn same_seed_same_output(dgrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..40), seed: u64) {
        let run_d = || {
            let mut link = DatagramLink::new(lossy().with_delay(Duration::from_millis(3)), seed);
            for (i, d) in dgrams.iter().enumerate() {
                link.send(Duration::from_millis(i as u64), d);
            }
            (drain_datagrams(&mut link), link.stats())
        };
        prop_assert_eq!(run_d(), run_d());
        let run_s = || {
            let mut link = StreamLink::new(lossy().with_rate(10_000), seed);
            for (i, d) in dgrams.iter().enumerate() {
                link.send(Duration::from_millis(i as u64), d);
            }
            (drain_stream(&mut link), link.stats())
        };
        prop_assert_eq!(run_s(), run_s());
    }

    #[test]
    fn pacing_delivers_no_earlier_than_size_over_rate(sizes in prop::collection::vec(1usize..2000, 1..20), rate in 1_000u64..1_000_000, delay_ms in 0u64..50) {
        let delay = Duration::from_millis(delay_ms);
        let imp = Impairment::default().with_rate(rate).with_delay(delay);
        let mut s = StreamLink::new(imp.clone(), 1);
        let mut d = DatagramLink::new(imp, 1);
        let mut total = 0usize;
        let mut delivered = 0usize;
        for &n in &sizes {
            // Everything handed over at time 0: byte k arrives no earlier than k / rate
            // (a stream's bytes in pieces as they come off the wire, a datagram whole).
            s.send(Duration::ZERO, &payload(n));
            d.send(Duration::ZERO, &payload(n));
            total += n;
            let floor = Duration::from_secs_f64(total as f64 / rate as f64) + delay;
            let early = s.poll_deliver(floor.saturating_sub(Duration::from_micros(1))).map_or(0, |b| b.len());
            delivered += early;
            prop_assert!(early < n);
            while let Some(at) = s.next_delivery() {
                delivered += s.poll_deliver(at).map_or(0, |b| b.len());
                let due = Duration::from_secs_f64(delivered as f64 / rate as f64) + delay;
                prop_assert!(at >= due.saturating_sub(Duration::from_micros(1)), "{:?} < {:?}", at, due);
            }
            prop_assert_eq!(delivered, total);
            let mut last = Duration::ZERO;
            while let Some(at) = d.next_delivery() {
                last = at;
                d.poll_deliver(at);
            }
            prop_assert!(last >= floor.saturating_sub(Duration::from_nanos(1)), "{:?} < {:?}", last, floor);
        }
    }
}

/// `k` successes in `n` trials at probability `p` lie within 6 standard deviations.
fn within(k: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 6.0 * sd + 1.0
}

#[test]
fn datagram_rates_hold_on_large_inputs() {
    let imp = Impairment {
        loss: 0.1,
        duplicate: 0.02,
        reorder: 0.05,
        truncate: 0.03,
        corrupt: 0.02,
        ..Impairment::default()
    };
    for seed in 0..4 {
        let mut link = DatagramLink::new(imp.clone(), seed);
        let n = 50_000u64;
        for i in 0..n {
            link.send(Duration::from_micros(i), &payload(64));
        }
        let s = link.stats();
        assert!(within(s.lost, n, 0.1), "lost {}", s.lost);
        let kept = n - s.lost;
        assert!(within(s.duplicated, kept, 0.02), "dup {}", s.duplicated);
        assert!(within(s.reordered, kept, 0.05), "reorder {}", s.reordered);
        assert!(within(s.truncated, kept, 0.03), "trunc {}", s.truncated);
        assert!(s.flipped <= kept && s.flipped > 0);
        let out = drain_datagrams(&mut link);
        assert_eq!(out.len() as u64, kept + s.duplicated);
        // Reordering happened: some datagram arrived after one sent later.
        assert_eq!(s.overflowed, 0);
    }
}

#[test]
fn stream_rates_hold_and_order_is_kept() {
    let imp = Impairment {
        bit_flip: 1e-3,
        byte_drop: 2e-3,
        ..Impairment::default()
    };
    let data = payload(1 << 20);
    let mut link = StreamLink::new(imp, 42);
    for chunk in data.chunks(4096) {
        link.send(Duration::ZERO, chunk);
    }
    let s = link.stats();
    let n = data.len() as u64;
    assert!(
        within(s.dropped_bytes, n, 2e-3),
        "dropped {}",
        s.dropped_bytes
    );
    assert!(
        within(s.flipped, n - s.dropped_bytes, 1e-3),
        "flipped {}",
        s.flipped
    );
    let out = drain_stream(&mut link);
    assert_eq!(out.len() as u64, n - s.dropped_bytes);
    // Never reordered: with only drops (no flips) the output is a subsequence of the input.
    let mut drops_only = StreamLink::new(
        Impairment {
            byte_drop: 0.01,
            ..Impairment::default()
        },
        3,
    );
    drops_only.send(Duration::ZERO, &data);
    let out = drain_stream(&mut drops_only);
    let mut it = data.iter();
    assert!(out.iter().all(|b| it.any(|x| x == b)));
}

#[test]
fn datagram_queue_is_bounded() {
    let imp = Impairment {
        queue_limit: 1000,
        ..Impairment::default()
    }
    .with_rate(1);
    let mut link = DatagramLink::new(imp, 0);
    for _ in 0..100 {
        link.send(Duration::ZERO, &payload(100));
    }
    assert!(link.queued_bytes() <= 1000);
    assert_eq!(link.stats().overflowed, 90);
}
