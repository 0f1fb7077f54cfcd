#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The whole `part4` split over a slow link, through the in-process relay: a 115,200-baud
//! serial line (11,520 bytes/s each way, 0.5 ms each way) for KDCOM and GDB, and a 10 ms
//! round trip for KDNET. Each checks the verdict against the clean split in process, that
//! the machine is restored byte for byte, the bytes read (only the entries of the tags
//! in play, never the whole tracker table) and the packets sent again. Nothing here
//! depends on how long a split takes.

#[path = "lossy_support/mod.rs"]
mod lossy_support;

use std::time::Duration;

use lossy_support::Protocol;
use tagsplit_protocol::impair::Impairment;
use tagsplit_protocol::rto::SERIAL_115200;

/// 0.5 ms each way: a 1 ms round trip.
fn serial() -> Impairment {
    Impairment::default()
        .with_delay(Duration::from_micros(500))
        .with_rate(SERIAL_115200)
}

/// The whole tracker table of `part4` is 160 KiB: a split that reads it even once
/// receives more than this.
const LESS_THAN_ONE_TABLE: u64 = 64 * 1024;

#[test]
fn part4_over_a_serial_line_and_a_10_ms_network() {
    let want = lossy_support::reference().unwrap();
    let cases = [
        (Protocol::Kdcom, serial()),
        (Protocol::Gdb { ack: false }, serial()),
        (
            Protocol::Kdnet,
            Impairment::default().with_delay(Duration::from_millis(5)),
        ),
    ];
    for (protocol, link) in cases {
        let out = lossy_support::run(protocol, link, 0, &want);
        eprintln!(
            "{}: verdict {} restored {} resends {} ({}) in {:.2} s",
            protocol.name(),
            out.verdict_ok,
            out.restored,
            out.resends,
            out.stats,
            out.took.as_secs_f64()
        );
        if let (Some(got), false) = (&out.report, out.verdict_ok) {
            lossy_support::print_differences(&want.report, got, "report");
        }
        assert!(out.error.is_none(), "{}: {:?}", protocol.name(), out.error);
        assert!(out.verdict_ok, "{}: not the clean verdict", protocol.name());
        assert!(
            out.restored,
            "{}: the machine is not restored",
            protocol.name()
        );
        assert!(
            out.stats.bytes_received < LESS_THAN_ONE_TABLE,
            "{}: {} bytes received",
            protocol.name(),
            out.stats.bytes_received
        );
        // The timers allow for the bytes' time on the line and twice the round trip: none
        // fires on a healthy slow link (0 in quiet runs; a 2-core machine under load can
        // stall a thread past a timer once).
        assert!(
            out.resends <= 1,
            "{}: {} packets sent again on a healthy link",
            protocol.name(),
            out.resends
        );
    }
}
