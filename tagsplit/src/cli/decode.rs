//! `tagsplit decode`: dissect KDNET/KDCOM traffic in a capture.

use std::path::PathBuf;

use tagsplit::decode::{DecodeArgs, run_decode};

/// Arguments of `decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A pcap or pcapng file (gzipped or not), or a raw file of KDCOM bytes.
    pub file: PathBuf,
    /// The KDNET key (`a.b.c.d`, four base-36 numbers) to authenticate and decrypt with.
    #[arg(long)]
    pub key: Option<String>,
    /// Print the decode as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Decodes and prints.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let args = DecodeArgs {
        file: a.file,
        key: a.key,
        json: a.json,
    };
    let stdout = std::io::stdout();
    run_decode(&args, &mut stdout.lock())?;
    Ok(())
}
