//! Bytes into the protocol's GDB stub over a small target with every capability; no
//! panic, bounded output, and a run always ends.

use tagsplit_protocol::gdb::stub::{Stub, StubConfig};

use crate::tiny::Tiny;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut target = Tiny::new();
    let mut stub = Stub::new(StubConfig {
        packet_size: 512,
        ..StubConfig::default()
    });
    for chunk in data.chunks(9) {
        let mut rest = chunk;
        // Offered again until taken; a running target may hold it back for a while.
        for _ in 0..16 {
            let used = stub.receive(&mut target, rest);
            rest = rest.get(used..).unwrap_or_default();
            assert!(stub.pending_commands() <= StubConfig::default().max_pending);
            for _ in 0..8 {
                if stub.poll_run(&mut target).is_none() {
                    break;
                }
            }
            let out = stub.poll_transmit().unwrap_or_default();
            // The transmit bound plus at most one reply.
            assert!(out.len() <= 80 * 1024);
            if rest.is_empty() || stub.is_closed() {
                break;
            }
        }
        if stub.is_closed() {
            break;
        }
    }
    stub.disconnect(&mut target);
}
