//! `tagsplit demo`.

use anyhow::Context as _;
use std::time::Instant;

use tagsplit::PoolTag;
use tagsplit::console::Console;
use tagsplit::demo::{PART5_BREAKS, PART5_COMMANDS, SEED_COMMANDS, transcript};
use tagsplit::split::{Split, SplitOptions};

/// How the demo reaches the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// In process, no wire.
    Sim,
    /// Through a GDB stub on a loopback port (the `gdb://` client against `serve`).
    Gdb,
    /// Through the KD stub over KDNET (UDP, encrypted) on loopback.
    Kdnet,
    /// Through the KD stub with KDCOM framing over TCP on loopback.
    Kdcom,
}

/// The key the KDNET demo uses.
const DEMO_KEY: &str = "tagsplit.demo.kdnet.key";

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to reach the simulated machine.
    #[arg(long, value_enum, default_value_t = Via::Sim)]
    via: Via,
    /// Print the wire counters (packets, bytes, round trips) of each phase.
    #[arg(long)]
    stats: bool,
    /// Where to draw the split's leak-vs-load picture (SVG; default: tagsplit-demo.svg in
    /// the temporary directory).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Recording the wire (--log-packets with --via gdb, --pcap with --via kdnet or
    /// kdcom): the debugger's side of every session, one after the other in one file.
    #[command(flatten)]
    record: super::RecordArgs,
}

/// A target and, for `--via gdb`, the loopback stub serving it (stopped on drop, after
/// the target has detached).
struct Opened {
    target: tagsplit::target::BoxedTarget,
    _stub: Option<tagsplit_target_sim::server::gdb::GdbStubHandle>,
}

/// Opens the demo's target over `via`, recording as `record` says (the later sessions
/// are appended to the first one's files).
fn open(via: Via, record: &tagsplit::target::OpenOptions) -> anyhow::Result<Opened> {
    match via {
        Via::Sim => Ok(Opened {
            target: super::open_target_with("sim:part4", record)?,
            _stub: None,
        }),
        Via::Gdb => {
            record.check_spec("gdb://loopback")?;
            let scenario = tagsplit_target_sim::scenario::Scenario::builtin("part4")
                .ok_or_else(|| anyhow::anyhow!("no built-in part4"))?;
            let stub = tagsplit::target::gdb::serve_scenario(
                &scenario,
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                None,
                tagsplit_target_sim::server::gdb::StubFeatures::FULL,
            )?;
            let target = super::open_target_with(&format!("gdb://{}", stub.addr()), record)?;
            Ok(Opened {
                target,
                _stub: Some(stub),
            })
        }
        Via::Kdnet | Via::Kdcom => {
            use tagsplit::target::kd::{KdTarget, KdTransport};
            let scenario = tagsplit_target_sim::scenario::Scenario::builtin("part4")
                .ok_or_else(|| anyhow::anyhow!("no built-in part4"))?;
            let (transport, spec) = if via == Via::Kdnet {
                (KdTransport::Kdnet(DEMO_KEY.parse()?), "kdnet:loopback")
            } else {
                (KdTransport::Kdcom, "kdcom:loopback")
            };
            record.check_spec(spec)?;
            let pcap = record.open_pcap()?;
            let target = KdTarget::serve_scenario_recorded(&scenario, transport, pcap)?;
            Ok(Opened {
                target: Box::new(target),
                _stub: None,
            })
        }
    }
}

fn print_stats(enabled: bool, target: &dyn tagsplit::target::DebugTarget) {
    if let (true, Some(s)) = (enabled, target.stats()) {
        println!("\n[wire: {s}]");
    }
}

/// Prints the seed transcript, then the automated split's verdict.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let record = a.record.options();
    let Opened {
        target: mut manual,
        _stub: stub,
    } = open(a.via, &record)?;
    println!(
        "# The Part 4 workflow, by hand, on {}:\n",
        manual.describe()
    );
    let mut console = Console::new();
    print!(
        "{}",
        transcript(manual.as_mut(), &mut console, &SEED_COMMANDS)
    );
    print_stats(a.stats, manual.as_ref());
    drop(manual);
    drop(stub);

    let Opened {
        mut target,
        _stub: stub,
    } = open(a.via, &record.clone().append(true))?;
    println!(
        "\n# The same, automated (`tagsplit run --target {} --tag Leak`) on a fresh boot:\n",
        target.describe()
    );
    let journal =
        std::env::temp_dir().join(format!("tagsplit-demo-{}.journal.json", std::process::id()));
    let cancel = super::signals::install();
    let options = SplitOptions {
        journal: Some(journal),
        cancel: Some(cancel.clone()),
        // Part 5 automated: before restoring, the leaking site keeps its tag and
        // nt!PoolHitTag breaks on it (printed after Part 5 by hand).
        stacks: Some(tagsplit::stacks::StacksOptions {
            breaks: PART5_BREAKS,
            cancel: Some(cancel),
            ..tagsplit::stacks::StacksOptions::default()
        }),
        ..SplitOptions::default()
    };
    let mut report = Split::new(target.as_mut(), PoolTag::new(*b"Leak"), options).run()?;
    let stacks = report.stacks.take();
    print!("{}", report.to_text());
    print_stats(a.stats, target.as_ref());
    let plot = a
        .plot
        .unwrap_or_else(|| std::env::temp_dir().join("tagsplit-demo.svg"));
    tagsplit::plot::write_svg(&report, &plot)
        .with_context(|| format!("writing the plot {}", plot.display()))?;
    println!(
        "\nLeak against load, drawn: {} (outstanding bytes per new tag at each sample)",
        plot.display()
    );

    // Part 5: who allocates Lea2. By hand on a fresh boot, then automated after the split.
    let Opened {
        target: mut manual,
        _stub: manual_stub,
    } = open(a.via, &record.clone().append(true))?;
    println!(
        "\n# Part 5 (PoolHitTag), by hand, on a fresh boot of {}:\n",
        manual.describe()
    );
    print!(
        "{}",
        transcript(manual.as_mut(), &mut Console::new(), &PART5_COMMANDS)
    );
    drop(manual);
    drop(manual_stub);
    println!(
        "\n# Part 5, automated: the split above ran with --stacks (`tagsplit run --target {} --tag Leak --stacks --breaks {PART5_BREAKS}`): before its restore, Lea2 stayed in place and nt!PoolHitTag broke on it:\n",
        target.describe()
    );
    let stacks = stacks.ok_or_else(|| {
        anyhow::anyhow!(
            "no stacks: {}",
            report.stacks_error.as_deref().unwrap_or("not collected")
        )
    })?;
    println!("{stacks}");
    if let Some(caller) = stacks.leaking_caller() {
        println!(
            "leaking caller: {caller} (the frame above the allocation site's function); restore: {}{}",
            report.restore,
            if report.restore.journal_removed {
                ", journal removed"
            } else {
                ""
            }
        );
    }
    drop(target);
    drop(stub);
    println!(
        "\n(demo finished in {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
