//! Helpers shared by the gdb test files.

#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use tagsplit::VirtAddr;
use tagsplit::target::gdb::serve_scenario;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};

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
