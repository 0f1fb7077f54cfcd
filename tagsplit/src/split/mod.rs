//! The automated tag split: find, classify, choose tags, patch with a journal, run,
//! measure, attribute, restore.
//!
//! ```no_run
//! # fn demo(target: &mut dyn tagsplit::target::DebugTarget) -> Result<(), tagsplit::split::SplitError> {
//! use tagsplit::split::{Split, SplitOptions};
//! use tagsplit::PoolTag;
//!
//! let report = Split::new(target, PoolTag::new(*b"Leak"), SplitOptions::default()).run()?;
//! for site in report.leaks() {
//!     println!("{} leaks as {}", site.hit.location(), site.new_tag);
//! }
//! # Ok(()) }
//! ```
//!
//! **Leak rule.** After patching, a baseline snapshot of the tracker table is taken and the
//! target runs in `samples` equal slices, with a snapshot after each. For a split tag, let
//! `s0..sK` be its outstanding bytes (nonpaged + paged) at the baseline and after each
//! slice. It is a **leak** when every sample of the second half (`s⌈K/2⌉..sK`) is above
//! every sample of the first half (`s0..s⌈K/2⌉-1`): it keeps growing after any start-up
//! ramp. Otherwise it is **load**: it levels off (allocations freed at the rate they are
//! made). A load whose blocks live longer than half the run looks like a leak; run longer.

pub mod callers;
pub mod classify;
pub mod journal;
pub mod tags;
pub mod traffic;

use std::path::PathBuf;

use serde::Serialize;
use tagsplit_protocol::nt::PROTECTED_POOL;

use self::classify::{Hit, HitKind};
use self::journal::{Journal, JournalError, PatchRecord, RestoreState};
use crate::pool::{self, TagUsage};
use crate::pooltag::PoolTagDb;
use crate::target::{DebugTarget, Interrupt, RunFor, TargetError, interrupted};
use crate::{PoolTag, VirtAddr};

/// Errors from a split.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The journal could not be written or read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Not enough unused tags for the sites.
    #[error("no {0} unused tags left near {1}")]
    NoFreeTags(usize, PoolTag),
    /// A patch did not read back as written.
    #[error("patch at {0} did not read back as written")]
    VerifyFailed(VirtAddr),
    /// The run was interrupted (Ctrl-C); patches were restored as reported.
    #[error("interrupted; restore: {0}")]
    Interrupted(RestoreSummary),
    /// The measurement worked but not every patch could be restored; the journal is kept.
    #[error("restore incomplete: {0}")]
    RestoreIncomplete(RestoreSummary),
    /// The target still holds the bytes an earlier run's journal wrote: restore that
    /// journal first.
    #[error(
        "the target still holds {} patch(es) written by an earlier run on {target} ({}); its journal is {}: restore it first",
        addresses.len(),
        list(addresses),
        journal.display()
    )]
    StillPatched {
        /// The journal that wrote them.
        journal: PathBuf,
        /// The target the journal names.
        target: String,
        /// The patched addresses that still hold the journal's new bytes.
        addresses: Vec<VirtAddr>,
    },
    /// Allocation sites use tags that look like a split of the requested one (`Lea1`
    /// for `Leak`): an interrupted run may have left them patched.
    #[error(
        "{} allocation site(s) use tags that look like a split of '{tag}' ({}): an interrupted run may have left them patched; restore them with that run's journal, or, if these tags are the driver's own, allow them",
        sites.len(),
        sites.iter().map(|(t, at)| format!("{t} at {at}")).collect::<Vec<_>>().join(", ")
    )]
    LooksSplit {
        /// The requested tag.
        tag: PoolTag,
        /// Each lookalike tag and where it is (`module+0xoffset`).
        sites: Vec<(PoolTag, String)>,
    },
    /// A journal written for another target.
    #[error("the journal {} belongs to {belongs}, not to {given}", journal.display())]
    WrongTarget {
        /// The journal.
        journal: PathBuf,
        /// The identity recorded in it.
        belongs: String,
        /// The identity of the target given.
        given: String,
    },
    /// The split failed after patching; patches were restored as reported.
    #[error("{cause}; restore: {restore}")]
    Aborted {
        /// What went wrong.
        cause: Box<SplitError>,
        /// What the restore did.
        restore: RestoreSummary,
    },
}

