#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The part4 machine holds over 330 MB of accounted pool, yet boot + a bare `g` stays under
//! 64 MiB peak RSS (this file holds one test so the process measures only it).
//!
//! `cargo test --release -p tagsplit-target-sim --test rss -- --nocapture` prints the numbers.

use std::time::Instant;

use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn part4_boot_and_run_stay_under_64_mib() {
    let t0 = Instant::now();
    let scenario = Scenario::builtin("part4").unwrap();
    let mut m = Machine::boot(&scenario).unwrap();
    let boot = t0.elapsed();
    m.run(scenario.default_run_ticks());
    let total = t0.elapsed();
    let accounted: u64 = m.pool().live_allocations().map(|a| a.charged).sum();
    eprintln!(
        "boot {boot:?}, boot + run {total:?}; {} live allocations, {accounted} bytes accounted; {} pages materialised",
        m.pool().live_allocations().count(),
        m.memory().materialized_pages()
    );
    assert!(accounted > 330_000_000, "accounted {accounted}");
    // materialised pages are far fewer than the accounted bytes would need
    assert!((m.memory().materialized_pages() as u64) * 4096 < accounted / 8);
    let Some(kib) = vm_hwm_kib() else {
        eprintln!("no /proc/self/status; skipping the RSS check");
        return;
    };
    eprintln!("peak RSS {kib} KiB");
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB");
}
