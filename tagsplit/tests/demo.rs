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
use tagsplit::demo::{PART5_BREAKS, PART5_COMMANDS, SEED_COMMANDS, transcript};
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
    check_part5(&text);
    // Generous for a debug build on a shared machine; the release build takes well under 2 s.
    assert!(started.elapsed().as_secs() < 30);
}

/// Part 5 after Part 4: the break's `k` names myfault's leaking helper and its caller,
/// the automated stacks find one leaking stack of Lea2 allocations, and everything is put
/// back.
fn check_part5(text: &str) {
    let part4 = text.find("# The same, automated").unwrap();
    let by_hand = text.find("# Part 5 (PoolHitTag), by hand").unwrap();
    let automated = text.find("# Part 5, automated").unwrap();
    assert!(
        part4 < by_hand && by_hand < automated,
        "Part 5 after Part 4"
    );
    let hand = &text[by_hand..automated];
    for cmd in PART5_COMMANDS {
        assert!(hand.contains(&format!("0: kd> {cmd}\n")), "{hand}");
    }
    assert!(hand.contains("0: kd> g\nBreak instruction exception - code 80000003 (first chance)\nnt!ExAllocatePoolWithTag+0x18:\n"), "{hand}");
    let k = hand.split("0: kd> k\n").nth(1).unwrap();
    let frames: Vec<&str> = k.lines().take_while(|l| !l.starts_with("0: kd>")).collect();
    assert_eq!(
        frames[0],
        "Child-SP          RetAddr               Call Site"
    );
    assert_eq!(frames.len(), 7, "{k}");
    assert!(frames[1].ends_with("nt+0x1048"), "{k}");
    assert!(
        frames[2].ends_with("myfault+0x1634"),
        "the Lea2 site's function: {k}"
    );
    assert!(
        frames[6].contains("00000000`00000000"),
        "to the thread's start: {k}"
    );
    let auto = &text[automated..];
    assert!(auto.contains("PoolHitTag stacks of 'Lea2' on "), "{auto}");
    assert!(
        auto.contains(&format!(
            ": {PART5_BREAKS} breaks ({PART5_BREAKS} allocations, 0 frees"
        )),
        "{auto}"
    );
    assert!(auto.contains("\nLEAKING: 20 allocs, 20480000 bytes; 0 freed; 20 outstanding (20480000 bytes)\n    myfault+0x1634\n    myfault+0x1697\n"), "{auto}");
    assert_eq!(
        auto.matches("\nstack: ").count(),
        0,
        "only the leaking site breaks"
    );
    assert!(auto.contains("nt!PoolHitTag restored to ffffff0f"));
    assert!(auto.contains("leaking caller: myfault+0x1697"));
    assert!(
        auto.contains("restore: 2 of 2 patches restored and verified, journal removed"),
        "{auto}"
    );
}

#[test]
fn demo_part5_over_gdb_and_kdnet_is_the_same() {
    for via in ["gdb", "kdnet"] {
        let out = common::bin().args(["demo", "--via", via]).output().unwrap();
        assert!(
            out.status.success(),
            "{via}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("\nLEAK: Lea2  myfault.sys+0x1621"), "{text}");
        assert!(text.contains("restore: 2 of 2 patches restored and verified"));
        check_part5(&text);
    }
}
