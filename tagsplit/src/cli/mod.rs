//! Subcommands: one variant and one file each (add a backend's `serve`/`decode` the same way).

mod console;
mod decode;
mod demo;
mod fuzz_client;
mod fuzz_stub;
mod relay;
mod replay;
mod restore;
mod run;
mod scenarios;
mod serve;
pub mod signals;
mod stacks;

use std::path::Path;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tagsplit::pooltag::PoolTagDb;

/// Find which code site leaks a shared Windows pool tag.
#[derive(Debug, Parser)]
#[command(name = "tagsplit", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the seed's Part 4 workflow in the console on the simulator, then the automated split.
    Demo(demo::Args),
    /// Split a tag on a target: patch every allocation site with its own tag, run, attribute.
    Run(run::Args),
    /// Undo the patches recorded in a journal left by an interrupted run.
    Restore(restore::Args),
    /// A WinDbg-style console on a target (interactive, or batch with -c).
    Console(console::Args),
    /// List the built-in simulator scenarios.
    Scenarios(scenarios::Args),
    /// Dissect KDNET and KDCOM traffic in a pcap/pcapng capture or a raw KDCOM file.
    Decode(decode::Args),
    /// Serve a simulated machine over the GDB remote protocol, KDNET or KDCOM.
    Serve(serve::Args),
    /// Relay TCP or UDP between two peers through a seeded lossy, corrupting, slow link.
    Relay(relay::Args),
    /// Who allocates a tag: set nt!PoolHitTag, collect a call stack per break, pair frees
    /// with allocations, report outstanding bytes per stack (the leaking one first).
    Stacks(stacks::Args),
    /// Fuzz a GDB stub or KD target over the wire: send it mutated command sequences and
    /// record every peer that dies, hangs or answers out of protocol.
    FuzzStub(fuzz_stub::Args),
    /// Fuzz a debugger: serve it a stub whose replies are mutated, launch it again and
    /// again, and record every run that dies by a signal, hangs or loops.
    FuzzClient(fuzz_client::Args),
    /// Replay a finding: send its bytes to a target again (`--target`), or serve its
    /// replies to a client (`--serve`).
    Replay(replay::Args),
}

impl Command {
    /// Runs the subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            Command::Demo(a) => demo::execute(a),
            Command::Run(a) => run::execute(a),
            Command::Restore(a) => restore::execute(a),
            Command::Console(a) => console::execute(a),
            Command::Scenarios(a) => scenarios::execute(a),
            Command::Decode(a) => decode::execute(a),
            Command::Serve(a) => serve::execute(a),
            Command::Relay(a) => relay::execute(a),
            Command::Stacks(a) => stacks::execute(a),
            Command::FuzzStub(a) => fuzz_stub::execute(a),
            Command::FuzzClient(a) => fuzz_client::execute(a),
            Command::Replay(a) => replay::execute(a),
        }
    }
}

/// The built-in pooltag table, with a user's file in front of it when given.
pub fn load_pooltag(file: Option<&Path>) -> anyhow::Result<PoolTagDb> {
    let Some(path) = file else {
        return Ok(PoolTagDb::builtin());
    };
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut db = PoolTagDb::parse(&String::from_utf8_lossy(&text));
    if db.skipped() > 0 {
        tracing::info!(
            "{}: skipped {} malformed lines",
            path.display(),
            db.skipped()
        );
    }
    db.add_missing(PoolTagDb::builtin());
    Ok(db)
}

/// A command-line number of seconds (`--time 600`, `--reply-timeout 2.5`) for the option
/// `what`, refused when it is negative, not finite or too large.
pub fn seconds(what: &str, secs: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("{what}: {secs} is not a number of seconds"))
}

/// Opens a target spec, with context on failure.
pub fn open_target(spec: &str) -> anyhow::Result<tagsplit::target::BoxedTarget> {
    tagsplit::target::open(spec).with_context(|| format!("opening target {spec}"))
}

/// Opens a target spec recording what `record` asks for, with context on failure.
pub fn open_target_with(
    spec: &str,
    record: &tagsplit::target::OpenOptions,
) -> anyhow::Result<tagsplit::target::BoxedTarget> {
    tagsplit::target::open_with(spec, record).with_context(|| format!("opening target {spec}"))
}

/// `--log-packets FILE` and `--pcap FILE`: the recordings `run`, `console`, `serve` and
/// `demo` take.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RecordArgs {
    /// Log the GDB remote-protocol traffic to FILE in gdb's own `set remotelogfile`
    /// format (`w` = bytes the debugger sent, `r` = bytes the stub sent); gdb:// targets.
    #[arg(long, value_name = "FILE")]
    pub log_packets: Option<std::path::PathBuf>,
    /// Record the KDNET or KDCOM traffic to FILE as pcapng (Wireshark and `tagsplit
    /// decode` open it); kdnet: and kdcom: targets.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
}

impl RecordArgs {
    /// The options for [`tagsplit::target::open_with`].
    pub fn options(&self) -> tagsplit::target::OpenOptions {
        let mut o = tagsplit::target::OpenOptions::new();
        o.log_packets = self.log_packets.clone();
        o.pcap = self.pcap.clone();
        o
    }
}
