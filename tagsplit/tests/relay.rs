#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The relay with a perfect link passes TCP and UDP through unchanged, both ways; the
//! `tagsplit relay` command binds port 0, prints the address and stops on SIGTERM.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use tagsplit::relay::{Relay, RelayConfig};
use tagsplit_protocol::impair::Impairment;

const LOCAL: ([u8; 4], u16) = ([127, 0, 0, 1], 0);
/// A give-up time against a hung socket (never a pass criterion).
const PATIENCE: Duration = Duration::from_secs(60);

fn config(to: SocketAddr, udp: bool) -> RelayConfig {
    RelayConfig {
        listen: SocketAddr::from(LOCAL),
        to,
        udp,
        impairment: Impairment::default(),
        seed: 1,
    }
}

/// Sends `data` through a TCP relay to an echo server and reads it back.
fn echo_through(relay_addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(relay_addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    got
}

fn echo_server() -> SocketAddr {
    let server = TcpListener::bind(SocketAddr::from(LOCAL)).unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    addr
}

#[test]
fn a_perfect_tcp_relay_is_transparent() {
    let relay = Relay::spawn(config(echo_server(), false)).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(echo_through(relay.local_addr(), &data), data);
    let s = relay.shutdown();
    assert_eq!(s.forward.bytes_in, data.len() as u64);
    assert_eq!(s.backward.bytes_out, data.len() as u64);
}

#[test]
fn a_perfect_udp_relay_is_transparent() {
    let server = UdpSocket::bind(SocketAddr::from(LOCAL)).unwrap();
    server.set_read_timeout(Some(PATIENCE)).unwrap();
    let relay = Relay::spawn(config(server.local_addr().unwrap(), true)).unwrap();
    let client = UdpSocket::bind(SocketAddr::from(LOCAL)).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..20u8 {
        let d = vec![i; 100 + usize::from(i)];
        client.send_to(&d, relay.local_addr()).unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], d.as_slice());
        server.send_to(&buf[..n], from).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, relay.local_addr());
        assert_eq!(&buf[..n], d.as_slice());
    }
    // Another client is not relayed.
    let other = UdpSocket::bind(SocketAddr::from(LOCAL)).unwrap();
    other.send_to(b"stranger", relay.local_addr()).unwrap();
    client.send_to(b"again", relay.local_addr()).unwrap();
    let (n, _) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
    let s = relay.shutdown();
    assert_eq!(s.forward.datagrams_in, 21);
}

#[cfg(unix)]
#[test]
fn the_relay_command_prints_its_address_and_stops_on_sigterm() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let to = echo_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tagsplit"))
        .args(["relay", "--listen", "127.0.0.1:0", "--to", &to.to_string()])
        .args(["--ber", "0", "--seed", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert_eq!(echo_through(addr, b"hello"), b"hello");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    // Stopped by the signal: 128 + SIGTERM, as every command.
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("forward: 5 bytes in, 5 out"), "{rest}");
}

#[test]
fn the_relay_command_refuses_a_bad_probability() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagsplit"))
        .args(["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"])
        .args(["--loss", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a probability is between 0 and 1"), "{err}");
}
