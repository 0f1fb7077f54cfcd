//! Simulator benchmarks: booting `part4` and running the workload. (Memory search is in
//! `search.rs`, against `memmem` over the same materialised bytes; the pool in `pool.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

fn part4() -> Scenario {
    Scenario::builtin("part4").expect("built-in part4")
}

fn bench_boot(c: &mut Criterion) {
    let scenario = part4();
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.bench_function("boot part4", |b| {
        b.iter(|| black_box(Machine::boot(&scenario).unwrap().tick()))
    });
    let machine = Machine::boot(&scenario).unwrap();
    g.bench_function("run part4 100 ticks", |b| {
        b.iter_batched(
            || machine.clone(),
            |mut m| black_box(m.run(100).ticks_run),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_boot);
criterion_main!(benches);
