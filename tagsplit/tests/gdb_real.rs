#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Real gdb (13.x, batch mode) against the simulator's stub on 127.0.0.1:0.
//!
//! Skipped with a notice when `gdb` is not on PATH, unless `CI=true`.

mod common;
mod gdb_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tagsplit::target::gdb::GdbTarget;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::server::gdb::{BUSY_MESSAGE, GdbStubHandle, StubFeatures};

fn have_gdb() -> bool {
    common::have_tool("gdb", "the real-gdb test")
}

fn stub() -> GdbStubHandle {
    gdb_support::part4_stub(StubFeatures::FULL)
}

/// Starts `gdb --batch` attached to `stub` with `commands` after `target remote`.
fn spawn_gdb(stub: &GdbStubHandle, commands: &[String]) -> Child {
    let mut cmd = Command::new("gdb");
    cmd.args([
        "--batch",
        "-nx",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ]);
    cmd.args(["-ex", &format!("target remote {}", stub.addr())]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_gdb(stub: &GdbStubHandle, commands: &[String]) -> String {
    common::finish(spawn_gdb(stub, commands), Duration::from_secs(30))
}

/// The two `Leak` immediates in myfault.sys, and a start address below them in a hole.
fn leak_hits(m: &Machine) -> (u64, u64, u64, u64) {
    let myfault = m
        .modules()
        .into_iter()
        .find(|x| x.name == "myfault.sys")
        .unwrap();
    let end = myfault.base.get() + myfault.size;
    let hits = m.search(
        myfault.base,
        myfault.base.saturating_add(myfault.size),
        b"Leak",
        4,
    );
    assert_eq!(hits.len(), 2);
    let (gap_start, gap_end) = gdb_support::hole_below(m, myfault.base);
    let (gap_start, gap_end) = (gap_start.get(), gap_end.get());
    assert!(gap_end > gap_start);
    let start = gap_start + (gap_end - gap_start) / 2 / 0x1000 * 0x1000;
    (hits[0].get(), hits[1].get(), start, end)
}

#[test]
fn gdb_lists_modules_reads_finds_writes_and_runs_monitor_commands() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let (hit1, hit2, start, end) = stub.with_machine(|m| leak_hits(m));
    let modules = stub.with_machine(|m| m.modules());
    let out = run_gdb(
        &stub,
        &[
            "info sharedlibrary".into(),
            format!("x/4xb {hit1:#x}"),
            format!("find /b {start:#x}, {end:#x}, 0x4c, 0x65, 0x61, 0x6b"),
            format!("set {{char}}({hit1:#x}+3) = 0x31"),
            format!("monitor dc {hit1:x} l1"),
            "monitor !poolused 2".into(),
            "monitor lm".into(),
            "info registers rip".into(),
        ],
    );
    for m in &modules {
        let listed = format!("target:{}", m.path.replace('\\', "/"));
        assert!(
            out.contains(&listed),
            "info sharedlibrary lacks {listed}:\n{out}"
        );
    }
    // gdb names the bytes by the export it read from myfault.sys's file.
    assert!(
        out.contains(&format!(
            "{hit1:#x} <MYFAULT!AllocSite1+13>:\t0x4c\t0x65\t0x61\t0x6b"
        )),
        "{out}"
    );
    assert!(out.contains("2 patterns found."), "{out}");
    assert!(
        out.contains(&format!("{hit1:#x} <MYFAULT!AllocSite1+13>\n"))
            && out.contains(&format!("{hit2:#x} <MYFAULT!AllocSite2+13>\n")),
        "{out}"
    );
    assert!(out.contains("Lea1"), "monitor dc after the write:\n{out}");
    assert!(
        out.contains(" Tag     Allocs") && out.contains(" Leak "),
        "monitor !poolused 2:\n{out}"
    );
    assert!(out.contains("myfault"), "monitor lm:\n{out}");
    assert!(out.contains("rip "), "{out}");
    assert!(out.contains("detached"), "batch quit detaches:\n{out}");
    assert!(!out.contains("too long"), "{out}");
    // The write really reached the machine.
    let mut b = [0u8; 4];
    stub.with_machine(|m| m.read(tagsplit::VirtAddr(hit1), &mut b))
        .unwrap();
    assert_eq!(&b, b"Lea1");
}

#[test]
fn gdb_breakpoint_on_an_allocation_site_reports_breakpoint_1() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let site = gdb_support::leak_alloc_site(&stub);
    let out = run_gdb(
        &stub,
        &[
            format!("break *{:#x}", site.instr.get()),
            "continue".into(),
            "info registers rip".into(),
        ],
    );
    assert!(
        out.contains(&format!("Breakpoint 1, {:#x}", site.instr.get())),
        "{out}"
    );
    assert!(
        out.contains(&format!("rip            {:#x}", site.instr.get())),
        "{out}"
    );
    // gdb removed its breakpoint on detach: the machine runs past the site again.
    let before = stub.with_machine(|m| m.tick());
    let ran = stub.with_machine(|m| m.run(50));
    assert!(ran.stop.is_none(), "{ran:?} after {before}");
}

