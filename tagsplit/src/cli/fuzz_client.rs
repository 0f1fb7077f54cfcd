//! `tagsplit fuzz-client` (being written).

/// Arguments of `fuzz-client`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the campaign.
pub fn execute(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("fuzz-client is not written yet")
}

/// `replay FILE --serve`.
pub fn replay_serve(_a: &super::replay::Args) -> anyhow::Result<()> {
    anyhow::bail!("replay --serve is not written yet")
}
