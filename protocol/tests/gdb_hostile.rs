#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Hostile GDB peers against the sans-IO sessions and stub: a client that floods
//! commands and never reads, one that floods while the target runs, and a stub that
//! floods a client. The queues stay under their configured bounds (asserted on the
//! sizes the sessions report), no command is lost, and a well-behaved exchange works
//! afterwards.

use tagsplit_protocol::gdb::frame::{self, Decoder, Event};
use tagsplit_protocol::gdb::stub::{DEFAULT_MAX_PENDING, Stub, StubConfig};
use tagsplit_protocol::gdb::{ClientEvent, ClientSession, ServerSession, SessionConfig};
use tagsplit_protocol::stub::{Resume, RunState, StopReason, Target, TargetError, X64Registers};

/// 4 KiB of memory at 0; runs until told to stop.
struct Ram {
    mem: Vec<u8>,
    running: bool,
    stop: bool,
}

impl Ram {
    fn new() -> Self {
        Ram {
            mem: (0..4096u32).map(|i| i as u8).collect(),
            running: false,
            stop: false,
        }
    }
}

impl Target for Ram {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let src = usize::try_from(addr)
            .ok()
            .and_then(|a| self.mem.get(a..))
            .filter(|s| !s.is_empty())
            .ok_or(TargetError::Fault)?;
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn write_memory(&mut self, _: u64, _: &[u8]) -> Result<(), TargetError> {
        Err(TargetError::Fault)
    }
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(X64Registers::default())
    }
    fn write_registers(&mut self, _: &X64Registers) -> Result<(), TargetError> {
        Err(TargetError::Unsupported)
    }
    fn resume(&mut self, _: Resume) -> Result<(), TargetError> {
        self.running = true;
        Ok(())
    }
    fn poll_run(&mut self) -> RunState {
        if self.stop {
            self.running = false;
            RunState::Stopped(StopReason::Trap)
        } else {
            RunState::Running(std::time::Duration::ZERO)
        }
    }
    fn interrupt(&mut self) {
        self.running = false;
    }
}

/// `count` requests for 0x40 bytes (a 128-byte hex reply each: 1:11 amplification).
fn flood(count: usize) -> Vec<u8> {
    let one = frame::encode_packet(b"m0,40", false);
    one.repeat(count)
}

/// The most a stub with `config` may hold: the transmit bound plus one reply, and the
/// pending commands with the partial frame being decoded.
fn stub_bound(config: &StubConfig) -> usize {
    let packet = config.packet_size + 0x100;
    config.max_transmit + 2 * packet + 16 + (config.max_pending + 1) * packet
}

