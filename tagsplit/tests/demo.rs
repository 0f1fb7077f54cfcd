//! The seed transcript, reproduced on the `part4` scenario.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use tagsplit::console::Console;
use tagsplit::demo::{SEED_COMMANDS, transcript};
use tagsplit::target::sim::SimTarget;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/seed/troubleshooting-pool-leaks-part4.txt"
);

/// The seed's lines with non-breaking spaces turned back into spaces.
fn seed_lines() -> Vec<String> {
    std::fs::read_to_string(SEED)
        .unwrap()
        .lines()
        .map(|l| l.replace('\u{a0}', " ").trim_end().to_string())
        .collect()
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn demo_output() -> String {
    let mut t = SimTarget::builtin("part4").unwrap();
    transcript(&mut t, &mut Console::new(), &SEED_COMMANDS)
}

#[test]
fn hit_lines_and_dc_lines_are_byte_exact() {
    let seed = seed_lines();
    let out = demo_output();
    let ours: Vec<&str> = out.lines().collect();
    for prefix in [
        "fffff880`0496e3aa  4c",
        "fffff880`0496e621  4c",
        "fffff880`0496e3aa  3161654c",
        "fffff880`0496e621  3261654c",
    ] {
        let s = seed
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("seed has no {prefix}"));
        let o = ours
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("we print no {prefix}"));
        assert_eq!(*o, s.as_str());
    }
    // The order of the transcript is the seed's.
    let cmd_lines: Vec<&str> = ours
        .iter()
        .filter(|l| l.starts_with("0: kd> "))
        .copied()
        .collect();
    let seed_cmds: Vec<&str> = seed
        .iter()
        .filter(|l| l.starts_with("0: kd> "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        cmd_lines
            .iter()
            .filter(|c| **c != "0: kd> g")
            .copied()
            .collect::<Vec<_>>(),
        seed_cmds
    );
    // eb prints nothing.
    let eb = ours
        .iter()
        .position(|l| l.starts_with("0: kd> eb fffff880`0496e3aa"))
        .unwrap();
    assert!(ours[eb + 1].starts_with("0: kd> eb"));
}

#[test]
fn poolused_rows_match_the_seed() {
    let seed = seed_lines();
    let out = demo_output();
    let section = out.split("0: kd> !poolused /t5 2\n").nth(1).unwrap();
    assert!(section.starts_with("   Sorting by NonPaged Pool Consumed\n"));
    let rows: Vec<String> = section
        .lines()
        .filter(|l| !l.trim().is_empty())
        .skip(3)
        .map(normalise)
        .collect();
    let start = seed.iter().position(|l| l.starts_with("Lea2 257")).unwrap();
    let seed_rows: Vec<String> = seed[start..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .map(|l| normalise(l))
        .collect();
    assert_eq!(rows, seed_rows);
    assert_eq!(rows[5], "TOTAL 41296 281814544 44077 68102368");
    assert!(rows[4].ends_with("Etw Buffer, Binary: nt!etw"));
    // The column layout: tag, then right-aligned numbers, then a tab and the description.
    assert!(section.contains("\n nVsC       664      1531552          0            0\tUNKNOWN pooltag 'nVsC', please update pooltag.txt\n"));
}

#[test]
fn demo_binary_prints_transcript_and_verdict_quickly() {
    let started = std::time::Instant::now();
    let out = common::bin().arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fffff880`0496e621  3261654c                             Lea2\n"));
    assert!(text.contains("\nLEAK: Lea2  myfault.sys+0x1621  mov r8d,3261654Ch  257 allocs, +263168000 bytes outstanding"), "{text}");
    assert!(text.contains("\nload: Lea1  myfault.sys+0x13aa  mov r8d,3161654Ch"));
    assert!(text.contains("restore: 2 of 2 patches restored and verified"));
    // Generous for a debug build on a shared machine; the release build takes well under 2 s.
    assert!(started.elapsed().as_secs() < 30);
}