/// Options of a split.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// Total run length; `None` uses the target's default run.
    pub run: Option<RunFor>,
    /// Number of samples (run slices) after the baseline; at least 1.
    pub samples: u32,
    /// Where to write the journal before patching; `None` keeps it in memory only.
    pub journal: Option<PathBuf>,
    /// Tags this database covers (exact or wildcard) are never chosen.
    pub pooltag: PoolTagDb,
    /// Also patch lookaside-list initialisation sites (off by default: their allocations
    /// happen inside nt, and only allocation sites are patched unless asked).
    pub patch_lookaside: bool,
    /// Checked at every step and handed to the target ([`DebugTarget::set_interrupt`]):
    /// once set, a running target is broken into, every patch is restored and the split
    /// returns [`SplitError::Interrupted`].
    pub cancel: Option<Interrupt>,
    /// The target's identity, recorded in the journal ([`Journal::identity`]).
    pub identity: Option<String>,
    /// Journals the caller knows of (path and content): a target that still holds the
    /// new bytes of one of them is refused with [`SplitError::StillPatched`].
    pub known_journals: Vec<(PathBuf, Journal)>,
    /// Split even when allocation sites use tags that look like a split of this one
    /// (otherwise [`SplitError::LooksSplit`]).
    pub allow_lookalikes: bool,
    /// Then collect call stacks (`run --stacks`): after the samples, every patch but the
    /// leaking site's (the one that grew most) is restored; that one stays in place,
    /// `nt!PoolHitTag` is set to its split tag (recorded in the same journal first,
    /// [`crate::stacks::collect_in_split`]), the stacks of its allocations are collected
    /// ([`Phase::Breaking`] after each break), and then everything is restored,
    /// `nt!PoolHitTag` included, before the journal is removed. The report's
    /// [`Report::stacks`] holds them. Without a leak, no stacks are collected.
    pub stacks: Option<crate::stacks::StacksOptions>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            run: None,
            samples: 8,
            journal: None,
            pooltag: PoolTagDb::builtin(),
            patch_lookaside: false,
            cancel: None,
            identity: None,
            known_journals: Vec::new(),
            allow_lookalikes: false,
            stacks: None,
        }
    }
}

/// A step of a split, reported to [`Split::on_phase`] just before it is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Checking that the target holds no patch of a known journal.
    Checking,
    /// Searching every module for the tag and classifying the hits.
    Surveying,
    /// About to write the journal: from here on, patches may be on the target.
    Journalling,
    /// The journal is written; about to write patch `next` (0-based) of `total`.
    Patching {
        /// Patches already written.
        next: usize,
        /// All patches.
        total: usize,
    },
    /// About to let the target run slice `sample` (1-based) of `total`.
    Running {
        /// The slice.
        sample: u32,
        /// All slices.
        total: u32,
    },
    /// About to read the tracker table for sample `sample` (0: the baseline).
    Sampling {
        /// The sample.
        sample: u32,
        /// All samples after the baseline.
        total: u32,
    },
    /// Collecting call stacks with `nt!PoolHitTag` ([`SplitOptions::stacks`]), the
    /// leaking site still patched: reported before the first run (`done` 0) and after
    /// each break.
    Breaking {
        /// Breaks taken.
        done: u64,
        /// Breaks wanted.
        wanted: u64,
    },
    /// Restoring every patch and reading each back.
    Restoring,
}

impl Phase {
    /// The phase's name: `checking`, `surveying`, `journalling`, `patching`, `running`,
    /// `sampling`, `breaking`, `restoring`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Surveying => "surveying",
            Phase::Journalling => "journalling",
            Phase::Patching { .. } => "patching",
            Phase::Running { .. } => "running",
            Phase::Sampling { .. } => "sampling",
            Phase::Breaking { .. } => "breaking",
            Phase::Restoring => "restoring",
        }
    }

    /// Whether patches may be on the target (or about to be) in this phase.
    pub fn patches_possible(self) -> bool {
        !matches!(self, Phase::Checking | Phase::Surveying)
    }
}

/// `a, b, c` for addresses.
fn list(addresses: &[VirtAddr]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Verdict for one split tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Outstanding bytes keep growing.
    Leak,
    /// Allocations are freed; usage levels off.
    Load,
    /// The site never allocated while the target ran.
    Idle,
}

/// A patched site and what its new tag did.
#[derive(Clone, Debug, Serialize)]
pub struct SiteResult {
    /// The hit that was patched.
    pub hit: Hit,
    /// The tag written there.
    pub new_tag: PoolTag,
    /// The instruction as patched (`mov r8d,3261654Ch`).
    pub patched_instruction: Option<String>,
    /// Tracker counters of the new tag at the baseline and after each sample.
    pub samples: Vec<TagUsage>,
    /// Outstanding-byte growth in each sample interval.
    pub growth: Vec<i128>,
    /// The verdict.
    pub verdict: Verdict,
}

impl SiteResult {
    /// Net growth of outstanding bytes over the run.
    pub fn net_growth(&self) -> i128 {
        self.growth.iter().sum()
    }

    /// Allocations made under the new tag during the run.
    pub fn allocs(&self) -> u64 {
        let first = self.samples.first().map_or(0, TagUsage::allocs);
        self.samples
            .last()
            .map_or(0, TagUsage::allocs)
            .saturating_sub(first)
    }
}

