#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! KDNET endpoints: handshake, data key, sequence numbers and direction bits, and a lossy
//! link; seal/open properties.

use std::time::Duration;

use proptest::prelude::*;
use tagsplit_protocol::kd::{PacketType, Repr, Role, SessionEvent};
use tagsplit_protocol::kdnet::{
    Channel, ControlMessage, Endpoint, EndpointConfig, EndpointEvent, Key, Keys, Message,
};

fn pair(key_t: &str, key_d: &str) -> (Endpoint, Endpoint) {
    let t = EndpointConfig {
        local: "192.168.2.72:51111".parse().unwrap(),
        peer: "192.168.2.1:51111".parse().unwrap(),
        ..EndpointConfig::new(Role::Target, key_t.parse().unwrap(), [0x11; 32])
    };
    let d = EndpointConfig::new(Role::Debugger, key_d.parse().unwrap(), [0x22; 32]);
    (
        Endpoint::new(t, Duration::ZERO),
        Endpoint::new(d, Duration::ZERO),
    )
}

/// Moves datagrams both ways (dropping every `drop_every`-th) until quiet, then advances
/// time to the next timer. Returns all datagrams that went from target to debugger.
fn step(
    t: &mut Endpoint,
    d: &mut Endpoint,
    now: &mut Duration,
    counter: &mut u64,
    drop_every: u64,
    log: &mut Vec<Vec<u8>>,
) {
    let mut moved = true;
    while moved {
        moved = false;
        while let Some(x) = t.poll_transmit() {
            moved = true;
            *counter += 1;
            log.push(x.clone());
            if drop_every == 0 || !(*counter).is_multiple_of(drop_every) {
                d.handle_datagram(*now, &x);
            }
        }
        while let Some(x) = d.poll_transmit() {
            moved = true;
            *counter += 1;
            if drop_every == 0 || !(*counter).is_multiple_of(drop_every) {
                t.handle_datagram(*now, &x);
            }
        }
    }
    let next = [t.poll_timeout(), d.poll_timeout()]
        .into_iter()
        .flatten()
        .min();
    *now = next.unwrap_or(*now + Duration::from_millis(100)).max(*now);
    t.handle_timeout(*now);
    d.handle_timeout(*now);
}

#[test]
fn handshake_then_requests_exactly_once() {
    for drop_every in [0u64, 3, 4, 7] {
        let (mut t, mut d) = pair("1.2.3.4", "1.2.3.4");
        let (mut now, mut counter, mut log) = (Duration::ZERO, 0, Vec::new());
        for i in 0..10u8 {
            d.send(now, PacketType::StateManipulate, vec![i; 3]);
        }
        let mut got = Vec::new();
        let mut replies = Vec::new();
        let mut connected = 0;
        for _ in 0..5000 {
            step(&mut t, &mut d, &mut now, &mut counter, drop_every, &mut log);
            while let Some(ev) = t.poll_event() {
                match ev {
                    EndpointEvent::Connected { .. } => connected += 1,
                    EndpointEvent::Kd(SessionEvent::Packet { payload, .. }) => {
                        t.send(now, PacketType::StateManipulate, payload.clone());
                        got.push(payload);
                    }
                    _ => {}
                }
            }
            while let Some(ev) = d.poll_event() {
                if let EndpointEvent::Kd(SessionEvent::Packet { payload, .. }) = ev {
                    replies.push(payload);
                }
            }
            if replies.len() == 10 && d.is_idle() && t.is_idle() {
                break;
            }
        }
        let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 3]).collect();
        assert_eq!(got, want, "drop_every={drop_every}");
        assert_eq!(replies, want);
        assert_eq!(connected, 1);
        assert_eq!(t.data_key(), d.data_key());
        // Everything the target sent opens with the shared keys: control seq in steps of 3,
        // data seq from 1 up by one, direction bit clear.
        let mut keys = Keys::new("1.2.3.4".parse().unwrap());
        keys.set_data_key(*t.data_key().unwrap());
        let mut data_seq = Vec::new();
        let mut hello = false;
        for x in &log {
            let m = keys.open(x).unwrap();
            assert!(!m.from_debugger);
            match m.channel {
                Channel::Control => {
                    assert_eq!(m.seq % 3, 0);
                    assert!(matches!(
                        ControlMessage::parse(&m.payload),
                        ControlMessage::Poke(_)
                    ));
                }
                Channel::Data => {
                    data_seq.push(m.seq);
                    if m.payload == [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 168, 192] {
                        hello = true;
                    } else {
                        Repr::parse_bytes(&m.payload).unwrap();
                    }
                }
            }
        }
        assert!(hello, "the target says hello with the host's address");
        assert_eq!(data_seq, (1..=data_seq.len() as u64).collect::<Vec<_>>());
    }
}

