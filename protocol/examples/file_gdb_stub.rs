//! A GDB stub over a memory image: FILE's bytes at address BASE, everything else unmapped.
//!
//! ```text
//! cargo run -p tagsplit-protocol --example file_gdb_stub -- \
//!     --image FILE --base 0x10000 --listen 127.0.0.1:0
//! gdb -ex 'target remote 127.0.0.1:PORT' -ex 'x/16xb 0x10000'
//! ```
//!
//! What a consumer writes: the memory (read, write), the registers, and "cannot run"
//! (`file_image/mod.rs`, shared with `file_kd_stub`), and this loop. Everything else (negotiation, `qXfer`, packet sizes, what a stub without search,
//! breakpoints or a library list must answer) is the protocol crate's [`Stub`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use tagsplit_protocol::gdb::stub::{Stub, StubConfig};

#[path = "file_image/mod.rs"]
mod file_image;
pub use file_image::FileImage;

/// Serves one client until it detaches or disconnects.
pub fn serve_client(image: &mut FileImage, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stub = Stub::new(StubConfig::default());
    let mut buf = [0u8; 4096];
    let result = loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        // The stub stops taking bytes while its replies wait: write them, offer the rest.
        let mut rest = buf.get(..n).unwrap_or_default();
        let mut failed = None;
        loop {
            let used = stub.receive(image, rest);
            rest = rest.get(used..).unwrap_or_default();
            if let Some(bytes) = stub.poll_transmit()
                && let Err(e) = stream.write_all(&bytes)
            {
                failed = Some(e);
                break;
            }
            if rest.is_empty() || stub.is_closed() {
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if stub.is_closed() {
            break Ok(());
        }
    };
    stub.disconnect(image);
    result
}

/// Serves clients one after the other (a second one waits in the listen queue), at most
/// `clients` of them when given.
pub fn serve(listener: &TcpListener, image: &mut FileImage, clients: Option<usize>) {
    for stream in listener.incoming().take(clients.unwrap_or(usize::MAX)) {
        let peer = stream.as_ref().ok().and_then(|s| s.peer_addr().ok());
        eprintln!("client {peer:?} attached");
        let result = stream.and_then(|s| serve_client(image, s));
        eprintln!("client {peer:?} gone: {result:?}");
    }
}

#[allow(dead_code)] // the test includes this file and calls `serve`
fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut image, mut base, mut listen) = (None, None, String::from("127.0.0.1:0"));
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--image" => image = Some(value),
            "--base" => {
                let hex = value.trim_start_matches("0x");
                base = Some(u64::from_str_radix(hex, 16).map_err(|e| format!("--base: {e}"))?);
            }
            "--listen" => listen = value,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let usage = "usage: file_gdb_stub --image FILE --base HEX [--listen ADDR:PORT]";
    let (Some(path), Some(base)) = (image, base) else {
        return Err(usage.into());
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let listener = TcpListener::bind(&listen).map_err(|e| format!("{listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "serving {path} ({} bytes) at {base:#x} on {addr}",
        bytes.len()
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    serve(&listener, &mut FileImage { base, bytes }, None);
    Ok(())
}
