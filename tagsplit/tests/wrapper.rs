#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `sim:wrapper`: one allocation helper (`AllocBuffer`) tags every buffer `Wrap` for five
//! callers in two drivers, one of which leaks. The split names the helper and says that
//! only stacks can name the caller; the stacks name it (the frame above the helper), in
//! process, over GDB and over KDNET, and `tagsplit run --stacks` prints it.

mod common;

use tagsplit::split::{Split, SplitOptions, Verdict};
use tagsplit::stacks::{StacksOptions, StacksReport, collect};
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_target_sim::builtins::{WRAPPER_LEAKER, WRAPPER_TAG};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};
use tagsplit_target_sim::server::kd::KdStubOptions;

fn machine() -> Machine {
    Machine::boot(&Scenario::builtin("wrapper").unwrap()).unwrap()
}

/// The leaking caller's return address from the helper, as `k` names it
/// (`netfilt+0x…`), and the other callers' (which must not lead).
fn callers() -> (String, Vec<String>) {
    let m = machine();
    let all = m.callers();
    assert_eq!(all.len(), 5);
    let name = |c: &tagsplit_target_sim::machine::CallerInfo| {
        let base = m
            .modules()
            .into_iter()
            .find(|x| x.name == c.module)
            .unwrap()
            .base;
        let short = c.module.trim_end_matches(".sys");
        format!("{short}+{:#x}", c.return_address.get() - base.get())
    };
    let leak: Vec<_> = all.iter().filter(|c| c.leaks).collect();
    assert_eq!(leak.len(), 1);
    assert_eq!(
        (leak[0].module.as_str(), leak[0].name.as_str()),
        WRAPPER_LEAKER
    );
    (
        name(leak[0]),
        all.iter().filter(|c| !c.leaks).map(name).collect(),
    )
}

#[test]
fn the_scenario_has_one_allocation_site_and_five_callers_in_two_drivers() {
    let m = machine();
    let allocating: Vec<_> = m.sites().into_iter().filter(|s| s.allocates).collect();
    assert_eq!(allocating.len(), 1, "one site: the helper");
    assert!(allocating[0].leaks);
    let modules: std::collections::BTreeSet<String> =
        m.callers().into_iter().map(|c| c.module).collect();
    assert_eq!(modules.len(), 2);
}

#[test]
fn the_split_names_the_helper_and_says_only_stacks_name_the_caller() {
    let mut t = SimTarget::builtin("wrapper").unwrap();
    let r = Split::new(&mut t, WRAPPER_TAG, SplitOptions::default())
        .run()
        .unwrap();
    assert_eq!(r.sites.len(), 1);
    assert_eq!(r.sites[0].verdict, Verdict::Leak);
    assert!(r.restore.complete());
    let c = r.callers.as_ref().expect("callers looked for");
    assert_eq!(c.calls.len(), 5, "{c:?}");
    assert_eq!(c.modules, 2);
    assert!(
        c.calls
            .iter()
            .filter(|x| x.starts_with("netfilt.sys+"))
            .count()
            == 2
    );
    // Exactly the callers' calls, by module+offset; the function is the helper's.
    let m = machine();
    let at = |a: VirtAddr| {
        let x = m
            .modules()
            .into_iter()
            .find(|x| x.base <= a && a.get() < x.base.get() + x.size)
            .unwrap();
        format!("{}+{:#x}", x.name, a.get() - x.base.get())
    };
    let mut want: Vec<String> = m.callers().iter().map(|c| at(c.call)).collect();
    want.sort();
    let mut got = c.calls.clone();
    got.sort();
    assert_eq!(got, want);
    let helper = m.sites().into_iter().find(|s| s.allocates).unwrap();
    assert!(c.function.get() < helper.instr.get() && helper.instr.get() - c.function.get() < 16);
    let text = r.to_text();
    assert!(
        text.contains("one site, reached from several callers: use --stacks"),
        "{text}"
    );
    // part4's two sites: no such note.
    let mut p4 = SimTarget::builtin("part4").unwrap();
    let r4 = Split::new(&mut p4, PoolTag::new(*b"Leak"), SplitOptions::default())
        .run()
        .unwrap();
    assert!(r4.callers.is_none() && !r4.to_text().contains("several callers"));
}

fn options() -> StacksOptions {
    StacksOptions {
        breaks: 120,
        ..StacksOptions::default()
    }
}

