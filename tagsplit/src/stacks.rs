//! Who allocates a tag: `PoolHitTag` breaks collected into call stacks (the
//! allocations-inside-the-window view WPA shows from ETW pool traces).
//!
//! [`collect`] sets `nt!PoolHitTag` to the tag, then loops break → stack → continue:
//! at an allocation's break it records the call stack (frame 1 on: the allocator's
//! caller and up) and fetches the block from the allocator's return
//! ([`hittag::finish_allocation`]); at a free's break it pairs the block (`rbx`) with
//! the allocation that made it, if that was inside the window. The report gives, per
//! unique call stack, the allocations, the frees and the bytes still outstanding, the
//! leaking stack first. `nt!PoolHitTag` is written back to what it held before, whatever
//! happens (an error, a triggered [`Interrupt`]). With [`StacksOptions::journal`] the
//! write is journalled first like a split's patches (a [`PatchRecord`] of the 4 bytes in
//! `nt`), so that a process killed while the tag is set leaves a journal that `tagsplit
//! restore` (or [`crate::split::restore_from_journal`]) puts back; the write back goes
//! through [`journal::restore_one`] (only if the variable still holds the tag) and removes
//! the journal once verified.
//!
//! Round trips per break, measured in this loop on `part4` over loopback
//! (`cargo run --release -p tagsplit-benches --bin breaks`): an allocation's break with
//! its stack and block, 10 over GDB and 7 KD requests and 2 Continues; a free's, 5 over
//! GDB and 4 KD requests and 1 Continue (see [`hittag`] for the steps; in the loop the
//! run limit goes with every run and the code at `rip` is read at every break).

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::hittag::{self, HitKind, HitTagError};
use crate::split::journal::{self, Journal, PatchRecord, RestoreState};
use crate::stack::Unwinder;
use crate::symbols::KernelSymbols;
use crate::target::{DebugTarget, Interrupt, RunFor, StopReason, TargetError};
use crate::{PoolTag, VirtAddr};

/// Most breaks one [`collect`] takes (a bound on the memory the report holds).
pub const MAX_BREAKS: usize = 1_000_000;

/// Most blocks kept outstanding (allocated in the window and not yet freed); beyond it,
/// new blocks are counted but not kept for pairing.
pub const MAX_OUTSTANDING: usize = 1 << 20;

/// Most distinct call stacks kept; further stacks are counted under one "other" entry.
pub const MAX_STACKS: usize = 4096;

/// How [`collect`] runs.
#[derive(Clone, Debug)]
pub struct StacksOptions {
    /// Breaks to take (allocations and frees), at most [`MAX_BREAKS`].
    pub breaks: usize,
    /// How long each run between breaks may last (default: the target's default run).
    pub run: Option<RunFor>,
    /// Runs in a row without a break after which collecting stops (the tag is idle).
    pub idle_runs: usize,
    /// Triggered (Ctrl-C): the run in progress breaks in, collecting stops, and the
    /// report so far is returned after `nt!PoolHitTag` is written back.
    pub cancel: Option<Interrupt>,
    /// Journal the `nt!PoolHitTag` write here first (see the [module docs](self)).
    pub journal: Option<JournalSpec>,
    /// Patches to make (after the journal, which records them too) and undo with
    /// `nt!PoolHitTag`: `tagsplit run --stacks` puts the leaking site's split tag back
    /// so that only its allocations break.
    pub patches: Vec<PatchRecord>,
}

/// Where [`collect`] journals its write of `nt!PoolHitTag`.
#[derive(Clone, Debug)]
pub struct JournalSpec {
    /// The journal file (created; an existing file is refused).
    pub path: std::path::PathBuf,
    /// The target's identity ([`crate::target::TargetIdentity`]), recorded so that a
    /// restore refuses another target.
    pub identity: Option<String>,
}

impl Default for StacksOptions {
    fn default() -> Self {
        StacksOptions {
            breaks: 100,
            run: None,
            idle_runs: 4,
            cancel: None,
            journal: None,
            patches: Vec::new(),
        }
    }
}

