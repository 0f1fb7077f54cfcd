#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Sessions over an in-memory link that drops, duplicates and damages packets still
//! deliver every request and reply exactly once, in order — in both id schemes.

use std::time::Duration;

use proptest::prelude::*;
use tagsplit_protocol::kd::{
    INITIAL_PACKET_ID, IdScheme, PacketType, Repr, Role, SYNC_PACKET_ID, Session, SessionConfig,
    SessionEvent,
};
use tagsplit_protocol::rto::SERIAL_115200;

/// A tiny deterministic PRNG (xorshift) so the link's faults are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Faults {
    drop: u64,
    dup: u64,
    corrupt: u64,
}

fn deliver(to: &mut Session, now: Duration, scheme: IdScheme, unit: &[u8]) {
    match scheme {
        IdScheme::Kdcom => to.handle_bytes(now, unit),
        IdScheme::Kdnet => to.handle_packet(now, unit),
    }
}

fn pass(
    from: &mut Session,
    to: &mut Session,
    now: Duration,
    scheme: IdScheme,
    rng: &mut Rng,
    f: &Faults,
) -> bool {
    let mut moved = false;
    while let Some(mut unit) = from.poll_transmit() {
        moved = true;
        if rng.chance(f.drop) {
            continue;
        }
        if unit.len() > 17 && rng.chance(f.corrupt) {
            let i = 16 + (rng.next() as usize) % (unit.len() - 17);
            unit[i] ^= 0x5A;
        }
        deliver(to, now, scheme, &unit);
        if rng.chance(f.dup) {
            deliver(to, now, scheme, &unit);
        }
    }
    moved
}

/// Runs `n` requests from the debugger, each answered by the target; returns what each
/// side received.
fn run(
    scheme: IdScheme,
    n: usize,
    seed: u64,
    f: &Faults,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Session, Session) {
    let cfg = |role| SessionConfig {
        max_retries: 10_000,
        ..match scheme {
            IdScheme::Kdcom => SessionConfig::kdcom(role),
            IdScheme::Kdnet => SessionConfig::kdnet(role),
        }
    };
    let mut dbg = Session::new(cfg(Role::Debugger));
    let mut tgt = Session::new(cfg(Role::Target));
    let mut rng = Rng(seed | 1);
    let mut now = Duration::ZERO;
    for i in 0..n {
        dbg.send(
            now,
            PacketType::StateManipulate,
            format!("request {i}").into_bytes(),
        );
    }
    let (mut at_target, mut at_debugger) = (Vec::new(), Vec::new());
    for _ in 0..200_000 {
        let a = pass(&mut dbg, &mut tgt, now, scheme, &mut rng, f);
        let b = pass(&mut tgt, &mut dbg, now, scheme, &mut rng, f);
        while let Some(ev) = tgt.poll_event() {
            assert!(!matches!(ev, SessionEvent::SendFailed { .. }));
            if let SessionEvent::Packet { payload, .. } = ev {
                let reply = [b"reply to ".as_slice(), &payload].concat();
                at_target.push(payload);
                tgt.send(now, PacketType::StateManipulate, reply);
            }
        }
        while let Some(ev) = dbg.poll_event() {
            if let SessionEvent::Packet { payload, .. } = ev {
                at_debugger.push(payload);
            }
        }
        if at_debugger.len() == n && dbg.is_idle() && tgt.is_idle() {
            break;
        }
        if !a && !b {
            let next = [dbg.poll_timeout(), tgt.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.unwrap_or(now + Duration::from_millis(10)).max(now);
            dbg.handle_timeout(now);
            tgt.handle_timeout(now);
        }
    }
    (at_target, at_debugger, dbg, tgt)
}

fn expected(n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let req: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("request {i}").into_bytes())
        .collect();
    let rep = req
        .iter()
        .map(|r| [b"reply to ".as_slice(), r].concat())
        .collect();
    (req, rep)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kdcom_lossy_link_delivers_exactly_once(seed in any::<u64>(), drop in 0u64..35, dup in 0u64..35, corrupt in 0u64..20) {
        let n = 12;
        let (t, d, dbg, _) = run(IdScheme::Kdcom, n, seed, &Faults { drop, dup, corrupt });
        let (req, rep) = expected(n);
        prop_assert_eq!(t, req);
        prop_assert_eq!(d, rep);
        if drop > 0 || corrupt > 0 {
            // Faults cost retransmissions but never a duplicate delivery.
            prop_assert!(dbg.stats().packets_sent >= 2 * n as u64);
        }
    }

    #[test]
    fn kdnet_lossy_link_delivers_exactly_once(seed in any::<u64>(), drop in 0u64..35, dup in 0u64..35, corrupt in 0u64..20) {
        let n = 12;
        let (t, d, _, _) = run(IdScheme::Kdnet, n, seed, &Faults { drop, dup, corrupt });
        let (req, rep) = expected(n);
        prop_assert_eq!(t, req);
        prop_assert_eq!(d, rep);
    }
}