fn check(r: &StacksReport) {
    let (leaker, others) = callers();
    println!("{r}");
    assert_eq!(r.stacks.len(), 5, "one stack per caller");
    assert_eq!(r.leaking_caller(), Some(leaker.as_str()));
    let leaking = r.leaking().unwrap();
    assert_eq!(leaking.frees, 0);
    assert_eq!(leaking.outstanding_bytes, leaking.allocs * 4096);
    // Every stack goes through the helper, then a different caller.
    let helper_ret = &leaking.frames[0];
    for s in &r.stacks {
        assert_eq!(&s.frames[0], helper_ret);
    }
    for s in r.stacks.iter().skip(1) {
        assert!(others.contains(&s.frames[1]), "{:?}", s.frames);
        assert!(s.outstanding_bytes < leaking.outstanding_bytes);
    }
}

#[test]
fn stacks_name_the_leaking_caller_in_process_over_gdb_and_over_kdnet() {
    let mut sim = SimTarget::builtin("wrapper").unwrap();
    let want = collect(&mut sim, WRAPPER_TAG, &options(), |_| {}).unwrap();
    check(&want);
    let stub = GdbStub::spawn(machine(), GdbStubOptions::default()).unwrap();
    let mut gdb = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let r = collect(&mut gdb, WRAPPER_TAG, &options(), |_| {}).unwrap();
    check(&r);
    assert_eq!(r.leaking_caller(), want.leaking_caller());
    let kd_options = KdStubOptions {
        default_run_ticks: Some(Scenario::builtin("wrapper").unwrap().default_run_ticks()),
        ..KdStubOptions::default()
    };
    let mut kd = KdTarget::loopback(
        machine(),
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        kd_options,
    )
    .unwrap();
    let r = collect(&mut kd, WRAPPER_TAG, &options(), |_| {}).unwrap();
    check(&r);
    assert_eq!(
        r.stacks, want.stacks,
        "KD runs the same ticks as in process"
    );
    assert!(kd.stats().is_some());
}

#[test]
fn run_with_stacks_prints_the_leaking_caller_in_process_and_over_gdb() {
    let (leaker, _) = callers();
    let stub = GdbStub::spawn(machine(), GdbStubOptions::default()).unwrap();
    let gdb = format!("gdb://{}", stub.addr());
    for target in ["sim:wrapper", gdb.as_str()] {
        let out = common::tagsplit(&[
            "run", "--target", target, "--tag", "Wrap", "--stacks", "--breaks", "120",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{target}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("one site, reached from several callers: use --stacks"),
            "{text}"
        );
        assert!(
            text.contains(&format!("leaking caller: {leaker} ")),
            "{target}: {text}"
        );
        assert!(
            text.contains("nt!PoolHitTag restored to ffffff0f"),
            "{text}"
        );
    }
}

/// `SplitOptions::stacks`: the split keeps its leaking site patched in its own journal,
/// which records `nt!PoolHitTag` before it is set; after the stacks everything is
/// restored and the journal removed.
#[test]
fn a_split_with_stacks_collects_them_in_its_own_journal() {
    use std::cell::RefCell;
    use tagsplit::split::Phase;
    use tagsplit::split::journal::Journal;

    let dir = common::temp_dir("wrapper-split-stacks");
    let path = dir.join("journal.json");
    let mut t = SimTarget::builtin("wrapper").unwrap();
    let options = SplitOptions {
        journal: Some(path.clone()),
        stacks: Some(options()),
        ..SplitOptions::default()
    };
    let seen: RefCell<Vec<Journal>> = RefCell::new(Vec::new());
    let breaks = RefCell::new(0u64);
    let r = Split::new(&mut t, WRAPPER_TAG, options)
        .on_phase(|p| {
            if let Phase::Breaking { done, wanted } = p {
                assert_eq!(wanted, 120);
                *breaks.borrow_mut() = done;
                if done == 1 {
                    seen.borrow_mut().push(Journal::read(&path).unwrap());
                }
            }
        })
        .run()
        .unwrap();
    assert_eq!(*breaks.borrow(), 120, "a phase after every break");
    let during = &seen.borrow()[0];
    assert_eq!(during.patches.len(), 2, "the site, then nt!PoolHitTag");
    assert_eq!(during.patches[0].new, *b"Wra1");
    assert_eq!(during.patches[1].module, "ntoskrnl.exe");
    assert_eq!(during.patches[1].new, *b"Wra1");
    let stacks = r.stacks.as_ref().unwrap();
    assert_eq!(stacks.tag, PoolTag::new(*b"Wra1"));
    check(stacks);
    assert!(
        r.restore.complete() && r.restore.journal_removed,
        "{}",
        r.restore
    );
    assert!(!path.exists());
    let helper = machine().sites().into_iter().find(|s| s.allocates).unwrap();
    let mut now = [0u8; 4];
    t.read_memory(helper.imm, &mut now).unwrap();
    assert_eq!(now, *b"Wrap", "the site restored");
    let _ = std::fs::remove_dir_all(&dir);
}
