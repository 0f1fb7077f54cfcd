#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `nt!PoolHitTag` as in Part 5 of the NTDebugging series, on `part4`, in process, over
//! GDB and over KDNET/KDCOM: `ed nt!PoolHitTag 3261654c` (`Lea2`, after the Part 4 split
//! of the leaking site), `g`, a break at the `int 3` in `nt!ExAllocatePoolWithTag` with
//! the caller on the stack, the block from the allocator's return; frees of `Lea1` break
//! in `nt!ExFreePoolWithTag` with the block in `rbx`; `ed nt!PoolHitTag 0` stops it. The
//! round trips of each step are printed.

mod gdb_support;

use tagsplit::hittag::{self, DEFAULT_POOL_HIT_TAG, HitKind};
use tagsplit::stack::Unwinder;
use tagsplit::symbols::KernelSymbols;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, StopReason};
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_target_sim::machine::{Machine, SiteInfo};
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};

fn sites() -> (SiteInfo, SiteInfo, VirtAddr) {
    let m = gdb_support::part4();
    let mine: Vec<SiteInfo> = m
        .sites()
        .into_iter()
        .filter(|s| s.module == "myfault.sys")
        .collect();
    let leak = mine.iter().find(|s| s.leaks).unwrap().clone();
    let load = mine
        .iter()
        .find(|s| !s.leaks && s.allocates)
        .unwrap()
        .clone();
    let base = gdb_support::myfault_base(&m);
    (leak, load, base)
}

fn rt(t: &dyn DebugTarget) -> u64 {
    t.stats().map_or(0, |s| s.round_trips)
}

/// Round trips of: the run to a break, examining it, and the allocator's return.
#[derive(Debug, Default)]
struct Costs {
    run: u64,
    examine: u64,
    finish: u64,
}

/// Part 5 on `t`; `truth` shows the machine behind it to a check.
fn part5<T: DebugTarget>(t: &mut T, truth: impl Fn(&mut T, &mut dyn FnMut(&Machine))) -> Costs {
    let (leak, load, base) = sites();
    let symbols = KernelSymbols::read(t).unwrap();
    assert_eq!(
        hittag::read_pool_hit_tag(t, &symbols).unwrap(),
        DEFAULT_POOL_HIT_TAG,
        "ffffff0f after boot, as the post shows"
    );
    // Nothing breaks with the default.
    assert_eq!(t.run(t.default_run()).unwrap(), StopReason::BreakIn);
    // Part 4's split: the two sites get Lea1 and Lea2.
    t.write_memory(leak.imm.saturating_add(3), b"2").unwrap();
    t.write_memory(load.imm.saturating_add(3), b"1").unwrap();
    hittag::set_pool_hit_tag(t, &symbols, u32::from_le_bytes(*b"Lea2")).unwrap();
    let mut unwinder = Unwinder::for_target(t).unwrap();
    let mut costs = Costs::default();
    for round in 0..2 {
        let before = rt(t);
        let stop = t.run(t.default_run()).unwrap();
        let after_run = rt(t);
        let StopReason::BreakInstruction(at) = stop else {
            panic!("{stop:?}")
        };
        let mut code = [0u8; 1];
        t.read_memory(at, &mut code).unwrap();
        assert_eq!(code, [0xcc], "stopped at an int 3");
        let before_examine = rt(t);
        let mut hit = hittag::examine(t, &mut unwinder, &symbols).unwrap();
        let after_examine = rt(t);
        println!("{hit}\n{}", hit.stack.table(false));
        assert_eq!(hit.kind, HitKind::Allocation);
        assert_eq!(hit.at, at);
        assert_eq!(hit.tag, PoolTag::new(*b"Lea2"));
        assert_eq!(hit.size, Some(leak.size));
        assert_eq!(hit.block, None, "not allocated yet");
        let frames: Vec<String> = hit
            .stack
            .frames
            .iter()
            .map(|f| f.call_site_text())
            .collect();
        assert!(frames[0].starts_with("nt+"), "{frames:?}");
        let ret = leak.call.unwrap().get() + 6;
        assert_eq!(frames[1], format!("myfault+{:#x}", ret - base.get()));
        assert!(hit.stack.complete(), "{}", hit.stack.stop);
        let block = hittag::finish_allocation(t, &mut hit).unwrap();
        let after_finish = rt(t);
        let mut truth_block = None;
        let mut truth_tag = None;
        truth(t, &mut |m| {
            truth_block = m.last_allocation().and_then(|a| a.addr);
            truth_tag = m.pool().live_allocation(block).map(|a| a.tag);
        });
        assert_eq!(Some(block), truth_block);
        assert_eq!(truth_tag, Some(PoolTag::new(*b"Lea2")));
        assert_eq!(hit.block, Some(block));
        println!(
            "round {round}: run {} examine {} finish {}",
            after_run - before,
            after_examine - before_examine,
            after_finish - after_examine
        );
        costs = Costs {
            run: after_run - before,
            examine: after_examine - before_examine,
            finish: after_finish - after_examine,
        };
    }
    // Frees: Lea1's blocks are freed a few ticks after they are allocated.
    hittag::set_pool_hit_tag(t, &symbols, u32::from_le_bytes(*b"Lea1")).unwrap();
    let mut frees = 0;
    for _ in 0..64 {
        let StopReason::BreakInstruction(_) = t.run(t.default_run()).unwrap() else {
            panic!("Lea1 allocations and frees break")
        };
        let hit = hittag::examine(t, &mut unwinder, &symbols).unwrap();
        assert_eq!(hit.tag, PoolTag::new(*b"Lea1"));
        if hit.kind == HitKind::Free {
            let block = hit.block.unwrap();
            assert_eq!(block.get(), hit.registers.rbx);
            let mut live = None;
            truth(t, &mut |m| {
                live = m.pool().live_allocation(block).map(|a| a.tag);
            });
            assert_eq!(live, Some(PoolTag::new(*b"Lea1")), "not freed yet");
            assert!(hit.stack.frames[0].call_site_text().starts_with("nt+"));
            assert!(
                hit.stack.frames[1].call_site_text().starts_with("myfault+"),
                "the module's free helper"
            );
            assert!(hit.stack.complete());
            frees += 1;
            if frees == 2 {
                break;
            }
        }
    }
    assert_eq!(frees, 2, "frees break too");
    // `ed nt!PoolHitTag 0`: no more breaks.
    hittag::set_pool_hit_tag(t, &symbols, 0).unwrap();
    assert_eq!(t.run(t.default_run()).unwrap(), StopReason::BreakIn);
    costs
}