#[test]
fn kdcom_ids_follow_initial_sync_toggle() {
    let mut tgt = Session::new(SessionConfig::kdcom(Role::Target));
    let now = Duration::ZERO;
    tgt.send(now, PacketType::DebugIo, b"a".to_vec());
    tgt.send(now, PacketType::DebugIo, b"b".to_vec());
    tgt.send(now, PacketType::DebugIo, b"c".to_vec());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let unit = tgt.poll_transmit().unwrap();
        let repr = Repr::parse_bytes(&unit).unwrap();
        assert_eq!(unit.last(), Some(&0xAA));
        ids.push(repr.id);
        // ACK with the id without SYNC, as the reference says.
        let ack =
            Repr::control(PacketType::Acknowledge, repr.id & !SYNC_PACKET_ID).to_kdcom_bytes();
        tgt.handle_bytes(now, &ack);
    }
    assert_eq!(
        ids,
        [INITIAL_PACKET_ID | SYNC_PACKET_ID, 0x8080_0001, 0x8080_0000]
    );
    assert!(tgt.is_idle());
}

#[test]
fn kdnet_ids_step_by_two_and_acks_echo() {
    let mut dbg = Session::new(SessionConfig::kdnet(Role::Debugger));
    let mut tgt = Session::new(SessionConfig::kdnet(Role::Target));
    let now = Duration::ZERO;
    dbg.send(now, PacketType::StateManipulate, vec![1]);
    dbg.send(now, PacketType::StateManipulate, vec![2]);
    tgt.send(now, PacketType::DebugIo, vec![3]);
    let mut seen = Vec::new();
    for _ in 0..10 {
        while let Some(u) = dbg.poll_transmit() {
            let r = Repr::parse_bytes(&u).unwrap();
            assert_ne!(u.last(), Some(&0xAA).filter(|_| r.payload.is_empty()));
            seen.push((r.packet_type, r.id));
            tgt.handle_packet(now, &u);
        }
        while let Some(u) = tgt.poll_transmit() {
            let r = Repr::parse_bytes(&u).unwrap();
            seen.push((r.packet_type, r.id));
            dbg.handle_packet(now, &u);
        }
    }
    assert!(seen.contains(&(PacketType::StateManipulate, 0x8000_0000)));
    assert!(seen.contains(&(PacketType::StateManipulate, 0x8000_0002)));
    assert!(seen.contains(&(PacketType::Acknowledge, 0x8000_0002)));
    assert!(seen.contains(&(PacketType::DebugIo, 0)));
    assert!(seen.contains(&(PacketType::Acknowledge, 0)));
}

#[test]
fn reset_and_hello_and_break_in() {
    let mut dbg = Session::new(SessionConfig::kdnet(Role::Debugger));
    let now = Duration::ZERO;
    // The target's 12-byte hello gets a RESEND, as WinDbg answers it.
    dbg.handle_packet(now, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0xA8, 0xC0]);
    assert!(matches!(dbg.poll_event(), Some(SessionEvent::Hello { .. })));
    let r = Repr::parse_bytes(&dbg.poll_transmit().unwrap()).unwrap();
    assert_eq!((r.packet_type, r.id), (PacketType::Resend, 0));
    dbg.send_break_in();
    assert_eq!(dbg.poll_transmit().unwrap(), [0x62]);

    // KDCOM: a RESET from the peer is answered once and resets ids.
    let mut tgt = Session::new(SessionConfig::kdcom(Role::Target));
    tgt.send(now, PacketType::StateChange64, vec![9]);
    let first = Repr::parse_bytes(&tgt.poll_transmit().unwrap()).unwrap();
    assert_eq!(first.id, 0x8080_0800);
    tgt.handle_bytes(now, &Repr::control(PacketType::Reset, 0).to_kdcom_bytes());
    assert_eq!(tgt.poll_event(), Some(SessionEvent::Reset));
    let answer = Repr::parse_bytes(&tgt.poll_transmit().unwrap()).unwrap();
    assert_eq!(answer.packet_type, PacketType::Reset);
    let again = Repr::parse_bytes(&tgt.poll_transmit().unwrap()).unwrap();
    assert_eq!((again.id, again.payload.clone()), (0x8080_0800, vec![9]));
    assert_eq!(tgt.stats().retransmissions, 1);
    let mut t2 = Session::new(SessionConfig::kdcom(Role::Target));
    t2.handle_bytes(now, &[0x62]);
    assert_eq!(t2.poll_event(), Some(SessionEvent::BreakIn));
}

#[test]
fn retries_run_out() {
    let cfg = SessionConfig {
        max_retries: 3,
        retry_timeout: Duration::from_millis(100),
        ..SessionConfig::kdcom(Role::Target)
    };
    let mut s = Session::new(cfg);
    s.send(Duration::ZERO, PacketType::DebugIo, vec![1]);
    let mut sent = 0;
    let mut now = Duration::ZERO;
    while s.poll_timeout().is_some() {
        while s.poll_transmit().is_some() {
            sent += 1;
        }
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
    }
    assert_eq!(sent, 4, "one send and three retries");
    assert!(matches!(
        s.poll_event(),
        Some(SessionEvent::SendFailed { .. })
    ));
    assert!(now >= Duration::from_millis(400));
}

