#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `tagsplit::stacks::collect` on `part4`'s shared `Leak` tag: two call stacks, the
//! leaking one (myfault's second site) first, its blocks never freed; the other's frees
//! paired with its allocations; `nt!PoolHitTag` written back. In process, over GDB and
//! over KDNET and KDCOM.

mod gdb_support;

use tagsplit::hittag::{self, DEFAULT_POOL_HIT_TAG};
use tagsplit::stacks::{StacksOptions, StacksReport, collect};
use tagsplit::symbols::KernelSymbols;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, Interrupt};
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};

/// The return addresses into myfault's two helpers, as `k` names them.
fn helper_returns() -> (String, String) {
    let m = gdb_support::part4();
    let base = gdb_support::myfault_base(&m);
    let ret = |leaks: bool| {
        let s = m
            .sites()
            .into_iter()
            .find(|s| s.module == "myfault.sys" && s.allocates && s.leaks == leaks)
            .unwrap();
        format!("myfault+{:#x}", s.call.unwrap().get() + 6 - base.get())
    };
    (ret(true), ret(false))
}

fn check(t: &mut dyn DebugTarget, r: &StacksReport) {
    println!("{r}");
    let (leak_ret, load_ret) = helper_returns();
    assert_eq!(r.breaks, 60);
    assert_eq!(r.allocations + r.frees, 60);
    assert_eq!(r.stacks.len(), 2, "two sites share the tag");
    let leak = &r.stacks[0];
    assert_eq!(leak.frames[0], leak_ret, "the leaking caller first");
    assert_eq!(leak.frees, 0);
    assert_eq!(leak.outstanding_allocs, leak.allocs);
    assert_eq!(leak.outstanding_bytes, leak.allocs * 1_024_000);
    assert_eq!(
        leak.frames.last().unwrap(),
        "nt+0x10e9",
        "to KiStartSystemThread"
    );
    let load = &r.stacks[1];
    assert_eq!(load.frames[0], load_ret);
    assert!(load.frees > 0 && load.outstanding_bytes < leak.outstanding_bytes);
    assert_eq!(load.allocs - load.frees, load.outstanding_allocs);
    assert_eq!(r.frees, load.frees + r.unmatched_frees);
    let symbols = KernelSymbols::read(t).unwrap();
    assert_eq!(
        hittag::read_pool_hit_tag(t, &symbols).unwrap(),
        DEFAULT_POOL_HIT_TAG,
        "written back"
    );
    assert_eq!(r.pool_hit_tag_restored, DEFAULT_POOL_HIT_TAG);
}

/// The round trips of a collection, and per break (rounded up).
fn round_trips_per_break(r: &StacksReport, total: u64) -> (u64, u64) {
    (total, total.div_ceil(r.breaks.max(1)))
}

fn options() -> StacksOptions {
    StacksOptions {
        breaks: 60,
        ..StacksOptions::default()
    }
}

#[test]
fn in_process() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let mut seen = 0;
    let r = collect(&mut t, PoolTag::new(*b"Leak"), &options(), |p| {
        seen = p.breaks;
    })
    .unwrap();
    assert_eq!(seen, 60, "progress after every break");
    check(&mut t, &r);
}

