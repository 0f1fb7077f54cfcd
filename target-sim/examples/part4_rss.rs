#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Boots `part4`, runs a bare `g`, and prints the time taken, the materialised pages and
//! the process's peak RSS (VmHWM from /proc/self/status, Linux only).
//!
//! `cargo run --release -p tagsplit-target-sim --example part4_rss`

use std::time::Instant;

use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let t0 = Instant::now();
    let scenario = Scenario::builtin("part4").unwrap();
    let mut m = Machine::boot(&scenario).unwrap();
    let boot = t0.elapsed();
    m.run(scenario.default_run_ticks());
    let total = t0.elapsed();
    let accounted: u64 = m.pool().live_allocations().map(|a| a.charged).sum();
    println!(
        "boot {:?}, boot + run {:?}; {} live allocations, {} bytes accounted; {} pages materialised ({} KiB)",
        boot,
        total,
        m.pool().live_allocations().count(),
        accounted,
        m.memory().materialized_pages(),
        m.memory().materialized_pages() * 4
    );
    match vm_hwm_kib() {
        Some(k) => println!("peak RSS (VmHWM): {k} KiB = {:.1} MiB", k as f64 / 1024.0),
        None => println!("peak RSS: /proc/self/status not available"),
    }
}
