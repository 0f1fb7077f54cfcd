//! `tagsplit stacks`: who allocates a tag, from `PoolHitTag` breaks.

use std::io::IsTerminal as _;

use tagsplit::PoolTag;
use tagsplit::stacks::{StacksOptions, collect};
use tagsplit::target::RunFor;

use super::signals;

/// Arguments of `stacks`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target (`sim:part4`, `gdb://HOST:PORT`, `kdnet:port=N,key=K`, `kdcom:HOST:PORT`).
    #[arg(long)]
    pub target: String,
    /// The pool tag whose allocations and frees break (`Lea2`).
    #[arg(long)]
    pub tag: String,
    /// Breaks to take (allocations and frees).
    #[arg(long, default_value_t = 100)]
    pub breaks: usize,
    /// Ticks each run between breaks may last (default: the target's default run).
    #[arg(long)]
    pub ticks: Option<u64>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Sets `nt!PoolHitTag`, collects the stacks, writes `nt!PoolHitTag` back, reports.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let tag = PoolTag::parse(&a.tag)
        .ok_or_else(|| anyhow::anyhow!("bad tag {:?}: four characters, like Lea2", a.tag))?;
    let cancel = signals::install();
    let mut target = super::open_target(&a.target)?;
    target.set_interrupt(Some(cancel.clone()));
    // From here nt!PoolHitTag may be set: a signal breaks in and the value is written
    // back before exiting.
    signals::restore_on_signal(format!(
        "nt!PoolHitTag may still hold {tag}: run `tagsplit console --target '{}' -c \"ed nt!PoolHitTag ffffff0f\"`",
        a.target
    ));
    let options = StacksOptions {
        breaks: a.breaks,
        run: a.ticks.map(RunFor::Ticks),
        cancel: Some(cancel),
        ..StacksOptions::default()
    };
    let show = !a.json && std::io::stderr().is_terminal();
    let report = collect(target.as_mut(), tag, &options, |p| {
        if show {
            eprint!("\rbreak {}/{} ({:?})   ", p.breaks, p.wanted, p.kind);
        }
    })?;
    if show {
        eprintln!();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if let Some(sig) = signals::received() {
        anyhow::bail!(
            "{}: stopped after {} breaks; nt!PoolHitTag was written back",
            signals::name(sig),
            report.breaks
        );
    }
    Ok(())
}
