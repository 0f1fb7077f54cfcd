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
use tagsplit::split::{Split, SplitOptions, Verdict, survey};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, KernelInfo, RunFor, StopReason, TargetError};
use tagsplit_target_sim::builtins::SCALE_TAG;
use tagsplit_target_sim::machine::SiteKind;

/// Counts the bytes read through it; searches go to the target's own search.
struct Counting<T> {
    inner: T,
    bytes_read: u64,
}

impl<T: DebugTarget> DebugTarget for Counting<T> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.bytes_read += buf.len() as u64;
        self.inner.read_memory(addr, buf)
    }
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.inner.write_memory(addr, data)
    }
    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        self.inner.kernel_info()
    }
    fn modules(&mut self) -> Result<Vec<tagsplit::target::ModuleInfo>, TargetError> {
        self.inner.modules()
    }
    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        self.inner.run(how_long)
    }
    fn default_run(&self) -> RunFor {
        self.inner.default_run()
    }
    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        self.inner.search_memory(start, end, pattern, max_hits)
    }
}

/// Classifying a code hit reads a window around it, not the module's whole `.text`: the
/// bytes a survey reads grow with the modules and hits, not with the image bytes.
#[test]
fn a_survey_reads_windows_around_code_hits_not_whole_images() {
    let sim = SimTarget::builtin("scale:50:40").unwrap();
    let images: u64 = sim.machine().modules().iter().skip(1).map(|m| m.size).sum();
    let mut t = Counting {
        inner: sim,
        bytes_read: 0,
    };
    let hits = survey(&mut t, SCALE_TAG).unwrap();
    let kinds = |k: HitKind| hits.iter().filter(|h| h.kind == k).count();
    assert_eq!(
        (hits.len(), kinds(HitKind::Allocation), kinds(HitKind::Free)),
        (44, 40, 4)
    );
    // The module list, each hit module's headers, small `.text` sections whole and
    // windows of large ones: an eighth of the images at most (whole sections: ~80%).
    assert!(
        t.bytes_read * 8 < images,
        "{} bytes read for {images} bytes of images",
        t.bytes_read
    );
}

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

/// The pool tracker is never read whole: the split finds its own tag by probing from the
/// kernel's tag hash (so the table follows it), asks which candidate tags exist the same
/// way, and each sample reads only the new tags' entries: 20 sites over 8 samples cost a
/// few hundred bytes a sample, not the table each time.
#[test]
fn samples_read_the_new_tags_entries_not_the_whole_tracker() {
    let mut sim = SimTarget::builtin("scale:10:20").unwrap();
    let tables = tagsplit::pool::locate(&mut sim).unwrap();
    let table = tables.track_entries * 40;
    let mut t = Counting {
        inner: sim,
        bytes_read: 0,
    };
    let options = SplitOptions::default();
    let samples = u64::from(options.samples);
    let report = Split::new(&mut t, SCALE_TAG, options).run().unwrap();
    assert_eq!(report.sites.len(), 20);
    assert_eq!(report.leaks().count(), 1);
    // Whole reads at every sample would be (samples + 2) tables.
    assert!(
        t.bytes_read < table,
        "{} bytes read; the tracker is {table} bytes, {samples} samples",
        t.bytes_read
    );
}