/// How a restore went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreSummary {
    /// Per patch: address and state.
    pub patches: Vec<(VirtAddr, RestoreState)>,
    /// Whether the journal file was removed (only after every patch verified).
    pub journal_removed: bool,
}

impl RestoreSummary {
    /// Whether every patch holds its original bytes again.
    pub fn complete(&self) -> bool {
        self.patches.iter().all(|(_, s)| s.ok())
    }
}

impl std::fmt::Display for RestoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ok = self.patches.iter().filter(|(_, s)| s.ok()).count();
        write!(
            f,
            "{ok} of {} patches restored and verified",
            self.patches.len()
        )?;
        for (a, s) in self.patches.iter().filter(|(_, s)| !s.ok()) {
            write!(f, "; {a}: {s:?}")?;
        }
        Ok(())
    }
}

/// The result of a split.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The target.
    pub target: String,
    /// The tag that was split.
    pub tag: PoolTag,
    /// Every hit, patched or not.
    pub hits: Vec<Hit>,
    /// The patched sites and their measurements.
    pub sites: Vec<SiteResult>,
    /// How long the target ran.
    pub run: String,
    /// Number of samples taken after the baseline.
    pub samples: u32,
    /// The restore.
    pub restore: RestoreSummary,
    /// When exactly one site was patched and it leaks: the calls of the function that
    /// holds it ([`callers::find_callers`]); several mean a helper whose leaking caller
    /// only call stacks name (`--stacks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<callers::SiteCallers>,
    /// With [`SplitOptions::stacks`]: the call stacks of the leaking site's allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<crate::stacks::StacksReport>,
    /// With [`SplitOptions::stacks`]: why no stacks were collected (no leak, or an
    /// error while collecting; everything was restored all the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_error: Option<String>,
}

impl Report {
    /// Whether the split can say no more than "this one site": it patched one site and
    /// that site leaks, so a helper reached from several callers looks the same as a
    /// site called once; call stacks tell them apart.
    pub fn one_leaking_site(&self) -> bool {
        self.sites.len() == 1 && self.leaks().count() == 1
    }

    /// The sites judged to leak.
    pub fn leaks(&self) -> impl Iterator<Item = &SiteResult> {
        self.sites.iter().filter(|s| s.verdict == Verdict::Leak)
    }

    /// Hits that were reported but not patched.
    pub fn unpatched(&self) -> impl Iterator<Item = &Hit> {
        self.hits
            .iter()
            .filter(|h| !self.sites.iter().any(|s| s.hit.address == h.address))
    }

    /// The report as text, verdict first.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = write!(
            o,
            "tag split of '{}' on {}: {} hits, {} sites patched",
            self.tag,
            self.target,
            self.hits.len(),
            self.sites.len()
        );
        if self.samples > 0 {
            let _ = write!(o, ", ran {} in {} samples", self.run, self.samples);
        }
        o.push('\n');
        let mut sites: Vec<&SiteResult> = self.sites.iter().collect();
        sites.sort_by_key(|s| {
            (
                s.verdict != Verdict::Leak,
                std::cmp::Reverse(s.net_growth()),
            )
        });
        for s in &sites {
            let word = match s.verdict {
                Verdict::Leak => "LEAK:",
                Verdict::Load => "load:",
                Verdict::Idle => "idle:",
            };
            let growth: Vec<String> = s.growth.iter().map(|g| format!("{g:+}")).collect();
            let _ = writeln!(
                o,
                "{word} {}  {}  {}  {} allocs, {:+} bytes outstanding; growth per sample: {}",
                s.new_tag,
                s.hit.location(),
                s.patched_instruction.as_deref().unwrap_or("?"),
                s.allocs(),
                s.net_growth(),
                growth.join(" ")
            );
        }
        if self.sites.is_empty() {
            let _ = writeln!(o, "no allocation site to patch: nothing was split");
        } else if self.leaks().next().is_none() {
            let _ = writeln!(
                o,
                "no split tag grew: no leak seen at the patched sites in this run"
            );
        }
        let unpatched: Vec<&Hit> = self.unpatched().collect();
        if !unpatched.is_empty() {
            let _ = writeln!(o, "not patched:");
            for h in unpatched {
                let _ = writeln!(
                    o,
                    "  {:<20} {:<22} {}{}",
                    h.kind.label(),
                    h.location(),
                    h.instruction.as_deref().unwrap_or(""),
                    h.note
                        .as_ref()
                        .map(|n| format!("  ({n})"))
                        .unwrap_or_default()
                );
            }
        }
        if self.hits.iter().any(|h| h.kind == HitKind::IndirectUse) {
            let _ = writeln!(
                o,
                "note: the tag is also applied indirectly (loaded from data); those allocations are not split"
            );
        }
        if self.one_leaking_site() {
            let _ = match &self.callers {
                Some(c) if c.several() => writeln!(
                    o,
                    "note: one site, reached from several callers: use --stacks to name the leaking caller (its function {} is called {} times in {} module(s): {})",
                    c.function_location,
                    c.calls.len(),
                    c.modules,
                    c.calls.join(", ")
                ),
                Some(_) => Ok(()),
                None => writeln!(
                    o,
                    "note: one site leaks; if it is a helper reached from several callers, use --stacks to name the leaking caller"
                ),
            };
        }
        let _ = writeln!(o, "restore: {}", self.restore);
        o
    }
}

