#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Real lldb (14, batch mode) against the simulator's GDB stub on 127.0.0.1:0.
//!
//! Skipped with a notice when `lldb` is not on PATH, unless `CI=true` (`.ci/run` installs
//! it). What lldb 14 can and cannot do with the stub is in the README ("gdb and lldb see
//! the modules"); this test pins both halves, so that a change on either side shows.

mod common;
mod gdb_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use tagsplit_target_sim::server::gdb::StubFeatures;

/// Runs `lldb --batch` with `commands` (each an `-o`); returns its stdout and stderr.
fn run_lldb(commands: &[String]) -> String {
    let mut cmd = Command::new("lldb");
    cmd.args(["--batch", "--no-lldbinit"]);
    for c in commands {
        cmd.args(["-o", c]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::finish(child, Duration::from_secs(60))
}

/// lldb attaches, reads registers and memory, disassembles an allocation site and reads
/// the library list with every module's name; lldb 14 still loads no module from it (its
/// loader for a target of no known OS never asks for libraries), so `image list` has
/// nothing to show.
#[test]
fn lldb_attaches_reads_and_gets_the_library_list_but_loads_no_module() {
    if !common::have_tool("lldb", "the real-lldb test") {
        return;
    }
    let stub = gdb_support::part4_stub(StubFeatures::FULL);
    let site = gdb_support::leak_alloc_site(&stub);
    let modules = stub.with_machine(|m| m.modules());
    let rip = stub.with_machine(|m| m.context().rip);
    let dir = common::temp_dir("lldb");
    let log = dir.join("packets.log");
    let out = run_lldb(&[
        format!("log enable -f {} gdb-remote packets", log.display()),
        format!("gdb-remote {}", stub.addr()),
        "register read rip".into(),
        format!("memory read --size 1 --count 4 {:#x}", site.imm.get()),
        format!("disassemble -s {:#x} -c 1", site.instr.get()),
        // The last command: lldb --batch stops at a command that fails.
        "image list".into(),
    ]);
    assert!(out.contains(&format!("rip = {rip:#018x}")), "{out}");
    assert!(
        out.contains(&format!("{:#x}: 4c 65 61 6b", site.imm.get())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{:#x}: movl   $0x6b61654c, %r8d",
            site.instr.get()
        )),
        "{out}"
    );
    let packets = std::fs::read_to_string(&log).unwrap();
    assert!(packets.contains("qXfer:libraries:read::"), "{packets}");
    for m in &modules {
        let name = m.path.replace('\\', "/");
        assert!(packets.contains(&name), "{name} not in the list lldb read");
    }
    // lldb 14 asks for the triple and gets none: its static loader never loads libraries.
    assert!(packets.contains("$qProcessInfo#"), "{packets}");
    assert!(
        out.contains("error: the target has no associated executable images"),
        "lldb now shows modules: update the README's \"gdb and lldb see the modules\":\n{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
