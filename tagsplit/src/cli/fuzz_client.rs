//! `tagsplit fuzz-client`: serve a mutating stub to a debugger launched again and again;
//! and `tagsplit replay FILE --serve`: serve a finding's replies once more.

use std::time::Duration;

use anyhow::Context as _;
use tagsplit::wirefuzz::{self, Campaign, CampaignOptions, kd};

/// Arguments of `fuzz-client`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client to launch each iteration, run by `sh -c`: `{addr}` becomes the
    /// mutating stub's address (`127.0.0.1:PORT`), `{host}` and `{port}` its parts.
    /// Example: `gdb -batch -nx -ex "target remote {addr}" -ex "info registers"`.
    #[arg(long)]
    pub command: String,
    /// The seed every iteration's mutations derive from.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub time: f64,
    /// Where findings (`finding-NNNN-KIND.log`), `findings.txt` and `summary.json` go.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// A client that has not exited after this many seconds is a hang (and is killed).
    /// gdb waits 2 s (`remotetimeout`) per reply and retries: keep this well above.
    #[arg(long, default_value_t = 10.0)]
    pub client_timeout: f64,
    /// Stop after this many iterations.
    #[arg(long)]
    pub max_iterations: Option<u64>,
    /// No progress line (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// The built-in simulator scenario behind the stub.
    #[arg(long, default_value = "part4")]
    pub scenario: String,
    /// Serve a mutating KDNET target instead (the client is a KD debugger).
    #[arg(long, requires = "key", conflicts_with = "kdcom")]
    pub kdnet: bool,
    /// The KDNET key (`a.b.c.d`).
    #[arg(long)]
    pub key: Option<String>,
    /// Serve a mutating KDCOM target over TCP instead.
    #[arg(long)]
    pub kdcom: bool,
}

/// The campaign's name on the progress line: the client program's file name (the whole
/// command line is in every transcript).
fn campaign_name(command: &str) -> String {
    let program = command
        .split_whitespace()
        .find(|w| !w.contains('=') && !w.starts_with('('))
        .map_or("client", |w| w.rsplit('/').next().unwrap_or(w));
    format!("fuzz-client {program}")
}

/// Runs the campaign.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let time = super::seconds("--time", a.time)?;
    let client_timeout = super::seconds("--client-timeout", a.client_timeout)?;
    let cancel = super::signals::install();
    super::signals::stop_on_signal();
    let mut options = CampaignOptions::new(campaign_name(&a.command), a.seed, time, &a.out);
    options.progress = (!a.quiet).then_some(Duration::from_secs(1));
    options.cancel = Some(cancel);
    options.max_iterations = a.max_iterations;
    let mut campaign =
        Campaign::new(options).with_context(|| format!("creating {}", a.out.display()))?;
    let result = if a.kdnet || a.kdcom {
        let link = if a.kdnet {
            let key = a.key.as_deref().unwrap_or_default();
            kd::KdLink::Net {
                key: key
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--key {key}: {e}"))?,
            }
        } else {
            kd::KdLink::Com
        };
        kd::fuzz_client(&mut campaign, &link, &a.command, client_timeout)
    } else {
        wirefuzz::fuzz_client::fuzz_client(&mut campaign, &a.command, &a.scenario, client_timeout)
    };
    // Whatever stopped it, the findings so far are on disk; write the summary too.
    let summary = campaign.finish().context("writing summary.json")?;
    print!("{summary}");
    result?;
    Ok(())
}

/// `replay FILE --serve`: serves the finding's recorded replies and, with `--command`,
/// judges the client's end as the campaign did. Exits 0 when the finding is reproduced
/// (or, without `--command`, once the client has been served), 1 when it is not.
pub fn replay_serve(a: &super::replay::Args) -> anyhow::Result<()> {
    let transcript =
        std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let timeout = super::seconds("--timeout", a.timeout)?;
    let mut on_listen = |addr: std::net::SocketAddr| {
        println!("listening on {addr}");
    };
    if kd::is_kd_transcript(&transcript) {
        let outcome = kd::replay_serve(&transcript, a.command.as_deref(), a.listen, timeout)?;
        return finish(&outcome, None, a.command.is_some());
    }
    let (outcome, expected) = wirefuzz::fuzz_client::replay_serve(
        &transcript,
        a.command.as_deref(),
        a.listen,
        timeout,
        &mut on_listen,
    )?;
    if a.command.is_none()
        && let Some(c) = wirefuzz::fuzz_client::recorded_command(&transcript)
    {
        println!("(recorded client command: {c})");
    }
    finish(&outcome, expected.as_deref(), a.command.is_some())
}

fn finish(
    outcome: &wirefuzz::ReplayOutcome,
    expected: Option<&str>,
    judged: bool,
) -> anyhow::Result<()> {
    print!("{}", outcome.log);
    println!("{} bytes served", outcome.sent);
    if let Some(e) = expected {
        println!("recorded finding: {e}");
    }
    if !judged {
        return Ok(());
    }
    match &outcome.finding {
        Some((kind, detail)) => println!("replayed: {kind}: {detail}"),
        None => println!("replayed: no finding"),
    }
    if wirefuzz::fuzz_client::reproduces(outcome, expected) {
        println!("reproduced");
        Ok(())
    } else {
        println!("not reproduced");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
}
