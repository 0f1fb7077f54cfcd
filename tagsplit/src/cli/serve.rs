//! `tagsplit serve`: a simulated machine as a GDB remote target.

use std::net::SocketAddr;

use anyhow::Context as _;
use tagsplit::target::gdb::serve_scenario;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::StubFeatures;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario: a built-in name (`part4`) or a .toml file.
    #[arg(long, default_value = "part4")]
    pub scenario: String,
    /// Serve GDB RSP on this address (loopback by default; `target remote HOST:PORT`).
    #[arg(long, default_value = "127.0.0.1:1234")]
    pub gdb: SocketAddr,
    /// Stop every continue after this many ticks (deterministic sessions).
    #[arg(long)]
    pub stop_after_ticks: Option<u64>,
    /// Offer only the basic packets (no qXfer libraries/memory map, qSearch, X, no-ack).
    #[arg(long)]
    pub basic: bool,
}

fn load(name: &str) -> anyhow::Result<Scenario> {
    if let Some(s) = Scenario::builtin(name) {
        return Ok(s);
    }
    let text = std::fs::read_to_string(name)
        .with_context(|| format!("{name:?} is no built-in scenario and cannot be read"))?;
    Ok(Scenario::from_toml(&text)?)
}

/// Serves until Ctrl-C.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let scenario = load(&a.scenario)?;
    let features = if a.basic {
        StubFeatures::BASIC
    } else {
        StubFeatures::FULL
    };
    let stub = serve_scenario(&scenario, a.gdb, a.stop_after_ticks, features)
        .with_context(|| format!("serving on {}", a.gdb))?;
    println!(
        "serving scenario {} over GDB RSP on {} — attach with: gdb -ex 'target remote {}'",
        scenario.name(),
        stub.addr(),
        stub.addr()
    );
    let stop = super::interrupt_flag();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(stub.shutdown());
    Ok(())
}
