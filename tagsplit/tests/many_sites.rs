//! The `many-sites` scenario: 70 allocation sites share `Ddk `, two leak; free sites,
//! a lookaside init and every decoy kind must be reported, and only allocation sites patched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;

use common::Faulty;
use tagsplit::split::classify::HitKind;
use tagsplit::split::{Split, SplitOptions, Verdict};
use tagsplit::target::DebugTarget;
use tagsplit::target::sim::SimTarget;
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_target_sim::machine::{LOOKASIDE_TAG, SiteKind};

#[test]
fn verdict_names_exactly_the_leaking_sites_and_only_allocation_sites_are_patched() {
    let sim = SimTarget::builtin("many-sites").unwrap();
    let truth = sim.machine().sites();
    let tag = PoolTag::new(*b"Ddk ");
    let mut t = Faulty::new(sim);
    let report = Split::new(&mut t, tag, SplitOptions::default())
        .run()
        .unwrap();

    let alloc_imms: BTreeSet<VirtAddr> = truth
        .iter()
        .filter(|s| s.kind == SiteKind::Alloc)
        .map(|s| s.imm)
        .collect();
    assert_eq!(alloc_imms.len(), 70);
    let leaking: BTreeSet<VirtAddr> = truth
        .iter()
        .filter(|s| s.kind == SiteKind::Alloc && s.leaks)
        .map(|s| s.imm)
        .collect();
    assert_eq!(leaking.len(), 2);

    // The verdict: exactly the leaking sites.
    let found: BTreeSet<VirtAddr> = report.leaks().map(|s| s.hit.address).collect();
    assert_eq!(found, leaking);
    assert!(
        report
            .sites
            .iter()
            .filter(|s| !leaking.contains(&s.hit.address))
            .all(|s| s.verdict != Verdict::Leak)
    );

    // Every write went to an allocation site's immediate (patch and restore).
    assert!(!t.writes.is_empty());
    for (addr, data) in &t.writes {
        assert_eq!(data.len(), 4);
        assert!(
            alloc_imms.contains(addr),
            "wrote to {addr}, not an allocation site"
        );
    }
    let patched: BTreeSet<VirtAddr> = t.writes.iter().map(|(a, _)| *a).collect();
    assert_eq!(patched, alloc_imms);

    // New tags: distinct, unused before, never protected; `Ddk1` (already in use) skipped.
    let tags: BTreeSet<PoolTag> = report.sites.iter().map(|s| s.new_tag).collect();
    assert_eq!(tags.len(), 70);
    assert!(!tags.contains(&PoolTag::new(*b"Ddk1")));
    assert!(
        tags.iter()
            .all(|t| !t.is_protected() && t.is_valid_for_alloc())
    );
    assert_eq!(
        tags.iter().filter(|t| t.bytes()[..3] == *b"Ddk").count(),
        60
    );

    // Everything is back as it was.
    assert!(report.restore.complete());
    for imm in &alloc_imms {
        let mut b = [0u8; 4];
        t.inner.read_memory(*imm, &mut b).unwrap();
        assert_eq!(PoolTag::new(b), tag);
    }
}

#[test]
fn free_sites_lookaside_and_decoys_are_reported_correctly() {
    let mut sim = SimTarget::builtin("many-sites").unwrap();
    let truth = sim.machine().sites();
    let hits = tagsplit::split::survey(&mut sim, PoolTag::new(*b"Ddk ")).unwrap();
    for s in &truth {
        let expect = match s.kind {
            SiteKind::Alloc => HitKind::Allocation,
            SiteKind::Free => HitKind::Free,
            SiteKind::LookasideInit => HitKind::LookasideInit,
            SiteKind::DecoyCompare => HitKind::Compare,
            SiteKind::DecoyGlobal => HitKind::IndirectUse,
            SiteKind::DecoyText => HitKind::Data,
            other => panic!("unexpected site kind {other:?}"),
        };
        if s.kind == SiteKind::DecoyText {
            // The string holds the tag somewhere inside it.
            assert!(
                hits.iter().any(|h| h.kind == HitKind::Data
                    && h.address >= s.instr
                    && h.address.get() < s.instr.get() + 64),
                "{s:?}"
            );
            continue;
        }
        let h = hits
            .iter()
            .find(|h| h.address == s.imm)
            .unwrap_or_else(|| panic!("no hit for {s:?}"));
        assert_eq!(h.kind, expect, "{s:?}");
        if s.kind == SiteKind::DecoyGlobal {
            assert!(h.note.as_deref().unwrap().contains("mov r8d,"));
        }
        if expect != HitKind::IndirectUse && expect != HitKind::Data {
            assert_eq!(h.instruction_address, Some(s.instr), "{s:?}");
        }
    }
    // No hit is left unexplained: every hit is a known site, inside a text decoy, or the
    // `Tag` field of an initialised lookaside list in the module's data.
    for h in &hits {
        let lookaside_field = h.kind == HitKind::Data
            && (h.address.get() - LOOKASIDE_TAG).is_multiple_of(16)
            && truth
                .iter()
                .any(|s| s.kind == SiteKind::LookasideInit && s.module == h.module);
        let known = lookaside_field
            || truth.iter().any(|s| s.imm == h.address)
            || truth.iter().any(|s| {
                s.kind == SiteKind::DecoyText
                    && h.address >= s.instr
                    && h.address.get() < s.instr.get() + 64
            });
        assert!(known, "unexplained hit {h:?}");
    }
}

#[test]
fn lookaside_init_sites_are_patched_only_when_asked() {
    let sim = SimTarget::builtin("many-sites").unwrap();
    let lookaside: Vec<VirtAddr> = sim
        .machine()
        .sites()
        .iter()
        .filter(|s| s.kind == SiteKind::LookasideInit)
        .map(|s| s.imm)
        .collect();
    assert_eq!(lookaside.len(), 1);
    let mut t = Faulty::new(sim);
    let opts = SplitOptions {
        patch_lookaside: true,
        samples: 2,
        ..SplitOptions::default()
    };
    let report = Split::new(&mut t, PoolTag::new(*b"Ddk "), opts)
        .run()
        .unwrap();
    assert_eq!(report.sites.len(), 71);
    assert!(t.writes.iter().any(|(a, _)| *a == lookaside[0]));
    assert!(report.restore.complete());
}
