#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Hostile GDB clients against the real TCP server: one that floods requests and never
//! reads its replies, and several that connect and never speak. The server's
//! per-connection buffers stay under their bound (asserted on what the server reports,
//! not on RSS) and a well-behaved client is served afterwards. Time-outs here are safety
//! nets against a hang; no assertion depends on timing.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tagsplit_protocol::gdb::frame::{Decoder, Event, encode_packet};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{
    BUSY_MESSAGE, GdbStub, GdbStubHandle, GdbStubOptions, READ_BUFFER,
};

fn spawn(options: GdbStubOptions) -> GdbStubHandle {
    let machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    GdbStub::spawn(machine, options).unwrap()
}

/// Asks `qAttached` on a fresh connection; `None` if the stub said it is busy or closed.
fn try_attached(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&encode_packet(b"qAttached", false)).ok()?;
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        for ev in decoder.decode(&buf[..n]) {
            if let Event::Packet(p) = ev {
                let busy = format!("E.{BUSY_MESSAGE}");
                return (p != busy.as_bytes()).then_some(p);
            }
        }
    }
}

/// Retries until a well-behaved client is served (a safety net of a minute against a
/// hang; how long it takes is not asserted).
fn served(addr: SocketAddr) -> Vec<u8> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(reply) = try_attached(addr) {
            return reply;
        }
        assert!(Instant::now() < give_up, "never served");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_floods_and_never_reads_is_bounded_and_the_next_is_served() {
    let options = GdbStubOptions::default();
    let packet = options.packet_size + 0x100;
    let bound =
        options.max_transmit + 2 * packet + 16 + (options.max_pending + 1) * packet + READ_BUFFER;
    let stub = spawn(options);
    let mut flood = TcpStream::connect(stub.addr()).unwrap();
    // Writes stop when the server stops reading (backpressure); the time-out only ends
    // the writing, it is not asserted.
    flood
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // `g`: 5 bytes in, a 1,077-byte reply out.
    let one = encode_packet(b"g", false);
    let burst = one.repeat(1000);
    let mut sent = 0;
    for _ in 0..100 {
        match flood.write_all(&burst) {
            Ok(()) => sent += 1000,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent > 0);
    assert!(
        stub.peak_buffered() <= bound,
        "{} > {bound}",
        stub.peak_buffered()
    );
    drop(flood);
    // The server did not die: the next client is served.
    assert_eq!(served(stub.addr()), b"1");
    assert!(stub.peak_buffered() <= bound);
    assert!(stub.peak_buffered() > 0);
    stub.shutdown();
}

#[test]
fn clients_that_never_speak_are_dropped_and_the_next_is_served() {
    let stub = spawn(GdbStubOptions {
        first_packet_timeout: Some(Duration::from_millis(200)),
        ..GdbStubOptions::default()
    });
    // Several silent connections at once: the first is attached, the rest refused. Half
    // of them start a packet and never finish it.
    let mut silent: Vec<TcpStream> = (0..12)
        .map(|i| {
            let mut s = TcpStream::connect(stub.addr()).unwrap();
            if i % 2 == 0 {
                s.write_all(b"$qAtt").unwrap();
            }
            s
        })
        .collect();
    assert_eq!(served(stub.addr()), b"1");
    // Every silent client was closed by the server (after a busy answer or none).
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{e}"),
        }
    }
    stub.shutdown();
}
