//! Restore after a failure injected at each step of the split, after Ctrl-C, and after a
//! lost connection (journal + `restore`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{Faulty, Op, temp_dir};
use tagsplit::split::{Split, SplitError, SplitOptions, restore_from_journal};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, Interrupt, RunFor};
use tagsplit::{PoolTag, VirtAddr};

const SITES: [u64; 2] = [0xfffff880_0496e3aa, 0xfffff880_0496e621];

fn options(journal: &std::path::Path) -> SplitOptions {
    SplitOptions {
        run: Some(RunFor::Ticks(64)),
        samples: 4,
        journal: Some(journal.to_path_buf()),
        ..SplitOptions::default()
    }
}

/// Splits `Leak` on part4 with a connection that drops after `runs` runs; returns the
/// journal path, the split's error and the target left behind.
fn split_dropped_after(name: &str, runs: u64) -> (std::path::PathBuf, SplitError, SimTarget) {
    let journal = temp_dir(name).join("j.json");
    let mut t = Faulty::new(SimTarget::builtin("part4").unwrap());
    t.disconnect_after_runs = Some(runs);
    let err = Split::new(&mut t, PoolTag::new(*b"Leak"), options(&journal))
        .run()
        .unwrap_err();
    (journal, err, t.inner)
}

fn assert_original(t: &mut SimTarget) {
    for s in SITES {
        let mut b = [0u8; 4];
        t.read_memory(VirtAddr(s), &mut b).unwrap();
        assert_eq!(&b, b"Leak", "site {s:x} not restored");
    }
}

/// Runs a split with `fail` injected; checks the sites end up original (via the journal if
/// the split could not restore them itself). Returns whether the split succeeded.
fn split_with_failure(base: &SimTarget, fail: Option<(Op, u64)>, dir: &std::path::Path) -> bool {
    let journal = dir.join("j.json");
    let _ = std::fs::remove_file(&journal);
    let mut t = Faulty::new(base.clone());
    t.fail = fail;
    let result = Split::new(&mut t, PoolTag::new(*b"Leak"), options(&journal)).run();
    let ok = match &result {
        Ok(r) => {
            assert!(r.restore.complete());
            assert!(r.restore.journal_removed);
            true
        }
        Err(SplitError::Aborted { restore, .. }) | Err(SplitError::RestoreIncomplete(restore)) => {
            assert_eq!(
                restore.complete(),
                !journal.exists(),
                "{fail:?}: journal kept iff restore incomplete"
            );
            false
        }
        Err(_) => {
            // Failed before patching: nothing written, no journal left.
            assert!(t.writes.is_empty(), "{fail:?}: wrote before failing early");
            false
        }
    };
    let mut inner = t.inner;
    if journal.exists() {
        let s = restore_from_journal(&mut inner, &journal, None).unwrap();
        assert!(s.complete(), "{fail:?}: {s}");
        assert!(!journal.exists());
    }
    assert_original(&mut inner);
    ok
}

#[test]
fn restore_after_a_failure_at_each_step() {
    let base = SimTarget::builtin("part4").unwrap();
    let dir = temp_dir("each-step");
    // Count the operations of a clean run.
    let mut probe = Faulty::new(base.clone());
    Split::new(
        &mut probe,
        PoolTag::new(*b"Leak"),
        options(&dir.join("probe.json")),
    )
    .run()
    .unwrap();
    let [reads, writes, runs] = probe.counts;
    assert_eq!(writes, 4, "two patches, two restores");
    assert_eq!(runs, 4);
    let mut failures = 0;
    for (op, n) in [(Op::Write, writes), (Op::Run, runs), (Op::Read, reads)] {
        for i in 1..=n {
            if !split_with_failure(&base, Some((op, i)), &dir) {
                failures += 1;
            }
        }
    }
    // Most injected failures make the split fail; none leaves a patch behind.
    assert!(
        failures as u64 > (reads + runs) / 2,
        "{failures} of {}",
        reads + writes + runs
    );
    assert!(split_with_failure(&base, None, &dir));
}

