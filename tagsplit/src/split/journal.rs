//! The patch journal: written (and synced) before any byte is patched, removed only after
//! a verified restore, and enough on its own to undo an interrupted run.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VirtAddr;
use crate::target::{DebugTarget, TargetError, TargetIdentity};
use tagsplit_protocol::gdb::crc32;

/// Largest journal file read back.
pub const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// The `format` field of every journal.
pub const JOURNAL_FORMAT: &str = "tagsplit-journal";

/// [`JournalError::Exists`] for `path`, saying whether it holds one of our journals.
fn exists(path: &Path) -> JournalError {
    JournalError::Exists {
        path: path.to_path_buf(),
        is_journal: Journal::read(path).is_ok(),
    }
}

/// Best-effort sync of the directory holding `path` (a new or renamed entry in it).
fn sync_dir(path: &Path) {
    if let Some(Ok(d)) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(fs::File::open)
    {
        let _ = d.sync_all();
    }
}

/// A value no other run shares: process id, time and a per-process counter.
fn new_run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One patched location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    /// Module file name.
    pub module: String,
    /// Module base at patch time.
    pub base: VirtAddr,
    /// The module's PE `TimeDateStamp` at patch time, when readable; restore refuses a
    /// module whose stamp changed (reloaded, or another build).
    #[serde(default)]
    pub timestamp: Option<u32>,
    /// Offset of the patch in the module.
    pub offset: u64,
    /// Patched address (`base + offset`).
    pub address: VirtAddr,
    /// The bytes before patching.
    #[serde(with = "hex_bytes")]
    pub original: Vec<u8>,
    /// The bytes written.
    #[serde(with = "hex_bytes")]
    pub new: Vec<u8>,
}

/// The journal file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Always `tagsplit-journal`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The target as [`DebugTarget::describe`] put it.
    pub target: String,
    /// The target's identity ([`TargetIdentity`]) when the
    /// run knew it: `restore` refuses a journal of another target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// A value unique to the run that wrote the journal: only that run (or a verified
    /// restore) removes the file, and only while it still holds this value.
    #[serde(default)]
    pub run_id: String,
    /// The tag that was split.
    pub tag: String,
    /// The patches, in the order they are applied.
    pub patches: Vec<PatchRecord>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || s.len() > 64 {
            return Err(serde::de::Error::custom("bad hex byte string"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("bad hex byte string"))
            })
            .collect()
    }
}

