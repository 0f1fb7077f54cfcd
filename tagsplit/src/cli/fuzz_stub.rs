//! `tagsplit fuzz-stub` (being written).

/// Arguments of `fuzz-stub`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the campaign.
pub fn execute(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("fuzz-stub is not written yet")
}

/// `replay FILE --target SPEC`.
pub fn replay_target(_a: &super::replay::Args) -> anyhow::Result<()> {
    anyhow::bail!("replay --target is not written yet")
}