/// Payloads of the packets in `bytes`.
fn packets(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut dec = Decoder::new(1 << 20);
    dec.decode(bytes)
        .into_iter()
        .filter_map(|e| match e {
            Event::Packet(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_that_never_reads_stops_being_read_and_nothing_is_lost() {
    const COUNT: usize = 100_000;
    let config = StubConfig::default();
    let bound = stub_bound(&config);
    let mut ram = Ram::new();
    let mut stub = Stub::new(config);
    let wire = flood(COUNT);
    // The client writes everything and reads nothing: the stub takes what fits, then
    // takes no more however often it is offered the rest.
    let mut taken = 0;
    for chunk in wire.chunks(0x4000) {
        taken += stub.receive(&mut ram, chunk);
        assert!(stub.buffered() <= bound, "{} > {bound}", stub.buffered());
        if taken < wire.len() && !stub.wants_input() {
            break;
        }
    }
    assert!(!stub.wants_input());
    assert!(
        taken < wire.len() / 20,
        "took {taken} of {} bytes",
        wire.len()
    );
    for _ in 0..100 {
        assert_eq!(stub.receive(&mut ram, &wire[taken..]), 0);
    }
    assert!(stub.buffered() <= bound);
    assert!(
        stub.buffered() >= config.max_transmit,
        "the queue filled up"
    );

    // The client starts reading: every request is answered, in order, within the bound.
    let expect = {
        let mut hex = String::new();
        for b in &ram.mem[..0x40] {
            hex.push_str(&format!("{b:02x}"));
        }
        hex.into_bytes()
    };
    let mut answered = 0;
    let mut peak = 0;
    loop {
        let used = stub.receive(&mut ram, &wire[taken..]);
        taken += used;
        peak = peak.max(stub.buffered());
        let out = stub.poll_transmit().unwrap_or_default();
        assert!(out.len() <= bound);
        for p in packets(&out) {
            assert_eq!(p, expect, "reply {answered}");
            answered += 1;
        }
        if taken == wire.len() && stub.pending_commands() == 0 && out.is_empty() {
            break;
        }
    }
    assert_eq!(answered, COUNT);
    assert!(peak <= bound, "{peak} > {bound}");
    assert_eq!(stub.session().stats().packets_received, COUNT as u64);
    // And the next request gets its answer at once.
    let m = frame::encode_packet(b"m10,4", false);
    assert_eq!(stub.receive(&mut ram, &m), m.len());
    assert_eq!(
        packets(&stub.poll_transmit().unwrap()),
        [b"10111213".to_vec()]
    );
}

#[test]
fn commands_sent_while_the_target_runs_are_held_not_dropped() {
    let config = StubConfig::default();
    let mut ram = Ram::new();
    let mut stub = Stub::new(config);
    let c = frame::encode_packet(b"c", false);
    assert_eq!(stub.receive(&mut ram, &c), c.len());
    assert!(stub.is_running());
    stub.poll_transmit();
    // gdb sends nothing while the target runs; this client sends 1000 commands.
    let mut wire = Vec::new();
    for i in 0..1000u32 {
        wire.extend(frame::encode_packet(
            format!("m{:x},1", i % 4096).as_bytes(),
            false,
        ));
    }
    let mut taken = 0;
    for _ in 0..50 {
        taken += stub.receive(&mut ram, &wire[taken..]);
        assert!(stub.poll_run(&mut ram).is_some());
        assert!(stub.pending_commands() <= DEFAULT_MAX_PENDING);
        assert!(stub.buffered() <= stub_bound(&config));
    }
    assert_eq!(stub.pending_commands(), DEFAULT_MAX_PENDING);
    assert!(taken < wire.len());
    let acks = stub.poll_transmit().unwrap();
    assert!(
        acks.iter().all(|&b| b == b'+'),
        "nothing is answered while it runs"
    );
    // The target stops: the stop reply, then every command in order.
    ram.stop = true;
    let mut replies = Vec::new();
    while taken < wire.len() || stub.pending_commands() > 0 {
        stub.poll_run(&mut ram);
        taken += stub.receive(&mut ram, &wire[taken..]);
        replies.extend(packets(&stub.poll_transmit().unwrap_or_default()));
    }
    assert!(replies[0].starts_with(b"T05"), "{:?}", replies[0]);
    assert_eq!(replies.len(), 1001);
    for (i, r) in replies[1..].iter().enumerate() {
        assert_eq!(r, format!("{:02x}", (i % 4096) as u8).as_bytes());
    }
}

#[test]
fn a_server_session_holds_at_most_its_bounds() {
    let config = SessionConfig {
        max_events: 8,
        ..SessionConfig::default()
    };
    let mut session = ServerSession::new(config);
    let wire = flood(10_000);
    let used = session.receive_some(&wire);
    assert_eq!(session.queued_events(), 8);
    assert!(!session.wants_input());
    assert_eq!(session.receive_some(&wire[used..]), 0);
    assert!(session.queued_bytes() <= 8 * 16 + config.max_packet);
    // Acks are queued too: with nothing written, the transmit bound stops input.
    let mut total = used;
    while session.poll_event().is_some() {}
    while total < wire.len() {
        let n = session.receive_some(&wire[total..]);
        while session.poll_event().is_some() {}
        if n == 0 {
            break;
        }
        total += n;
        assert!(session.queued_transmit() <= config.max_transmit);
    }
    assert_eq!(total, wire.len(), "8 KiB of acks fit the default bound");
    assert_eq!(session.queued_transmit(), 10_000);
}

#[test]
fn a_client_session_flooded_by_its_stub_stays_bounded() {
    let config = SessionConfig {
        max_events: 16,
        ..SessionConfig::default()
    };
    let mut client = ClientSession::new(config);
    client.send(&tagsplit_protocol::gdb::Command::Monitor(
        tagsplit_protocol::gdb::HexBytes::raw(b"lm"),
    ));
    client.poll_transmit();
    // Endless console output, then the OK.
    let mut wire = frame::encode_packet(b"O6869", false).repeat(100_000);
    wire.extend(frame::encode_packet(b"OK", false));
    let mut taken = 0;
    let mut outputs = 0;
    let mut done = false;
    while !done {
        taken += client.receive_some(&wire[taken..]);
        assert!(client.queued_events() <= 16);
        assert!(client.queued_bytes() <= config.max_transmit + config.max_packet);
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Output(o) => {
                    assert_eq!(o, b"hi");
                    outputs += 1;
                }
                ClientEvent::Reply(r) => {
                    assert_eq!(r, tagsplit_protocol::gdb::Reply::Ok);
                    done = true;
                }
                other => panic!("{other:?}"),
            }
        }
        client.poll_transmit();
    }
    assert_eq!(outputs, 100_000);
    assert_eq!(taken, wire.len());
}
