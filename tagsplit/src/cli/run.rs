//! `tagsplit run`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tagsplit::PoolTag;
use tagsplit::split::journal::{Journal, JournalStore};
use tagsplit::split::traffic::{self, MeterNow, PhaseMeter};
use tagsplit::split::{Phase, Split, SplitError, SplitOptions};
use tagsplit::target::{RunFor, TargetIdentity};

use super::signals;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target: sim:NAME, sim:FILE.toml, gdb://HOST:PORT[?ack], kdnet:port=N,key=K, kdcom:HOST:PORT.
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
    /// Where to write the patch journal before patching (default: one file per target in
    /// the state directory, `$XDG_STATE_HOME/tagsplit`). Never replaces an existing file.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// If an earlier run on this target left a journal, restore it first, then split.
    #[arg(long)]
    pub restore_first: bool,
    /// Split even when allocation sites use tags that look like a split of this one
    /// (`Lea1` for `Leak`), which usually means an interrupted run left them patched.
    #[arg(long)]
    pub allow_lookalikes: bool,
    /// A pooltag.txt file: tags it lists are never chosen.
    #[arg(long)]
    pub pooltag: Option<PathBuf>,
    /// Also patch lookaside-list initialisation sites.
    #[arg(long)]
    pub patch_lookaside: bool,
    /// Print the wire counters (packets and bytes each way, round trips) to stderr.
    #[arg(long)]
    pub stats: bool,
    /// Draw the outstanding bytes of every split tag over the samples into this SVG file
    /// (the leak climbs, the load levels off).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// After the split, give the leaking site its split tag again and collect the call
    /// stacks of its allocations with nt!PoolHitTag (as `tagsplit stacks`), then undo both.
    #[arg(long)]
    pub stacks: bool,
    /// With --stacks: how many breaks to take.
    #[arg(long, default_value_t = 100)]
    pub breaks: usize,
    /// Recording the traffic (--log-packets, --pcap).
    #[command(flatten)]
    pub record: super::RecordArgs,
}

/// `tagsplit restore --target SPEC [--journal PATH]`, as a user should type it.
pub fn restore_command(spec: &str, journal: Option<&Path>) -> String {
    let mut c = format!("tagsplit restore --target '{spec}'");
    if let Some(j) = journal {
        c.push_str(&format!(" --journal '{}'", j.display()));
    }
    c
}

