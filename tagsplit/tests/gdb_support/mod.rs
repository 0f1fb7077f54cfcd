//! Helpers shared by the test files that serve a simulated machine (GDB and KD stubs).

#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use tagsplit::VirtAddr;
use tagsplit::target::gdb::serve_scenario;
use tagsplit_target_sim::machine::{Machine, SiteInfo, SiteKind};
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};
use tagsplit_target_sim::server::kd::KdStubOptions;

/// A freshly booted part4 machine.
pub fn part4() -> Machine {
    Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
}

/// KD stub options offering part4's default run (as `tagsplit serve` does).
pub fn kd_options() -> KdStubOptions {
    KdStubOptions {
        default_run_ticks: Some(Scenario::builtin("part4").unwrap().default_run_ticks()),
        ..KdStubOptions::default()
    }
}

/// Boots part4 and serves it on 127.0.0.1:0 with the console as `monitor`.
pub fn part4_stub(features: StubFeatures) -> GdbStubHandle {
    let scenario = Scenario::builtin("part4").unwrap();
    serve_scenario(
        &scenario,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        features,
    )
    .unwrap()
}

/// The unmapped gap `[start, end)` right below the block of contiguous mappings holding `addr`.
pub fn hole_below(m: &Machine, addr: VirtAddr) -> (VirtAddr, VirtAddr) {
    let regions: Vec<_> = m.memory().regions().collect();
    let mut i = regions.iter().position(|r| r.contains(addr.get())).unwrap();
    while i > 0 && regions[i - 1].end == regions[i].start {
        i -= 1;
    }
    assert!(i > 0, "nothing mapped below {addr}");
    (regions[i - 1].end, regions[i].start)
}

/// part4's allocation site with the tag `Leak` that leaks (myfault.sys's first).
pub fn leak_alloc_site(stub: &GdbStubHandle) -> SiteInfo {
    stub.with_machine(|m| {
        m.sites()
            .into_iter()
            .find(|s| s.kind == SiteKind::Alloc && s.tag.to_string() == "Leak")
            .unwrap()
    })
}

/// The base of `myfault.sys` in `m`.
pub fn myfault_base(m: &Machine) -> VirtAddr {
    m.modules()
        .into_iter()
        .find(|x| x.name == "myfault.sys")
        .unwrap()
        .base
}
