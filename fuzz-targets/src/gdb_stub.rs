//! Bytes into the protocol's GDB stub over a small target with every capability; no
//! panic, bounded output, and a run always ends.

use tagsplit_protocol::gdb::stub::{Stub, StubConfig};

use crate::tiny::Tiny;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut target = Tiny::new();
    let mut stub = new_stub();
    feed(&mut stub, &mut target, data);
    stub.disconnect(&mut target);
}

/// The stub the GDB stub targets fuzz: packets of at most 512 bytes.
pub fn new_stub() -> Stub {
    Stub::new(StubConfig {
        packet_size: 512,
        ..StubConfig::default()
    })
}

/// Feeds `data` to the stub nine bytes at a time, letting a running target progress and
/// draining what the stub sends; panics when the pending commands or one transmit
/// outgrow their bounds. Returns whether the stub closed the connection.
pub fn feed(stub: &mut Stub, target: &mut Tiny, data: &[u8]) -> bool {
    for chunk in data.chunks(9) {
        let mut rest = chunk;
        // Offered again until taken; a running target may hold it back for a while.
        for _ in 0..16 {
            let used = stub.receive(target, rest);
            rest = rest.get(used..).unwrap_or_default();
            assert!(stub.pending_commands() <= StubConfig::default().max_pending);
            for _ in 0..8 {
                if stub.poll_run(target).is_none() {
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
            return true;
        }
    }
    false
}
