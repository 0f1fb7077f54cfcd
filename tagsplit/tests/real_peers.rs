#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The `gdb://` backend against RSP servers no one here wrote: QEMU 7.2's gdbstub (a tiny
//! guest with no disk, running or paused) and Debian's gdbserver (a process of ours).
//! Each test skips with a notice when its peer is not installed, except under
//! `CI=true`, where `.ci/run` installs them.
//!
//! QEMU and gdbserver bind port 0 themselves and say which port they got (QEMU through
//! its QMP monitor on stdin/stdout, gdbserver on stderr).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;
use tagsplit::VirtAddr;
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::GdbTarget;

/// A QEMU machine with no disk (SeaBIOS finds nothing to boot and idles), its gdbstub on
/// a port it chose, and its QMP monitor on stdio.
struct Qemu {
    child: Child,
    qmp_in: ChildStdin,
    qmp_out: BufReader<ChildStdout>,
    port: u16,
}

impl Qemu {
    /// Starts QEMU, running (`paused`: halted before the first instruction, `-S`).
    fn start(paused: bool) -> Qemu {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "32",
            "-gdb",
            "tcp:127.0.0.1:0",
            "-qmp",
            "stdio",
        ]);
        if paused {
            cmd.arg("-S");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let qmp_in = child.stdin.take().unwrap();
        let qmp_out = BufReader::new(child.stdout.take().unwrap());
        let mut q = Qemu {
            child,
            qmp_in,
            qmp_out,
            port: 0,
        };
        q.qmp("qmp_capabilities");
        let chardevs = q.qmp("query-chardev");
        // `disconnected:tcp:127.0.0.1:PORT,server=on`
        let gdb = chardevs
            .as_array()
            .unwrap()
            .iter()
            .find_map(|c| {
                let f = c["filename"].as_str()?;
                f.contains("server=on").then(|| f.to_owned())
            })
            .expect("a gdb chardev");
        let port = gdb
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {gdb}"));
        q.port = port;
        q
    }

    /// Runs a QMP command; its `return` value (events before it are skipped).
    fn qmp(&mut self, command: &str) -> Value {
        writeln!(self.qmp_in, "{{\"execute\":\"{command}\"}}").unwrap();
        self.qmp_in.flush().unwrap();
        loop {
            let mut line = String::new();
            assert!(self.qmp_out.read_line(&mut line).unwrap() > 0, "QMP closed");
            let v: Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "{command}: {v}");
        }
    }

    /// Whether the guest runs (QMP `query-status`).
    fn running(&mut self) -> bool {
        self.qmp("query-status")["running"].as_bool().unwrap()
    }

    fn spec(&self) -> String {
        format!("gdb://127.0.0.1:{}", self.port)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs (`RUST_LOG=tagsplit=debug`) into the test's output.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn have_qemu() -> bool {
    logs();
    common::have_tool("qemu-system-x86_64", "the QEMU tests")
}

/// The reset vector of SeaBIOS at the top of the first 4 GiB, where the flash is always
/// mapped: `jmp f000:e05b`. (Its copy below 1 MiB is RAM once SeaBIOS shadows itself, and
/// read zero in one run right after start.) Guest addresses are physical here: the BIOS
/// runs without paging.
const RESET_VECTOR: u64 = 0xffff_fff0;

/// Attach ten times in a row to a running guest (QEMU pauses it on connect and says so
/// unasked, `T02thread:01;`, before the first reply): read, write, search, detach, and
/// the guest runs on after each.
#[test]
fn qemu_running_guest_attach_ten_times() {
    if !have_qemu() {
        return;
    }
    let mut qemu = Qemu::start(false);
    assert!(qemu.running());
    let addr = format!("127.0.0.1:{}", qemu.port);
    let mut first = None;
    for round in 0..10u8 {
        let mut t = GdbTarget::connect(&addr).unwrap_or_else(|e| panic!("attach {round}: {e}"));
        let mut vector = [0u8; 5];
        assert_eq!(
            t.read_memory(VirtAddr(RESET_VECTOR), &mut vector).unwrap(),
            5
        );
        assert_eq!(vector[0], 0xea, "attach {round}: a far jump");
        assert_eq!(*first.get_or_insert(vector), vector, "attach {round}");
        // Low RAM the BIOS leaves alone while idling.
        let scratch = VirtAddr(0x7000);
        let pattern = [0x5a, 0x17, round, 0xc3, 0x99, 0x42];
        assert_eq!(
            t.write_memory(scratch.saturating_add(0x40), &pattern)
                .unwrap(),
            6
        );
        let mut back = [0u8; 6];
        t.read_memory(scratch.saturating_add(0x40), &mut back)
            .unwrap();
        assert_eq!(back, pattern, "attach {round}");
        let hits = t
            .search_memory(scratch, scratch.saturating_add(0x1000), &pattern, 4)
            .unwrap();
        assert_eq!(hits, [scratch.saturating_add(0x40)], "attach {round}");
        drop(t);
        assert!(
            qemu.running(),
            "attach {round}: the guest runs after detach"
        );
    }
}

