#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! KDNET refuses what it must, on both sides, and counts it: datagrams under the wrong
//! key, with a forged or truncated tag, replayed, from an address other than the peer's,
//! or of the other direction never reach the KD session (so no target memory is touched);
//! a new poke starts a new connection with fresh sequence numbers.

use std::net::SocketAddr;
use std::time::Duration;

use tagsplit_protocol::kd::{PacketType, Role, SessionEvent};
use tagsplit_protocol::kdnet::{
    Channel, Endpoint, EndpointConfig, EndpointEvent, EndpointStats, KdnetError, Keys, Message,
};

const KEY: &str = "1.2.3.4";

fn target_addr() -> SocketAddr {
    "192.168.2.72:51111".parse().unwrap()
}
fn debugger_addr() -> SocketAddr {
    "192.168.2.1:51111".parse().unwrap()
}
fn stranger() -> SocketAddr {
    "192.168.2.99:51111".parse().unwrap()
}

fn target(nonce: u8) -> Endpoint {
    let cfg = EndpointConfig {
        local: target_addr(),
        peer: debugger_addr(),
        ..EndpointConfig::new(Role::Target, KEY.parse().unwrap(), [nonce; 32])
    };
    Endpoint::new(cfg, Duration::ZERO)
}

fn debugger() -> Endpoint {
    let cfg = EndpointConfig::new(Role::Debugger, KEY.parse().unwrap(), [0x22; 32]);
    Endpoint::new(cfg, Duration::ZERO)
}

/// Delivers every queued datagram both ways, with their real source addresses.
fn settle(t: &mut Endpoint, d: &mut Endpoint) {
    loop {
        let mut moved = false;
        while let Some(x) = t.poll_transmit() {
            moved = true;
            d.handle_datagram_from(Duration::ZERO, target_addr(), &x);
        }
        while let Some(x) = d.poll_transmit() {
            moved = true;
            t.handle_datagram_from(Duration::ZERO, debugger_addr(), &x);
        }
        if !moved {
            return;
        }
    }
}

fn drain(e: &mut Endpoint) -> Vec<EndpointEvent> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

/// A connected pair with nothing pending.
fn connected() -> (Endpoint, Endpoint) {
    let (mut t, mut d) = (target(0x11), debugger());
    t.handle_timeout(Duration::ZERO);
    settle(&mut t, &mut d);
    assert!(t.is_connected() && d.is_connected());
    drain(&mut t);
    drain(&mut d);
    (t, d)
}

/// One data datagram from `from` to the other side (not delivered).
fn data_from(e: &mut Endpoint, byte: u8) -> Vec<u8> {
    e.send(Duration::ZERO, PacketType::StateManipulate, vec![byte; 8]);
    e.poll_transmit().unwrap()
}

/// Delivers `x` to `e` from `from` and checks it was refused for `why`, counted, and
/// produced no KD event.
fn refused(e: &mut Endpoint, from: SocketAddr, x: &[u8], why: fn(&KdnetError) -> bool) {
    let before = e.stats();
    e.handle_datagram_from(Duration::ZERO, from, x);
    let events = drain(e);
    assert_eq!(events.len(), 1, "{events:?}");
    match &events[0] {
        EndpointEvent::Rejected(err) => assert!(why(err), "{err}"),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(e.stats().rejected, before.rejected + 1);
    assert_eq!(
        e.stats().datagrams_sent,
        before.datagrams_sent,
        "nothing answered"
    );
}

fn accepted(e: &mut Endpoint, from: SocketAddr, x: &[u8]) {
    e.handle_datagram_from(Duration::ZERO, from, x);
    let events = drain(e);
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, EndpointEvent::Kd(SessionEvent::Packet { .. }))),
        "{events:?}"
    );
}

/// Delivers what `rx` sends (its ACKs) back to `tx`, from `rx_addr`.
fn ack_back(rx: &mut Endpoint, tx: &mut Endpoint, rx_addr: SocketAddr) {
    while let Some(x) = rx.poll_transmit() {
        tx.handle_datagram_from(Duration::ZERO, rx_addr, &x);
    }
    drain(tx);
}

