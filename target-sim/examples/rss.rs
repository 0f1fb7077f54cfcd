//! Boots part4, runs its default run, and prints the time taken and the process's peak
//! resident set (Linux `VmHWM`). A measurement, not a test: peak RSS depends on the
//! allocator and the machine.
//!
//! `cargo run --release -p tagsplit-target-sim --example rss`

use std::time::Instant;

use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let scenario = Scenario::builtin("part4").ok_or("no part4 scenario")?;
    let mut m = Machine::boot(&scenario)?;
    let boot = t0.elapsed();
    m.run(scenario.default_run_ticks());
    let total = t0.elapsed();
    let accounted: u64 = m.pool().live_allocations().map(|a| a.charged).sum();
    println!(
        "boot {boot:?}, boot + run {total:?}; {} live allocations, {accounted} bytes accounted; {} pages materialised",
        m.pool().live_allocations().count(),
        m.memory().materialized_pages()
    );
    match vm_hwm_kib() {
        Some(kib) => println!("peak RSS {kib} KiB ({:.1} MiB)", kib as f64 / 1024.0),
        None => println!("peak RSS: no /proc/self/status here"),
    }
    Ok(())
}
