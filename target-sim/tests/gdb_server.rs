#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The blocking GDB server: a run is interrupted by 0x03, a second client is refused
//! while one is attached, and the handle stops the server with a client attached and the
//! machine running.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tagsplit_protocol::gdb::frame::{Decoder, Event, INTERRUPT, encode_packet};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{BUSY_MESSAGE, GdbStub, GdbStubOptions};

/// Reads until a packet arrives; returns its payload (`None` on end of stream).
fn next_packet(stream: &mut TcpStream, decoder: &mut Decoder) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // Closed with our bytes unread: the end of the stream, as a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("{e}"),
        };
        if n == 0 {
            return None;
        }
        if let Some(p) = decoder.decode(&buf[..n]).into_iter().find_map(|e| match e {
            Event::Packet(p) => Some(p),
            _ => None,
        }) {
            return Some(p);
        }
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    // A guard against a hang, not a timing assertion.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn interrupt_refusal_and_shutdown_with_a_running_client() {
    let machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let stub = GdbStub::spawn(machine, GdbStubOptions::default()).unwrap();
    let mut client = connect(stub.addr());
    let mut decoder = Decoder::default();
    client.write_all(&encode_packet(b"?", false)).unwrap();
    assert_eq!(
        next_packet(&mut client, &mut decoder).unwrap(),
        b"T05thread:01;"
    );
    assert!(stub.client_attached());

    // A second client is refused with a reason.
    let mut second = connect(stub.addr());
    second
        .write_all(&encode_packet(b"qSupported", false))
        .unwrap();
    let refusal = next_packet(&mut second, &mut Decoder::default()).unwrap();
    assert!(
        String::from_utf8_lossy(&refusal).contains(BUSY_MESSAGE),
        "{refusal:?}"
    );

    // A paced run ends with the interrupt byte.
    let before = stub.with_machine(|m| m.tick());
    client.write_all(&encode_packet(b"c", false)).unwrap();
    client.write_all(&[INTERRUPT]).unwrap();
    let stop = next_packet(&mut client, &mut decoder).unwrap();
    let rip = stub.with_machine(|m| m.context().rip);
    let want = format!("10:{};", hex(&rip.to_le_bytes()));
    let text = String::from_utf8_lossy(&stop).into_owned();
    assert!(
        text.starts_with("T02thread:01;06:") && text.ends_with(&want),
        "{text}: SIGINT with rbp, rsp and rip expedited"
    );
    assert!(stub.with_machine(|m| m.tick()) >= before);

    // Running again, the handle stops the server: the client sees the end of the stream.
    client.write_all(&encode_packet(b"c", false)).unwrap();
    client.write_all(&encode_packet(b"?", false)).unwrap();
    let machine = stub.shutdown();
    assert!(machine.tick() >= before);
    assert_eq!(next_packet(&mut client, &mut decoder), None);
}