fn sides() -> [(&'static str, Role); 2] {
    [("target", Role::Target), ("debugger", Role::Debugger)]
}

/// (receiver, sender, sender's address) for a side.
fn pick(t: Endpoint, d: Endpoint, side: Role) -> (Endpoint, Endpoint, SocketAddr) {
    match side {
        Role::Target => (t, d, debugger_addr()),
        _ => (d, t, target_addr()),
    }
}

#[test]
fn the_wrong_key_a_forged_or_truncated_tag_are_refused() {
    for (name, side) in sides() {
        let (t, d) = connected();
        let (mut rx, mut tx, from) = pick(t, d, side);
        let good = data_from(&mut tx, 1);
        // The same message sealed under another key.
        let mut other = Keys::new("9.9.9.9".parse().unwrap());
        other.set_data_key([7; 32]);
        let msg = Message::new(Channel::Data, 4, 1000, side == Role::Target, vec![0; 8]);
        let foreign = other.seal(&msg).unwrap();
        refused(&mut rx, from, &foreign, |e| matches!(e, KdnetError::BadTag));
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        refused(&mut rx, from, &forged, |e| matches!(e, KdnetError::BadTag));
        refused(&mut rx, from, &good[..good.len() - 4], |e| {
            matches!(e, KdnetError::BadLength(_) | KdnetError::BadTag)
        });
        assert_eq!(rx.stats().rejected_auth, 3, "{name}");
        // The genuine one still gets through afterwards.
        accepted(&mut rx, from, &good);
    }
}

#[test]
fn replays_and_stale_sequence_numbers_are_refused() {
    for (name, side) in sides() {
        let (t, d) = connected();
        let (mut rx, mut tx, from) = pick(t, d, side);
        let rx_addr = if side == Role::Target {
            target_addr()
        } else {
            debugger_addr()
        };
        let first = data_from(&mut tx, 1);
        accepted(&mut rx, from, &first);
        ack_back(&mut rx, &mut tx, rx_addr);
        let second = data_from(&mut tx, 2);
        accepted(&mut rx, from, &second);
        // Older than the highest accepted, and the very same one again.
        refused(&mut rx, from, &first, |e| {
            matches!(e, KdnetError::Replayed { .. })
        });
        refused(&mut rx, from, &second, |e| {
            matches!(e, KdnetError::Replayed { .. })
        });
        let s: EndpointStats = rx.stats();
        assert_eq!((s.rejected_replay, s.rejected), (2, 2), "{name}");
        assert!(
            rx.poll_event().is_none(),
            "{name}: nothing reached the session"
        );
    }
}

#[test]
fn datagrams_from_strangers_or_the_other_direction_are_refused() {
    for (name, side) in sides() {
        let (t, d) = connected();
        let (mut rx, mut tx, from) = pick(t, d, side);
        let good = data_from(&mut tx, 1);
        refused(&mut rx, stranger(), &good, |e| {
            matches!(e, KdnetError::WrongPeer { .. })
        });
        // Our own datagram reflected back at us.
        let own = data_from(&mut rx, 9);
        refused(&mut rx, from, &own, |e| {
            matches!(e, KdnetError::WrongDirection)
        });
        let s = rx.stats();
        assert_eq!((s.rejected_peer, s.rejected_direction), (1, 1), "{name}");
        accepted(&mut rx, from, &good);
    }
}

#[test]
fn a_new_poke_starts_a_new_connection_with_fresh_sequence_numbers() {
    let (mut t, mut d) = connected();
    for i in 0..5 {
        let x = data_from(&mut d, i);
        accepted(&mut t, debugger_addr(), &x);
        ack_back(&mut t, &mut d, target_addr());
    }
    // The debugger goes quiet; the target pokes again and a new debugger (at the same
    // address, numbering its datagrams from 1 again) answers: a new connection.
    t.solicit(Duration::ZERO);
    t.handle_timeout(Duration::ZERO);
    let mut d2 = debugger();
    settle(&mut t, &mut d2);
    assert!(
        drain(&mut t)
            .iter()
            .any(|e| matches!(e, EndpointEvent::Connected { .. }))
    );
    drain(&mut d2);
    let x = data_from(&mut d2, 1);
    accepted(&mut t, debugger_addr(), &x);
    // A datagram of the old connection (the old data key) is refused.
    let stale = data_from(&mut d, 7);
    refused(&mut t, debugger_addr(), &stale, |e| {
        matches!(e, KdnetError::BadTag)
    });
}