/// Sends one packet from `a` at `at`, lets `b` ACK it `rtt` later.
fn one_round_trip(a: &mut Session, b: &mut Session, at: Duration, rtt: Duration, len: usize) {
    a.send(at, PacketType::StateManipulate, vec![0x55; len]);
    while let Some(bytes) = a.poll_transmit() {
        b.handle_bytes(at, &bytes);
    }
    while let Some(bytes) = b.poll_transmit() {
        a.handle_bytes(at + rtt, &bytes);
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    assert!(a.is_idle());
}

#[test]
fn the_retry_timer_adapts_to_the_round_trip_and_backs_off() {
    let cfg = SessionConfig::kdcom(Role::Debugger);
    let mut dbg = Session::new(cfg);
    let mut tgt = Session::new(SessionConfig::kdcom(Role::Target));
    // Nothing measured: the first guess, plus the time 100 bytes take at the assumed
    // 115,200 baud.
    let assumed = Duration::from_nanos(100 * (1_000_000_000 / SERIAL_115200));
    assert_eq!(dbg.retry_timer(100), cfg.retry_timeout + assumed);
    let mut now = Duration::ZERO;
    for _ in 0..20 {
        one_round_trip(&mut dbg, &mut tgt, now, Duration::from_millis(40), 16);
        now += Duration::from_millis(100);
    }
    let srtt = dbg.smoothed_rtt().unwrap();
    assert!(
        srtt >= Duration::from_millis(30) && srtt <= Duration::from_millis(45),
        "{srtt:?}"
    );
    let t = dbg.retry_timer(16);
    assert!(
        t >= Duration::from_millis(40) && t < cfg.retry_timeout,
        "{t:?}"
    );
    // Large packets that take longer on the wire teach the per-byte time: a large
    // packet gets a longer timer than a small one.
    for _ in 0..20 {
        one_round_trip(&mut dbg, &mut tgt, now, Duration::from_millis(440), 4000);
        now += Duration::from_secs(1);
    }
    assert!(
        dbg.retry_timer(4000) >= Duration::from_millis(300),
        "{:?}",
        dbg.retry_timer(4000)
    );
    assert!(dbg.retry_timer(16) < dbg.retry_timer(4000));
    // Time-outs double the timer up to the ceiling.
    dbg.send(now, PacketType::StateManipulate, vec![1; 16]);
    let mut last = Duration::ZERO;
    for _ in 0..10 {
        let at = dbg.poll_timeout().unwrap();
        let timer = at - now;
        // The ceiling caps the round-trip part; the bytes' time on the link comes on top.
        let ceiling = cfg.max_retry_timeout + Duration::from_millis(20);
        assert!(timer >= last.min(cfg.max_retry_timeout) && timer <= ceiling);
        last = timer;
        now = at;
        dbg.handle_timeout(now);
    }
    assert!(last >= cfg.max_retry_timeout, "{last:?}");
}

#[test]
fn the_retry_timer_has_a_floor() {
    let cfg = SessionConfig::kdnet(Role::Debugger);
    let mut dbg = Session::new(cfg);
    let mut tgt = Session::new(SessionConfig::kdnet(Role::Target));
    let mut now = Duration::ZERO;
    for _ in 0..10 {
        dbg.send(now, PacketType::StateManipulate, vec![7; 8]);
        while let Some(p) = dbg.poll_transmit() {
            tgt.handle_packet(now, &p);
        }
        while let Some(p) = tgt.poll_transmit() {
            dbg.handle_packet(now, &p);
        }
        while dbg.poll_event().is_some() {}
        while tgt.poll_event().is_some() {}
        now += Duration::from_millis(1);
    }
    assert_eq!(dbg.smoothed_rtt(), Some(Duration::ZERO));
    // A zero round trip: the variation allowance alone, never below the floor.
    assert_eq!(
        dbg.retry_timer(8),
        cfg.min_retry_timeout
            .max(tagsplit_protocol::rto::MIN_VARIATION_ALLOWANCE)
    );
    assert!(dbg.retry_timer(8) >= cfg.min_retry_timeout);
}

#[test]
fn a_packet_whose_type_does_not_match_its_payload_is_refused() {
    let cfg = SessionConfig {
        check_payloads: true,
        ..SessionConfig::kdcom(Role::Debugger)
    };
    let mut dbg = Session::new(cfg);
    // A manipulate reply (API 0x3130) whose type field says debug I/O, as one flipped
    // header bit makes it: RESEND, no ACK, no packet.
    let mut payload = vec![0u8; 56];
    payload[..4].copy_from_slice(&0x3130u32.to_le_bytes());
    let forged =
        tagsplit_protocol::kd::Repr::data(PacketType::DebugIo, 0x8080_0000, payload.clone());
    dbg.handle_bytes(Duration::ZERO, &forged.to_kdcom_bytes());
    assert!(matches!(dbg.poll_event(), Some(SessionEvent::Corrupt(_))));
    assert_eq!(dbg.poll_event(), None);
    let resend = tagsplit_protocol::kd::Repr::control(PacketType::Resend, 0).to_kdcom_bytes();
    assert_eq!(dbg.poll_transmit(), Some(resend));
    // The same payload under its own type is delivered.
    let good = tagsplit_protocol::kd::Repr::data(PacketType::StateManipulate, 0x8080_0000, payload);
    dbg.handle_bytes(Duration::ZERO, &good.to_kdcom_bytes());
    assert!(matches!(
        dbg.poll_event(),
        Some(SessionEvent::Packet { .. })
    ));
}

/// The stall of the lossy KDCOM split's seed 4: the debugger's Continue (a
/// `KD_STATE_MANIPULATE`, type 2) reached the target with bit 5 of its type field flipped,
/// as type 0x22. KDCOM checksums the payload only, so the packet passed; the target
/// acknowledged it and dropped it as a type it does not handle, and both ends then waited
/// for each other for ever. With `check_payloads` the target refuses it with a RESEND, the
/// debugger sends the Continue again, and it is delivered once.
#[test]
fn a_continue_whose_type_bit_flipped_is_refused_and_sent_again() {
    let config = |role| SessionConfig {
        check_payloads: true,
        ..SessionConfig::kdcom(role)
    };
    let mut tgt = Session::new(config(Role::Target));
    let mut dbg = Session::new(config(Role::Debugger));
    let now = Duration::ZERO;
    // The target reports a load-symbols state change (API 0x3031); the debugger takes it.
    let mut state_change = vec![0u8; 64];
    state_change[..4].copy_from_slice(&0x3031u32.to_le_bytes());
    tgt.send(now, PacketType::StateChange64, state_change);
    while let Some(unit) = tgt.poll_transmit() {
        dbg.handle_bytes(now, &unit);
    }
    assert!(matches!(
        dbg.poll_event(),
        Some(SessionEvent::Packet {
            packet_type: PacketType::StateChange64,
            ..
        })
    ));
    // Its ACK reaches the target; then the Continue (Continue2, API 0x313C) goes out.
    let ack = dbg.poll_transmit().unwrap();
    tgt.handle_bytes(now, &ack);
    while tgt.poll_event().is_some() {}
    let mut cont = vec![0u8; 56];
    cont[..4].copy_from_slice(&0x313Cu32.to_le_bytes());
    dbg.send(now, PacketType::StateManipulate, cont.clone());
    let mut wire = dbg.poll_transmit().unwrap();
    assert_eq!(u16::from_le_bytes([wire[4], wire[5]]), 2);
    wire[4] ^= 0x20; // the flipped bit: type 0x22
    tgt.handle_bytes(now, &wire);
    assert!(matches!(tgt.poll_event(), Some(SessionEvent::Corrupt(_))));
    assert_eq!(tgt.poll_event(), None, "nothing delivered");
    let resend = tgt.poll_transmit().unwrap();
    assert_eq!(
        resend,
        Repr::control(PacketType::Resend, 0).to_kdcom_bytes()
    );
    assert_eq!(tgt.poll_transmit(), None, "no ACK for the damaged packet");
    // The RESEND makes the debugger send the Continue again, now delivered.
    dbg.handle_bytes(now, &resend);
    assert!(!dbg.is_idle());
    let again = dbg.poll_transmit().unwrap();
    tgt.handle_bytes(now, &again);
    assert_eq!(
        tgt.poll_event(),
        Some(SessionEvent::Packet {
            packet_type: PacketType::StateManipulate,
            id: INITIAL_PACKET_ID,
            payload: cont,
        })
    );
    let ack = tgt.poll_transmit().unwrap();
    dbg.handle_bytes(now, &ack);
    assert!(dbg.is_idle());
    assert_eq!(dbg.stats().retransmissions, 1);
}

/// The stall of the lossy KDCOM split's seed 40: a request's ByteCount (which KDCOM does
/// not checksum) was damaged to claim far more bytes than came, and the target's decoder
/// waited for them while the debugger only sent a small packet a second. A stream that
/// stops in the middle of a packet is now resynced after a stall timer, with a RESEND,
/// and the packet sent again is delivered.
#[test]
fn a_stream_that_stops_mid_packet_is_resynced_and_asked_again() {
    let mut tgt = Session::new(SessionConfig {
        check_payloads: true,
        ..SessionConfig::kdcom(Role::Target)
    });
    let mut read = vec![0u8; 56];
    read[..4].copy_from_slice(&0x3130u32.to_le_bytes());
    let good = Repr::data(PacketType::StateManipulate, INITIAL_PACKET_ID, read.clone());
    let good = good.to_kdcom_bytes();
    let mut bad = good.clone();
    bad[6..8].copy_from_slice(&3000u16.to_le_bytes());
    tgt.handle_bytes(Duration::ZERO, &bad);
    assert_eq!(
        tgt.poll_event(),
        None,
        "waiting for the bytes the header claims"
    );
    assert_eq!(tgt.poll_transmit(), None);
    let at = tgt.poll_timeout().expect("a stall timer");
    tgt.handle_timeout(at - Duration::from_millis(1));
    assert_eq!(tgt.poll_transmit(), None, "not before the stall timer");
    tgt.handle_timeout(at);
    let mut corrupt = false;
    while let Some(ev) = tgt.poll_event() {
        corrupt |= matches!(ev, SessionEvent::Corrupt(_));
        assert!(!matches!(ev, SessionEvent::Packet { .. }));
    }
    assert!(corrupt);
    let resend = Repr::control(PacketType::Resend, 0).to_kdcom_bytes();
    assert_eq!(tgt.poll_transmit(), Some(resend));
    // The debugger sends it again: delivered.
    tgt.handle_bytes(at, &good);
    let mut delivered = Vec::new();
    while let Some(ev) = tgt.poll_event() {
        if let SessionEvent::Packet { payload, .. } = ev {
            delivered.push(payload);
        }
    }
    assert_eq!(delivered, [read]);
}

/// The RESET storm of the lossy KDCOM split's seed 17: the debugger's ACK of a search
/// reply (type 4) reached the target with bit 1 of its type flipped, as a RESET (type 6),
/// which KDCOM does not checksum. The target obeyed: both ends reset their ids mid-request,
/// a stale search reply was taken for the next one, and the survey lost a site. A RESET or
/// RESEND carrying a packet id (genuine ones carry 0 here, WinDbg's RESET another
/// constant) is an ACK whose type was damaged: counted, and otherwise ignored; the timer
/// sends the packet again and the ACK comes then.
#[test]
fn an_ack_damaged_into_a_reset_is_not_obeyed() {
    let mut tgt = Session::new(SessionConfig {
        check_payloads: true,
        ..SessionConfig::kdcom(Role::Target)
    });
    let now = Duration::ZERO;
    let mut reply = vec![0u8; 56];
    reply[..4].copy_from_slice(&0x3156u32.to_le_bytes());
    tgt.send(now, PacketType::StateManipulate, reply);
    let sent = tgt.poll_transmit().unwrap();
    let id = u32::from_le_bytes(sent[8..12].try_into().unwrap());
    assert_eq!(id & INITIAL_PACKET_ID, INITIAL_PACKET_ID);
    for ty in [PacketType::Reset, PacketType::Resend] {
        let damaged_ack = Repr::control(ty, id & !SYNC_PACKET_ID).to_kdcom_bytes();
        tgt.handle_bytes(now, &damaged_ack);
        assert!(matches!(tgt.poll_event(), Some(SessionEvent::Corrupt(_))));
        assert_eq!(tgt.poll_event(), None, "no Reset event");
        assert_eq!(
            tgt.poll_transmit(),
            None,
            "no RESET answered, nothing re-sent"
        );
        assert!(!tgt.is_idle(), "the reply still waits for its ACK");
    }
    // A genuine RESET (id 0) is still obeyed: answered, and the reply sent again.
    tgt.handle_bytes(now, &Repr::control(PacketType::Reset, 0).to_kdcom_bytes());
    assert_eq!(tgt.poll_event(), Some(SessionEvent::Reset));
    assert_eq!(
        tgt.poll_transmit(),
        Some(Repr::control(PacketType::Reset, 0).to_kdcom_bytes())
    );
    assert!(tgt.poll_transmit().is_some(), "the reply, sent again");
}

/// A reply that lost a byte takes the first byte of the sender's next copy as its trailer.
/// When that copy is already in the same bytes, it is delivered, and no RESEND asks for a
/// third copy (on a slow serial line that copy would cost seconds).
#[test]
fn no_resend_when_the_next_copy_came_with_the_damaged_one() {
    let mut dbg = Session::new(SessionConfig {
        check_payloads: true,
        ..SessionConfig::kdcom(Role::Debugger)
    });
    let now = Duration::ZERO;
    let mut payload = vec![0x11u8; 1000];
    payload[..4].copy_from_slice(&0x3130u32.to_le_bytes());
    let copy = Repr::data(
        PacketType::StateManipulate,
        INITIAL_PACKET_ID | SYNC_PACKET_ID,
        payload.clone(),
    )
    .to_kdcom_bytes();
    let mut short = copy.clone();
    short.remove(500);
    let mut wire = short;
    wire.extend_from_slice(&copy);
    dbg.handle_bytes(now, &wire);
    let mut events = Vec::new();
    while let Some(ev) = dbg.poll_event() {
        events.push(ev);
    }
    assert!(
        matches!(events.first(), Some(SessionEvent::Corrupt(_))),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SessionEvent::Packet { payload: p, .. } if *p == payload))
    );
    let mut sent = Vec::new();
    while let Some(u) = dbg.poll_transmit() {
        sent.push(u);
    }
    let resend = Repr::control(PacketType::Resend, 0).to_kdcom_bytes();
    assert!(!sent.contains(&resend), "a RESEND went out");
    assert_eq!(sent.len(), 1, "the ACK");
    // The damaged packet alone still gets its RESEND.
    let mut other = Session::new(SessionConfig::kdcom(Role::Debugger));
    let mut short = copy.clone();
    short.remove(500);
    short.push(0x30);
    other.handle_bytes(now, &short);
    assert_eq!(other.poll_transmit(), Some(resend));
}