/// One unique call stack and what it allocated inside the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StackUsage {
    /// The frames from the allocator's caller outwards (`module+0xoffset`).
    pub frames: Vec<String>,
    /// Allocations through it.
    pub allocs: u64,
    /// Bytes allocated through it.
    pub bytes: u64,
    /// Of those, freed inside the window.
    pub frees: u64,
    /// Allocations not freed inside the window.
    pub outstanding_allocs: u64,
    /// Bytes not freed inside the window.
    pub outstanding_bytes: u64,
}

/// What [`collect`] found.
#[derive(Clone, Debug, Serialize)]
pub struct StacksReport {
    /// The target.
    pub target: String,
    /// The tag.
    pub tag: PoolTag,
    /// Breaks taken.
    pub breaks: u64,
    /// Allocation breaks.
    pub allocations: u64,
    /// Free breaks.
    pub frees: u64,
    /// Frees of blocks allocated before the window (nothing to pair them with).
    pub unmatched_frees: u64,
    /// Why collecting ended.
    pub ended: String,
    /// Per unique call stack, the most outstanding bytes first.
    pub stacks: Vec<StackUsage>,
    /// `nt!PoolHitTag` as found, and written back.
    pub pool_hit_tag_restored: u32,
    /// The journal of the write was removed after the write back was verified (in a
    /// split with `stacks`, the split's journal, once everything was restored).
    pub journal_removed: bool,
    /// Patches of [`StacksOptions::patches`] made and undone (in a split with `stacks`,
    /// 1: the leaking site's, kept for the stacks and restored with the others).
    pub patches_restored: usize,
}

impl StacksReport {
    /// The leaking stack (the first, when it has bytes outstanding).
    pub fn leaking(&self) -> Option<&StackUsage> {
        self.stacks.first().filter(|s| s.outstanding_bytes > 0)
    }

    /// The leaking stack's second frame (`module+0xoffset`): the return address into
    /// the caller of the function that called the allocator. When that function is an
    /// allocation helper (one site, several callers), this names the caller that leaks.
    pub fn leaking_caller(&self) -> Option<&str> {
        self.leaking()?.frames.get(1).map(String::as_str)
    }
}

impl fmt::Display for StacksReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "PoolHitTag stacks of '{}' on {}: {} breaks ({} allocations, {} frees, {} frees of blocks from before); {}",
            self.tag,
            self.target,
            self.breaks,
            self.allocations,
            self.frees,
            self.unmatched_frees,
            self.ended
        )?;
        for (i, s) in self.stacks.iter().enumerate() {
            let label = if i == 0 && s.outstanding_bytes > 0 {
                "LEAKING"
            } else {
                "stack"
            };
            writeln!(
                f,
                "{label}: {} allocs, {} bytes; {} freed; {} outstanding ({} bytes)",
                s.allocs, s.bytes, s.frees, s.outstanding_allocs, s.outstanding_bytes
            )?;
            for fr in &s.frames {
                writeln!(f, "    {fr}")?;
            }
        }
        write!(
            f,
            "nt!PoolHitTag restored to {:08x}",
            self.pool_hit_tag_restored
        )
    }
}

/// Progress after each break.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Breaks so far.
    pub breaks: u64,
    /// Breaks wanted.
    pub wanted: u64,
    /// The last break's kind.
    pub kind: HitKind,
}

/// Collects the call stacks of `tag`'s allocations (see the [module docs](self)).
pub fn collect<T: DebugTarget + ?Sized>(
    target: &mut T,
    tag: PoolTag,
    options: &StacksOptions,
    progress: impl FnMut(&Progress),
) -> Result<StacksReport, HitTagError> {
    let mode = match &options.journal {
        Some(spec) => JournalMode::New(spec),
        None => JournalMode::None,
    };
    collect_with(target, tag, options, mode, progress).0
}