/// Applies patches and guarantees they are undone: [`PatchGuard::restore`] restores and
/// verifies; dropping the guard without restoring restores too (best effort).
pub struct PatchGuard<'t> {
    target: &'t mut dyn DebugTarget,
    applied: Vec<PatchRecord>,
    restored: bool,
}

impl<'t> PatchGuard<'t> {
    /// A guard over `target` with nothing applied yet.
    pub fn new(target: &'t mut dyn DebugTarget) -> PatchGuard<'t> {
        PatchGuard {
            target,
            applied: Vec::new(),
            restored: false,
        }
    }

    /// The target, for use while patched.
    pub fn target(&mut self) -> &mut dyn DebugTarget {
        &mut *self.target
    }

    /// Writes one patch and reads it back. The patch is recorded before writing, so a
    /// partial write is restored too.
    pub fn apply(&mut self, p: &PatchRecord) -> Result<(), SplitError> {
        self.apply_many(std::slice::from_ref(p))
    }

    /// Writes `patches`, then reads them back; the writes go together, and so do the
    /// reads, where the target pipelines (two round trips for any number). Every patch
    /// is recorded before anything is written, so partial writes are restored too. Fails
    /// with the first patch (in order) not written whole, or not read back as written.
    pub fn apply_many(&mut self, patches: &[PatchRecord]) -> Result<(), SplitError> {
        self.applied.extend_from_slice(patches);
        let writes: Vec<(VirtAddr, &[u8])> = patches
            .iter()
            .map(|p| (p.address, p.new.as_slice()))
            .collect();
        let wrote = self.target.write_many(&writes)?;
        for (p, n) in patches.iter().zip(wrote) {
            if n != p.new.len() {
                return Err(TargetError::Unwritable(p.address.saturating_add(n as u64)).into());
            }
        }
        let back = journal::read_each(
            &mut *self.target,
            patches.iter().map(|p| (p.address, p.new.len())),
        )?;
        for (p, back) in patches.iter().zip(back) {
            if back.as_deref() != Some(p.new.as_slice()) {
                return Err(SplitError::VerifyFailed(p.address));
            }
        }
        Ok(())
    }

    /// Restores every applied patch but the one at `keep`, and verifies each; the patch
    /// at `keep` (and any that did not go back) stays applied, for [`restore`](Self::restore).
    pub fn restore_except(&mut self, keep: VirtAddr) -> RestoreSummary {
        let (kept, others): (Vec<PatchRecord>, Vec<PatchRecord>) =
            self.applied.drain(..).partition(|p| p.address == keep);
        let states = journal::restore_many(&mut *self.target, &others);
        self.applied = kept;
        for (p, s) in others.iter().zip(&states) {
            if !s.ok() {
                self.applied.push(p.clone());
            }
        }
        RestoreSummary {
            patches: others.iter().map(|p| p.address).zip(states).collect(),
            journal_removed: false,
        }
    }

    /// Restores every applied patch and verifies each ([`journal::restore_many`]).
    pub fn restore(&mut self) -> RestoreSummary {
        self.restored = true;
        let mut out = RestoreSummary::default();
        let states = journal::restore_many(&mut *self.target, &self.applied);
        out.patches = self.applied.iter().map(|p| p.address).zip(states).collect();
        out
    }
}

impl Drop for PatchGuard<'_> {
    fn drop(&mut self) {
        if !self.restored {
            let s = self.restore();
            tracing::warn!("patch guard dropped without restore: {s}");
        }
    }
}

/// Called after each sample with (samples done, samples total).
pub type Progress<'a> = Box<dyn FnMut(u32, u32) + 'a>;

/// Called before each step of a split ([`Phase`]).
pub type PhaseHook<'a> = Box<dyn FnMut(Phase) + 'a>;

/// A split of one tag on one target.
pub struct Split<'a> {
    target: &'a mut dyn DebugTarget,
    tag: PoolTag,
    options: SplitOptions,
    progress: Option<Progress<'a>>,
    phase: Option<PhaseHook<'a>>,
}