/// Where a stray RESET shows up.
#[derive(Clone, Copy, Debug)]
enum Stray {
    Debugger,
    Target,
    Both,
}

/// Moves every unit both ways until neither end sends anything (or `limit` units have
/// crossed); returns the units that crossed, RESETs among them, and each end's payloads.
fn settle(
    dbg: &mut Session,
    tgt: &mut Session,
    scheme: IdScheme,
    limit: usize,
) -> (usize, usize, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let now = Duration::ZERO;
    let (mut units, mut resets) = (0, 0);
    let (mut at_target, mut at_debugger) = (Vec::new(), Vec::new());
    let is_reset = |u: &[u8]| {
        let r = match scheme {
            IdScheme::Kdcom => Repr::parse_bytes(u.strip_suffix(&[0xAA]).unwrap_or(u)),
            IdScheme::Kdnet => Repr::parse_bytes(u),
        };
        r.is_ok_and(|r| r.packet_type == PacketType::Reset)
    };
    while units < limit {
        let mut moved = false;
        while let Some(u) = dbg.poll_transmit() {
            (units, moved) = (units + 1, true);
            resets += usize::from(is_reset(&u));
            deliver(tgt, now, scheme, &u);
        }
        while let Some(u) = tgt.poll_transmit() {
            (units, moved) = (units + 1, true);
            resets += usize::from(is_reset(&u));
            deliver(dbg, now, scheme, &u);
        }
        while let Some(ev) = tgt.poll_event() {
            if let SessionEvent::Packet { payload, .. } = ev {
                let mut reply = payload.clone();
                reply.extend_from_slice(b" answered");
                at_target.push(payload);
                tgt.send(now, PacketType::StateManipulate, reply);
                moved = true;
            }
        }
        while let Some(ev) = dbg.poll_event() {
            if let SessionEvent::Packet { payload, .. } = ev {
                at_debugger.push(payload);
            }
        }
        if !moved {
            break;
        }
    }
    (units, resets, at_target, at_debugger)
}