#[test]
fn over_gdb_kdnet_and_kdcom_the_same_stacks() {
    let mut sim = SimTarget::builtin("part4").unwrap();
    let want = collect(&mut sim, PoolTag::new(*b"Leak"), &options(), |_| {}).unwrap();
    let stub = GdbStub::spawn(gdb_support::part4(), GdbStubOptions::default()).unwrap();
    let mut gdb = GdbTarget::connect(&stub.addr().to_string()).unwrap();
    let before = gdb.stats().unwrap().round_trips;
    let r = collect(&mut gdb, PoolTag::new(*b"Leak"), &options(), |_| {}).unwrap();
    let per_break = round_trips_per_break(&r, gdb.stats().unwrap().round_trips - before);
    println!("gdb: {per_break:?}");
    // 9 per allocation (run 2, examine 2, block 5), 4 per free, more where a stack
    // crosses a 512-byte block or a run ends without a break, and the set-up.
    assert!(per_break.1 <= 10, "{per_break:?}");
    check(&mut gdb, &r);
    assert_eq!(r.stacks[0].frames, want.stacks[0].frames);
    for transport in [
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        KdTransport::Kdcom,
    ] {
        let mut kd =
            KdTarget::loopback(gdb_support::part4(), transport, gdb_support::kd_options()).unwrap();
        let before = kd.stats().unwrap().round_trips;
        let r = collect(&mut kd, PoolTag::new(*b"Leak"), &options(), |_| {}).unwrap();
        let per_break = round_trips_per_break(&r, kd.stats().unwrap().round_trips - before);
        println!("{transport:?}: {per_break:?}");
        // Requests (a Continue is not one): 6 per allocation (run limit, GetContext,
        // a stack read, WriteBreakPoint, GetContext, RestoreBreakPoint), 3 per free.
        assert!(per_break.1 <= 7, "{per_break:?}");
        check(&mut kd, &r);
        assert_eq!(
            r.stacks, want.stacks,
            "{transport:?} runs the same ticks as in process"
        );
    }
}

/// A triggered interrupt stops collecting after the break in progress; PoolHitTag is
/// written back all the same.
#[test]
fn an_interrupt_stops_and_pool_hit_tag_is_written_back() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let cancel = Interrupt::new();
    let opts = StacksOptions {
        breaks: 1000,
        cancel: Some(cancel.clone()),
        ..StacksOptions::default()
    };
    let r = collect(&mut t, PoolTag::new(*b"Leak"), &opts, |p| {
        if p.breaks == 5 {
            cancel.trigger();
        }
    })
    .unwrap();
    assert_eq!((r.breaks, r.ended.as_str()), (5, "interrupted"));
    let hit = t.machine().kernel().pool_hit_tag;
    let mut v = [0u8; 4];
    t.read_memory(VirtAddr(hit.get()), &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), DEFAULT_POOL_HIT_TAG);
}

/// With a journal, the write of `nt!PoolHitTag` is journalled before it is made (a
/// split's patch record of the 4 bytes in nt), and the journal is removed once the value
/// is written back. A journal left by a killed process puts the value back through the
/// split's restore.
#[test]
fn the_pool_hit_tag_write_is_journalled_and_restorable() {
    use tagsplit::split::journal::Journal;
    use tagsplit::split::restore_from_journal;
    use tagsplit::stacks::JournalSpec;

    let dir = std::env::temp_dir().join(format!("tagsplit-stacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("j.json");
    let kept = dir.join("kept.json");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&kept);
    let mut t = SimTarget::builtin("part4").unwrap();
    let hit = t.machine().kernel().pool_hit_tag;
    let opts = StacksOptions {
        breaks: 4,
        journal: Some(JournalSpec {
            path: path.clone(),
            identity: Some("sim:part4".into()),
        }),
        ..StacksOptions::default()
    };
    let r = collect(&mut t, PoolTag::new(*b"Leak"), &opts, |p| {
        if p.breaks == 1 {
            std::fs::copy(&path, &kept).unwrap();
        }
    })
    .unwrap();
    assert!(r.journal_removed && !path.exists());
    let j = Journal::read(&kept).unwrap();
    assert_eq!(j.patches.len(), 1);
    let p = &j.patches[0];
    assert_eq!((p.module.as_str(), p.address), ("ntoskrnl.exe", hit));
    assert_eq!(p.original, 0xffff_ff0f_u32.to_le_bytes());
    assert_eq!(p.new, *b"Leak");
    // As if the process had been killed with Leak in nt!PoolHitTag.
    t.write_memory(hit, b"Leak").unwrap();
    let summary = restore_from_journal(&mut t, &kept, None).unwrap();
    assert!(summary.complete() && summary.journal_removed, "{summary}");
    let mut v = [0u8; 4];
    t.read_memory(hit, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), DEFAULT_POOL_HIT_TAG);
    let _ = std::fs::remove_dir_all(&dir);
}