#[test]
fn gdb_interrupt_stops_a_running_continue() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let child = spawn_gdb(&stub, &["continue".into(), "info registers rip".into()]);
    // Wait until the workload runs (the clock advances), then press Ctrl-C in gdb.
    let t0 = stub.with_machine(|m| m.tick());
    let deadline = Instant::now() + Duration::from_secs(20);
    while stub.with_machine(|m| m.tick()) < t0 + 20 {
        assert!(Instant::now() < deadline, "the target never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = common::finish(child, Duration::from_secs(20));
    assert!(
        out.contains("Program received signal SIGINT, Interrupt."),
        "{out}"
    );
    assert!(out.contains("rip "), "{out}");
    // Stopped: the clock no longer moves.
    let a = stub.with_machine(|m| m.tick());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(stub.with_machine(|m| m.tick()), a);
}

#[test]
fn second_client_is_refused_and_detach_leaves_the_stub_ready() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let first = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let refused = run_gdb(&stub, &["info registers rip".into()]);
    assert!(refused.contains(BUSY_MESSAGE), "{refused}");
    first.detach().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stub.client_attached() {
        assert!(Instant::now() < deadline, "stub still busy after detach");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Two gdb sessions in a row: each detaches at quit, the next attaches.
    for _ in 0..2 {
        let out = run_gdb(&stub, &["info registers rip".into()]);
        assert!(out.contains("rip ") && out.contains("detached"), "{out}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while stub.client_attached() {
            assert!(Instant::now() < deadline, "stub still busy after gdb quit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// gdb's own `qCRC` request (what `compare-sections` sends) gets the CRC-32 gdb would
/// compute (its `xcrc32`) of the module's bytes, before and after gdb patches one.
#[test]
fn gdb_gets_the_crc_it_would_compute() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let (hit1, _, _, _) = stub.with_machine(|m| leak_hits(m));
    let (base, len) = stub.with_machine(|m| {
        let myfault = m
            .modules()
            .into_iter()
            .find(|x| x.name == "myfault.sys")
            .unwrap();
        (myfault.base.get(), myfault.size)
    });
    let crc_of = |stub: &GdbStubHandle| {
        stub.with_machine(|m| {
            let mut bytes = vec![0u8; len as usize];
            m.read(tagsplit_target_sim::VirtAddr(base), &mut bytes)
                .unwrap();
            tagsplit_protocol::gdb::crc32(&bytes)
        })
    };
    let before = crc_of(&stub);
    let out = run_gdb(
        &stub,
        &[
            format!("maint packet qCRC:{base:x},{len:x}"),
            format!("set {{char}}({hit1:#x}+3) = 0x31"),
            format!("maint packet qCRC:{base:x},{len:x}"),
            format!("set {{char}}({hit1:#x}+3) = 0x6b"),
        ],
    );
    let after = stub.with_machine(|m| {
        let mut bytes = vec![0u8; len as usize];
        m.read(tagsplit_target_sim::VirtAddr(base), &mut bytes)
            .unwrap();
        bytes[(hit1 - base + 3) as usize] = 0x31;
        tagsplit_protocol::gdb::crc32(&bytes)
    });
    assert_ne!(before, after);
    assert!(out.contains(&format!("received: \"C{before:x}\"")), "{out}");
    assert!(out.contains(&format!("received: \"C{after:x}\"")), "{out}");
    // gdb put the byte back: the module is as it was.
    assert_eq!(crc_of(&stub), before);
}

/// gdb loads every module itself: the stub lists each under a name gdb takes for a target
/// path (`/SystemRoot/…`), gdb reads the image file through host I/O (`vFile:open`,
/// `pread`, `close`), and `info sharedlibrary` shows each at the address where it is
/// loaded (From is its `.text`, a page above the base) with its symbols read; `x/3i` at
/// an allocation site names the function by the image's export.
#[test]
fn gdb_loads_every_module_over_host_io_and_shows_where_it_is() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let modules = stub.with_machine(|m| m.modules());
    let site = gdb_support::leak_alloc_site(&stub);
    let out = run_gdb(
        &stub,
        &[
            "info sharedlibrary".into(),
            format!("x/3i {:#x}", site.instr.get()),
        ],
    );
    assert!(!out.contains("Could not load shared library"), "{out}");
    // The kernel is gdb's executable (`qXfer:exec-file`), so gdb reads every library's
    // symbols at once: their exports.
    assert!(!out.contains("No executable has been specified"), "{out}");
    for m in &modules {
        let name = format!("target:{}", m.path.replace('\\', "/"));
        let (line, fields) = out
            .lines()
            .map(|l| (l, l.split_whitespace().collect::<Vec<_>>()))
            .find(|(_, f)| f.len() == 5 && f[4] == name && f[1].starts_with("0x"))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"));
        let from = u64::from_str_radix(fields[0].trim_start_matches("0x"), 16).unwrap();
        let to = u64::from_str_radix(fields[1].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(from, m.base.get() + 0x1000, "{line}");
        assert!(to > from && to <= m.base.get() + m.size, "{line}");
        assert_eq!(fields[2], "Yes", "{line}");
    }
    // The site, named by the export gdb found in myfault.sys's file.
    assert!(
        out.contains(&format!(
            "{:#x} <MYFAULT!AllocSite1+11>:\tmov    $0x6b61654c,%r8d",
            site.instr.get()
        )),
        "{out}"
    );
}

/// `compare-sections` with a module's image (fetched with `remote get`) as gdb's exec
/// file at its ImageBase: every section matches; after a one-byte patch `.text` does not,
/// and the file served is still the image as loaded (not live memory); after the byte is
/// put back everything matches again.
#[test]
fn compare_sections_matches_the_served_image_until_a_patch() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let (hit1, _, _, _) = stub.with_machine(|m| leak_hits(m));
    let myfault = stub.with_machine(|m| {
        m.modules()
            .into_iter()
            .find(|x| x.name == "myfault.sys")
            .unwrap()
    });
    let dir = std::env::temp_dir().join(format!("tagsplit-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (before, after) = (dir.join("before.sys"), dir.join("after.sys"));
    let remote = myfault.path.replace('\\', "/");
    let out = run_gdb(
        &stub,
        &[
            format!("remote get {remote} {}", before.display()),
            format!("file {}", before.display()),
            "echo <before>\\n".into(),
            "compare-sections".into(),
            format!("set {{char}}({hit1:#x}+3) = 0x31"),
            "echo <patched>\\n".into(),
            "compare-sections".into(),
            format!("remote get {remote} {}", after.display()),
            format!("set {{char}}({hit1:#x}+3) = 0x6b"),
            "echo <restored>\\n".into(),
            "compare-sections".into(),
        ],
    );
    let part = |from: &str, to: &str| {
        let start = out.find(from).unwrap_or_else(|| panic!("{from}:\n{out}"));
        let end = if to.is_empty() {
            out.len()
        } else {
            out.find(to).unwrap()
        };
        out[start..end].to_owned()
    };
    let (clean, patched, restored) = (
        part("<before>", "<patched>"),
        part("<patched>", "<restored>"),
        part("<restored>", ""),
    );
    let text = |s: &str, verdict: &str| {
        s.lines()
            .any(|l| l.starts_with("Section .text,") && l.ends_with(verdict))
    };
    assert!(
        text(&clean, "matched.") && !clean.contains("MIS-MATCHED"),
        "{out}"
    );
    assert!(clean.contains("Section .rdata,"), "{out}");
    assert!(text(&patched, "MIS-MATCHED!"), "{out}");
    assert!(
        !patched
            .lines()
            .any(|l| l.starts_with("Section .rdata") && l.contains("MIS"))
    );
    assert!(
        text(&restored, "matched.") && !restored.contains("MIS-MATCHED"),
        "{out}"
    );
    // The file is the image as loaded, whatever the patch.
    let (a, b) = (
        std::fs::read(&before).unwrap(),
        std::fs::read(&after).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(&a[..2], b"MZ");
    assert_eq!(a.windows(4).filter(|w| w == b"Leak").count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Part 5 under real gdb: `nt!PoolHitTag` set to `Lea2` after the Part 4 patch of the
/// leaking site, `continue`: the stub stops at the `int 3` of the check in
/// `nt!ExAllocatePoolWithTag` with `T05 swbreak` and `rip` (the `int 3`) expedited; gdb
/// shows SIGTRAP and, as for any breakpoint instruction of the program's own that a
/// `swbreak` stop reports, moves `rip` past it (`P10`: on x86 a program's `int 3` leaves
/// the PC after it), so `info registers rip` is the byte after the `0xcc`; `rbx` holds
/// the tag as documented for the allocator's break.
#[test]
fn gdb_stops_with_sigtrap_at_the_pool_hit_tag_int3() {
    if !have_gdb() {
        return;
    }
    let stub = stub();
    let (imm, pool_hit_tag) = stub.with_machine(|m| {
        let leak = m
            .sites()
            .into_iter()
            .find(|s| s.leaks && s.module == "myfault.sys")
            .unwrap();
        (leak.imm.get(), m.kernel().pool_hit_tag.get())
    });
    let out = run_gdb(
        &stub,
        &[
            "set debug remote 1".into(),
            format!("set {{char}}({imm:#x}+3) = 0x32"),
            format!("set {{int}}{pool_hit_tag:#x} = 0x3261654c"),
            "continue".into(),
            "info registers rip".into(),
            "info registers rbx".into(),
            "x/1xb $pc-1".into(),
        ],
    );
    assert!(
        out.contains("Program received signal SIGTRAP"),
        "gdb shows the break as SIGTRAP:\n{out}"
    );
    let rip_line = out
        .lines()
        .find(|l| l.starts_with("rip "))
        .unwrap_or_else(|| panic!("no rip:\n{out}"));
    let shown = u64::from_str_radix(
        rip_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let int3 = shown - 1;
    let mut byte = [0u8; 1];
    stub.with_machine(|m| m.read(tagsplit::VirtAddr(int3), &mut byte))
        .unwrap();
    assert_eq!(byte, [0xcc], "rip is just past an int 3:\n{out}");
    // gdb names the address when it has the module's symbols (`0x… <nt!…+24>:`).
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{int3:#x}")) && l.ends_with(":\t0xcc")),
        "gdb reads the int 3 at rip-1:\n{out}"
    );
    // The stop reply: SIGTRAP, swbreak, rip (register 0x10) at the int 3 itself.
    let rip_hex: String = int3
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        out.lines()
            .any(|l| l.contains("Packet received: T05thread:01;swbreak:;")
                && l.contains(&format!("10:{rip_hex};"))),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("rbx") && l.contains("0x3261654c")),
        "rbx holds the tag at the allocator's break:\n{out}"
    );
}