/// [`collect`] inside a split that keeps its leaking site's patch in place
/// (`tagsplit run --stacks`): the split's journal (`journal`, on disk at its path) is
/// replaced by one that also records the write of `nt!PoolHitTag`, before the write
/// ([`Journal::replace`]); `nt!PoolHitTag` (and [`StacksOptions::patches`]) are written
/// back at the end, and the journal is left for the split, which removes it once its own
/// patches are restored. Returns the result, and whether every byte this wrote holds its
/// original again (when not, the journal must be kept).
pub fn collect_in_split<T: DebugTarget + ?Sized>(
    target: &mut T,
    tag: PoolTag,
    options: &StacksOptions,
    journal: Option<(&Journal, &std::path::Path)>,
    progress: impl FnMut(&Progress),
) -> (Result<StacksReport, HitTagError>, bool) {
    let mode = match journal {
        Some((j, path)) => JournalMode::Extend(j, path),
        None => JournalMode::None,
    };
    collect_with(target, tag, options, mode, progress)
}

/// How [`collect_with`] journals its writes.
enum JournalMode<'a> {
    /// Not at all.
    None,
    /// In a new journal.
    New(&'a JournalSpec),
    /// By replacing a split's journal with one that records them too.
    Extend(&'a Journal, &'a std::path::Path),
}

/// What [`collect_with`] needs before its first write.
struct Prepared {
    symbols: KernelSymbols,
    before: u32,
    address: VirtAddr,
    records: Vec<PatchRecord>,
    written: Option<(Journal, std::path::PathBuf)>,
}

/// Reads what the writes need and journals them.
fn prepare<T: DebugTarget + ?Sized>(
    target: &mut T,
    tag: PoolTag,
    options: &StacksOptions,
    mode: JournalMode<'_>,
) -> Result<Prepared, HitTagError> {
    let symbols = KernelSymbols::read(target)?;
    let before = hittag::read_pool_hit_tag(target, &symbols)?;
    let address = hittag::pool_hit_tag_address(&symbols)?;
    let mut records = options.patches.clone();
    records.push(patch_record(target, address, before, tag)?);
    let journal_error = |e: journal::JournalError| HitTagError::Journal(e.to_string());
    let written = match mode {
        JournalMode::None => None,
        JournalMode::New(spec) => {
            let j = Journal::new(
                target.describe(),
                spec.identity.clone(),
                tag.to_string(),
                records.clone(),
            );
            j.write(&spec.path).map_err(journal_error)?;
            Some((j, spec.path.clone()))
        }
        JournalMode::Extend(j, path) => {
            let mut next = j.clone();
            next.patches.extend(records.iter().cloned());
            next.replace(path).map_err(journal_error)?;
            None
        }
    };
    Ok(Prepared {
        symbols,
        before,
        address,
        records,
        written,
    })
}

/// [`collect`] with the journal as `mode` says; also returns whether every byte written
/// holds its original again.
fn collect_with<T: DebugTarget + ?Sized>(
    target: &mut T,
    tag: PoolTag,
    options: &StacksOptions,
    mode: JournalMode<'_>,
    mut progress: impl FnMut(&Progress),
) -> (Result<StacksReport, HitTagError>, bool) {
    let Prepared {
        symbols,
        before,
        address,
        records,
        written,
    } = match prepare(target, tag, options, mode) {
        Ok(p) => p,
        // Nothing was written.
        Err(e) => return (Err(e), true),
    };
    let mut window = Window::default();
    let outcome = apply(target, &options.patches)
        .and_then(|()| hittag::set_pool_hit_tag(target, &symbols, tag.to_u32()))
        .and_then(|()| run_window(target, &symbols, options, &mut window, &mut progress));
    // Whatever happened: every byte back, where it still holds what was written.
    let states: Vec<RestoreState> = records
        .iter()
        .rev()
        .map(|r| journal::restore_one(&mut &mut *target, r))
        .collect();
    let all_back = states
        .iter()
        .all(|s| matches!(s, RestoreState::Restored | RestoreState::AlreadyOriginal));
    let journal_removed = match &written {
        Some((j, path)) if all_back => j.remove_own(path),
        _ => false,
    };
    let result = outcome.and_then(|ended| {
        if !all_back {
            return Err(HitTagError::NotRestored(format!(
                "not every byte could be written back (nt!PoolHitTag at {address} to {before:08x}, then the patches): {states:?}"
            )));
        }
        let mut report = window.report(target.describe(), tag, ended, before);
        report.journal_removed = journal_removed;
        report.patches_restored = options.patches.len();
        Ok(report)
    });
    (result, all_back)
}

