//! A KDNET target over a memory image: FILE's bytes at address BASE, everything else
//! unmapped. Like a Windows machine configured with `hostip:port` and a key, it pokes the
//! debugger listening at HOST:PORT until it answers.
//!
//! ```text
//! tagsplit console --target kdnet:port=50000,key=1.2.3.4 -c "db 0x10000 l10; lm"
//! cargo run -p tagsplit-protocol --example file_kd_stub -- \
//!     --image FILE --base 0x10000 --kdnet 127.0.0.1:50000 --key 1.2.3.4
//! ```
//!
//! A consumer writes the target (`file_image/mod.rs`, shared with `file_gdb_stub`) and this
//! loop; the [`Stub`] does the handshake, retries, the attach sequence and every answer.
//! Without [`KernelOps`](tagsplit_protocol::stub::KernelOps) `GetVersion` reports zero
//! addresses, so a debugger finds memory and registers but no kernel module list.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use tagsplit_protocol::kd::Role;
use tagsplit_protocol::kd::stub::{Stub, StubConfig};
use tagsplit_protocol::kdnet::{EndpointConfig, Key};

#[path = "file_image/mod.rs"]
mod file_image;
pub use file_image::FileImage;

/// Serves `image` over KDNET from `sock`, poking the debugger at `host`, until an I/O
/// error (KDNET has no goodbye: a silent debugger is replaced by the next one).
pub fn serve(
    image: &mut FileImage,
    sock: &UdpSocket,
    host: SocketAddr,
    key: Key,
) -> std::io::Error {
    let start = Instant::now();
    // The poke nonce must not repeat across runs on a real network; the clock will do here.
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut nonce = [0u8; 32];
    nonce
        .iter_mut()
        .zip(t.as_nanos().to_le_bytes())
        .for_each(|(d, s)| *d = s);
    let mut endpoint = EndpointConfig::new(Role::Target, key, nonce);
    endpoint.local = sock.local_addr().unwrap_or(endpoint.local);
    endpoint.peer = host;
    let banner = "file_kd_stub: a memory image, not a Windows kernel\n".to_owned();
    let mut stub = Stub::kdnet(
        StubConfig {
            banner,
            ..StubConfig::default()
        },
        endpoint,
        start.elapsed(),
    );
    let mut buf = vec![0u8; 0x10000];
    loop {
        stub.handle_timeout(image, start.elapsed());
        while let Some(datagram) = stub.poll_transmit() {
            if let Err(e) = sock.send_to(&datagram, host) {
                return e;
            }
        }
        // A memory image never runs: wait for a datagram or the stub's next timer.
        let wait = stub
            .poll_timeout()
            .map(|at| at.saturating_sub(start.elapsed()));
        if wait == Some(Duration::ZERO) {
            continue; // due now (std takes a zero time-out as an error)
        }
        let received = sock
            .set_read_timeout(wait)
            .and_then(|()| sock.recv(&mut buf));
        match received {
            Ok(n) => stub.receive(image, start.elapsed(), buf.get(..n).unwrap_or_default()),
            // Time is up, or a signal interrupted the wait (EINTR): loop and wait again.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return e,
        }
    }
}

#[allow(dead_code)] // the test includes this file and calls `serve`
fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut image, mut base, mut host, mut key) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let hex = value.trim_start_matches("0x");
        match flag.as_str() {
            "--image" => image = Some(value.clone()),
            "--base" => {
                base = Some(u64::from_str_radix(hex, 16).map_err(|e| format!("--base: {e}"))?)
            }
            "--kdnet" => {
                host = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--kdnet: {e}"))?,
                )
            }
            "--key" => key = Some(value.parse::<Key>().map_err(|e| format!("--key: {e}"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let (Some(path), Some(base), Some(host), Some(key)) = (image, base, host, key) else {
        return Err(
            "usage: file_kd_stub --image FILE --base HEX --kdnet HOST:PORT --key KEY".into(),
        );
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let ip = if host.ip().is_loopback() {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let sock = UdpSocket::bind((ip, 0)).map_err(|e| format!("bind: {e}"))?;
    eprintln!(
        "serving {path} ({} bytes) at {base:#x}; poking {host}",
        bytes.len()
    );
    Err(serve(&mut FileImage { base, bytes }, &sock, host, key).to_string())
}