impl<'a> Split<'a> {
    /// Prepares a split of `tag` on `target`.
    pub fn new(target: &'a mut dyn DebugTarget, tag: PoolTag, options: SplitOptions) -> Split<'a> {
        Split {
            target,
            tag,
            options,
            progress: None,
            phase: None,
        }
    }

    /// Calls `f(phase)` before each step (for a status line, or to track whether
    /// patches may be on the target).
    pub fn on_phase(mut self, f: impl FnMut(Phase) + 'a) -> Split<'a> {
        self.phase = Some(Box::new(f));
        self
    }

    /// Calls `f(done, total)` after each sample (for a progress bar).
    pub fn on_progress(mut self, f: impl FnMut(u32, u32) + 'a) -> Split<'a> {
        self.progress = Some(Box::new(f));
        self
    }

    /// Finds and classifies every hit without patching anything.
    pub fn survey(&mut self) -> Result<Vec<Hit>, SplitError> {
        survey(&mut *self.target, self.tag)
    }

    /// Runs the whole split. Every patch is restored before this returns, on success and
    /// on error; the journal (if any) is removed only after a verified restore.
    pub fn run(mut self) -> Result<Report, SplitError> {
        let cancel = self.options.cancel.clone();
        self.target.set_interrupt(cancel.clone());
        let result = self.run_inner(cancel.as_ref());
        self.target.set_interrupt(None);
        result
    }

    /// Reports `phase`, then fails with [`SplitError::Interrupted`] if cancelled.
    fn enter(&mut self, phase: Phase, cancel: Option<&Interrupt>) -> Result<(), SplitError> {
        enter(&mut self.phase, phase, cancel)
    }

    fn run_inner(&mut self, cancel: Option<&Interrupt>) -> Result<Report, SplitError> {
        self.enter(Phase::Checking, cancel)?;
        check_known_journals(&mut *self.target, &self.options.known_journals)?;
        self.enter(Phase::Surveying, cancel)?;
        let (hits, lookalikes) = survey_with_lookalikes(&mut *self.target, self.tag)?;
        if !lookalikes.is_empty() && !self.options.allow_lookalikes {
            return Err(SplitError::LooksSplit {
                tag: self.tag,
                sites: lookalikes
                    .iter()
                    .map(|h| (h.tag, h.location().to_string()))
                    .collect(),
            });
        }
        let patchable: Vec<&Hit> = hits
            .iter()
            .filter(|h| {
                h.kind == HitKind::Allocation
                    || self.options.patch_lookaside && h.kind == HitKind::LookasideInit
            })
            .collect();
        if patchable.is_empty() {
            // Nothing to split: report the hits without patching or running.
            return Ok(Report {
                target: self.target.describe(),
                tag: self.tag,
                hits,
                sites: Vec::new(),
                run: "not run (no allocation site to patch)".into(),
                samples: 0,
                restore: RestoreSummary::default(),
                callers: None,
                stacks: None,
                stacks_error: None,
            });
        }
        // Which tags exist, and the samples, are read per tag when the tracker follows
        // the kernel's hash (checked by finding the split's own tag); else whole.
        let tables = pool::locate(&mut *self.target)?;
        let mut probe = pool::TagProbe::new(&mut *self.target, tables, self.tag)?;
        let db = &self.options.pooltag;
        // The tags it would choose if none were in use: their probes read together.
        if let Some(likely) =
            tags::choose(self.tag.unprotected(), patchable.len(), |t| db.covers(t))
        {
            probe.prepare(&mut *self.target, &likely)?;
        }
        let mut failed = None;
        let target = &mut *self.target;
        let chosen = tags::choose(self.tag.unprotected(), patchable.len(), |t| {
            db.covers(t)
                || probe.contains(&mut *target, t).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    true
                })
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        let chosen = chosen.ok_or(SplitError::NoFreeTags(patchable.len(), self.tag))?;
        // Each site keeps its own PROTECTED_POOL bit.
        let new_tags: Vec<PoolTag> = chosen
            .iter()
            .zip(&patchable)
            .map(|(t, h)| PoolTag::from_u32(t.to_u32() | (h.tag.to_u32() & PROTECTED_POOL)))
            .collect();
        let records: Vec<PatchRecord> = patchable
            .iter()
            .zip(&new_tags)
            .map(|(h, t)| PatchRecord {
                module: h.module.clone(),
                base: h.module_base,
                timestamp: crate::pe::timestamp(&mut *self.target, h.module_base).ok(),
                offset: h.offset,
                address: h.address,
                original: h.tag.bytes().to_vec(),
                new: t.bytes().to_vec(),
            })
            .collect();
        let journal = Journal::new(
            self.target.describe(),
            self.options.identity.clone(),
            self.tag.to_string(),
            records.clone(),
        );
        self.enter(Phase::Journalling, cancel)?;
        if let Some(path) = &self.options.journal {
            journal.write(path)?;
        }
        let run = self
            .options
            .run
            .unwrap_or_else(|| self.target.default_run());
        let samples = self.options.samples.max(1);
        let journal_path = self.options.journal.clone();
        let mut progress = self.progress.take();
        let mut phase = self.phase.take();
        let mut guard = PatchGuard::new(&mut *self.target);
        let measured = measure(
            &mut guard,
            &mut probe,
            &records,
            &new_tags,
            run,
            samples,
            cancel,
            &mut Hooks {
                progress: &mut progress,
                phase: &mut phase,
            },
        );
        // --stacks: the leaking site stays patched, the others go back, then the stacks.
        let mut early = RestoreSummary::default();
        let (mut stacks, mut stacks_error, mut hit_tag_back) = (None, None, true);
        if let (Ok(series), Some(opts)) = (&measured, &self.options.stacks) {
            match winner(series) {
                None => stacks_error = Some("no site leaks: no stacks to collect".into()),
                Some(w) => {
                    let (keep, tag) = (
                        records.get(w).map_or(VirtAddr(0), |r| r.address),
                        new_tags.get(w).copied().unwrap_or(self.tag),
                    );
                    early = guard.restore_except(keep);
                    if early.complete() {
                        let mut opts = opts.clone();
                        opts.cancel = opts.cancel.or_else(|| cancel.cloned());
                        if let Some(f) = phase.as_mut() {
                            f(Phase::Breaking {
                                done: 0,
                                wanted: opts.breaks as u64,
                            });
                        }
                        let on_disk = journal_path.as_deref().map(|p| (&journal, p));
                        let (result, back) = crate::stacks::collect_in_split(
                            guard.target(),
                            tag,
                            &opts,
                            on_disk,
                            |p| {
                                if let Some(f) = phase.as_mut() {
                                    f(Phase::Breaking {
                                        done: p.breaks,
                                        wanted: p.wanted,
                                    });
                                }
                            },
                        );
                        hit_tag_back = back;
                        match result {
                            Ok(r) => stacks = Some(r),
                            Err(e) => stacks_error = Some(e.to_string()),
                        }
                    } else {
                        stacks_error = Some(format!("not collected: restore: {early}"));
                    }
                }
            }
        }
        if let Some(f) = phase.as_mut() {
            f(Phase::Restoring);
        }
        let mut restore = guard.restore();
        drop(guard);
        if !early.patches.is_empty() {
            // Each patch's last restore, in the order they were applied.
            let last: Vec<(VirtAddr, RestoreState)> = records
                .iter()
                .filter_map(|r| {
                    restore
                        .patches
                        .iter()
                        .chain(&early.patches)
                        .find(|(a, _)| *a == r.address)
                        .copied()
                })
                .collect();
            restore.patches = last;
        }
        if let Some(path) = journal_path
            .as_ref()
            .filter(|_| restore.complete() && hit_tag_back)
        {
            restore.journal_removed = journal.remove_own(path);
        }
        if let Some(st) = stacks.as_mut() {
            // The site kept for the stacks, and the one journal, as the stacks saw them.
            st.patches_restored = usize::from(restore.complete());
            st.journal_removed = restore.journal_removed;
        }
        let stopped = stacks
            .as_ref()
            .is_some_and(|s: &crate::stacks::StacksReport| s.ended == "interrupted");
        if stopped && restore.complete() && hit_tag_back {
            return Err(SplitError::Interrupted(restore));
        }
        if !hit_tag_back {
            return Err(SplitError::RestoreIncomplete(restore));
        }
        let series = match measured {
            Ok(_) if !restore.complete() => return Err(SplitError::RestoreIncomplete(restore)),
            Ok(s) => s,
            Err(SplitError::Interrupted(_) | SplitError::Target(TargetError::Interrupted)) => {
                return Err(SplitError::Interrupted(restore));
            }
            Err(e) => {
                return Err(SplitError::Aborted {
                    cause: Box::new(e),
                    restore,
                });
            }
        };
        let sites = patchable
            .iter()
            .zip(&new_tags)
            .zip(series)
            .map(|((h, t), samples)| {
                let growth: Vec<i128> = samples
                    .windows(2)
                    .map(|w| {
                        i128::from(w.get(1).map_or(0, TagUsage::bytes))
                            - i128::from(w.first().map_or(0, TagUsage::bytes))
                    })
                    .collect();
                let verdict = judge(&samples);
                SiteResult {
                    hit: (*h).clone(),
                    new_tag: *t,
                    patched_instruction: h.instruction_with(*t),
                    samples,
                    growth,
                    verdict,
                }
            })
            .collect();
        Ok(Report {
            target: journal.target.clone(),
            tag: self.tag,
            hits,
            sites,
            run: match run {
                RunFor::Ticks(n) => format!("{n} ticks"),
                RunFor::Time(d) => format!("{:.1} s", d.as_secs_f64()),
            },
            samples,
            restore,
            callers: None,
            stacks,
            stacks_error,
        })
        .map(|mut report| {
            // One leaking site: who calls its function (read-only, after the restore).
            if report.one_leaking_site()
                && let Some(site) = report.sites.first()
            {
                report.callers = callers::find_callers(
                    &mut *self.target,
                    site.hit.instruction_address.unwrap_or(site.hit.address),
                )
                .unwrap_or_else(|e| {
                    tracing::debug!("callers of {}: {e}", site.hit.location());
                    None
                });
            }
            report
        })
    }
}

/// Finds and classifies every hit of `tag` in every module of `target`.
pub fn survey(target: &mut dyn DebugTarget, tag: PoolTag) -> Result<Vec<Hit>, SplitError> {
    Ok(survey_with_lookalikes(target, tag)?.0)
}

/// [`survey`], plus the allocation sites whose tag looks like a split of `tag`: the same
/// first three bytes and a 4th byte a split writes ([`tags::VARIANTS`]), found by the
/// same searches.
pub fn survey_with_lookalikes(
    target: &mut dyn DebugTarget,
    tag: PoolTag,
) -> Result<(Vec<Hit>, Vec<Hit>), SplitError> {
    let modules = target.modules()?;
    let found = classify::find_prefix_hits(target, &modules, tag)?;
    classify::prefetch_for(target, &modules, &found)?;
    let fourth = tag.unprotected().bytes()[3];
    let mut hits = Vec::new();
    let mut lookalikes = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let mut mine: Vec<(VirtAddr, PoolTag)> = Vec::new();
        let mut like: Vec<(VirtAddr, PoolTag)> = Vec::new();
        for (_, a, t) in found.iter().filter(|(j, _, _)| *j == i) {
            let d = t.unprotected().bytes()[3];
            if d == fourth {
                mine.push((*a, *t));
            } else if tags::VARIANTS.contains(&d) {
                like.push((*a, *t));
            }
        }
        if !mine.is_empty() {
            hits.extend(classify::classify_module(target, m, &mine));
        }
        if !like.is_empty() {
            lookalikes.extend(
                classify::classify_module(target, m, &like)
                    .into_iter()
                    .filter(|h| matches!(h.kind, HitKind::Allocation | HitKind::LookasideInit)),
            );
        }
    }
    Ok((hits, lookalikes))
}

/// Fails with [`SplitError::StillPatched`] when the target holds the new bytes of any
/// patch of `journals` (in a module still loaded at the journal's base).
pub fn check_known_journals(
    target: &mut dyn DebugTarget,
    journals: &[(PathBuf, Journal)],
) -> Result<(), SplitError> {
    if journals.is_empty() {
        return Ok(());
    }
    let modules = target.modules()?;
    for (path, j) in journals {
        let loaded: Vec<&PatchRecord> = j
            .patches
            .iter()
            .filter(|p| {
                modules
                    .iter()
                    .any(|m| m.name.eq_ignore_ascii_case(&p.module) && m.base == p.base)
            })
            .collect();
        let now = journal::read_each(target, loaded.iter().map(|p| (p.address, p.new.len())))?;
        let addresses: Vec<VirtAddr> = loaded
            .iter()
            .zip(now)
            .filter(|(p, now)| now.as_deref() == Some(p.new.as_slice()) && p.new != p.original)
            .map(|(p, _)| p.address)
            .collect();
        if !addresses.is_empty() {
            return Err(SplitError::StillPatched {
                journal: path.clone(),
                target: j.target.clone(),
                addresses,
            });
        }
    }
    Ok(())
}

/// The site whose split tag leaks and grew most over the run (index into the series).
fn winner(series: &[Vec<TagUsage>]) -> Option<usize> {
    series
        .iter()
        .enumerate()
        .filter(|(_, s)| judge(s) == Verdict::Leak)
        .max_by_key(|(i, s)| {
            let grew = i128::from(s.last().map_or(0, TagUsage::bytes))
                - i128::from(s.first().map_or(0, TagUsage::bytes));
            (grew, std::cmp::Reverse(*i))
        })
        .map(|(i, _)| i)
}

/// Leak rule (see the module docs): every second-half sample above every first-half one.
pub fn judge(samples: &[TagUsage]) -> Verdict {
    let bytes: Vec<u64> = samples.iter().map(TagUsage::bytes).collect();
    if samples
        .iter()
        .all(|s| s.allocs() == samples.first().map_or(0, TagUsage::allocs))
    {
        return Verdict::Idle;
    }
    let half = bytes.len().div_ceil(2);
    let (first, second) = bytes.split_at(half.min(bytes.len()));
    match (first.iter().max(), second.iter().min()) {
        (Some(hi), Some(lo)) if lo > hi => Verdict::Leak,
        _ => Verdict::Load,
    }
}

/// The callbacks [`measure`] reports to.
struct Hooks<'h, 'a> {
    progress: &'h mut Option<Progress<'a>>,
    phase: &'h mut Option<PhaseHook<'a>>,
}

impl Hooks<'_, '_> {
    /// Reports `phase`, then fails with [`SplitError::Interrupted`] if cancelled.
    fn enter(&mut self, phase: Phase, cancel: Option<&Interrupt>) -> Result<(), SplitError> {
        enter(self.phase, phase, cancel)
    }
}

/// Reports `phase` to `hook`, then fails with [`SplitError::Interrupted`] if cancelled.
fn enter(
    hook: &mut Option<PhaseHook<'_>>,
    phase: Phase,
    cancel: Option<&Interrupt>,
) -> Result<(), SplitError> {
    if let Some(f) = hook.as_mut() {
        f(phase);
    }
    if interrupted(cancel) {
        return Err(SplitError::Interrupted(RestoreSummary::default()));
    }
    Ok(())
}

/// Patches, takes the baseline, runs the slices and samples. Returns, per site, the new
/// tag's counters at the baseline and after each slice.
#[allow(clippy::too_many_arguments)]
fn measure(
    guard: &mut PatchGuard<'_>,
    probe: &mut pool::TagProbe,
    records: &[PatchRecord],
    new_tags: &[PoolTag],
    run: RunFor,
    samples: u32,
    cancel: Option<&Interrupt>,
    hooks: &mut Hooks<'_, '_>,
) -> Result<Vec<Vec<TagUsage>>, SplitError> {
    // The first patch alone, then the rest together (one round trip each way where the
    // target pipelines): a signal between them finds exactly one patch on the target.
    let (first, rest) = records.split_at(records.len().min(1));
    for (next, batch) in [(0, first), (first.len(), rest)] {
        if batch.is_empty() {
            continue;
        }
        hooks.enter(
            Phase::Patching {
                next,
                total: records.len(),
            },
            cancel,
        )?;
        guard.apply_many(batch)?;
    }
    let mut series: Vec<Vec<TagUsage>> = vec![Vec::new(); new_tags.len()];
    let push = |series: &mut Vec<Vec<TagUsage>>, row: Vec<TagUsage>| {
        for (s, u) in series.iter_mut().zip(row) {
            s.push(u);
        }
    };
    hooks.enter(
        Phase::Sampling {
            sample: 0,
            total: samples,
        },
        cancel,
    )?;
    push(&mut series, probe.usage(guard.target(), new_tags)?);
    for i in 0..samples {
        if interrupted(cancel) {
            return Err(SplitError::Interrupted(RestoreSummary::default()));
        }
        let slice = match run {
            RunFor::Ticks(n) => {
                let base = n / u64::from(samples);
                let extra = u64::from(u64::from(i) < n % u64::from(samples));
                RunFor::Ticks(base + extra)
            }
            RunFor::Time(d) => RunFor::Time(d / samples),
        };
        // No cancel check after this report: a run started with the flag set resumes
        // and breaks in at once, as a signal during a real run would.
        if let Some(f) = hooks.phase.as_mut() {
            f(Phase::Running {
                sample: i + 1,
                total: samples,
            });
        }
        guard.target().run(slice)?;
        hooks.enter(
            Phase::Sampling {
                sample: i + 1,
                total: samples,
            },
            cancel,
        )?;
        push(&mut series, probe.usage(guard.target(), new_tags)?);
        if let Some(p) = hooks.progress.as_mut() {
            p(i + 1, samples);
        }
    }
    Ok(series)
}

/// Fails with [`SplitError::WrongTarget`] when `journal` (read from `path`) records an
/// identity other than `given` (journals without one are accepted).
pub fn check_journal_target(
    path: &std::path::Path,
    journal: &Journal,
    given: &crate::target::TargetIdentity,
) -> Result<(), SplitError> {
    match journal.identity.as_deref() {
        Some(belongs) if belongs != given.as_str() => Err(SplitError::WrongTarget {
            journal: path.to_path_buf(),
            belongs: belongs.to_string(),
            given: given.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Undoes the patches of a journal left by an interrupted run; removes the journal file
/// only when every patch verifies (and the file still holds that journal). With
/// `identity`, a journal that records another target's identity is refused.
pub fn restore_from_journal(
    target: &mut dyn DebugTarget,
    path: &std::path::Path,
    identity: Option<&crate::target::TargetIdentity>,
) -> Result<RestoreSummary, SplitError> {
    let journal = Journal::read(path)?;
    if let Some(given) = identity {
        check_journal_target(path, &journal, given)?;
    }
    let states = journal::restore_all(target, &journal)?;
    let mut summary = RestoreSummary {
        patches: journal
            .patches
            .iter()
            .map(|p| p.address)
            .zip(states)
            .collect(),
        journal_removed: false,
    };
    if summary.complete() {
        summary.journal_removed = journal.remove_own(path);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests;
