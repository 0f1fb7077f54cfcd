//! The generated `scale:N:S` kernels: a whole split in process names exactly the one
//! leaking site among the sites that share the tag, and patches only allocation sites.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeSet;

use tagsplit::VirtAddr;
use tagsplit::split::classify::HitKind;
use tagsplit::split::{Split, SplitOptions, Verdict};
use tagsplit::target::DebugTarget;
use tagsplit::target::sim::SimTarget;
use tagsplit_target_sim::builtins::SCALE_TAG;
use tagsplit_target_sim::machine::SiteKind;

#[test]
fn a_split_of_a_scale_kernel_finds_exactly_the_leaking_site() {
    let mut t = SimTarget::builtin("scale:10:20").unwrap();
    assert_eq!(t.describe(), "sim:scale:10:20");
    let truth = t.machine().sites();
    let before = t.machine().digest();
    let report = Split::new(&mut t, SCALE_TAG, SplitOptions::default())
        .run()
        .unwrap();
    let leaking: Vec<VirtAddr> = truth
        .iter()
        .filter(|s| s.kind == SiteKind::Alloc && s.leaks)
        .map(|s| s.imm)
        .collect();
    assert_eq!(leaking.len(), 1);
    let found: Vec<VirtAddr> = report.leaks().map(|s| s.hit.address).collect();
    assert_eq!(found, leaking);
    assert_eq!(report.sites.len(), 20, "every allocation site patched");
    assert_eq!(
        report
            .sites
            .iter()
            .filter(|s| s.verdict == Verdict::Load)
            .count(),
        19
    );
    let free: BTreeSet<VirtAddr> = report
        .hits
        .iter()
        .filter(|h| h.kind == HitKind::Free)
        .map(|h| h.address)
        .collect();
    assert_eq!(free.len(), 2);
    assert!(report.restore.complete());
    // Restored byte for byte (the run moved the pool, not the code).
    for s in &truth {
        let mut b = [0u8; 4];
        t.read_memory(s.imm, &mut b).unwrap();
        assert_eq!(b, s.tag.bytes());
    }
    assert_ne!(before, t.machine().digest());
}
