#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The `file_kd_stub` example (a KDNET target over a file's bytes, written against
//! `tagsplit-protocol` alone) against the real `tagsplit console` binary: `db` shows the
//! file's bytes, and `lm` fails clearly (no kernel module list), failing the batch.

mod common;

#[path = "../../protocol/examples/file_kd_stub.rs"]
mod example;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Output, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use example::{FileImage, serve};
use tagsplit_protocol::kdnet::Key;

const BASE: u64 = 0x7ff6_1234_0000;
const KEY: &str = "tagsplit.file.kd.stub";
/// Against hangs only: nothing here waits on wall-clock timing to pass.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Runs `tagsplit console` listening for KDNET on a port it picks, points a `file_kd_stub`
/// server thread at it, and returns the console's output with its stderr.
fn console(commands: &str, bytes: &[u8]) -> (Output, String) {
    let target = format!("kdnet:port=0,key={KEY},host=127.0.0.1,timeout=60");
    let mut child = common::bin()
        .args(["console", "--target", &target, "-c", commands])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all.join("\n")
    });
    let host: SocketAddr = loop {
        let line = lines
            .recv_timeout(GIVE_UP)
            .expect("the console's listening address");
        if let Some(addr) = line.strip_prefix("waiting for a KDNET target on ") {
            break addr.parse().unwrap();
        }
    };
    // The example's server, as its `main` runs it; it serves until the process ends.
    let mut image = FileImage {
        base: BASE,
        bytes: bytes.to_vec(),
    };
    let key: Key = KEY.parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    std::thread::spawn(move || serve(&mut image, &sock, host, key));
    let output = child.wait_with_output().unwrap();
    (output, reader.join().unwrap())
}

#[test]
fn the_console_reads_the_file_and_lm_fails_clearly() {
    let mut bytes = b"MZ\x90\0file image!\x01\x02\x03\x04 and more".to_vec();
    bytes.resize(0x100, 0xcc);

    let (out, stderr) = console(&format!("db {BASE:#x} l10"), &bytes);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("00007ff6`12340000"))
        .unwrap_or_else(|| panic!("no db row in:\n{stdout}\n{stderr}"));
    let hex: String = bytes[..16].iter().map(|b| format!("{b:02x}")).collect();
    let shown: String = row
        .split("  ")
        .nth(1)
        .unwrap()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(shown, hex, "{row}");

    let (out, stderr) = console(&format!("db {BASE:#x} l10; lm"), &bytes);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "lm must fail the batch:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("00007ff6`12340000"), "{stdout}");
    assert!(stderr.contains("error in 'lm': "), "{stderr}");
    assert!(stderr.contains("a kernel module list"), "{stderr}");
}
