//! The patch journal: written (and synced) before any byte is patched, removed only after
//! a verified restore, and enough on its own to undo an interrupted run.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VirtAddr;
use crate::target::{DebugTarget, TargetError};

/// Largest journal file read back.
pub const MAX_JOURNAL_BYTES: u64 = 16 << 20;

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
    /// Writes the journal durably: a temporary file, `fsync`, rename over `path`, then a
    /// best-effort sync of the directory.
    pub fn write(&self, path: &Path) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| JournalError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, path).map_err(io)?;
        if let Some(Ok(d)) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(fs::File::open)
        {
            let _ = d.sync_all();
        }
        Ok(())
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
        if j.format != "tagsplit-journal" {
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
    match target.read_memory(p.address, &mut now) {
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
    match target.read_memory(p.address, &mut back) {
        Ok(n) if n == back.len() && back == p.original => RestoreState::Restored,
        _ => RestoreState::Failed,
    }
}

/// Restores every patch of `journal` on `target`, checking each module is still loaded at
/// the journal's base. Returns the state per patch.
pub fn restore_all(
    target: &mut dyn DebugTarget,
    journal: &Journal,
) -> Result<Vec<RestoreState>, TargetError> {
    let modules = target.modules()?;
    Ok(journal
        .patches
        .iter()
        .map(|p| {
            let loaded = modules
                .iter()
                .any(|m| m.name.eq_ignore_ascii_case(&p.module) && m.base == p.base);
            let same_build = p
                .timestamp
                .is_none_or(|ts| crate::pe::timestamp(target, p.base).ok() == Some(ts));
            if loaded && same_build {
                restore_one(target, p)
            } else {
                RestoreState::ModuleGone
            }
        })
        .collect())
}