/// Runs the split and prints the report.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let tag = PoolTag::parse(&a.tag)
        .with_context(|| format!("bad tag {:?}: 1-4 ASCII characters", a.tag))?;
    let identity = TargetIdentity::of(&a.target)?;
    let store = JournalStore::default_location();
    let journal = match (&a.journal, &store) {
        (Some(p), _) => p.clone(),
        (None, Ok(s)) => s.new_path(&identity),
        (None, Err(e)) => anyhow::bail!("{e}"),
    };
    // Journals an unfinished run left for this target.
    let mut leftovers: Vec<PathBuf> = store
        .as_ref()
        .map(|s| s.existing(&identity))
        .unwrap_or_default();
    if let Some(p) = &a.journal
        && p.symlink_metadata().is_ok()
    {
        if Journal::read(p).is_err() {
            anyhow::bail!(
                "{} exists and is not a tagsplit journal: refusing to replace it; choose another --journal",
                p.display()
            );
        }
        if !leftovers.contains(p) {
            leftovers.push(p.clone());
        }
    }
    if identity.is_ephemeral() {
        for p in leftovers.drain(..) {
            eprintln!(
                "note: {} is a journal left by an earlier run on {identity}; the simulator boots fresh, so none of it is patched now (delete the file when you no longer need it)",
                p.display()
            );
        }
        anyhow::ensure!(
            a.journal
                .as_deref()
                .is_none_or(|p| p.symlink_metadata().is_err()),
            "{} already exists: choose another --journal",
            journal.display()
        );
    } else if !leftovers.is_empty() && !a.restore_first {
        let list: Vec<String> = leftovers.iter().map(|p| p.display().to_string()).collect();
        anyhow::bail!(
            "an unfinished run on {identity} left its journal at {}: the target may still be patched. Restore it first with `{}`, or run again with --restore-first",
            list.join(", "),
            restore_command(&a.target, a.journal.as_deref())
        );
    }
    let cancel = signals::install();
    signals::test_pause("connecting");
    let connecting = std::time::Instant::now();
    let mut target = super::open_target_with(&a.target, &a.record.options())?;
    let meter = PhaseMeter::new();
    meter.record(
        "connect",
        target.stats().unwrap_or_default(),
        connecting.elapsed(),
    );
    if a.restore_first {
        for p in &leftovers {
            signals::restore_on_signal(format!(
                "the journal {} is kept: run `{}`",
                p.display(),
                restore_command(&a.target, Some(p))
            ));
            let summary =
                tagsplit::split::restore_from_journal(target.as_mut(), p, Some(&identity))?;
            eprintln!("restored the journal {}: {summary}", p.display());
            anyhow::ensure!(
                summary.complete(),
                "not every patch of {} was restored; the journal is kept",
                p.display()
            );
            signals::exit_at_once();
        }
    }
    let known_journals: Vec<(PathBuf, Journal)> = store
        .as_ref()
        .map(|s| s.all())
        .unwrap_or_default()
        .into_iter()
        .chain(a.journal.clone())
        .filter_map(|p| Journal::read(&p).ok().map(|j| (p, j)))
        .collect();
    let options = SplitOptions {
        run: a.ticks.map(RunFor::Ticks),
        samples: a.samples,
        journal: Some(journal.clone()),
        pooltag: super::load_pooltag(a.pooltag.as_deref())?,
        patch_lookaside: a.patch_lookaside,
        cancel: Some(cancel.clone()),
        identity: Some(identity.to_string()),
        known_journals,
        allow_lookalikes: a.allow_lookalikes,
        stacks: a.stacks.then(|| tagsplit::stacks::StacksOptions {
            breaks: a.breaks,
            cancel: Some(cancel.clone()),
            ..tagsplit::stacks::StacksOptions::default()
        }),
    };
    let show_bar = !a.json && std::io::stdout().is_terminal();
    let bar = show_bar.then(|| progress_bar(&meter, a.samples));
    let restore_hint = format!(
        "the journal {} is kept: run `{}`",
        journal.display(),
        restore_command(&a.target, a.journal.as_deref())
    );
    let mut metered = meter.wrap(target.as_mut());
    let mut meter_phase = meter.on_phase();
    let split = Split::new(&mut metered, tag, options).on_phase(move |phase| {
        meter_phase(phase);
        if phase.patches_possible() {
            signals::restore_on_signal(restore_hint.clone());
        }
        let pause_here = match phase {
            // Between the first and the second patch: one is on the target.
            Phase::Patching { next, total } => next == 1 || total == 1,
            Phase::Running { sample, .. } | Phase::Sampling { sample, .. } => sample == 1,
            // After the first break: the leaking site and nt!PoolHitTag are set.
            Phase::Breaking { done, .. } => done == 1,
            _ => true,
        };
        if pause_here {
            signals::test_pause(phase.name());
        }
    });
    let result = split.run();
    drop(metered);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.stats {
        match target.stats() {
            Some(s) => {
                eprintln!("wire: {s}");
                eprint!("{}", traffic::table(&meter.finish()));
            }
            None => eprintln!("wire: {} has no wire", target.describe()),
        }
    }
    let stopped_by = signals::received().map(signals::name);
    let mut report = match result {
        Ok(r) => r,
        Err(SplitError::Interrupted(restore)) if restore.patches.is_empty() => {
            anyhow::bail!(
                "{}: stopped before patching; nothing was patched",
                stopped_by.unwrap_or_else(|| "interrupted".into())
            );
        }
        Err(SplitError::Interrupted(restore)) => {
            let journal_state = if restore.journal_removed {
                "the journal was removed".to_string()
            } else {
                restore_hint_text(&journal, &a)
            };
            anyhow::bail!(
                "{}: stopped; restore: {restore}; {journal_state}",
                stopped_by.unwrap_or_else(|| "interrupted".into())
            );
        }
        Err(e @ (SplitError::Aborted { .. } | SplitError::RestoreIncomplete(_))) => {
            let hint = if journal.exists() {
                format!("; {}", restore_hint_text(&journal, &a))
            } else {
                String::new()
            };
            anyhow::bail!("{e}{hint}");
        }
        Err(e @ (SplitError::StillPatched { .. } | SplitError::LooksSplit { .. })) => {
            let how = match &e {
                SplitError::StillPatched { journal: j, .. } => restore_command(&a.target, Some(j)),
                _ => restore_command(&a.target, a.journal.as_deref()),
            };
            anyhow::bail!("{e}: run `{how}`");
        }
        Err(e) => return Err(e.into()),
    };
    let stacks = report.stacks.take();
    let stacks_error = report.stacks_error.take();
    match (&stacks, a.json) {
        (Some(s), true) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "split": report,
                "stacks": s,
                "leaking_caller": s.leaking_caller(),
            }))?
        ),
        (None, true) => println!("{}", serde_json::to_string_pretty(&report)?),
        (Some(s), false) => {
            print!("{}\n{s}\n", report.to_text());
            if let (Some(caller), Some(site)) = (s.leaking_caller(), report.leaks().next()) {
                println!(
                    "leaking caller: {caller} (the frame above {}'s function in the leaking stack)",
                    site.hit.location()
                );
            }
        }
        (None, false) => print!("{}", report.to_text()),
    }
    if let Some(path) = &a.plot {
        tagsplit::plot::write_svg(&report, path)
            .with_context(|| format!("writing the plot {}", path.display()))?;
        eprintln!("plot: {}", path.display());
    }
    if let Some(sig) = stopped_by {
        anyhow::bail!(
            "{sig} arrived while restoring: the restore finished; restore: {}",
            report.restore
        );
    }
    if let Some(e) = stacks_error {
        anyhow::bail!("--stacks: {e}");
    }
    Ok(())
}