/// Writes each patch's new bytes where its original bytes are, and reads them back.
fn apply<T: DebugTarget + ?Sized>(
    target: &mut T,
    patches: &[PatchRecord],
) -> Result<(), HitTagError> {
    for p in patches {
        let mut now = vec![0u8; p.original.len()];
        crate::target::read_exact(target, p.address, &mut now)?;
        if now != p.original {
            return Err(HitTagError::NotRestored(format!(
                "{} does not hold the bytes to patch ({now:02x?}, not {:02x?}): nothing patched there",
                p.address, p.original
            )));
        }
        let wrote = target.write_memory(p.address, &p.new)?;
        let mut back = vec![0u8; p.new.len()];
        crate::target::read_exact(target, p.address, &mut back)?;
        if wrote < p.new.len() || back != p.new {
            return Err(TargetError::Unwritable(p.address).into());
        }
    }
    Ok(())
}

/// The 4 bytes of `nt!PoolHitTag` as a split's patch: in `nt`, from `before` to `tag`.
fn patch_record<T: DebugTarget + ?Sized>(
    target: &mut T,
    address: VirtAddr,
    before: u32,
    tag: PoolTag,
) -> Result<PatchRecord, HitTagError> {
    let modules = target.modules()?;
    let nt = modules
        .iter()
        .find(|m| m.contains(address))
        .ok_or_else(|| {
            HitTagError::NotAHitBreak(format!("nt!PoolHitTag at {address} is in no module"))
        })?;
    Ok(PatchRecord {
        module: nt.name.clone(),
        base: nt.base,
        timestamp: crate::pe::timestamp(target, nt.base).ok(),
        offset: address.get() - nt.base.get(),
        address,
        original: before.to_le_bytes().to_vec(),
        new: tag.to_u32().to_le_bytes().to_vec(),
    })
}

/// The breaks of one window.
#[derive(Default)]
struct Window {
    breaks: u64,
    allocations: u64,
    frees: u64,
    unmatched_frees: u64,
    stacks: Vec<StackUsage>,
    by_frames: HashMap<Vec<String>, usize>,
    /// Block -> (stack index, size).
    outstanding: HashMap<u64, (usize, u64)>,
}

impl Window {
    fn allocated(&mut self, frames: Vec<String>, block: VirtAddr, size: u64) {
        let n = self.stacks.len();
        let key = if n >= MAX_STACKS && !self.by_frames.contains_key(&frames) {
            vec!["(other stacks)".to_string()]
        } else {
            frames
        };
        let idx = *self.by_frames.entry(key.clone()).or_insert_with(|| {
            self.stacks.push(StackUsage {
                frames: key,
                allocs: 0,
                bytes: 0,
                frees: 0,
                outstanding_allocs: 0,
                outstanding_bytes: 0,
            });
            n
        });
        if let Some(s) = self.stacks.get_mut(idx) {
            s.allocs += 1;
            s.bytes = s.bytes.saturating_add(size);
            s.outstanding_allocs += 1;
            s.outstanding_bytes = s.outstanding_bytes.saturating_add(size);
        }
        if self.outstanding.len() < MAX_OUTSTANDING {
            self.outstanding.insert(block.get(), (idx, size));
        }
    }

    fn freed(&mut self, block: VirtAddr) {
        match self.outstanding.remove(&block.get()) {
            Some((idx, size)) => {
                if let Some(s) = self.stacks.get_mut(idx) {
                    s.frees += 1;
                    s.outstanding_allocs = s.outstanding_allocs.saturating_sub(1);
                    s.outstanding_bytes = s.outstanding_bytes.saturating_sub(size);
                }
            }
            None => self.unmatched_frees += 1,
        }
    }

