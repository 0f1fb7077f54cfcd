//! `tagsplit replay`: a finding of `fuzz-stub` sent to a target again, or a finding of
//! `fuzz-client` served to a client again.

use std::path::PathBuf;

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The finding's transcript (from `fuzz-stub --out` or `fuzz-client --out`).
    pub file: PathBuf,
    /// Send the transcript's commands to this target (`gdb://HOST:PORT`, `kdnet:…`,
    /// `kdcom:…`) and report whether the finding happens again.
    #[arg(long, conflicts_with = "serve")]
    pub target: Option<String>,
    /// Start the target with this command first (`{port}` becomes a free port), as
    /// `fuzz-stub --launch` did.
    #[arg(long, requires = "target")]
    pub launch: Option<String>,
    /// Serve the transcript's replies to a client instead (a `fuzz-client` finding).
    #[arg(long)]
    pub serve: bool,
    /// With --serve: launch this client against the replayed stub (`{addr}` becomes its
    /// address) and report how it ends, as `fuzz-client --command` did.
    #[arg(long, requires = "serve")]
    pub command: Option<String>,
    /// With --serve: the address to listen on (default 127.0.0.1 and a free port, printed).
    #[arg(long, requires = "serve")]
    pub listen: Option<std::net::SocketAddr>,
    /// How long a reply (or, with --serve --command, the client) may take before it
    /// counts as a hang, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// Replays the finding.
pub fn execute(a: Args) -> anyhow::Result<()> {
    if a.serve {
        super::fuzz_client::replay_serve(&a)
    } else {
        super::fuzz_stub::replay_target(&a)
    }
}
