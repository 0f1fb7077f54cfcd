#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Hostile KD peers against the real servers: over KDCOM a peer that claims a 0xFFFF-byte
//! packet, sends a megabyte of garbage and a megabyte of leader bytes, and hangs up; over
//! KDNET maximal datagrams of garbage from a stranger. A good debugger attaches and is
//! served afterwards. (That the stub's buffers stay bounded under the same input is
//! asserted on their sizes in `protocol/tests/kd_stub.rs`.) Time-outs are safety nets.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use tagsplit::target::DebugTarget;
use tagsplit::target::kd::{KdTarget, KdnetListener};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};

const PATIENCE: Duration = Duration::from_secs(30);

fn machine() -> Machine {
    Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
}

/// A megabyte of pseudo-random bytes.
fn garbage() -> Vec<u8> {
    let mut x = 0x9E37_79B9u32;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn kdcom_huge_lengths_and_endless_leaders_then_a_good_debugger() {
    let stub = KdStub::spawn_kdcom(machine(), KdStubOptions::default()).unwrap();
    {
        let mut peer = TcpStream::connect(stub.addr()).unwrap();
        peer.set_write_timeout(Some(PATIENCE)).unwrap();
        let mut wire = vec![0x30, 0x30, 0x30, 0x30, 0x02, 0x30, 0xFF, 0xFF];
        wire.extend([0u8; 8]);
        wire.extend(garbage());
        wire.extend(vec![0x30; 1 << 20]);
        // The stub answers (RESENDs); this peer never reads, and hangs up.
        let _ = peer.write_all(&wire);
    }
    let mut good = KdTarget::connect_kdcom(stub.addr(), PATIENCE).unwrap();
    assert!(!good.modules().unwrap().is_empty());
    drop(good);
    assert_eq!(stub.attaches(), 2);
}

#[test]
fn kdnet_maximal_garbage_datagrams_then_a_good_debugger() {
    let key = "1.2.3.4".parse().unwrap();
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let host = sock.local_addr().unwrap();
    let listener = KdnetListener::from_socket(sock, key).unwrap();
    let stub = KdStub::spawn_kdnet(machine(), host, key, KdStubOptions::default()).unwrap();
    let stranger = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut datagram = garbage()[..65_507].to_vec();
    datagram[..4].copy_from_slice(b"MDBG");
    for _ in 0..50 {
        // UDP may drop some under load; what arrives is refused.
        let _ = stranger.send_to(&datagram, stub.addr());
        let _ = stranger.send_to(&datagram[4..], stub.addr());
    }
    let mut good = listener.accept(PATIENCE).unwrap();
    assert!(!good.modules().unwrap().is_empty());
}
