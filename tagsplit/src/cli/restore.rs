//! `tagsplit restore`.

use std::path::PathBuf;

use anyhow::bail;
use tagsplit::split::journal::{Journal, JournalStore};
use tagsplit::target::TargetIdentity;

use super::run::restore_command;
use super::signals;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The journal an interrupted run left behind (default: the journal of --target in
    /// the state directory, `$XDG_STATE_HOME/tagsplit`).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// The target the run patched.
    #[arg(long)]
    target: String,
}

/// Restores the journal's patches and verifies them; removes the journal when all verify.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let identity = TargetIdentity::of(&a.target)?;
    let paths = match &a.journal {
        Some(p) => vec![p.clone()],
        None => {
            let store = JournalStore::default_location()?;
            let found = store.existing(&identity);
            if found.is_empty() {
                println!(
                    "no journal for {identity} in {}: nothing to restore",
                    store.dir().display()
                );
                return Ok(());
            }
            found
        }
    };
    // Refuse a journal of another target before touching any target.
    for path in &paths {
        let journal = Journal::read(path)?;
        tagsplit::split::check_journal_target(path, &journal, &identity)?;
    }
    signals::install();
    signals::restore_on_signal(format!(
        "the journal is kept: run `{}` again",
        restore_command(&a.target, a.journal.as_deref())
    ));
    let mut target = super::open_target(&a.target)?;
    let mut failed = Vec::new();
    for path in &paths {
        let summary =
            tagsplit::split::restore_from_journal(target.as_mut(), path, Some(&identity))?;
        println!("journal {}:", path.display());
        for (addr, state) in &summary.patches {
            println!("{addr}  {state:?}");
        }
        println!("{summary}");
        if !summary.complete() {
            failed.push(path.display().to_string());
        } else if summary.journal_removed {
            println!("journal {} removed", path.display());
        }
    }
    if !failed.is_empty() {
        bail!(
            "not every patch was restored; the journal {} is kept",
            failed.join(", ")
        );
    }
    if let Some(sig) = signals::received() {
        bail!(
            "{} arrived during the restore; the restore finished",
            signals::name(sig)
        );
    }
    Ok(())
}
