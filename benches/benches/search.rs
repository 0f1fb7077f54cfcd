//! Memory search against its limit: `memchr::memmem` over the same bytes in one flat
//! buffer. The kernel is `part4` with every page of every module materialised (read and
//! written back, so nothing is an untouched zero page the search could skip), and each
//! side looks for `Leak` in all 23 modules:
//!
//! * floor: `memmem` over one flat buffer holding every module's bytes;
//! * the simulator's search (`Machine::search`: page by page, no copies, matches across
//!   page boundaries, holes skipped);
//! * the debugger's search through `DebugTarget::search_memory` on the simulator backend
//!   (which, like a GDB stub's `qSearch`, searches where the memory is);
//! * the debugger's generic search for targets that cannot search
//!   (`tagsplit::target::search_by_reading`: 4 KiB reads through
//!   `DebugTarget::read_memory`, then `memmem`): it must copy every byte out of the
//!   target first, as a wire would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memchr::memmem;
use tagsplit::VirtAddr;
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, SEARCH_CHUNK, search_by_reading};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;

const PAGE: u64 = 0x1000;

/// `part4` booted, with every module page materialised; and all module bytes, flat.
fn materialised() -> (Machine, Vec<u8>) {
    let mut m = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let mut flat = Vec::new();
    let mut page = vec![0u8; PAGE as usize];
    for module in m.modules() {
        let mut a = module.base.get();
        while a < module.base.get() + module.size {
            if m.read(a.into(), &mut page).is_ok() {
                m.write(a.into(), &page).unwrap();
                flat.extend_from_slice(&page);
            }
            a += PAGE;
        }
    }
    (m, flat)
}

fn bench_search(c: &mut Criterion) {
    let (machine, flat) = materialised();
    let modules = machine.modules();
    // One machine for every side (a clone would search other copies of the pages).
    let mut target = SimTarget::from_machine(machine, 100);
    let finder = memmem::Finder::new(b"Leak");
    let want = finder.find_iter(&flat).count();
    let sim_hits = |m: &Machine| -> usize {
        modules
            .iter()
            .map(|x| {
                m.search(x.base, x.base.saturating_add(x.size), b"Leak", usize::MAX)
                    .len()
            })
            .sum()
    };
    assert_eq!(sim_hits(target.machine()), want, "the searches disagree");
    let debugger_hits = |t: &mut SimTarget| -> usize {
        modules
            .iter()
            .map(|x| {
                let end = VirtAddr(x.base.get() + x.size);
                search_by_reading(
                    t,
                    VirtAddr(x.base.get()),
                    end,
                    b"Leak",
                    usize::MAX,
                    SEARCH_CHUNK,
                )
                .unwrap()
                .len()
            })
            .sum()
    };
    assert_eq!(debugger_hits(&mut target), want, "the searches disagree");
    eprintln!(
        "search: {} modules, {} KiB materialised, {} hits",
        modules.len(),
        flat.len() / 1024,
        want
    );

    let mut g = c.benchmark_group("search all modules for Leak");
    g.throughput(Throughput::Bytes(flat.len() as u64));
    g.bench_function("floor: memmem over one flat buffer", |b| {
        b.iter(|| black_box(finder.find_iter(black_box(&flat)).count()))
    });
    g.bench_function("simulator: Machine::search", |b| {
        b.iter(|| black_box(sim_hits(target.machine())))
    });
    g.bench_function("debugger: DebugTarget::search_memory (sim backend)", |b| {
        b.iter(|| {
            let n: usize = modules
                .iter()
                .map(|x| {
                    let end = VirtAddr(x.base.get() + x.size);
                    target
                        .search_memory(VirtAddr(x.base.get()), end, b"Leak", usize::MAX)
                        .unwrap()
                        .len()
                })
                .sum();
            black_box(n)
        })
    });
    g.bench_function("debugger: search_by_reading over the sim backend", |b| {
        b.iter(|| black_box(debugger_hits(&mut target)))
    });
    g.finish();
}

criterion_group!(benches, bench_search);
criterion_main!(benches);
