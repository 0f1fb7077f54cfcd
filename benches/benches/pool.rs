//! The simulator's pool allocator: allocation + free per second with everything the
//! simulator does for them (the `POOL_HEADER` written into simulated memory, the tracker
//! table updated in memory on both, free lists, the allocator's own live-block records),
//! against the floor: a `Box<[u8]>` allocation and free of the same sizes, in the same
//! run. `Throughput::Elements` counts allocation + free pairs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::pool::PoolType;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::{PoolTag, VirtAddr};

/// Blocks allocated, then freed, per iteration.
const BATCH: usize = 1024;
/// Request sizes (all small-block: under the 4,064-byte big-page threshold), cycled.
const SIZES: [u64; 12] = [24, 48, 64, 96, 128, 200, 256, 400, 512, 1024, 2048, 4000];
/// Tags, cycled (several tracker entries stay hot, as on a real machine).
const TAGS: [&[u8; 4]; 8] = [
    b"File", b"Thre", b"Ntff", b"MmSt", b"Irp ", b"Even", b"Leak", b"Ddk ",
];

fn requests() -> Vec<(PoolType, u64, PoolTag)> {
    (0..BATCH)
        .map(|i| {
            let pool = if i % 3 == 2 {
                PoolType::PAGED
            } else {
                PoolType::NON_PAGED
            };
            (
                pool,
                SIZES[(i * 7) % SIZES.len()],
                PoolTag::new(*TAGS[(i * 5) % TAGS.len()]),
            )
        })
        .collect()
}

fn bench_pool(c: &mut Criterion) {
    // The pool of a booted part4: 85 k live blocks, its tracker table in use.
    let mut machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let reqs = requests();
    let mut g = c.benchmark_group("pool alloc+free");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut addrs: Vec<VirtAddr> = Vec::with_capacity(BATCH);
    g.bench_function("simulator pool (header + tracker in memory)", |b| {
        b.iter(|| {
            for &(pool, size, tag) in &reqs {
                addrs.push(machine.pool_alloc(pool, size, tag).unwrap());
            }
            for a in addrs.drain(..) {
                black_box(machine.pool_free(a).unwrap());
            }
        })
    });
    let mut boxes: Vec<Box<[std::mem::MaybeUninit<u8>]>> = Vec::with_capacity(BATCH);
    g.bench_function("floor: Box<[u8]> of the same sizes", |b| {
        b.iter(|| {
            for &(_, size, _) in &reqs {
                // Uninitialised, as a pool block is: the allocator's work alone.
                boxes.push(black_box(Box::<[u8]>::new_uninit_slice(size as usize)));
            }
            for b in boxes.drain(..) {
                drop(black_box(b));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_pool);
criterion_main!(benches);