/// A manipulate request's bytes (an API number of its type, then a tag).
fn request(tag: &str) -> Vec<u8> {
    let mut p = 0x3130u32.to_le_bytes().to_vec();
    p.extend_from_slice(tag.as_bytes());
    p
}

/// Regression (wire fuzzer, issue 12): a RESET neither end asked for, injected on the link
/// to one end or to both. Each end answered every RESET it had not asked for, and the
/// answers did not count as asking, so the debugger and the target sent RESETs to each
/// other without end. Now the exchange settles within a few packets, both ends are back in
/// step, and a request and its reply cross exactly once, with and without a request in
/// flight when the RESET came.
#[test]
fn a_stray_reset_settles_and_the_link_still_carries_requests() {
    for scheme in [IdScheme::Kdcom, IdScheme::Kdnet] {
        for stray in [Stray::Debugger, Stray::Target, Stray::Both] {
            for in_flight in [false, true] {
                let cfg = |role| match scheme {
                    IdScheme::Kdcom => SessionConfig::kdcom(role),
                    IdScheme::Kdnet => SessionConfig::kdnet(role),
                };
                let (mut dbg, mut tgt) = (
                    Session::new(cfg(Role::Debugger)),
                    Session::new(cfg(Role::Target)),
                );
                let now = Duration::ZERO;
                // Connected: the debugger's RESET, answered once.
                dbg.reset(now);
                let (_, resets, _, _) = settle(&mut dbg, &mut tgt, scheme, 100);
                assert_eq!(resets, 2, "{scheme:?}: a connect costs one RESET each way");
                let case = format!("{scheme:?} {stray:?} in flight {in_flight}");
                let first = request("first");
                if in_flight {
                    // Sent, not yet on the wire when the RESET comes.
                    dbg.send(now, PacketType::StateManipulate, first.clone());
                }
                let stray_reset = |s: &mut Session| match scheme {
                    IdScheme::Kdcom => {
                        s.handle_bytes(now, &Repr::control(PacketType::Reset, 0).to_kdcom_bytes())
                    }
                    IdScheme::Kdnet => {
                        s.handle_packet(now, &Repr::control(PacketType::Reset, 0).to_bytes())
                    }
                };
                match stray {
                    Stray::Debugger => stray_reset(&mut dbg),
                    Stray::Target => stray_reset(&mut tgt),
                    Stray::Both => {
                        stray_reset(&mut dbg);
                        stray_reset(&mut tgt);
                    }
                }
                let (units, resets, at_target, at_debugger) =
                    settle(&mut dbg, &mut tgt, scheme, 1_000);
                assert!(
                    resets <= 6 && units <= 20,
                    "{case}: {resets} RESETs, {units} units before the link went quiet"
                );
                assert!(dbg.poll_transmit().is_none() && tgt.poll_transmit().is_none());
                if in_flight {
                    // A packet in flight across a RESET is sent again under the new ids,
                    // as KD does (the RESET is also a RESEND); the copy sent before the
                    // RESET may have got through already, and the reset ids cannot tell
                    // the two apart: it may arrive twice, and be answered twice.
                    let mut reply = first.clone();
                    reply.extend_from_slice(b" answered");
                    assert!(
                        (1..=2).contains(&at_target.len()) && at_target.iter().all(|p| *p == first),
                        "{case}: {at_target:?}"
                    );
                    assert!(
                        (1..=2).contains(&at_debugger.len())
                            && at_debugger.iter().all(|p| *p == reply),
                        "{case}: {at_debugger:?}"
                    );
                } else {
                    assert!(at_target.is_empty() && at_debugger.is_empty(), "{case}");
                }
                assert!(dbg.is_idle() && tgt.is_idle(), "{case}");
                // The link carries a request and its reply, each once.
                let second = request("second");
                dbg.send(now, PacketType::StateManipulate, second.clone());
                let (_, resets, at_target, at_debugger) = settle(&mut dbg, &mut tgt, scheme, 100);
                assert_eq!(resets, 0, "{case}");
                assert_eq!(at_target, std::slice::from_ref(&second), "{case}");
                let mut reply = second;
                reply.extend_from_slice(b" answered");
                assert_eq!(at_debugger, [reply], "{case}");
                assert!(dbg.is_idle() && tgt.is_idle(), "{case}");
            }
        }
    }
}

