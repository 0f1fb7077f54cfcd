//! `tagsplit fuzz-stub`: a mutating client against a GDB stub or a KD target, and
//! `tagsplit replay FILE --target SPEC`.

use std::path::PathBuf;
use std::time::Duration;

use tagsplit::wirefuzz::fuzz_stub::{self, StubFuzzOptions};
use tagsplit::wirefuzz::{Campaign, CampaignOptions, Launcher, kd};

use super::signals;

/// Arguments of `fuzz-stub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
With --launch, the tool starts the peer itself on a free port and restarts it after it \
exits (gdbserver without --multi exits on D and k) or after a finding; the target's \
address is the launched peer's, so write the target as `gdb` (or gdb://127.0.0.1:{port}):

  tagsplit fuzz-stub --target gdb --launch 'gdbserver 127.0.0.1:{port} /bin/true' \\
      --seed 1 --time 600 --out fuzz-gdbserver

A KD target is launched the same way; `{port}` in a KDNET spec is the debugger's UDP \
port, which the launched target pokes:

  tagsplit fuzz-stub --target 'kdnet:port={port},key=1.2.3.4' \\
      --launch 'tagsplit serve --kdnet 127.0.0.1:{port} --key 1.2.3.4' --time 600 --out fuzz-kdnet

A finding is a transcript in DIR (gdb's `set remotelogfile` format, the exact bytes \
sent); `tagsplit replay DIR/finding-0001-hang.log --target gdb --launch '…'` sends it \
again. Ctrl-C stops the campaign, keeps every finding and writes the summary (exit \
status 130). The exit status is 0 after a campaign that ran its time, findings or not \
(see the summary and DIR/summary.json).")]
pub struct Args {
    /// The target: `gdb://HOST:PORT` (a GDB stub), `gdb` (the --launch peer's address),
    /// `kdnet:…` or `kdcom:…` (a KD target).
    #[arg(long)]
    pub target: String,
    /// Start the peer with this command (`{port}` becomes a free port, `{addr}`
    /// 127.0.0.1:PORT) and restart it when it exits.
    #[arg(long)]
    pub launch: Option<String>,
    /// The seed: the same seed sends the same bytes to a peer that answers the same.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub time: f64,
    /// Where findings, `findings.txt` and `summary.json` go.
    #[arg(long)]
    pub out: PathBuf,
    /// How long a reply may take before it counts as a hang, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub reply_timeout: f64,
    /// Stop after this many iterations.
    #[arg(long)]
    pub max_iterations: Option<u64>,
    /// Recorded gdb sessions whose commands seed the fuzzer besides the built-in set
    /// (`*.log`: the `shared/reference/gdb-transcripts` format or gdb's remote log);
    /// default `../shared/reference/gdb-transcripts` when it exists. For a KD target:
    /// KD captures whose debugger requests and other packets seed it (pcap/pcapng,
    /// gzipped or not, decrypted under the `key-K` in the file name; raw KDCOM `.bin`);
    /// default `../shared/captures` when it exists.
    #[arg(long)]
    pub seeds: Option<PathBuf>,
    /// With --launch: start the peer afresh before every iteration (no state carries over
    /// from one session to the next, so every finding replays against a fresh peer).
    #[arg(long, requires = "launch")]
    pub fresh_peer: bool,
    /// Let the launched peer's output through.
    #[arg(long)]
    pub show_peer_output: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

fn launcher(command: Option<&str>, show: bool) -> Option<Launcher> {
    command.map(|c| Launcher::new(c).show_output(show))
}

/// The KD seeds: `--seeds DIR`, or the default directory when it exists.
fn kd_seeds(dir: Option<&std::path::Path>) -> anyhow::Result<kd::KdSeeds> {
    match dir {
        Some(dir) => {
            let seeds = kd::KdSeeds::load(dir);
            anyhow::ensure!(
                !seeds.is_empty(),
                "--seeds {}: no KD captures there",
                dir.display()
            );
            Ok(seeds)
        }
        None => Ok(kd::KdSeeds::load(std::path::Path::new(
            kd::seeds::DEFAULT_DIR,
        ))),
    }
}

/// Runs the campaign.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let kd_target = a.target.starts_with("kdnet:") || a.target.starts_with("kdcom:");
    let kd_seeds = if kd_target {
        kd_seeds(a.seeds.as_deref())?
    } else {
        kd::KdSeeds::default()
    };
    let seeds = match &a.seeds {
        _ if kd_target => Vec::new(),
        Some(dir) => {
            let seeds = fuzz_stub::load_seeds(dir);
            anyhow::ensure!(
                !seeds.is_empty(),
                "--seeds {}: no recorded commands there",
                dir.display()
            );
            seeds
        }
        None => fuzz_stub::load_seeds(std::path::Path::new("../shared/reference/gdb-transcripts")),
    };
    let options = StubFuzzOptions {
        reply_timeout: super::seconds("--reply-timeout", a.reply_timeout)?,
        seeds,
        fresh_peer: a.fresh_peer,
    };
    let cancel = signals::install();
    signals::stop_on_signal();
    let mut campaign_options = CampaignOptions::new(
        format!("fuzz-stub {}", a.target),
        a.seed,
        super::seconds("--time", a.time)?,
        &a.out,
    );
    campaign_options.progress = (!a.quiet).then_some(Duration::from_secs(1));
    campaign_options.cancel = Some(cancel);
    campaign_options.max_iterations = a.max_iterations;
    let mut campaign = Campaign::new(campaign_options)
        .map_err(|e| anyhow::anyhow!("--out {}: {e}", a.out.display()))?;
    let mut launcher = launcher(a.launch.as_deref(), a.show_peer_output);
    let result = if kd_target {
        kd::fuzz_target_with(
            &mut campaign,
            &a.target,
            launcher.as_mut(),
            options.reply_timeout,
            &kd_seeds,
        )
    } else {
        fuzz_stub::fuzz_target(&mut campaign, &a.target, launcher.as_mut(), &options)
    };
    if let Some(l) = launcher.as_mut() {
        l.stop();
    }
    let summary = campaign.finish()?;
    print!("{summary}");
    result?;
    Ok(())
}

/// `replay FILE --target SPEC`: prints the exchange and `reproduced: KIND SIGNATURE`
/// (exit status 0) or `not reproduced` (exit status 1).
pub fn replay_target(a: &super::replay::Args) -> anyhow::Result<()> {
    let Some(target) = a.target.as_deref() else {
        anyhow::bail!("replay: give --target SPEC (or --serve)");
    };
    let transcript =
        std::fs::read(&a.file).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let mut launcher = launcher(a.launch.as_deref(), false);
    let outcome = fuzz_stub::replay_target(
        &transcript,
        target,
        launcher.as_mut(),
        super::seconds("--timeout", a.timeout)?,
    )?;
    if let Some(l) = launcher.as_mut() {
        l.stop();
    }
    print!("{}", outcome.log);
    match outcome.finding {
        Some((kind, signature)) => {
            println!("reproduced: {kind} {signature}");
            Ok(())
        }
        None => {
            println!("not reproduced ({} packets sent)", outcome.sent);
            std::process::exit(1);
        }
    }
}
