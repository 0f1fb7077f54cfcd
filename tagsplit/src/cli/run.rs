//! `tagsplit run`.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use tagsplit::PoolTag;
use tagsplit::split::{Split, SplitError, SplitOptions};
use tagsplit::target::RunFor;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target: sim:NAME, sim:FILE.toml, gdb://HOST:PORT, kdnet:port=N,key=K, kdcom:HOST:PORT.
    #[arg(long)]
    pub target: String,
    /// The tag to split (1-4 characters; shorter tags are padded with spaces).
    #[arg(long)]
    pub tag: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Total run length in ticks (default: the target's default run).
    #[arg(long)]
    pub ticks: Option<u64>,
    /// Number of samples of the tracker table while running.
    #[arg(long, default_value_t = 8)]
    pub samples: u32,
    /// Where to write the patch journal before patching.
    #[arg(long, default_value = "tagsplit.journal.json")]
    pub journal: PathBuf,
    /// A pooltag.txt file: tags it lists are never chosen.
    #[arg(long)]
    pub pooltag: Option<PathBuf>,
    /// Also patch lookaside-list initialisation sites.
    #[arg(long)]
    pub patch_lookaside: bool,
    /// Print the wire counters (packets and bytes each way, round trips) to stderr.
    #[arg(long)]
    pub stats: bool,
}

/// Runs the split and prints the report.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let tag = PoolTag::parse(&a.tag)
        .with_context(|| format!("bad tag {:?}: 1-4 ASCII characters", a.tag))?;
    let mut target = super::open_target(&a.target)?;
    let options = SplitOptions {
        run: a.ticks.map(RunFor::Ticks),
        samples: a.samples,
        journal: Some(a.journal.clone()),
        pooltag: super::load_pooltag(a.pooltag.as_deref())?,
        patch_lookaside: a.patch_lookaside,
        cancel: Some(super::interrupt_flag()),
    };
    let show_bar = !a.json && std::io::stdout().is_terminal();
    let bar = show_bar.then(|| {
        let b = indicatif::ProgressBar::new(u64::from(a.samples.max(1)));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} running the target {bar:30} {pos}/{len} samples",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut split = Split::new(target.as_mut(), tag, options);
    if let Some(b) = bar.clone() {
        split = split.on_progress(move |done, _| b.set_position(u64::from(done)));
    }
    let result = split.run();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.stats {
        match target.stats() {
            Some(s) => eprintln!("wire: {s}"),
            None => eprintln!("wire: {} has no wire", target.describe()),
        }
    }
    let report = match result {
        Ok(r) => r,
        Err(
            e @ (SplitError::Interrupted(_)
            | SplitError::Aborted { .. }
            | SplitError::RestoreIncomplete(_)),
        ) => {
            let kept = a.journal.exists();
            let hint = if kept {
                format!(
                    "; the journal {} is kept: run `tagsplit restore --journal {} --target {}`",
                    a.journal.display(),
                    a.journal.display(),
                    a.target
                )
            } else {
                String::new()
            };
            anyhow::bail!("{e}{hint}");
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
