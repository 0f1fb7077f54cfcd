//! The lossy-link harness shared by `tests/lossy.rs` and `examples/lossy_table.rs` (each
//! includes this file with `#[path]`): the whole `part4` split over GDB, KDCOM or KDNET
//! through an in-process [`Relay`], checked against the clean split in process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tagsplit::PoolTag;
use tagsplit::relay::{Relay, RelayConfig};
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::gdb::{GdbOptions, GdbTarget, serve_scenario};
use tagsplit::target::kd::{KdTarget, KdnetListener};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, WireStats};
use tagsplit_protocol::impair::Impairment;
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::StubFeatures;
use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};

/// A give-up time against a hung connection (never a pass criterion).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The link a split runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// GDB RSP over TCP, in no-ack mode (the default) or in ack mode.
    Gdb {
        /// Keep RSP's ack mode.
        ack: bool,
    },
    /// KDCOM over TCP.
    Kdcom,
    /// KDNET over UDP.
    Kdnet,
}

impl Protocol {
    /// Its name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Gdb { ack: false } => "gdb",
            Protocol::Gdb { ack: true } => "gdb-ack",
            Protocol::Kdcom => "kdcom",
            Protocol::Kdnet => "kdnet",
        }
    }

    /// Whether it relays datagrams.
    pub fn udp(self) -> bool {
        self == Protocol::Kdnet
    }

    /// The lossy link for this protocol: bit flips and dropped bytes at 1e-4 per
    /// byte (streams), or 10% loss, 2% corruption and 2% duplication (datagrams).
    pub fn faults(self) -> Impairment {
        if self.udp() {
            Impairment {
                loss: 0.1,
                corrupt: 0.02,
                duplicate: 0.02,
                ..Impairment::default()
            }
        } else {
            Impairment {
                bit_flip: 1e-4,
                byte_drop: 1e-4,
                ..Impairment::default()
            }
        }
    }
}

/// The clean split's report (without the target's name) and the machine's digest after.
#[derive(Clone, Debug)]
pub struct Reference {
    /// The report as JSON.
    pub report: serde_json::Value,
    /// `Machine::digest` after the split.
    pub digest: u64,
}

/// One split over a relay.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The report equals the clean one.
    pub verdict_ok: bool,
    /// The machine's digest afterwards equals the clean one (every byte restored).
    pub restored: bool,
    /// Our packets sent again (transport retransmissions, re-sent requests, recovered
    /// runs).
    pub resends: u64,
    /// The debugger's traffic counters after the split.
    pub stats: WireStats,
    /// How long the split took (without connecting and the handshake).
    pub took: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The report, for a failure's diagnosis.
    pub report: Option<serde_json::Value>,
}

fn part4() -> Result<Scenario, String> {
    Scenario::builtin("part4").ok_or_else(|| "no builtin part4".to_owned())
}

fn boot() -> Result<Machine, String> {
    let scenario = part4()?;
    Machine::boot(&scenario).map_err(|e| e.to_string())
}

