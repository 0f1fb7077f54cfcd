#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Real gdb (13.x, batch mode) against the `file_gdb_stub` example on 127.0.0.1:0: it
//! reads the image, finds a string, writes a byte, detaches, and a second gdb sees the
//! write and is told the target cannot run.
//!
//! Skipped with a notice when `gdb` is not on PATH, unless `CI=true`.

#[path = "../examples/file_gdb_stub.rs"]
mod example;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use example::{FileImage, serve};

const BASE: u64 = 0x7ff6_1234_0000;

fn have_gdb() -> bool {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "gdb is required when CI=true"
        );
        eprintln!("NOTICE: gdb is not installed; skipping the real-gdb test");
    }
    ok
}

/// Runs `gdb --batch` attached to `addr` with `commands`; returns stdout + stderr.
fn gdb(addr: SocketAddr, commands: &[String]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["--batch", "-nx", "-ex", "set pagination off"]);
    cmd.args(["-ex", &format!("target remote {addr}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn gdb_reads_finds_writes_detaches_and_a_second_gdb_attaches() {
    if !have_gdb() {
        return;
    }
    let mut bytes = b"MZ\x90\0 a file image with a Leak marker in it\n".to_vec();
    bytes.resize(0x300, 0xcc);
    let len = bytes.len();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut image = FileImage { base: BASE, bytes };
        serve(&listener, &mut image, Some(2));
        image
    });

    let first = gdb(
        addr,
        &[
            format!("x/16xb {BASE:#x}"),
            format!("find /b {BASE:#x}, +{len:#x}, 0x4c, 0x65, 0x61, 0x6b"),
            format!("set {{char}}{:#x} = 'Z'", BASE + 2),
            format!("x/2xb {:#x}", BASE + len as u64 - 1),
            "detach".into(),
        ],
    );
    let at = |off: u64| format!("{:#x}", BASE + off);
    assert!(
        first.contains(&format!("{}:\t0x4d\t0x5a\t0x90\t0x00\t0x20\t0x61", at(0))),
        "{first}"
    );
    assert!(
        first.contains(&format!("{}\n1 pattern found.", at(0x19))),
        "{first}"
    );
    // The last byte reads, the one after it is unmapped.
    assert!(first.contains("Cannot access memory"), "{first}");
    assert!(first.contains("detached"), "{first}");

    let second = gdb(
        addr,
        &[
            format!("x/3cb {BASE:#x}"),
            "continue".into(),
            "detach".into(),
        ],
    );
    assert!(second.contains("77 'M'\t90 'Z'\t90 'Z'"), "{second}");
    assert!(second.contains("this target cannot run"), "{second}");
    assert!(second.contains("detached"), "{second}");

    let image = server.join().unwrap();
    assert_eq!(&image.bytes[..3], b"MZZ");
    assert_eq!(image.bytes.len(), len);
}