/// What the wire fuzzer's mutator does to a KD packet id (`fuzz::mutate::kd_packet`,
/// `Field::Sequence`).
/// A change to a packet id.
type IdMutation = fn(u32) -> u32;

const ID_MUTATIONS: [(&str, IdMutation); 5] = [
    ("sync bit flipped", |id| id ^ SYNC_PACKET_ID),
    ("one on", |id| id.wrapping_add(1)),
    ("one back", |id| id.wrapping_sub(1)),
    ("zero", |_| 0),
    ("initial bits flipped", |id| id ^ INITIAL_PACKET_ID),
];

/// A debugger and a target over KDCOM whose link changes the id of one of the target's
/// data packets (the header is not checksummed: the rest of it still checks).
struct MutatingLink {
    dbg: Session,
    tgt: Session,
    now: Duration,
    /// Which of the target's data packets to change (counting from 0), and how.
    mutate: Option<(usize, IdMutation)>,
    /// The target's data packets so far.
    target_data: usize,
}

impl MutatingLink {
    /// Like [`settle`], with time: when nothing moves, the clock goes to the earlier end's
    /// next timer. Stops when the link is quiet with no timer pending, or after `limit`
    /// units; returns the units that crossed and the payloads the debugger received.
    fn settle(&mut self, limit: usize) -> (usize, Vec<Vec<u8>>) {
        let MutatingLink {
            dbg,
            tgt,
            now,
            mutate,
            target_data,
        } = self;
        let mut units = 0;
        let mut at_debugger = Vec::new();
        while units < limit {
            let mut moved = false;
            while let Some(u) = dbg.poll_transmit() {
                (units, moved) = (units + 1, true);
                tgt.handle_bytes(*now, &u);
            }
            while let Some(mut u) = tgt.poll_transmit() {
                (units, moved) = (units + 1, true);
                if let Ok(mut r) = Repr::parse_bytes(u.strip_suffix(&[0xAA]).unwrap_or(&u))
                    && r.leader == tagsplit_protocol::kd::Leader::Data
                {
                    if let Some((at, f)) = *mutate
                        && at == *target_data
                    {
                        r.id = f(r.id);
                        u = r.to_kdcom_bytes();
                        *mutate = None;
                    }
                    *target_data += 1;
                }
                dbg.handle_bytes(*now, &u);
            }
            while let Some(ev) = tgt.poll_event() {
                if let SessionEvent::Packet { payload, .. } = ev {
                    let mut reply = payload.clone();
                    reply.extend_from_slice(b" answered");
                    tgt.send(*now, PacketType::StateManipulate, reply);
                    moved = true;
                }
            }
            while let Some(ev) = dbg.poll_event() {
                if let SessionEvent::Packet { payload, .. } = ev {
                    at_debugger.push(payload);
                }
            }
            if !moved {
                let Some(next) = [dbg.poll_timeout(), tgt.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                else {
                    break;
                };
                *now = next.max(*now);
                dbg.handle_timeout(*now);
                tgt.handle_timeout(*now);
            }
        }
        (units, at_debugger)
    }
}

/// Regression (wire fuzzer, issue 12, `fuzz-client --kdcom` against our console): one
/// reply whose packet id the link changed, as the fuzzer's mutator does. 0x80800000 one
/// back is 0x807fffff, which carries the SYNC bit: the debugger took it as a resync and
/// expected 0x807ff7fe next, an id no target ever sends, so it acknowledged and dropped
/// every later reply as a duplicate and its requests were never answered (the console
/// asked for a minute and gave up). Now an id outside KDCOM's id space is damaged and
/// asked for again, and each later request is answered within a few packets, with the
/// reply it asked for (possibly twice: a SYNC the link added makes a packet sent again look
/// new, and the debugger's request layer drops a second answer).
#[test]
fn one_reply_with_a_mutated_id_does_not_stall_the_link() {
    for (name, f) in ID_MUTATIONS {
        // The target's data packets: the connect's state change, then replies.
        for at in 0..4 {
            let case = format!("{name}, target data packet {at}");
            let mut link = MutatingLink {
                dbg: Session::new(SessionConfig::kdcom(Role::Debugger)),
                tgt: Session::new(SessionConfig::kdcom(Role::Target)),
                now: Duration::ZERO,
                mutate: Some((at, f)),
                target_data: 0,
            };
            // The target announces itself with a state change, as it does on connect.
            link.tgt.send(
                link.now,
                PacketType::StateChange64,
                0x3030u32.to_le_bytes().to_vec(),
            );
            let (_, got) = link.settle(40);
            assert!(
                (1..=2).contains(&got.len()),
                "{case}: the state change arrived {} times",
                got.len()
            );
            for i in 0..6 {
                let req = request(&format!("request {i}"));
                link.dbg
                    .send(link.now, PacketType::StateManipulate, req.clone());
                let (units, got) = link.settle(40);
                let mut reply = req;
                reply.extend_from_slice(b" answered");
                assert!(
                    (1..=2).contains(&got.len()) && got.iter().all(|p| *p == reply),
                    "{case}: request {i} got {} replies in {units} units: {got:?}",
                    got.len()
                );
                assert!(
                    link.dbg.is_idle() && link.tgt.is_idle(),
                    "{case}: request {i}"
                );
            }
        }
    }
}

/// A KDCOM debugger that keeps dropping new packets as duplicates (their ids are in KDCOM's
/// space but one behind what it expects, packet after packet: the ids have gone wrong on
/// both ends, or the target will not follow them) RESETs the link after
/// `MAX_STRAY_DUPLICATES`, and the target's next packet (SYNC, after its answering RESET) is
/// delivered. Copies of the packet it delivered last (its ACK lost) never count.
#[test]
fn a_debugger_dropping_new_packets_as_duplicates_resets_the_link() {
    let mut dbg = Session::new(SessionConfig::kdcom(Role::Debugger));
    let now = Duration::ZERO;
    let data = |id: u32, tag: &str| {
        Repr::data(PacketType::StateManipulate, id, request(tag)).to_kdcom_bytes()
    };
    let is_reset = |u: &[u8]| {
        Repr::parse_bytes(u.strip_suffix(&[0xAA]).unwrap_or(u))
            .is_ok_and(|r| r.packet_type == PacketType::Reset)
    };
    let drain = |s: &mut Session| {
        let mut units = Vec::new();
        while let Some(u) = s.poll_transmit() {
            units.push(u);
        }
        units
    };
    dbg.handle_bytes(now, &data(INITIAL_PACKET_ID | SYNC_PACKET_ID, "first"));
    // Its copies, sent again because the ACKs were lost, are duplicates and nothing more.
    for _ in 0..10 {
        dbg.handle_bytes(now, &data(INITIAL_PACKET_ID, "first"));
    }
    assert!(!drain(&mut dbg).iter().any(|u| is_reset(u)));
    // New packets dropped as duplicates, one fewer than the limit: no RESET.
    for i in 1..tagsplit_protocol::kd::MAX_STRAY_DUPLICATES {
        dbg.handle_bytes(now, &data(INITIAL_PACKET_ID, &format!("stray {i}")));
    }
    assert!(!drain(&mut dbg).iter().any(|u| is_reset(u)));
    dbg.handle_bytes(now, &data(INITIAL_PACKET_ID, "stray last"));
    assert_eq!(drain(&mut dbg).iter().filter(|u| is_reset(u)).count(), 1);
    // The target answers the RESET (taken silently) and sends again under SYNC.
    dbg.handle_bytes(now, &Repr::control(PacketType::Reset, 0).to_kdcom_bytes());
    assert!(!drain(&mut dbg).iter().any(|u| is_reset(u)));
    dbg.handle_bytes(now, &data(INITIAL_PACKET_ID | SYNC_PACKET_ID, "after"));
    let delivered: Vec<_> = std::iter::from_fn(|| dbg.poll_event())
        .filter_map(|ev| match ev {
            SessionEvent::Packet { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [request("first"), request("after")]);
}
