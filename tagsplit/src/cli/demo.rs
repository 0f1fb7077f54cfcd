//! `tagsplit demo`.

use std::time::Instant;

use tagsplit::PoolTag;
use tagsplit::console::Console;
use tagsplit::demo::{SEED_COMMANDS, transcript};
use tagsplit::split::{Split, SplitOptions};

/// How the demo reaches the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// In process, no wire.
    Sim,
}

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to reach the simulated machine.
    #[arg(long, value_enum, default_value_t = Via::Sim)]
    via: Via,
}

fn open(via: Via) -> anyhow::Result<tagsplit::target::BoxedTarget> {
    match via {
        Via::Sim => super::open_target("sim:part4"),
    }
}

/// Prints the seed transcript, then the automated split's verdict.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut target = open(a.via)?;
    println!(
        "# The Part 4 workflow, by hand, on {}:\n",
        target.describe()
    );
    let mut console = Console::new();
    print!(
        "{}",
        transcript(target.as_mut(), &mut console, &SEED_COMMANDS)
    );
    drop(target);

    let mut target = open(a.via)?;
    println!(
        "\n# The same, automated (`tagsplit run --target {} --tag Leak`) on a fresh boot:\n",
        target.describe()
    );
    let journal =
        std::env::temp_dir().join(format!("tagsplit-demo-{}.journal.json", std::process::id()));
    let options = SplitOptions {
        journal: Some(journal),
        cancel: Some(super::interrupt_flag()),
        ..SplitOptions::default()
    };
    let report = Split::new(target.as_mut(), PoolTag::new(*b"Leak"), options).run()?;
    print!("{}", report.to_text());
    println!(
        "\n(demo finished in {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