#[test]
fn ctrl_c_restores_and_removes_the_journal() {
    let dir = temp_dir("ctrl-c");
    let journal = dir.join("j.json");
    let mut t = SimTarget::builtin("part4").unwrap();
    let cancel = Interrupt::new();
    let opts = SplitOptions {
        cancel: Some(cancel.clone()),
        ..options(&journal)
    };
    let flag = cancel.clone();
    let result = Split::new(&mut t, PoolTag::new(*b"Leak"), opts)
        .on_progress(move |done, _| {
            if done == 2 {
                flag.trigger();
            }
        })
        .run();
    match result {
        Err(SplitError::Interrupted(r)) => {
            assert!(r.complete());
            assert!(r.journal_removed);
        }
        other => panic!("expected an interrupt, got {other:?}"),
    }
    assert!(!journal.exists());
    assert_original(&mut t);
}

#[test]
fn journal_and_restore_after_the_connection_drops_mid_run() {
    let (journal, err, mut inner) = split_dropped_after("drop", 2);
    let SplitError::Aborted { restore, .. } = &err else {
        panic!("{err}")
    };
    assert!(!restore.complete());
    // The journal was left behind, and it records what was patched.
    let j = tagsplit::split::journal::Journal::read(&journal).unwrap();
    assert_eq!(j.patches.len(), 2);
    assert_eq!(j.patches[1].address, VirtAddr(SITES[1]));
    assert_eq!(j.patches[1].original, b"Leak");
    assert_eq!(j.patches[1].new, b"Lea2");
    assert_eq!(j.patches[1].offset, 0x1621);
    // The target is still patched...
    let mut b = [0u8; 4];
    inner.read_memory(VirtAddr(SITES[1]), &mut b).unwrap();
    assert_eq!(&b, b"Lea2");
    // ...until `restore` (reconnected) puts the original bytes back and removes the journal.
    let s = restore_from_journal(&mut inner, &journal, None).unwrap();
    assert!(s.complete() && s.journal_removed);
    assert_original(&mut inner);
    // A second restore finds no journal.
    assert!(restore_from_journal(&mut inner, &journal, None).is_err());
}

#[test]
fn restore_never_writes_stale_bytes() {
    let (journal, _, mut inner) = split_dropped_after("stale", 1);
    // Someone else changed one site meanwhile (e.g. the driver was reloaded and patched).
    inner.write_memory(VirtAddr(SITES[0]), b"Zzzz").unwrap();
    let s = restore_from_journal(&mut inner, &journal, None).unwrap();
    assert!(!s.complete());
    assert!(journal.exists(), "journal kept while a patch is unresolved");
    let mut b = [0u8; 4];
    inner.read_memory(VirtAddr(SITES[0]), &mut b).unwrap();
    assert_eq!(&b, b"Zzzz");
    inner.read_memory(VirtAddr(SITES[1]), &mut b).unwrap();
    assert_eq!(&b, b"Leak");
}

#[test]
fn restore_refuses_a_reloaded_module() {
    let (journal, _, mut inner) = split_dropped_after("reload", 1);
    let j = tagsplit::split::journal::Journal::read(&journal).unwrap();
    let base = j.patches[0].base;
    assert_eq!(
        j.patches[0].timestamp,
        Some(0x4fd0b2f4),
        "part4's myfault.sys stamp"
    );
    // "Reload" another build at the same base: a new TimeDateStamp in the PE header.
    let mut lfanew = [0u8; 4];
    inner
        .read_memory(VirtAddr(base.get() + 0x3c), &mut lfanew)
        .unwrap();
    let stamp_at = VirtAddr(base.get() + u64::from(u32::from_le_bytes(lfanew)) + 8);
    inner
        .write_memory(stamp_at, &0x5000_0000u32.to_le_bytes())
        .unwrap();
    let s = restore_from_journal(&mut inner, &journal, None).unwrap();
    assert!(!s.complete());
    assert!(
        s.patches
            .iter()
            .all(|(_, st)| *st == tagsplit::split::journal::RestoreState::ModuleGone)
    );
    assert!(journal.exists());
    let mut b = [0u8; 4];
    inner.read_memory(VirtAddr(SITES[1]), &mut b).unwrap();
    assert_eq!(&b, b"Lea2", "nothing written to a module of another build");
}