/// Errors reading or writing a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// File I/O failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file already exists where the journal would go: journals are never replaced.
    #[error("{path} already exists{}; a journal is never overwritten", if *.is_journal { " and holds the journal of an unfinished run" } else { " and is not a tagsplit journal" })]
    Exists {
        /// The path.
        path: PathBuf,
        /// Whether the file is one of our journals (else: something else, left alone).
        is_journal: bool,
    },
    /// The file is not a journal.
    #[error("journal {path}: {reason}")]
    Invalid {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Journal {
    /// A journal of `patches` for a split of `tag` on `target`, with a fresh
    /// [`run_id`](Journal::run_id).
    pub fn new(
        target: String,
        identity: Option<String>,
        tag: String,
        patches: Vec<PatchRecord>,
    ) -> Journal {
        Journal {
            format: JOURNAL_FORMAT.into(),
            version: 1,
            target,
            identity,
            run_id: new_run_id(),
            tag,
            patches,
        }
    }

    /// Writes the journal durably and exclusively: a temporary file beside `path`, `fsync`,
    /// then a hard link to `path`, which fails if anything exists there (so two runs never
    /// race for one journal, and a journal is never replaced); then a best-effort sync of
    /// the directory. A file already at `path` gives [`JournalError::Exists`].
    pub fn write(&self, path: &Path) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.symlink_metadata().is_ok() {
            return Err(exists(path));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir {
            fs::create_dir_all(d).map_err(io)?;
        }
        let (tmp, written) = self.write_beside(path, "tmp")?;
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists(path)),
            Err(e) => return Err(io(e)),
        }
        sync_dir(path);
        Ok(())
    }

    /// Replaces the journal at `path`, which must still hold this journal's run (the same
    /// [`run_id`](Journal::run_id)), with this content, durably: a temporary file beside
    /// it, `fsync`, then a rename over it, so that the file holds the old journal or the
    /// new one, whole, at every moment. How a run records a write it decides on after its
    /// journal was written (`run --stacks`: `nt!PoolHitTag`) before making it.
    pub fn replace(&self, path: &Path) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let on_disk = Journal::read(path)?;
        if on_disk.run_id != self.run_id {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                reason: "holds another run's journal now: not replaced".into(),
            });
        }
        let (tmp, written) = self.write_beside(path, "next.tmp")?;
        let renamed = written.and_then(|()| fs::rename(&tmp, path));
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed.map_err(io)?;
        sync_dir(path);
        Ok(())
    }

    /// Writes this journal, synced, to a new file beside `path`
    /// (`.NAME.RUN_ID.SUFFIX`); returns that file and how the write went (the caller
    /// links or renames it, or removes it).
    fn write_beside(
        &self,
        path: &Path,
        suffix: &str,
    ) -> Result<(PathBuf, std::io::Result<()>), JournalError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| JournalError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.{suffix}", self.run_id));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        })();
        Ok((tmp, written))
    }

    /// Removes the journal file at `path` if it is still this journal (same
    /// [`run_id`](Journal::run_id)); returns whether it was removed.
    pub fn remove_own(&self, path: &Path) -> bool {
        match Journal::read(path) {
            Ok(on_disk) if on_disk.run_id == self.run_id => fs::remove_file(path).is_ok(),
            Ok(_) => {
                tracing::warn!(
                    "{} holds another run's journal now; left alone",
                    path.display()
                );
                false
            }
            Err(_) => false,
        }
    }

    /// Reads a journal (at most [`MAX_JOURNAL_BYTES`]).
    pub fn read(path: &Path) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = fs::metadata(path).map_err(io)?.len();
        if len > MAX_JOURNAL_BYTES {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                reason: "file too large".into(),
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let j: Journal = serde_json::from_str(&text).map_err(|e| JournalError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if j.format != JOURNAL_FORMAT {
            return Err(JournalError::Invalid {
                path: path.to_path_buf(),
                reason: "not a tagsplit journal".into(),
            });
        }
        for p in &j.patches {
            if p.original.len() != p.new.len() || p.original.is_empty() {
                return Err(JournalError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("bad patch at {}", p.address),
                });
            }
        }
        Ok(j)
    }
}

/// What happened to one patch on restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    /// The original bytes were written back and read back correctly.
    Restored,
    /// The memory already held the original bytes.
    AlreadyOriginal,
    /// The memory held neither what we wrote nor the original: left alone (never write
    /// stale bytes).
    Changed,
    /// The module is no longer loaded at the journal's base: left alone.
    ModuleGone,
    /// Reading or writing failed.
    Failed,
}

impl RestoreState {
    /// Whether the location now holds its original bytes.
    pub fn ok(self) -> bool {
        matches!(self, RestoreState::Restored | RestoreState::AlreadyOriginal)
    }
}

/// Restores one patch: only if the memory still holds exactly what was written.
pub fn restore_one(target: &mut dyn DebugTarget, p: &PatchRecord) -> RestoreState {
    let mut now = vec![0u8; p.new.len()];
    match target.read_fresh(p.address, &mut now) {
        Ok(n) if n == now.len() => {}
        _ => return RestoreState::Failed,
    }
    if now == p.original {
        return RestoreState::AlreadyOriginal;
    }
    if now != p.new {
        return RestoreState::Changed;
    }
    match target.write_memory(p.address, &p.original) {
        Ok(n) if n == p.original.len() => {}
        _ => return RestoreState::Failed,
    }
    let mut back = vec![0u8; p.original.len()];
    match target.read_fresh(p.address, &mut back) {
        Ok(n) if n == back.len() && back == p.original => RestoreState::Restored,
        _ => RestoreState::Failed,
    }
}

