//! KDCOM bytes into the protocol's KD stub over a small target with every capability, with
//! the clock moving so retransmissions fire: no panic, bounded output, and a run always
//! ends.

use std::time::Duration;

use tagsplit_protocol::kd::stub::{Stub, StubConfig};

use crate::tiny::Tiny;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut target = Tiny::new();
    let mut stub = Stub::kdcom(StubConfig {
        banner: "fuzz\n".into(),
        ..StubConfig::default()
    });
    let mut now = Duration::ZERO;
    stub.attach(&mut target, now);
    for chunk in data.chunks(13) {
        now += Duration::from_millis(50);
        stub.receive(&mut target, now, chunk);
        stub.handle_timeout(&mut target, now);
        for _ in 0..8 {
            if stub.poll_run(&mut target, now).is_none() {
                break;
            }
        }
        let mut total = 0;
        while let Some(out) = stub.poll_transmit() {
            total += out.len();
            assert!(total <= 1 << 20);
        }
    }
    stub.disconnect(&mut target);
}
