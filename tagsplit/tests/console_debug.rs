#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The console's debugging commands in batch (`r`, `k`/`kb`/`kn`, `bp`/`bl`/`bc`/`bd`/
//! `be`, `ln`, `dc`/`ed nt!PoolHitTag`) on Part 5's session: in process, over GDB and
//! over KDNET the same batch prints the same transcript.

mod gdb_support;

use tagsplit::console::Console;
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};

/// Part 5 by hand: the Part 4 patch, `ed nt!PoolHitTag`, `g` to the allocator's break,
/// registers, stacks, the block from a breakpoint on the return address, breakpoint
/// bookkeeping, and PoolHitTag off again.
const BATCH: &[&str] = &[
    "dc nt!PoolHitTag l1",
    "eb myfault+0x1621+3 32",
    "ed nt!PoolHitTag 3261654c",
    "dc nt!PoolHitTag l1",
    "g",
    "r",
    "k",
    "kn 3",
    "kb",
    "ln rip",
    "ln nt!PoolHitTag",
    "bp myfault+0x1634",
    "bp nt!ExFreePoolWithTag",
    "bl",
    "bc 1",
    "g",
    "r rax rsp",
    "bd 0",
    "bl",
    "be 0",
    "bl",
    "bc *",
    "bl",
    "ed nt!PoolHitTag 0",
    "g",
];

/// Runs the batch a command at a time; returns the transcript.
fn transcript(t: &mut dyn DebugTarget) -> Vec<(String, String)> {
    let mut c = Console::new();
    BATCH
        .iter()
        .map(|cmd| {
            let o = c.run(t, cmd);
            assert!(o.failed.is_empty(), "{cmd}: {:?}", o.failed);
            ((*cmd).to_string(), o.output)
        })
        .collect()
}

fn out<'a>(tr: &'a [(String, String)], cmd: &str, nth: usize) -> &'a str {
    tr.iter()
        .filter(|(c, _)| c == cmd)
        .nth(nth)
        .map(|(_, o)| o.as_str())
        .unwrap()
}

/// What the batch must show, checked against the machine's ground truth.
fn check(tr: &[(String, String)], m: &Machine) {
    let hit_tag = m.kernel().pool_hit_tag;
    assert_eq!(
        out(tr, "dc nt!PoolHitTag l1", 0),
        format!("{hit_tag}  ffffff0f                             ....\n")
    );
    assert_eq!(
        out(tr, "dc nt!PoolHitTag l1", 1),
        format!("{hit_tag}  3261654c                             Lea2\n")
    );
    let g = out(tr, "g", 0);
    let lines: Vec<&str> = g.lines().collect();
    assert_eq!(
        lines[0],
        "Break instruction exception - code 80000003 (first chance)"
    );
    assert_eq!(lines[1], "nt!ExAllocatePoolWithTag+0x18:");
    assert!(
        lines[2].contains(" cc ") && lines[2].ends_with("int3"),
        "{g}"
    );
    let r = out(tr, "r", 0);
    let rl: Vec<&str> = r.lines().collect();
    assert!(rl[0].starts_with("rax=") && rl[0].contains(" rbx=000000003261654c rcx="));
    assert!(rl[1].contains("rsi=00000000000fa000"), "{r}");
    assert!(rl[2].starts_with("rip=fffff80002a01048 rsp="), "{r}");
    assert!(rl[3].starts_with(" r8=000000003261654c  r9="), "{r}");
    assert_eq!(rl[6], "iopl=0         nv up ei pl zr na pe nc");
    assert_eq!(
        rl[7],
        "cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00000246"
    );
    assert_eq!(rl[8], "nt!ExAllocatePoolWithTag+0x18:");
    let k = out(tr, "k", 0);
    let sites: Vec<&str> = k
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(
        sites,
        [
            "nt+0x1048",
            "myfault+0x1634",
            "myfault+0x1697",
            "myfault+0x16c3",
            "nt+0x10d1",
            "nt+0x10e9"
        ],
        "{k}"
    );
    assert!(k.starts_with("Child-SP          RetAddr               Call Site\n"));
    let kn = out(tr, "kn 3", 0);
    assert_eq!(kn.lines().count(), 4, "{kn}");
    assert!(
        kn.lines().nth(2).unwrap().starts_with("01 fffff880`"),
        "{kn}"
    );
    let kb = out(tr, "kb", 0);
    assert!(kb.starts_with("RetAddr           : Args to Child"), "{kb}");
    assert!(kb.lines().nth(1).unwrap().ends_with(": nt+0x1048"), "{kb}");
    assert_eq!(
        out(tr, "ln rip", 0),
        "(fffff800`02a01030)   nt!ExAllocatePoolWithTag+0x18\n"
    );
    assert!(out(tr, "ln nt!PoolHitTag", 0).starts_with(&format!("({hit_tag})   nt!PoolHitTag\n")));
    let bl = out(tr, "bl", 0);
    assert_eq!(
        bl,
        " 0 e fffff880`0496e634     0001 (0001) myfault+0x1634\n 1 e fffff800`02a01060     0001 (0001) nt!ExFreePoolWithTag\n"
    );
    let g = out(tr, "g", 1);
    assert!(g.starts_with("Breakpoint 0 hit\nmyfault+0x1634:\n"), "{g}");
    // rax at the return: a block of Lea2 (which leaks: still allocated at the end).
    let r = out(tr, "r rax rsp", 0);
    let rax =
        u64::from_str_radix(r.lines().next().unwrap().trim_start_matches("rax="), 16).unwrap();
    let block = m
        .pool()
        .live_allocation(tagsplit::VirtAddr(rax))
        .unwrap_or_else(|| panic!("rax {rax:#x} is no live block: {r}"));
    assert_eq!(block.tag.to_string(), "Lea2");
    assert_eq!(block.requested, 0xfa000);
    assert!(out(tr, "bl", 1).starts_with(" 0 d fffff880`0496e634"));
    assert!(out(tr, "bl", 2).starts_with(" 0 e fffff880`0496e634"));
    assert_eq!(out(tr, "bl", 3), "");
    assert_eq!(
        out(tr, "g", 2),
        "Break instruction exception - code 80000003 (first chance)\n",
        "PoolHitTag 0: the run ends with the break-in, not at the check"
    );
}

#[test]
fn part5_by_hand_in_process_over_gdb_and_over_kdnet_print_the_same() {
    let mut sim = SimTarget::builtin("part4").unwrap();
    let in_process = transcript(&mut sim);
    check(&in_process, sim.machine());

    let stub = GdbStub::spawn(gdb_support::part4(), GdbStubOptions::default()).unwrap();
    let mut gdb = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let over_gdb = transcript(&mut gdb);
    stub.with_machine(|m| check(&over_gdb, m));

    let mut kd = KdTarget::loopback(
        gdb_support::part4(),
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        gdb_support::kd_options(),
    )
    .unwrap();
    let over_kd = transcript(&mut kd);
    kd.stub().unwrap().with_machine(|m| check(&over_kd, m));

    // Every command but the runs prints the same everywhere (a bare `g` runs the
    // target's default length, which differs: the break comes first either way).
    for ((cmd, a), ((_, b), (_, c))) in in_process.iter().zip(over_gdb.iter().zip(&over_kd)) {
        assert_eq!(a, b, "{cmd}: in process vs over GDB");
        assert_eq!(a, c, "{cmd}: in process vs over KDNET");
    }
}