/// [`restore_one`] of each of `patches`, with the reads and writes of all of them sent
/// together where the target pipelines (three round trips for any number of patches:
/// check, write, read back). Patches that overlap, and every patch when a batch fails on
/// the link, are restored one by one, newest (last) first.
pub fn restore_many(target: &mut dyn DebugTarget, patches: &[PatchRecord]) -> Vec<RestoreState> {
    let overlap = patches.iter().enumerate().any(|(i, a)| {
        patches.iter().skip(i + 1).any(|b| {
            a.address < b.address.saturating_add(b.new.len() as u64)
                && b.address < a.address.saturating_add(a.new.len() as u64)
        })
    });
    if patches.len() < 2 || overlap {
        return one_by_one(target, patches);
    }
    match restore_batch(target, patches) {
        Ok(states) => states,
        Err(e) => {
            tracing::debug!("restoring together failed ({e}); one by one");
            one_by_one(target, patches)
        }
    }
}

/// [`restore_one`] of each patch, newest (last) first.
fn one_by_one(target: &mut dyn DebugTarget, patches: &[PatchRecord]) -> Vec<RestoreState> {
    let mut out: Vec<RestoreState> = patches
        .iter()
        .rev()
        .map(|p| restore_one(target, p))
        .collect();
    out.reverse();
    out
}

/// [`restore_many`] as three batches; an error of the link fails it all.
fn restore_batch(
    target: &mut dyn DebugTarget,
    patches: &[PatchRecord],
) -> Result<Vec<RestoreState>, TargetError> {
    let now = read_each(target, patches.iter().map(|p| (p.address, p.new.len())))?;
    let mut states: Vec<RestoreState> = Vec::with_capacity(patches.len());
    let mut to_write = Vec::new();
    for (i, (p, now)) in patches.iter().zip(&now).enumerate() {
        states.push(match now {
            None => RestoreState::Failed,
            Some(b) if *b == p.original => RestoreState::AlreadyOriginal,
            Some(b) if *b != p.new => RestoreState::Changed,
            Some(_) => {
                to_write.push(i);
                RestoreState::Failed
            }
        });
    }
    let writes: Vec<(VirtAddr, &[u8])> = to_write
        .iter()
        .filter_map(|&i| patches.get(i))
        .map(|p| (p.address, p.original.as_slice()))
        .collect();
    let wrote = target.write_many(&writes)?;
    let written: Vec<usize> = to_write
        .iter()
        .zip(&wrote)
        .filter(|&(&i, &n)| patches.get(i).is_some_and(|p| n == p.original.len()))
        .map(|(&i, _)| i)
        .collect();
    let ranges: Vec<(VirtAddr, usize)> = written
        .iter()
        .filter_map(|&i| patches.get(i))
        .map(|p| (p.address, p.original.len()))
        .collect();
    // Verified by the target's CRC of each where it offers one (`qCRC`), else read back.
    let holds: Vec<bool> = match target.crc32_many(&ranges)? {
        Some(crcs) => written
            .iter()
            .zip(crcs)
            .map(|(&i, crc)| {
                let want = patches.get(i).map(|p| crc32(&p.original));
                crc.is_some() && crc == want
            })
            .collect(),
        None => written
            .iter()
            .zip(read_each(target, ranges.into_iter())?)
            .map(|(&i, back)| {
                patches
                    .get(i)
                    .is_some_and(|p| back.as_deref() == Some(p.original.as_slice()))
            })
            .collect(),
    };
    for (&i, ok) in written.iter().zip(holds) {
        if let Some(state) = states.get_mut(i).filter(|_| ok) {
            *state = RestoreState::Restored;
        }
    }
    Ok(states)
}

/// Reads each `(address, length)` fresh, together where the target pipelines: the bytes,
/// or `None` where fewer could be read.
pub fn read_each(
    target: &mut dyn DebugTarget,
    ranges: impl Iterator<Item = (VirtAddr, usize)>,
) -> Result<Vec<Option<Vec<u8>>>, TargetError> {
    let ranges: Vec<(VirtAddr, usize)> = ranges.collect();
    Ok(crate::target::read_fresh_each(target, &ranges)?
        .into_iter()
        .map(|(b, n)| (n == b.len()).then_some(b))
        .collect())
}

