//! `tagsplit restore`.

use std::path::PathBuf;

use anyhow::bail;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The journal an interrupted run left behind.
    #[arg(long)]
    journal: PathBuf,
    /// The target the run patched.
    #[arg(long)]
    target: String,
}

/// Restores the journal's patches and verifies them; removes the journal when all verify.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let mut target = super::open_target(&a.target)?;
    let summary = tagsplit::split::restore_from_journal(target.as_mut(), &a.journal)?;
    for (addr, state) in &summary.patches {
        println!("{addr}  {state:?}");
    }
    println!("{summary}");
    if !summary.complete() {
        bail!(
            "not every patch was restored; the journal {} is kept",
            a.journal.display()
        );
    }
    if summary.journal_removed {
        println!("journal {} removed", a.journal.display());
    }
    Ok(())
}