/// A guest halted before its first instruction (`-S`): no unasked stop packet comes, and
/// the same reads work.
#[test]
fn qemu_paused_guest_is_read() {
    if !have_qemu() {
        return;
    }
    let mut qemu = Qemu::start(true);
    assert!(!qemu.running());
    let mut t = GdbTarget::connect(&format!("127.0.0.1:{}", qemu.port)).unwrap();
    let mut vector = [0u8; 5];
    assert_eq!(
        t.read_memory(VirtAddr(RESET_VECTOR), &mut vector).unwrap(),
        5
    );
    assert_eq!(vector[0], 0xea);
    // No Windows kernel here, and it says so, in a few round trips (no scan).
    let before = t.stats().unwrap().round_trips;
    let e = t.modules().unwrap_err().to_string();
    assert!(
        e.contains("no Windows kernel here") && e.contains("rip"),
        "{e}"
    );
    let cost = t.stats().unwrap().round_trips - before;
    assert!(cost <= 4, "{cost} round trips to find no kernel");
}

/// `u` follows the processor's mode: at reset QEMU's CPU is in real mode (`CR0.PE` clear,
/// read through the registers its target description names), so the reset vector
/// disassembles as 16-bit code (`jmp far`), which 64-bit decoding calls invalid.
#[test]
fn qemu_real_mode_code_is_disassembled_as_16_bit() {
    if !have_qemu() {
        return;
    }
    let qemu = Qemu::start(true);
    let out = common::bin()
        .args(["console", "--target", &qemu.spec(), "-c", "u 0xffff0 l1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ea5be000f0") && text.contains("jmp far 0E05Bh,0F000h"),
        "{text}"
    );
}

/// QEMU killed during a long search: the console says the connection is lost, runs no
/// command after it, and exits non-zero.
#[test]
fn qemu_killed_mid_command_stops_the_console() {
    if !have_qemu() {
        return;
    }
    let mut qemu = Qemu::start(false);
    let mut console = common::bin()
        .args([
            "console",
            "--target",
            &qemu.spec(),
            "-c",
            // The search reads 256 MiB (tens of thousands of round trips, most of it
            // holes above the guest's 32 MiB): QEMU is killed long before it ends.
            "db 0xffff0 l5; s -b 0 L?10000000 de ad be ef 01; db 0x7000 l4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(console.stdout.take().unwrap());
    let mut seen = String::new();
    // Until the first command's output: the search has started.
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
        if line.contains("000ffff0") {
            break;
        }
    }
    let _ = qemu.child.kill();
    let _ = qemu.child.wait();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let output = console.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{seen}{rest}{err}");
    assert!(err.contains("connection"), "{err}");
    assert!(
        !rest.contains("00007000"),
        "a command ran after the link was lost: {rest}"
    );
}

/// A process of ours under Debian's gdbserver: it finds the string it holds, writes and
/// reads it back, and a split refuses plainly (no Windows kernel).
#[test]
fn gdbserver_process_is_read_written_and_searched() {
    logs();
    if !common::have_tool("gdbserver", "the gdbserver tests") {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_tagsplit");
    let mut server = Command::new("gdbserver")
        .args(["--once", "127.0.0.1:0", exe, "scenarios"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let (mut pid, mut port) = (0u32, 0u16);
    while port == 0 {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "gdbserver said nothing"
        );
        if let Some(p) = line.split("pid = ").nth(1) {
            pid = p.trim().parse().unwrap();
        }
        if let Some(p) = line.split("Listening on port ").nth(1) {
            port = p.trim().parse().unwrap();
        }
    }
    // Where the executable's read-only data is mapped.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (lo, hi) = maps
        .lines()
        .filter(|l| l.ends_with(exe) || l.contains("/tagsplit"))
        .filter_map(|l| {
            let (range, _) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .fold((u64::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    assert!(lo < hi, "{maps}");
    let mut t = GdbTarget::connect(&format!("127.0.0.1:{port}")).unwrap();
    let needle = b"WinDbg-style console";
    let hits = t
        .search_memory(VirtAddr(lo), VirtAddr(hi), needle, 4)
        .unwrap();
    assert!(!hits.is_empty(), "{lo:#x}..{hi:#x}");
    let at = hits[0];
    let mut b = [0u8; 20];
    assert_eq!(t.read_memory(at, &mut b).unwrap(), 20);
    assert_eq!(&b, needle);
    assert_eq!(t.write_memory(at, b"windbg").unwrap(), 6);
    t.read_memory(at, &mut b).unwrap();
    assert_eq!(&b[..6], b"windbg");
    let before = t.stats().unwrap().round_trips;
    let e = t.modules().unwrap_err().to_string();
    assert!(
        e.contains("no Windows kernel here") && e.contains("rip"),
        "{e}"
    );
    let cost = t.stats().unwrap().round_trips - before;
    assert!(cost <= 4, "{cost} round trips to find no kernel");
    drop(t);
    let _ = server.kill();
    let _ = server.wait();
}
