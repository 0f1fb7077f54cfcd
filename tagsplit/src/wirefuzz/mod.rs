//! Fuzzing real debuggers and stubs over the wire (feature `wirefuzz`).
//!
//! Two campaigns, both driven by a seed and a time budget:
//!
//! - [`fuzz_stub`]: we are the client. Command sequences seeded from recorded gdb
//!   sessions and KD captures, mutated with
//!   [`tagsplit_protocol::fuzz::mutate`], go to a GDB stub or a KD target; a peer that
//!   dies, stops answering or answers out of protocol is a finding.
//! - [`fuzz_client`]: we are the stub (the simulator behind our own stub core) and mutate
//!   what it answers; a client launched against it again and again that dies by a
//!   signal, hangs or loops is a finding.
//!
//! Shared pieces: the [`Campaign`] (clock, Ctrl-C, progress line, findings directory and
//! summary), the seeded [`Rng`], and the [`Launcher`] that starts and restarts a peer
//! from a command line with `{port}` in it.
//!
//! Every finding is a file in the output directory holding the exact bytes that crossed
//! the wire: for GDB, gdb's own `set remotelogfile` format
//! ([`tagsplit_protocol::gdb::remotelog`]), which `tagsplit replay` replays.

mod campaign;
pub mod fuzz_client;
pub mod fuzz_stub;
pub mod kd;
mod launch;

pub use campaign::{
    Campaign, CampaignOptions, Finding, FindingKind, Progress, Rng, Summary, state_hash,
};
pub use launch::{CRASH_SIGNALS, LaunchError, Launcher, crash_signal, exit_signal};

/// Why a campaign or a replay could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireFuzzError {
    /// Reading or writing a file, or a socket that is ours (not the peer's misbehaviour,
    /// which is a finding).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The peer could not be started.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A target spec, a client command or an option that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A transcript that is not one this tool wrote (or cannot be replayed).
    #[error("transcript: {0}")]
    Transcript(String),
    /// The peer could not be reached at all (before any fuzzing: not a finding).
    #[error("{0}")]
    Unreachable(String),
}

impl WireFuzzError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> WireFuzzError {
        WireFuzzError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What a replay saw.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    /// The finding it reproduced, if it did: the same check a campaign makes.
    pub finding: Option<(FindingKind, String)>,
    /// Packets sent (a client's commands, or the stub's replies).
    pub sent: usize,
    /// A readable account of the exchange, one line per packet.
    pub log: String,
}