    fn report(self, target: String, tag: PoolTag, ended: String, before: u32) -> StacksReport {
        let mut stacks = self.stacks;
        stacks.sort_by(|a, b| {
            b.outstanding_bytes
                .cmp(&a.outstanding_bytes)
                .then(b.allocs.cmp(&a.allocs))
        });
        StacksReport {
            target,
            tag,
            breaks: self.breaks,
            allocations: self.allocations,
            frees: self.frees,
            unmatched_frees: self.unmatched_frees,
            ended,
            stacks,
            pool_hit_tag_restored: before,
            journal_removed: false,
            patches_restored: 0,
        }
    }
}

/// The loop; returns why it ended.
fn run_window<T: DebugTarget + ?Sized>(
    target: &mut T,
    symbols: &KernelSymbols,
    options: &StacksOptions,
    window: &mut Window,
    progress: &mut impl FnMut(&Progress),
) -> Result<String, HitTagError> {
    let wanted = options.breaks.min(MAX_BREAKS) as u64;
    let mut unwinder = Unwinder::for_target(target)?;
    let mut idle = 0usize;
    let cancelled = || options.cancel.as_ref().is_some_and(Interrupt::is_set);
    while window.breaks < wanted {
        if cancelled() {
            return Ok("interrupted".into());
        }
        let how = options.run.unwrap_or_else(|| target.default_run());
        match target.run(how) {
            Ok(StopReason::BreakInstruction(_)) => idle = 0,
            Ok(StopReason::BreakIn) => {
                idle += 1;
                if idle >= options.idle_runs.max(1) {
                    return Ok(format!("no break in {idle} runs in a row"));
                }
                continue;
            }
            Ok(other) => {
                return Err(HitTagError::NotAHitBreak(format!(
                    "the target stopped for another reason: {other:?}"
                )));
            }
            Err(TargetError::Interrupted) => return Ok("interrupted".into()),
            Err(e) => return Err(e.into()),
        }
        let mut hit = hittag::examine(target, &mut unwinder, symbols)?;
        window.breaks += 1;
        match hit.kind {
            HitKind::Allocation => {
                window.allocations += 1;
                let frames = hit
                    .stack
                    .frames
                    .iter()
                    .skip(1)
                    .map(crate::stack::Frame::call_site_text)
                    .collect();
                let size = hit.size.unwrap_or(0);
                let block = hittag::finish_allocation(target, &mut hit)?;
                window.allocated(frames, block, size);
            }
            HitKind::Free => {
                window.frees += 1;
                if let Some(block) = hit.block {
                    window.freed(block);
                }
            }
        }
        progress(&Progress {
            breaks: window.breaks,
            wanted,
            kind: hit.kind,
        });
    }
    Ok(format!("{wanted} breaks taken"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frees_pair_with_their_allocations_and_the_leaker_comes_first() {
        let mut w = Window::default();
        let a = vec!["myfault+0x1634".to_string()];
        let b = vec!["myfault+0x13b4".to_string()];
        w.allocated(b.clone(), VirtAddr(0x1000), 16);
        w.allocated(a.clone(), VirtAddr(0x2000), 1000);
        w.allocated(b.clone(), VirtAddr(0x3000), 16);
        w.freed(VirtAddr(0x1000));
        w.freed(VirtAddr(0x3000));
        w.freed(VirtAddr(0x9000));
        let r = w.report(
            "t".into(),
            PoolTag::new(*b"Leak"),
            "done".into(),
            0xffff_ff0f,
        );
        assert_eq!(r.unmatched_frees, 1);
        assert_eq!(r.stacks[0].frames, a);
        assert_eq!(r.stacks[0].outstanding_bytes, 1000);
        assert_eq!(r.stacks[1].frames, b);
        assert_eq!((r.stacks[1].allocs, r.stacks[1].frees), (2, 2));
        assert_eq!(r.stacks[1].outstanding_bytes, 0);
        assert!(r.to_string().contains("LEAKING: 1 allocs, 1000 bytes"));
    }
}