#[test]
fn wrong_key_never_connects() {
    let (mut t, mut d) = pair("1.2.3.4", "1.2.3.5");
    let (mut now, mut counter, mut log) = (Duration::ZERO, 0, Vec::new());
    for _ in 0..20 {
        step(&mut t, &mut d, &mut now, &mut counter, 0, &mut log);
    }
    assert!(!d.is_connected() && !t.is_connected());
    assert!(log.len() >= 10, "the target keeps poking");
    assert!(d.stats().rejected >= 10);
}

#[test]
fn break_in_datagram() {
    let (mut t, mut d) = pair("8.8.8.8", "8.8.8.8");
    let (mut now, mut counter, mut log) = (Duration::ZERO, 0, Vec::new());
    for _ in 0..3 {
        step(&mut t, &mut d, &mut now, &mut counter, 0, &mut log);
    }
    assert!(t.is_connected());
    while t.poll_event().is_some() {}
    d.send_break_in();
    let x = d.poll_transmit().unwrap();
    assert_eq!(
        x.len(),
        6 + 16 + 16,
        "one block: 8-byte prefix, 0x62, 7 bytes pad"
    );
    t.handle_datagram(now, &x);
    assert_eq!(
        t.poll_event(),
        Some(EndpointEvent::Kd(SessionEvent::BreakIn))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip(key in any::<[u8; 32]>(), data_key in any::<[u8; 32]>(), seq in 0u64..(1 << 56), dir: bool, control: bool, version: u8, payload in proptest::collection::vec(any::<u8>(), 0..600), flip in any::<usize>()) {
        let mut keys = Keys::new(Key(key));
        keys.set_data_key(data_key);
        let channel = if control { Channel::Control } else { Channel::Data };
        let msg = Message::new(channel, version, seq, dir, payload);
        let d = keys.seal(&msg).unwrap();
        prop_assert_eq!(d.len(), msg.buffer_len());
        prop_assert_eq!(&keys.open(&d).unwrap(), &msg);
        let mut bad = d.clone();
        let i = flip % bad.len();
        bad[i] ^= 0x80;
        prop_assert!(keys.open(&bad).is_err());
        prop_assert!(keys.open(&d[..d.len() - 1]).is_err());
    }

    #[test]
    fn key_strings_round_trip(parts in any::<[u64; 4]>()) {
        let mut bytes = [0u8; 32];
        for (i, p) in parts.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&p.to_le_bytes());
        }
        let k = Key(bytes);
        let s = k.to_string();
        prop_assert_eq!(s.parse::<Key>().unwrap(), k);
        prop_assert_eq!(s.to_uppercase().parse::<Key>().unwrap(), k);
    }

    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let keys = Keys::new(Key([1; 32]));
        let mut b = bytes;
        if b.len() >= 4 {
            b[..4].copy_from_slice(b"MDBG");
        }
        let _ = keys.open(&b);
    }
}

#[test]
fn solicit_lets_a_new_debugger_take_over_but_not_an_active_one() {
    let (mut t, mut d1) = pair("1.2.3.4", "1.2.3.4");
    let (mut now, mut counter, mut log) = (Duration::ZERO, 0, Vec::new());
    d1.send(now, PacketType::StateManipulate, vec![1]);
    for _ in 0..5 {
        step(&mut t, &mut d1, &mut now, &mut counter, 0, &mut log);
    }
    assert!(t.is_connected());
    while t.poll_event().is_some() {}
    // The old debugger is active: pokes while soliciting are ignored by it, and its next
    // data datagram ends the soliciting.
    t.solicit(now);
    assert!(t.is_soliciting());
    for _ in 0..3 {
        step(&mut t, &mut d1, &mut now, &mut counter, 0, &mut log);
    }
    assert!(t.is_soliciting(), "d1 has nothing to send yet");
    d1.send(now, PacketType::StateManipulate, vec![2]);
    step(&mut t, &mut d1, &mut now, &mut counter, 0, &mut log);
    assert!(!t.is_soliciting());
    // A new debugger answers a solicit poke and gets a fresh data key and session.
    let old_key = *t.data_key().unwrap();
    t.solicit(now);
    let d2cfg = EndpointConfig::new(Role::Debugger, "1.2.3.4".parse().unwrap(), [0x33; 32]);
    let mut d2 = Endpoint::new(d2cfg, now);
    while t.poll_event().is_some() {}
    for _ in 0..4 {
        step(&mut t, &mut d2, &mut now, &mut counter, 0, &mut log);
    }
    assert!(
        std::iter::from_fn(|| t.poll_event()).any(|e| matches!(e, EndpointEvent::Connected { .. }))
    );
    assert_ne!(t.data_key(), Some(&old_key));
    assert_eq!(t.data_key(), d2.data_key());
}