#[test]
fn in_process() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let c = part5(&mut t, |t, f| f(t.machine()));
    assert_eq!((c.run, c.examine, c.finish), (0, 0, 0), "no wire");
}

#[test]
fn over_gdb() {
    let stub = GdbStub::spawn(gdb_support::part4(), GdbStubOptions::default()).unwrap();
    let mut t = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let c = part5(&mut t, |_, f| stub.with_machine(|m| f(m)));
    println!("gdb: {c:?}");
    // `g` (the client's snapshot before resuming) + `vCont;c` (its T05 carries rip);
    // `g` + one stack read; `Z0`, `g`, `vCont;c`, `g`, `z0`.
    assert_eq!((c.run, c.examine, c.finish), (2, 2, 5), "{c:?}");
}

#[test]
fn over_kdnet_and_kdcom() {
    for transport in [
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        KdTransport::Kdcom,
    ] {
        let mut t =
            KdTarget::loopback(gdb_support::part4(), transport, gdb_support::kd_options()).unwrap();
        let c = part5(&mut t, |t, f| t.stub().unwrap().with_machine(|m| f(m)));
        println!("{transport:?}: {c:?}");
        // Counted: manipulate requests (the Continue that the state change answers is
        // not one): the run limit; GetContext + one stack read; WriteBreakPoint,
        // GetContext, RestoreBreakPoint.
        assert_eq!(
            (c.run, c.examine, c.finish),
            (1, 2, 3),
            "{transport:?}: {c:?}"
        );
    }
}

/// `examine` refuses a stop that is no PoolHitTag break (a breakpoint on a site), and
/// `finish_allocation` refuses a free's break: errors that say so, nothing run.
#[test]
fn examine_and_finish_refuse_other_stops() {
    let (leak, load, _) = sites();
    let mut t = SimTarget::builtin("part4").unwrap();
    let symbols = KernelSymbols::read(&mut t).unwrap();
    let mut unwinder = Unwinder::for_target(&mut t).unwrap();
    t.set_breakpoint(leak.instr).unwrap();
    assert_eq!(
        t.run(t.default_run()).unwrap(),
        StopReason::Breakpoint(leak.instr)
    );
    let e = hittag::examine(&mut t, &mut unwinder, &symbols).unwrap_err();
    assert!(
        e.to_string().contains("not at a PoolHitTag break")
            && e.to_string().contains("nt!ExAllocatePoolWithTag"),
        "{e}"
    );
    t.clear_breakpoint(leak.instr).unwrap();
    // A free's break: the block is in rbx, there is no return to run to.
    t.write_memory(load.imm.saturating_add(3), b"1").unwrap();
    hittag::set_pool_hit_tag(&mut t, &symbols, u32::from_le_bytes(*b"Lea1")).unwrap();
    let mut free = None;
    for _ in 0..64 {
        assert!(matches!(
            t.run(t.default_run()).unwrap(),
            StopReason::BreakInstruction(_)
        ));
        let hit = hittag::examine(&mut t, &mut unwinder, &symbols).unwrap();
        if hit.kind == HitKind::Free {
            free = Some(hit);
            break;
        }
    }
    let mut free = free.unwrap();
    let tick = t.machine().tick();
    let e = hittag::finish_allocation(&mut t, &mut free).unwrap_err();
    assert!(e.to_string().contains("only an allocation"), "{e}");
    assert_eq!(t.machine().tick(), tick, "nothing ran");
}
