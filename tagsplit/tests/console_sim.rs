//! The console on the simulator: module walk, pool commands, error paths.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::OnceLock;

use proptest::prelude::*;
use tagsplit::console::Console;
use tagsplit::demo::{SEED_COMMANDS, transcript};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, open, walk_module_list};

/// `part4` after the seed's steps (booted once, cloned per test).
fn after_seed() -> SimTarget {
    static T: OnceLock<SimTarget> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = SimTarget::builtin("part4").unwrap();
        transcript(&mut t, &mut Console::new(), &SEED_COMMANDS);
        t
    })
    .clone()
}

#[test]
fn module_walk_from_memory_matches_the_simulator() {
    for name in ["part4", "many-sites"] {
        let mut t = SimTarget::builtin(name).unwrap();
        let head = t.kernel_info().unwrap().ps_loaded_module_list;
        assert_eq!(
            walk_module_list(&mut t, head).unwrap(),
            t.modules().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn open_parses_specs() {
    assert_eq!(open("sim:part4").unwrap().describe(), "sim:part4");
    let err = |s: &str| open(s).err().map(|e| e.to_string()).unwrap_or_default();
    // Every scheme is built: bad or unreachable specs fail fast with a reason.
    assert!(err("gdb://127.0.0.1:1").contains("i/o error"));
    assert!(err("gdb://").contains("expected gdb://HOST:PORT"));
    assert!(err("kdnet:port=50000").contains("key=K is required"));
    assert!(err("kdnet:port=50000,key=1.2.3").contains("four parts"));
    assert!(err("kdnet:key=1.2.3.4").contains("port=N is required"));
    assert!(err("kdcom:127.0.0.1:1").contains("i/o error"));
    assert!(err("sim:nope").contains("no built-in scenario"));
    assert!(err("sim:/nonexistent.toml").contains("bad target"));
    assert!(err("ftp://x").contains("unknown target"));
}

#[test]
fn poolfind_and_pool_agree_with_the_tracker() {
    let mut t = after_seed();
    let mut c = Console::new();
    // Lea2: 257 big nonpaged allocations, found in the big-page table.
    let big = c.execute(&mut t, "!poolfind Lea2");
    assert_eq!(
        big.lines()
            .filter(|l| l.contains(":large page allocation, Tag is Lea2, size is 0xfa000 bytes"))
            .count(),
        257
    );
    // Lea1: paged small blocks; the allocated ones match the tracker's outstanding count.
    let used = c.execute(&mut t, "!poolused 1 Lea1");
    let row = used.lines().find(|l| l.starts_with(" Lea1")).unwrap();
    let cols: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap())
        .collect();
    let outstanding = cols[6];
    let small = c.execute(&mut t, "!poolfind Lea1 1");
    let blocks: Vec<&str> = small
        .lines()
        .filter(|l| l.ends_with("(Allocated) Lea1"))
        .collect();
    assert_eq!(blocks.len() as u64, outstanding, "{small}");
    // 1000 bytes + the 16-byte header, in 16-byte units: 0x400.
    assert!(
        blocks
            .iter()
            .all(|b| b.contains(" size:  400 previous size:")),
        "{small}"
    );
    // !pool on a block marks it.
    let addr = blocks[0].split_whitespace().next().unwrap();
    let pool = c.execute(&mut t, &format!("!pool {addr}"));
    assert!(
        pool.starts_with(&format!("Pool page {addr} region is Paged pool\n")),
        "{pool}"
    );
    assert!(pool.contains(&format!("*{addr} size:")));
    assert!(pool.contains("\t\tPooltag Lea1 : UNKNOWN pooltag 'Lea1', please update pooltag.txt"));
    // Nonpaged search for a paged tag finds no small blocks.
    let none = c.execute(&mut t, "!poolfind Lea1");
    assert!(!none.contains("(Allocated)"));
}

#[test]
fn poolused_sorting_and_patterns() {
    let mut t = after_seed();
    let mut c = Console::new();
    let by_tag = c.execute(&mut t, "!poolused");
    assert!(by_tag.starts_with("   Sorting by  Tag\n"));
    let tags: Vec<&str> = by_tag
        .lines()
        .skip(5)
        .take_while(|l| !l.is_empty())
        .map(|l| &l[1..5])
        .collect();
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(tags, sorted);
    let paged = c.execute(&mut t, "!poolused 4 Lea*");
    assert!(paged.starts_with("   Sorting by Paged Pool Consumed\n"));
    let rows: Vec<&str> = paged.lines().filter(|l| l.starts_with(" Lea")).collect();
    // Lea1 has paged bytes; Lea2 and Leak have none and follow in tag order.
    let order: Vec<&str> = rows.iter().map(|r| &r[1..5]).collect();
    assert_eq!(order, ["Lea1", "Lea2", "Leak"]);
    // The TOTAL row covers every tag, whatever the filter.
    assert!(
        paged.ends_with(" TOTAL     41296    281814544      44077     68102368\n"),
        "{paged}"
    );
}

#[test]
fn error_paths() {
    let mut t = after_seed();
    let mut c = Console::new();
    assert_eq!(
        c.execute(&mut t, "db nosuchmodule+10"),
        "Couldn't resolve error at 'nosuchmodule+10'\n"
    );
    assert_eq!(
        c.execute(&mut t, "eb 0 31"),
        "Memory access error at '0 31'\n"
    );
    assert_eq!(
        c.execute(&mut t, "dc 0 l1"),
        "00000000`00000000  ????????                             ????\n"
    );
    assert!(
        c.execute(&mut t, "s -a 0 L?ffffffffffffffff")
            .contains("Syntax error")
    );
    assert!(
        c.execute(&mut t, "!poolused /tX")
            .contains("Couldn't resolve")
    );
    assert!(
        c.execute(&mut t, "!pool 0")
            .contains("Unable to get contents of pool block")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_command_lines_never_panic(
        word in proptest::sample::select(vec!["db", "dc", "dd", "eb", "ed", "s -a", "s -b", "s -d", "u", "lm", "lm a", "!poolused", "!poolfind", "!pool", "?", "!for_each_module", "frob"]),
        args in "[ 0-9a-fA-FlLxn`+\\-?*\"/tT!]{0,30}",
    ) {
        let mut t = after_seed();
        let _ = Console::new().execute(&mut t, &format!("{word} {args}"));
    }
}

#[test]
fn a_borrowed_machine_runs_the_console_too() {
    use tagsplit::target::sim::MachineRef;
    use tagsplit_target_sim::machine::Machine;
    use tagsplit_target_sim::scenario::Scenario;
    let scenario = Scenario::builtin("part4").unwrap();
    let mut machine = Machine::boot(&scenario).unwrap();
    let mut view = MachineRef::new(&mut machine, scenario.default_run_ticks());
    let out = transcript(&mut view, &mut Console::new(), &SEED_COMMANDS);
    assert!(out.contains(" Lea2       257    263168000"));
    let owned = SimTarget::from_machine(machine, scenario.default_run_ticks());
    assert_eq!(owned.describe(), "sim:part4");
    assert!(owned.into_machine().tick() > 1000);
}

/// A GDB stub that goes away between two commands: the command that meets the closed
/// connection fails with "connection lost" (not `??` as if memory were unreadable), and
/// no command runs after it, in the same line or a later one.
#[test]
fn a_lost_connection_stops_the_console() {
    let scenario = tagsplit_target_sim::scenario::Scenario::builtin("part4").unwrap();
    let stub = tagsplit::target::gdb::serve_scenario(
        &scenario,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        tagsplit_target_sim::server::gdb::StubFeatures::FULL,
    )
    .unwrap();
    let mut t = open(&format!("gdb://{}", stub.addr())).unwrap();
    let mut console = Console::new();
    let first = console.run(t.as_mut(), "lm");
    assert!(first.failed.is_empty(), "{first:?}");
    assert!(first.output.contains("myfault"), "{}", first.output);
    assert_eq!(first.link_lost, None);

    drop(stub.shutdown());
    let lost = console.run(t.as_mut(), "db hal+20000 l10; lm");
    assert!(lost.link_lost.is_some(), "{lost:?}");
    assert!(!lost.output.contains("??"), "{}", lost.output);
    assert_eq!(lost.failed.len(), 2, "{lost:?}");
    assert_eq!(lost.failed[0].command, "db hal+20000 l10");
    assert!(
        lost.failed[0].message.contains("connection lost"),
        "{lost:?}"
    );
    assert_eq!(lost.failed[1].command, "lm");
    assert!(lost.failed[1].message.starts_with("not run"), "{lost:?}");
    assert!(console.link_lost().is_some());

    let later = console.run(t.as_mut(), "dc hal+30000 l1");
    assert_eq!(later.failed.len(), 1);
    assert!(later.failed[0].message.starts_with("not run"), "{later:?}");
}
