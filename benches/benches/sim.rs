//! Simulator benchmarks: booting `part4`, running the workload, and searching every module
//! for a tag with the simulator's page-aware `memmem` search against a plain byte-by-byte
//! scan of the same readable bytes (the baseline a naive debugger script would be).
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

fn bench_search(c: &mut Criterion) {
    let machine = Machine::boot(&part4()).unwrap();
    let modules = machine.modules();
    let mut g = c.benchmark_group("search all modules for \"Leak\"");
    g.bench_function("Machine::search (memmem, skips holes)", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &modules {
                n += machine
                    .search(m.base, m.base.saturating_add(m.size), b"Leak", usize::MAX)
                    .len();
            }
            black_box(n)
        })
    });
    // Baseline: read each module page by page and compare at every offset.
    g.bench_function("naive page reads + bytewise compare", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut page = vec![0u8; 0x1000];
            for m in &modules {
                let mut bytes = Vec::new();
                let mut a = m.base.get();
                while a < m.base.get() + m.size {
                    if machine.read(a.into(), &mut page).is_ok() {
                        bytes.extend_from_slice(&page);
                    }
                    a += 0x1000;
                }
                n += bytes.windows(4).filter(|w| *w == b"Leak").count();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_boot, bench_search);
criterion_main!(benches);