fn kd_options() -> Result<KdStubOptions, String> {
    let scenario = part4()?;
    Ok(KdStubOptions {
        default_run_ticks: Some(scenario.default_run_ticks()),
        ..KdStubOptions::default()
    })
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The split's report without the target's name, as JSON (`name` names the journal).
pub fn split_json(target: &mut dyn DebugTarget, name: &str) -> Result<serde_json::Value, String> {
    let journal = std::env::temp_dir().join(format!(
        "tagsplit-lossy-{}-{name}.journal.json",
        std::process::id()
    ));
    let options = SplitOptions {
        journal: Some(journal.clone()),
        ..SplitOptions::default()
    };
    let report = Split::new(target, PoolTag::new(*b"Leak"), options).run();
    let _ = std::fs::remove_file(&journal);
    let mut v =
        serde_json::to_value(report.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if let Some(t) = v.get_mut("target") {
        *t = serde_json::Value::Null;
    }
    Ok(v)
}

/// The clean split in process.
pub fn reference() -> Result<Reference, String> {
    let mut sim = SimTarget::builtin("part4").ok_or("part4 does not boot")?;
    let report = split_json(&mut sim, "sim")?;
    Ok(Reference {
        report,
        digest: sim.machine().digest(),
    })
}

/// The split over `protocol` through a relay impairing both directions with `impairment`
/// and `seed`.
pub fn run(protocol: Protocol, impairment: Impairment, seed: u64, want: &Reference) -> Outcome {
    let fail = |e: String| Outcome {
        verdict_ok: false,
        restored: false,
        resends: 0,
        stats: WireStats::default(),
        took: Duration::ZERO,
        error: Some(e),
        report: None,
    };
    match run_inner(protocol, impairment, seed, want) {
        Ok(o) => o,
        Err(e) => fail(e),
    }
}

fn relay(to: SocketAddr, udp: bool, impairment: Impairment, seed: u64) -> Result<Relay, String> {
    Relay::spawn(RelayConfig {
        listen: loopback(),
        to,
        udp,
        impairment,
        seed,
    })
    .map_err(|e| e.to_string())
}

/// Runs the split on `target` and checks it; `digest` reads the stub's machine after the
/// target is dropped.
fn check(
    mut target: Box<dyn DebugTarget>,
    name: &str,
    want: &Reference,
    digest: impl FnOnce() -> u64,
) -> Outcome {
    let t0 = Instant::now();
    let got = split_json(target.as_mut(), name);
    let took = t0.elapsed();
    let stats = target.stats().unwrap_or_default();
    let resends = stats.retransmissions;
    drop(target);
    let restored = digest() == want.digest;
    match got {
        Ok(report) => Outcome {
            verdict_ok: report == want.report,
            restored,
            resends,
            stats,
            took,
            error: None,
            report: Some(report),
        },
        Err(e) => Outcome {
            verdict_ok: false,
            restored,
            resends,
            stats,
            took,
            error: Some(e),
            report: None,
        },
    }
}

fn run_inner(
    protocol: Protocol,
    impairment: Impairment,
    seed: u64,
    want: &Reference,
) -> Result<Outcome, String> {
    let name = format!("{}-{seed}", protocol.name());
    match protocol {
        Protocol::Gdb { ack } => {
            let scenario = part4()?;
            let stub = serve_scenario(&scenario, loopback(), None, StubFeatures::FULL)
                .map_err(|e| e.to_string())?;
            let relay = relay(stub.addr(), false, impairment, seed)?;
            let options = GdbOptions {
                no_ack: !ack,
                ..GdbOptions::default()
            };
            let target = GdbTarget::connect_with(&relay.local_addr().to_string(), options)
                .map_err(|e| e.to_string())?;
            let out = check(Box::new(target), &name, want, || {
                stub.with_machine(|m| m.digest())
            });
            relay.shutdown();
            Ok(out)
        }
        Protocol::Kdcom => {
            let stub = KdStub::spawn_kdcom(boot()?, kd_options()?).map_err(|e| e.to_string())?;
            let relay = relay(stub.addr(), false, impairment, seed)?;
            let target =
                KdTarget::connect_kdcom(relay.local_addr(), PATIENCE).map_err(|e| e.to_string())?;
            let out = check(Box::new(target), &name, want, || {
                stub.with_machine(|m| m.digest())
            });
            relay.shutdown();
            Ok(out)
        }
        Protocol::Kdnet => {
            let key: Key = "1.2.3.4".parse().map_err(|e| format!("{e}"))?;
            let listener = KdnetListener::bind(loopback(), key).map_err(|e| e.to_string())?;
            let relay = relay(
                listener.local_addr().map_err(|e| e.to_string())?,
                true,
                impairment,
                seed,
            )?;
            let stub = KdStub::spawn_kdnet(boot()?, relay.local_addr(), key, kd_options()?)
                .map_err(|e| e.to_string())?;
            let target = listener.accept(PATIENCE).map_err(|e| e.to_string())?;
            let out = check(Box::new(target), &name, want, || {
                stub.with_machine(|m| m.digest())
            });
            relay.shutdown();
            Ok(out)
        }
    }
}

/// Reads `len` bytes at `nt`'s base over `protocol` through a relay with `impairment`;
/// returns whether they equal the simulator's and our packets sent again.
pub fn read_over(
    protocol: Protocol,
    impairment: Impairment,
    len: usize,
) -> Result<(bool, u64), String> {
    let mut sim = SimTarget::builtin("part4").ok_or("part4 does not boot")?;
    let base = sim.kernel_info().map_err(|e| e.to_string())?.kern_base;
    let mut want = vec![0u8; len];
    let n = sim
        .read_memory(base, &mut want)
        .map_err(|e| e.to_string())?;
    want.truncate(n);
    let mut got = vec![0u8; len];
    let read = |target: &mut dyn DebugTarget, got: &mut Vec<u8>| -> Result<u64, String> {
        let n = target.read_memory(base, got).map_err(|e| e.to_string())?;
        got.truncate(n);
        Ok(target.stats().map_or(0, |s| s.retransmissions))
    };
    let resends = match protocol {
        Protocol::Gdb { ack } => {
            let stub = serve_scenario(&part4()?, loopback(), None, StubFeatures::FULL)
                .map_err(|e| e.to_string())?;
            let relay = relay(stub.addr(), false, impairment, 0)?;
            let options = GdbOptions {
                no_ack: !ack,
                ..GdbOptions::default()
            };
            let mut target = GdbTarget::connect_with(&relay.local_addr().to_string(), options)
                .map_err(|e| e.to_string())?;
            let r = read(&mut target, &mut got);
            drop(target);
            relay.shutdown();
            r?
        }
        Protocol::Kdcom => {
            let stub = KdStub::spawn_kdcom(boot()?, kd_options()?).map_err(|e| e.to_string())?;
            let relay = relay(stub.addr(), false, impairment, 0)?;
            let mut target =
                KdTarget::connect_kdcom(relay.local_addr(), PATIENCE).map_err(|e| e.to_string())?;
            let r = read(&mut target, &mut got);
            drop(target);
            relay.shutdown();
            r?
        }
        Protocol::Kdnet => return Err("read_over: streams only".into()),
    };
    Ok((got == want, resends))
}

/// Prints where `got` differs from `want` (JSON paths), to stderr.
pub fn print_differences(want: &serde_json::Value, got: &serde_json::Value, path: &str) {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => print_differences(wv, gv, &p),
                    None => eprintln!("  {p}: missing"),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                print_differences(wv, gv, &format!("{path}[{i}]"));
            }
        }
        (w, g) if w != g => eprintln!("  {path}: want {w}, got {g}"),
        _ => {}
    }
}
