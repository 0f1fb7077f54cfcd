#![no_main]
//! Bytes into the protocol's GDB stub over a small target with every capability; no
//! panic, bounded output, and a run always ends.

use libfuzzer_sys::fuzz_target;
use tagsplit_protocol::gdb::stub::{Stub, StubConfig};

#[path = "tiny_target.rs"]
mod tiny_target;
use tiny_target::Tiny;

fuzz_target!(|data: &[u8]| {
    let mut target = Tiny::new();
    let mut stub = Stub::new(StubConfig {
        packet_size: 512,
        ..StubConfig::default()
    });
    for chunk in data.chunks(9) {
        stub.receive(&mut target, chunk);
        for _ in 0..8 {
            if stub.poll_run(&mut target).is_none() {
                break;
            }
        }
        let out = stub.poll_transmit().unwrap_or_default();
        assert!(out.len() <= 64 * 1024);
        if stub.is_closed() {
            break;
        }
    }
    stub.disconnect(&mut target);
});
