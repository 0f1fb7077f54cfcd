//! `tagsplit scenarios`.

use tagsplit_target_sim::scenario::Scenario;

/// Arguments of `scenarios`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Lists the built-in scenarios.
pub fn execute(_: Args) -> anyhow::Result<()> {
    for name in Scenario::builtin_names() {
        if let Some(s) = Scenario::builtin(name) {
            println!(
                "sim:{name:<12} {:>6} ticks per g   {}",
                s.default_run_ticks(),
                s.description
            );
        }
    }
    Ok(())
}
