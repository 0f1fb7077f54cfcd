#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The GDB stub core allocates nothing per packet once warm: receiving, parsing (which
//! borrows from the frame buffer), dispatching and encoding the reply of `qZ`, `?`,
//! `m addr,1`, `X addr,1`, `Z0`, `vCont;c` (with its stop reply), `g` and a 4 KiB `m`, with
//! the replies taken through `poll_transmit_into` as a transport does. Allocations are
//! counted by the `stats_alloc` global allocator, which sees every thread: so this test
//! runs without the libtest harness (`harness = false`), whose own threads allocate while
//! a test runs, as a plain `main` on one thread.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
use tagsplit_protocol::stub::FlatTarget;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const BASE: u64 = 0x10000;

fn frame(payload: &str) -> Vec<u8> {
    let cs = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${payload}#{cs:02x}").into_bytes()
}

fn main() {
    no_allocation_per_packet_once_warm();
    println!("gdb_alloc: no allocation per packet once warm: ok");
}

fn no_allocation_per_packet_once_warm() {
    let packets: Vec<(&str, Vec<u8>)> = [
        "qZ",
        "?",
        "m10000,1",
        "X10000,1:A",
        "Z0,10010,1",
        "vCont;c",
        "g",
        "m10000,1000",
    ]
    .iter()
    .map(|p| (*p, frame(p)))
    .collect();
    let mut target = FlatTarget::new(BASE, (0..0x2000).map(|i| (i * 7) as u8).collect());
    let mut stub = Stub::new(StubConfig::default());
    let mut out = Vec::new();
    let round = |stub: &mut Stub, target: &mut FlatTarget, out: &mut Vec<u8>, pkt: &[u8]| {
        assert_eq!(stub.receive(target, pkt), pkt.len());
        while stub.poll_run(target).is_some() {}
        let n = stub.poll_transmit_into(out);
        assert!(n > 0 && out.first() == Some(&b'+'), "no reply");
        out.clear();
    };
    // Cold: the first packets do allocate (buffers grow), which shows the counting works.
    // Each packet twice in a row: the stub and the transport trade transmit buffers, so
    // each of the two grows once to the largest reply.
    let cold = Region::new(GLOBAL);
    for (_, pkt) in &packets {
        round(&mut stub, &mut target, &mut out, pkt);
        round(&mut stub, &mut target, &mut out, pkt);
    }
    assert!(
        cold.change().allocations > 0,
        "the allocator counts nothing"
    );
    // Warm: every packet kind again, many times, and nothing is allocated.
    for (name, pkt) in &packets {
        let warm = Region::new(GLOBAL);
        for _ in 0..50 {
            round(&mut stub, &mut target, &mut out, pkt);
        }
        let change = warm.change();
        assert_eq!(
            (change.allocations, change.reallocations),
            (0, 0),
            "{name}: allocations once warm"
        );
    }
}
