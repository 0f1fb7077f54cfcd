//! The 50-run table: the whole `part4` split over each protocol through the in-process
//! relay, once clean (a relay that impairs nothing) and `--runs` times lossy (GDB and
//! KDCOM: bit flips and dropped bytes at 1e-4 per byte; KDNET: 10% loss, 2% corruption,
//! 2% duplication), seeds 0 up. Prints a Markdown table per protocol and a summary line.
//!
//! ```text
//! cargo run --release -p tagsplit --example lossy_table -- --runs 50 [--protocol gdb|gdb-ack|kdcom|kdnet]
//! ```
//!
//! Shares its harness with `tests/lossy.rs`. Exits non-zero if any run fails.

#[path = "../tests/lossy_support/mod.rs"]
mod lossy_support;

use std::time::Duration;

use lossy_support::{Protocol, Reference};
use tagsplit_protocol::impair::Impairment;

fn usage() -> String {
    "usage: lossy_table [--runs N] [--first SEED] [--protocol gdb|gdb-ack|kdcom|kdnet]..."
        .to_owned()
}

fn parse_args() -> Result<(u64, u64, Vec<Protocol>), String> {
    let mut runs = 50u64;
    let mut first = 0u64;
    let mut protocols = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--first" => {
                first = args.next().and_then(|n| n.parse().ok()).ok_or_else(usage)?;
            }
            "--runs" => {
                runs = args.next().and_then(|n| n.parse().ok()).ok_or_else(usage)?;
            }
            "--protocol" => protocols.push(match args.next().as_deref() {
                Some("gdb") => Protocol::Gdb { ack: false },
                Some("gdb-ack") => Protocol::Gdb { ack: true },
                Some("kdcom") => Protocol::Kdcom,
                Some("kdnet") => Protocol::Kdnet,
                _ => return Err(usage()),
            }),
            _ => return Err(usage()),
        }
    }
    if protocols.is_empty() {
        protocols = vec![
            Protocol::Gdb { ack: false },
            Protocol::Kdcom,
            Protocol::Kdnet,
        ];
    }
    Ok((first, runs, protocols))
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// Runs one protocol's table; returns whether every run passed.
fn table(protocol: Protocol, first: u64, runs: u64, want: &Reference) -> bool {
    let faults = protocol.faults();
    let clean = lossy_support::run(protocol, Impairment::default(), 0, want);
    println!("### {} ({})", protocol.name(), describe(&faults));
    println!();
    println!(
        "clean (zero-impairment relay): verdict right {}, bytes restored {}, {} re-sends, {} s; {}",
        yes(clean.verdict_ok),
        yes(clean.restored),
        clean.resends,
        secs(clean.took),
        clean.stats
    );
    println!();
    println!(
        "| seed | verdict right | bytes restored | re-sends | packets sent | bytes received | time (s) | × clean |"
    );
    println!("|---:|:---:|:---:|---:|---:|---:|---:|---:|");
    let clean_s = clean.took.as_secs_f64().max(1e-9);
    let mut times = Vec::new();
    let mut passes = 0u64;
    for seed in first..first + runs {
        let out = lossy_support::run(protocol, faults.clone(), seed, want);
        let ok = out.verdict_ok && out.restored;
        if !out.verdict_ok
            && let Some(got) = &out.report
        {
            eprintln!("{} seed {seed}: the report differs:", protocol.name());
            lossy_support::print_differences(&want.report, got, "");
        }
        passes += u64::from(ok);
        times.push(out.took);
        println!(
            "| {seed} | {} | {} | {} | {} | {} | {} | {:.1} |{}",
            yes(out.verdict_ok),
            yes(out.restored),
            out.resends,
            out.stats.packets_sent,
            out.stats.bytes_received,
            secs(out.took),
            out.took.as_secs_f64() / clean_s,
            out.error.map(|e| format!(" {e}")).unwrap_or_default()
        );
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let max = times.last().copied().unwrap_or_default();
    println!();
    println!(
        "**{}: {passes}/{runs} passed; clean {} s; lossy median {} s, max {} s; max ratio to clean {:.1}×**",
        protocol.name(),
        secs(clean.took),
        secs(median),
        secs(max),
        max.as_secs_f64() / clean_s
    );
    println!();
    clean.verdict_ok && clean.restored && passes == runs
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn describe(i: &Impairment) -> String {
    if i.loss > 0.0 || i.corrupt > 0.0 || i.duplicate > 0.0 {
        format!(
            "datagrams: {}% loss, {}% corrupt, {}% duplicate",
            i.loss * 100.0,
            i.corrupt * 100.0,
            i.duplicate * 100.0
        )
    } else {
        format!(
            "stream: bit flips {:e}/byte, dropped bytes {:e}/byte",
            i.bit_flip, i.byte_drop
        )
    }
}

fn main() -> std::process::ExitCode {
    let (first, runs, protocols) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // RUST_LOG=debug shows what the debugger backends do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let want = match lossy_support::reference() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("the clean split in process failed: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for p in protocols {
        ok &= table(p, first, runs, &want);
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