/// Restores every patch of `journal` on `target`, checking each module is still loaded at
/// the journal's base. Returns the state per patch.
pub fn restore_all(
    target: &mut dyn DebugTarget,
    journal: &Journal,
) -> Result<Vec<RestoreState>, TargetError> {
    let modules = target.modules()?;
    let here: Vec<bool> = journal
        .patches
        .iter()
        .map(|p| {
            let loaded = modules
                .iter()
                .any(|m| m.name.eq_ignore_ascii_case(&p.module) && m.base == p.base);
            loaded
                && p.timestamp
                    .is_none_or(|ts| crate::pe::timestamp(target, p.base).ok() == Some(ts))
        })
        .collect();
    let present: Vec<PatchRecord> = journal
        .patches
        .iter()
        .zip(&here)
        .filter(|&(_, &h)| h)
        .map(|(p, _)| p.clone())
        .collect();
    let mut restored = restore_many(target, &present).into_iter();
    Ok(here
        .iter()
        .map(|&h| {
            if h {
                restored.next().unwrap_or(RestoreState::Failed)
            } else {
                RestoreState::ModuleGone
            }
        })
        .collect())
}

/// Where journals live when no `--journal` is given: one file per target identity in the
/// user's state directory (`$XDG_STATE_HOME/tagsplit`, else `~/.local/state/tagsplit` on
/// Linux; the platform's local data directory elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalStore {
    dir: PathBuf,
}

/// Most files [`JournalStore::all`] looks at.
pub const MAX_STORE_ENTRIES: usize = 4096;

/// Most numbered journals one ephemeral identity gets (see [`JournalStore::new_path`]).
const MAX_EPHEMERAL: u32 = 64;

impl JournalStore {
    /// A store in `dir` (created when the first journal is written).
    pub fn new(dir: impl Into<PathBuf>) -> JournalStore {
        JournalStore { dir: dir.into() }
    }

    /// The user's state directory for tagsplit, or an error when the platform has none
    /// (no home directory).
    pub fn default_location() -> Result<JournalStore, JournalError> {
        let dirs = directories::ProjectDirs::from("", "", "tagsplit").ok_or_else(|| {
            JournalError::Invalid {
                path: PathBuf::from("~"),
                reason: "no home directory to keep journals in: pass --journal".into(),
            }
        })?;
        let dir = dirs
            .state_dir()
            .map_or_else(|| dirs.data_local_dir().join("journals"), Path::to_path_buf);
        Ok(JournalStore::new(dir))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal path of `identity`: `journal-<name>-<hash>.json`, where the name keeps
    /// the identity's letters and digits and the hash tells apart identities that
    /// differ only in other characters.
    pub fn path_for(&self, identity: &TargetIdentity) -> PathBuf {
        self.dir.join(format!("{}.json", stem(identity)))
    }

    /// The journals of `identity` on disk: [`path_for`](Self::path_for) and, for an
    /// ephemeral identity, its numbered siblings.
    pub fn existing(&self, identity: &TargetIdentity) -> Vec<PathBuf> {
        let stem = stem(identity);
        let mut out: Vec<PathBuf> = std::iter::once(self.path_for(identity))
            .chain((1..=MAX_EPHEMERAL).map(|n| self.dir.join(format!("{stem}.{n}.json"))))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        out.dedup();
        out
    }

    /// Where a new run on `identity` writes its journal. For a target that outlives this
    /// process this is always [`path_for`](Self::path_for) (a journal there blocks the
    /// run); an ephemeral (`sim:`) target takes the first free numbered path, since a
    /// leftover journal of a simulator that booted fresh blocks nothing.
    pub fn new_path(&self, identity: &TargetIdentity) -> PathBuf {
        let first = self.path_for(identity);
        if !identity.is_ephemeral() {
            return first;
        }
        let stem = stem(identity);
        std::iter::once(first)
            .chain((1..=MAX_EPHEMERAL).map(|n| self.dir.join(format!("{stem}.{n}.json"))))
            .find(|p| p.symlink_metadata().is_err())
            .unwrap_or_else(|| self.dir.join(format!("{stem}.{}.json", new_run_id())))
    }

    /// Every `journal-*.json` file in the store (at most [`MAX_STORE_ENTRIES`]), sorted.
    pub fn all(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .take(MAX_STORE_ENTRIES)
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".json"))
            })
            .collect();
        out.sort();
        out
    }
}