/// A bar that shows the phase, the samples taken, the bytes each way as they cross the
/// wire, and an estimate of the time left once a sample after the baseline was taken.
fn progress_bar(meter: &PhaseMeter, samples: u32) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(u64::from(samples.max(1)) + 1);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {elapsed:>4} {bar:20} {pos}/{len} {prefix} · {msg}",
    ) {
        b.set_style(style);
    }
    b.set_prefix("samples");
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    let shown = b.clone();
    meter.observe(move |now: &MeterNow| {
        if now.breaks_total > 0 {
            // --stacks: the PoolHitTag breaks after the samples.
            shown.set_prefix("breaks");
            shown.set_length(now.breaks_total);
            shown.set_position(now.breaks_done);
        } else {
            if now.samples_total > 0 {
                shown.set_length(u64::from(now.samples_total));
            }
            shown.set_position(u64::from(now.samples_done));
        }
        shown.set_message(progress_text(now));
    });
    b
}

/// `sample 3: 41.2 KiB in, 6.1 KiB out, about 2.1 s left`.
fn progress_text(now: &MeterNow) -> String {
    let mut t = format!(
        "{}: {} in, {} out",
        if now.phase.is_empty() {
            "starting"
        } else {
            &now.phase
        },
        indicatif::HumanBytes(now.wire.bytes_received),
        indicatif::HumanBytes(now.wire.bytes_sent)
    );
    // The estimate is the samples'; the breaks after them have none.
    if let Some(eta) = now.eta.filter(|_| now.breaks_total == 0) {
        t.push_str(&format!(", about {:.1} s left", eta.as_secs_f64()));
    }
    t
}

/// "the journal PATH is kept: run `tagsplit restore …`".
fn restore_hint_text(journal: &Path, a: &Args) -> String {
    format!(
        "the journal {} is kept: run `{}`",
        journal.display(),
        restore_command(&a.target, a.journal.as_deref())
    )
}
