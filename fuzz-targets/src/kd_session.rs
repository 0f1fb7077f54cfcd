//! A KD session (both schemes, both roles) fed arbitrary input and timer ticks: no panic,
//! bounded queues.

use std::time::Duration;

use tagsplit_protocol::kd::{PacketType, Role, Session, SessionConfig};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Target
    } else {
        Role::Debugger
    };
    let cfg = if mode & 2 == 0 {
        SessionConfig::kdcom(role)
    } else {
        SessionConfig::kdnet(role)
    };
    let mut s = Session::new(cfg);
    let mut now = Duration::ZERO;
    s.send(now, PacketType::StateManipulate, vec![1, 2, 3]);
    for chunk in rest.split(|&b| b == 0xFE) {
        match chunk.first() {
            Some(0xFD) => {
                now += Duration::from_secs(1);
                s.handle_timeout(now);
            }
            Some(0xFC) => s.send(now, PacketType::DebugIo, chunk.to_vec()),
            _ if mode & 2 == 0 => s.handle_bytes(now, chunk),
            _ => s.handle_packet(now, chunk),
        }
        let mut n = 0;
        while s.poll_transmit().is_some() {
            n += 1;
        }
        while s.poll_event().is_some() {
            n += 1;
        }
        assert!(n < 100_000);
    }
}
