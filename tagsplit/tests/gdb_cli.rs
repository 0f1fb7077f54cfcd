#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Requirement 5 at the command line: `run --target gdb://` and `demo --via gdb` give the
//! in-process answers, and `--stats` prints the wire counters.

mod common;

use common::tagsplit;
mod gdb_support;

use std::process::Output;

use tagsplit_target_sim::server::gdb::StubFeatures;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The report without the line naming the target.
fn verdict(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| !l.starts_with("tag split of"))
        .collect()
}

fn run(test: &str, target: &str) -> (String, String) {
    let journal = common::temp_dir(test).join("j.json");
    let o = tagsplit(&[
        "run",
        "--target",
        target,
        "--tag",
        "Leak",
        "--stats",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    (out, err)
}

#[test]
fn run_over_gdb_matches_the_in_process_run_and_prints_stats() {
    for features in [StubFeatures::FULL, StubFeatures::BASIC] {
        let stub = gdb_support::part4_stub(features);
        let (wire, wire_err) = run("gdb-cli-wire", &format!("gdb://{}", stub.addr()));
        let (local, local_err) = run("gdb-cli-local", "sim:part4");
        if features == StubFeatures::FULL {
            // Exact tick-limited runs: the very same numbers.
            assert_eq!(verdict(&wire), verdict(&local));
        } else {
            // Without QTagsplit.RunLimit the run is timed (about a tick per millisecond):
            // the same verdict, numbers close but not equal.
            let leaks = |r: &str| -> Vec<String> {
                r.lines()
                    .filter(|l| l.starts_with("LEAK:"))
                    .map(|l| l[..50].to_string())
                    .collect()
            };
            assert_eq!(leaks(&wire), leaks(&local), "{wire}");
        }
        assert!(wire.contains("LEAK: Lea2  myfault.sys+0x1621"), "{wire}");
        assert!(
            wire_err.contains("wire: ") && wire_err.contains(" round trips; sent "),
            "{wire_err}"
        );
        assert!(local_err.contains("has no wire"), "{local_err}");
        eprintln!(
            "{} stub: {}",
            if features == StubFeatures::FULL {
                "full"
            } else {
                "basic"
            },
            wire_err.trim()
        );
    }
}

#[test]
fn demo_via_gdb_prints_the_same_transcript_as_in_process() {
    let o = tagsplit(&["demo", "--via", "gdb", "--stats"]);
    let (gdb, err) = text(&o);
    assert!(o.status.success(), "{gdb}\n{err}");
    let o = tagsplit(&["demo", "--via", "sim"]);
    let (sim, _) = text(&o);
    let norm = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                !l.starts_with("[wire:") && !l.starts_with("(demo finished") && !l.trim().is_empty()
            })
            .map(|l| {
                let mut l = l.to_string();
                while let Some(p) = l.find("gdb://127.0.0.1:") {
                    let end = l[p + 16..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(l.len(), |e| p + 16 + e);
                    l.replace_range(p..end, "TARGET");
                }
                l.replace("sim:part4", "TARGET")
            })
            .collect()
    };
    assert_eq!(norm(&gdb), norm(&sim));
    assert_eq!(gdb.matches("[wire: ").count(), 2, "{gdb}");
    assert!(gdb.contains("Lea1") && gdb.contains("LEAK: Lea2"), "{gdb}");
}

/// Part 5 by hand in `tagsplit console -c` batch mode: in process and over `gdb://` the
/// batch prints the same transcript (PoolHitTag set through `nt!PoolHitTag`, the break
/// at the allocator's `int 3`, `r`, `k`, a breakpoint on the return address, `rax`).
#[test]
fn console_batch_part5_over_gdb_matches_in_process() {
    let batch = "eb myfault+0x1621+3 32; ed nt!PoolHitTag 3261654c; dc nt!PoolHitTag l1; g; \
                 r; k; ln rip; bp myfault+0x1634; bl; g; r rax; bc *; ed nt!PoolHitTag 0";
    let sim = tagsplit(&["console", "--target", "sim:part4", "-c", batch]);
    let (sim_out, sim_err) = text(&sim);
    assert!(sim.status.success(), "{sim_out}\n{sim_err}");
    let stub = gdb_support::part4_stub(StubFeatures::FULL);
    let target = format!("gdb://{}", stub.addr());
    let gdb = tagsplit(&["console", "--target", &target, "-c", batch]);
    let (gdb_out, gdb_err) = text(&gdb);
    assert!(gdb.status.success(), "{gdb_out}\n{gdb_err}");
    assert_eq!(sim_out, gdb_out);
    for want in [
        "0: kd> g\nBreak instruction exception - code 80000003 (first chance)\nnt!ExAllocatePoolWithTag+0x18:\n",
        "rbx=000000003261654c",
        "fffff880`f002fee0 fffff880`0496e697     myfault+0x1634\n",
        "(fffff800`02a01030)   nt!ExAllocatePoolWithTag+0x18\n",
        " 0 e fffff880`0496e634     0001 (0001) myfault+0x1634\n",
        "Breakpoint 0 hit\nmyfault+0x1634:\n",
    ] {
        assert!(sim_out.contains(want), "{want}\n---\n{sim_out}");
    }
    let rax = sim_out
        .lines()
        .find_map(|l| l.strip_prefix("rax=").filter(|v| v.len() == 16))
        .unwrap();
    assert_ne!(rax, "0000000000000000", "the block is in rax at the return");
}

/// `run --stacks` over `gdb://`: the split names the leaking site, its split tag is put
/// back for the stacks (only its allocations break), and afterwards every byte is the
/// original: the site's `Leak` and `nt!PoolHitTag`'s `ffffff0f`.
#[test]
fn run_with_stacks_over_gdb_names_the_caller_and_restores_everything() {
    let stub = gdb_support::part4_stub(StubFeatures::FULL);
    let target = format!("gdb://{}", stub.addr());
    let journal = common::temp_dir("run-stacks").join("j.json");
    let o = tagsplit(&[
        "run",
        "--target",
        &target,
        "--tag",
        "Leak",
        "--stacks",
        "--breaks",
        "10",
        "--json",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["split"]["sites"][1]["verdict"], "leak");
    assert_eq!(v["stacks"]["tag"], "Lea2");
    assert_eq!(
        v["stacks"]["allocations"], 10,
        "only the leaking site breaks"
    );
    assert_eq!(v["stacks"]["stacks"][0]["frames"][0], "myfault+0x1634");
    assert_eq!(v["stacks"]["patches_restored"], 1);
    assert_eq!(v["stacks"]["journal_removed"], true);
    assert!(!journal.exists());
    let (site, hit_tag) = stub.with_machine(|m| {
        let leak = m
            .sites()
            .into_iter()
            .find(|s| s.leaks && s.module == "myfault.sys")
            .unwrap();
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        m.read(leak.imm, &mut a).unwrap();
        m.read(m.kernel().pool_hit_tag, &mut b).unwrap();
        (a, u32::from_le_bytes(b))
    });
    assert_eq!(&site, b"Leak");
    assert_eq!(hit_tag, 0xffff_ff0f);
}
