//! `tagsplit stacks`: who allocates a tag, from `PoolHitTag` breaks.

use std::io::IsTerminal as _;

use std::path::PathBuf;

use tagsplit::PoolTag;
use tagsplit::split::journal::JournalStore;
use tagsplit::stacks::{JournalSpec, StacksOptions, collect};
use tagsplit::target::{RunFor, TargetIdentity};

use super::run::restore_command;
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
    /// Where to journal the write of nt!PoolHitTag (default: the target's journal in the
    /// state directory, as `run` does).
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

/// Sets `nt!PoolHitTag`, collects the stacks, writes `nt!PoolHitTag` back, reports.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let tag = PoolTag::parse(&a.tag)
        .ok_or_else(|| anyhow::anyhow!("bad tag {:?}: four characters, like Lea2", a.tag))?;
    let identity = TargetIdentity::of(&a.target)?;
    let journal = match &a.journal {
        Some(p) => p.clone(),
        None => JournalStore::default_location()?.new_path(&identity),
    };
    // A journal left for this target: it may still be patched (PoolHitTag or a split).
    if !identity.is_ephemeral() {
        let store = JournalStore::default_location()?;
        let mut left = store.existing(&identity);
        left.extend(a.journal.iter().filter(|p| p.exists()).cloned());
        if let Some(p) = left.first() {
            anyhow::bail!(
                "an unfinished run on {identity} left its journal at {}: the target may still be patched. Restore it first with `{}`",
                p.display(),
                restore_command(&a.target, Some(p))
            );
        }
    }
    let cancel = signals::install();
    let mut target = super::open_target(&a.target)?;
    target.set_interrupt(Some(cancel.clone()));
    // From here nt!PoolHitTag may be set: a signal breaks in and the value is written
    // back (and the journal removed) before exiting.
    signals::restore_on_signal(format!(
        "the journal is kept: run `{}`",
        restore_command(&a.target, Some(&journal))
    ));
    let options = StacksOptions {
        breaks: a.breaks,
        run: a.ticks.map(RunFor::Ticks),
        cancel: Some(cancel),
        journal: Some(JournalSpec {
            path: journal.clone(),
            identity: Some(identity.to_string()),
        }),
        ..StacksOptions::default()
    };
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| breaks_bar(a.breaks));
    signals::test_pause("collecting");
    let report = collect(target.as_mut(), tag, &options, |p| {
        if let Some(b) = &bar {
            b.set_position(p.breaks);
            b.set_message(format!("last: {:?}", p.kind).to_lowercase());
        }
        if p.breaks == 1 {
            signals::test_pause("breaking");
        }
    })
    .map_err(|e| {
        let kept = if journal.exists() {
            format!(
                "; the journal is kept: run `{}`",
                restore_command(&a.target, Some(&journal))
            )
        } else {
            String::new()
        };
        anyhow::anyhow!("{e}{kept}")
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
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

/// The split's bar (`run`'s `progress_bar`), counting breaks.
fn breaks_bar(wanted: usize) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(wanted as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {elapsed:>4} {bar:20} {pos}/{len} breaks · {msg}",
    ) {
        b.set_style(style);
    }
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}