/// `journal-<letters and digits of the identity>-<8 hex digits of its SHA-256>`.
fn stem(identity: &TargetIdentity) -> String {
    use sha2::Digest as _;
    let name: String = identity
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(80)
        .collect();
    let digest = sha2::Sha256::digest(identity.as_str().as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("journal-{name}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::flat::FlatTarget;

    fn patch(at: u64, original: &[u8], new: &[u8]) -> PatchRecord {
        PatchRecord {
            module: "m.sys".into(),
            base: VirtAddr(0x1000),
            timestamp: None,
            offset: at - 0x1000,
            address: VirtAddr(at),
            original: original.to_vec(),
            new: new.to_vec(),
        }
    }

    fn bytes(t: &mut FlatTarget, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        let got = t.read_memory(VirtAddr(at), &mut b).unwrap_or(0);
        b.truncate(got);
        b
    }

    /// Together, each patch ends as restore_one would leave it: restored, already
    /// original, changed by someone else (left alone), or unreadable.
    #[test]
    fn restoring_many_gives_each_patch_its_own_state() {
        let mut t = FlatTarget::new();
        t.memory
            .map(VirtAddr(0x1000), b"Lea1....Leak....Lea3....zzzz".to_vec());
        let ps = [
            patch(0x1000, b"Leak", b"Lea1"),
            patch(0x1008, b"Leak", b"Lea2"),
            patch(0x1010, b"Leak", b"Lea3"),
            patch(0x1018, b"Leak", b"Lea4"),
            patch(0x9000, b"Leak", b"Lea5"),
        ];
        let states = restore_many(&mut t, &ps);
        assert_eq!(
            states,
            [
                RestoreState::Restored,
                RestoreState::AlreadyOriginal,
                RestoreState::Restored,
                RestoreState::Changed,
                RestoreState::Failed,
            ]
        );
        assert_eq!(bytes(&mut t, 0x1000, 28), b"Leak....Leak....Leak....zzzz");
    }

    /// Patches that overlap are restored one by one, newest first: the second patch
    /// wrote over the first's bytes, and only undoing it first lets the first be undone.
    #[test]
    fn overlapping_patches_are_restored_newest_first() {
        let mut t = FlatTarget::new();
        // "abcd", patched to "ABcd", then to "AYZd".
        t.memory.map(VirtAddr(0x1000), b"AYZd".to_vec());
        let ps = [patch(0x1000, b"ab", b"AB"), patch(0x1001, b"Bc", b"YZ")];
        let states = restore_many(&mut t, &ps);
        assert_eq!(states, [RestoreState::Restored, RestoreState::Restored]);
        assert_eq!(bytes(&mut t, 0x1000, 4), b"abcd");
    }

    /// `replace` swaps a journal's content only while the file holds the same run; a
    /// journal of another run is left as it is.
    #[test]
    fn replace_updates_its_own_journal_and_refuses_another_run() {
        let dir = std::env::temp_dir().join(format!("tagsplit-replace-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("j.json");
        let one = Journal::new(
            "t".into(),
            None,
            "Leak".into(),
            vec![patch(0x1000, b"Leak", b"Lea1")],
        );
        one.write(&path).unwrap();
        let mut more = one.clone();
        more.patches
            .push(patch(0x2000, b"\x0f\xff\xff\xff", b"Lea1"));
        more.replace(&path).unwrap();
        assert_eq!(Journal::read(&path).unwrap(), more);
        let other = Journal::new("t".into(), None, "Leak".into(), Vec::new());
        assert!(matches!(
            other.replace(&path),
            Err(JournalError::Invalid { .. })
        ));
        assert_eq!(Journal::read(&path).unwrap(), more, "left as it was");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
        assert!(more.remove_own(&path));
        let _ = fs::remove_dir_all(&dir);
    }
}
