//! Seeds from real KD captures: what a real debugger asked of a real kernel.
//!
//! [`KdSeeds::load`] decodes every capture in a directory with [`crate::decode`] (which
//! opens pcap/pcapng files, gzipped or not, and raw KDCOM files, and decrypts KDNET under
//! a key): a capture whose name holds `key-K` (`kdnet-win10-10586-key-8.8.8.8.pcapng.gz`)
//! is decrypted under `K`. From each it keeps the debugger's manipulate requests, in
//! capture order, and the other data packets whose checksum verifies (a target's state
//! change, say). [`fuzz_target_with`](super::fuzz_target_with) sends them again, re-framed
//! with its own session's ids: the addresses in them point into the captured machine,
//! which makes them hostile but valid requests for any other target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tagsplit_protocol::kd::{Leader, Manipulate, PacketType, Payload};

use crate::decode::{self, Direction, FileFormat};

/// Where the campaign looks for captures when no `--seeds` directory is given.
pub const DEFAULT_DIR: &str = "../shared/captures";

/// The most packets kept from one directory.
pub const MAX_SEEDS: usize = 4096;

/// The largest capture file read for seeds.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Packets recorded from real KD sessions.
#[derive(Clone, Debug, Default)]
pub struct KdSeeds {
    /// The debugger's manipulate requests, in capture order.
    pub requests: Vec<Manipulate>,
    /// Other data packets (type and payload) whose checksum verified, in capture order.
    pub packets: Vec<(PacketType, Vec<u8>)>,
    /// The files they came from.
    pub sources: Vec<PathBuf>,
}

impl KdSeeds {
    /// Reads every capture in `dir` (files that are not captures, or do not decode, are
    /// skipped with a log line). A missing directory gives no seeds.
    pub fn load(dir: &Path) -> KdSeeds {
        let mut seeds = KdSeeds::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return seeds;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            seeds.add_file(&path);
        }
        seeds
    }

    /// Adds the packets of one capture; whether it held any.
    pub fn add_file(&mut self, path: &Path) -> bool {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let capture = [".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz", ".bin"]
            .iter()
            .any(|e| name.ends_with(e));
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_FILE_BYTES);
        if !capture || !small {
            return false;
        }
        let key = key_in_name(&name);
        let report = match decode::decode_file(path, key.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!("{}: not used as KD seeds: {e}", path.display());
                return false;
            }
        };
        let before = self.len();
        for p in &report.packets {
            if self.len() >= MAX_SEEDS {
                break;
            }
            if !p.checksum_ok || p.leader != Leader::Data || p.payload.is_empty() {
                continue;
            }
            let packet_type = PacketType::from_value(p.packet_type_value);
            // A raw KDCOM file's packets have no direction but their type's.
            let from_debugger = p.direction == Some(Direction::DebuggerToTarget)
                || (report.format == FileFormat::Raw && p.direction.is_none());
            match Payload::parse(packet_type, &p.payload) {
                Ok(Payload::Manipulate(m))
                    if packet_type == PacketType::StateManipulate && from_debugger =>
                {
                    self.requests.push(m);
                }
                Ok(Payload::Manipulate(_)) => {}
                _ => self.packets.push((packet_type, p.payload.clone())),
            }
        }
        let added = self.len() > before;
        if added {
            self.sources.push(path.to_path_buf());
        }
        added
    }

    /// Requests and packets held.
    pub fn len(&self) -> usize {
        self.requests.len() + self.packets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests of each API (by name).
    pub fn requests_by_api(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for m in &self.requests {
            *counts.entry(m.api().number().name()).or_default() += 1;
        }
        counts
    }
}

/// The KDNET key in a capture's file name: what follows `key-`, up to the extension
/// (`…-key-8.8.8.8.pcapng.gz` → `8.8.8.8`).
fn key_in_name(name: &str) -> Option<String> {
    let (_, rest) = name.split_once("key-")?;
    let end = rest.find(".pcap").unwrap_or(rest.len());
    let key = rest.get(..end)?;
    key.parse::<tagsplit_protocol::kdnet::Key>()
        .is_ok()
        .then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_file_name() {
        assert_eq!(
            key_in_name("kdnet-win10-10586-key-8.8.8.8.pcapng.gz").as_deref(),
            Some("8.8.8.8")
        );
        assert_eq!(
            key_in_name("a-key-1.2.3.4.pcap").as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(key_in_name("kdcom-state-change-exception.bin"), None);
        assert_eq!(key_in_name("key-nonsense.pcap"), None);
    }

    #[test]
    fn a_missing_directory_gives_no_seeds() {
        assert!(KdSeeds::load(Path::new("/nonexistent/kd-captures")).is_empty());
    }
}
