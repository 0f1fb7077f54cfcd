//! `PoolHitTag` break cycles (break -> stack -> block -> continue) over loopback GDB,
//! KDNET and KDCOM: `tagsplit::stacks::collect` on `part4`, the stub in a thread of this
//! process on 127.0.0.1. Prints, per link, the wall time of N breaks of the shared `Leak`
//! tag (allocations and frees) and the round trips of one allocation's cycle and of one
//! free's, measured as differences (2N breaks minus N), so the set-up (symbols, the
//! first break's module and unwind data) cancels out.
//!
//! ```sh
//! cargo run --release -p tagsplit-benches --bin breaks          # 1,000 breaks
//! cargo run --release -p tagsplit-benches --bin breaks -- 200   # N breaks
//! ```

use std::time::Instant;

use tagsplit::PoolTag;
use tagsplit::stacks::{StacksOptions, StacksReport, collect};
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubHandle, GdbStubOptions};
use tagsplit_target_sim::server::kd::KdStubOptions;

/// A link to measure over.
#[derive(Clone, Copy, Debug)]
enum Link {
    Gdb,
    Kdnet,
    Kdcom,
}

/// The errors of this command.
type Error = Box<dyn std::error::Error>;

/// A target, and the GDB stub it needs alive.
type Opened = (Box<dyn DebugTarget>, Option<GdbStubHandle>);

/// A target over `link`, and the GDB stub it needs alive.
fn open(link: Link, machine: Machine) -> Result<Opened, Error> {
    let kd_options = || KdStubOptions {
        default_run_ticks: Scenario::builtin("part4").map(|s| s.default_run_ticks()),
        ..KdStubOptions::default()
    };
    Ok(match link {
        Link::Gdb => {
            let stub = GdbStub::spawn(machine, GdbStubOptions::default())?;
            let t = GdbTarget::connect(&stub.addr().to_string())?;
            (Box::new(t), Some(stub))
        }
        Link::Kdnet => {
            let key = "tagsplit.bench.kdnet.key".parse()?;
            let t = KdTarget::loopback(machine, KdTransport::Kdnet(key), kd_options())?;
            (Box::new(t), None)
        }
        Link::Kdcom => {
            let t = KdTarget::loopback(machine, KdTransport::Kdcom, kd_options())?;
            (Box::new(t), None)
        }
    })
}

/// `part4`, with myfault's leaking site patched to `Lea2` when `lea2` (so that every
/// break of `Lea2` is an allocation).
fn part4(lea2: bool) -> Result<Machine, Box<dyn std::error::Error>> {
    let scenario = Scenario::builtin("part4").ok_or("no part4")?;
    let mut m = Machine::boot(&scenario)?;
    if lea2 {
        let site = m
            .sites()
            .into_iter()
            .find(|s| s.leaks)
            .ok_or("no leaking site")?;
        m.write(site.imm, b"Lea2")?;
    }
    Ok(m)
}

/// One collection of `breaks` breaks of `tag`: the report, the round trips, the seconds.
fn run(
    link: Link,
    tag: &[u8; 4],
    breaks: usize,
) -> Result<(StacksReport, u64, f64), Box<dyn std::error::Error>> {
    let (mut target, _stub) = open(link, part4(tag == b"Lea2")?)?;
    let before = target.stats().map_or(0, |s| s.round_trips);
    let options = StacksOptions {
        breaks,
        ..StacksOptions::default()
    };
    let started = Instant::now();
    let r = collect(target.as_mut(), PoolTag::new(*tag), &options, |_| {})?;
    let secs = started.elapsed().as_secs_f64();
    let trips = target.stats().map_or(0, |s| s.round_trips) - before;
    if r.breaks != breaks as u64 {
        return Err(format!("{link:?}: {} breaks of {breaks}", r.breaks).into());
    }
    Ok((r, trips, secs))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 1000,
    };
    println!(
        "| link | {n} breaks of Leak (allocations/frees) | time | round trips | per break | allocation cycle | free cycle |"
    );
    println!("|---|---|---|---|---|---|---|");
    for link in [Link::Gdb, Link::Kdnet, Link::Kdcom] {
        // An allocation's cycle: Lea2 breaks only on allocations.
        let (_, a1, _) = run(link, b"Lea2", n)?;
        let (_, a2, _) = run(link, b"Lea2", 2 * n)?;
        let alloc = (a2 - a1) as f64 / n as f64;
        // A free's: the rest of the difference on the shared tag.
        let (r1, t1, secs) = run(link, b"Leak", n)?;
        let (r2, t2, _) = run(link, b"Leak", 2 * n)?;
        let frees = r2.frees.saturating_sub(r1.frees).max(1);
        let allocs = r2.allocations.saturating_sub(r1.allocations);
        let free = ((t2 - t1) as f64 - alloc * allocs as f64) / frees as f64;
        println!(
            "| {link:?} | {}/{} | {secs:.2} s | {t1} | {:.2} | {alloc:.2} | {free:.2} |",
            r1.allocations,
            r1.frees,
            t1 as f64 / n as f64,
        );
    }
    Ok(())
}
