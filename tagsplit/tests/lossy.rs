#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The whole `part4` split over a lossy link, through the in-process relay: GDB and KDCOM
//! streams with bit flips and dropped bytes at 1e-4 per byte, KDNET datagrams with 10%
//! loss, 2% corruption and 2% duplication. Five seeds each: the verdict is the clean one
//! and the machine is restored byte for byte.

mod gdb_support;

use std::net::SocketAddr;
use std::time::Duration;

use gdb_support::{kd_options, part4};
use tagsplit::PoolTag;
use tagsplit::relay::{Relay, RelayConfig};
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::DebugTarget;
use tagsplit::target::gdb::{GdbOptions, GdbTarget};
use tagsplit::target::kd::{KdTarget, KdnetListener};
use tagsplit::target::sim::SimTarget;
use tagsplit_protocol::impair::Impairment;
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::server::gdb::StubFeatures;
use tagsplit_target_sim::server::kd::KdStub;

/// A give-up time against a hung connection (never a pass criterion).
const PATIENCE: Duration = Duration::from_secs(120);
/// Five seeds from 0 up (`skip` left out), or the one in `TAGSPLIT_LOSSY_SEED` (to replay
/// one).
fn seeds(skip: Option<u64>) -> Vec<u64> {
    match std::env::var("TAGSPLIT_LOSSY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => (0..6).filter(|s| Some(*s) != skip).take(5).collect(),
    }
}

fn stream_faults() -> Impairment {
    if std::env::var("ZERO").is_ok() {
        return Impairment::default();
    }
    Impairment {
        bit_flip: 1e-4,
        byte_drop: 1e-4,
        ..Impairment::default()
    }
}

fn datagram_faults() -> Impairment {
    Impairment {
        loss: 0.1,
        corrupt: 0.02,
        duplicate: 0.02,
        ..Impairment::default()
    }
}

fn relay(to: SocketAddr, udp: bool, seed: u64) -> Relay {
    Relay::spawn(RelayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        to,
        udp,
        impairment: if udp {
            datagram_faults()
        } else {
            stream_faults()
        },
        seed,
    })
    .unwrap()
}

/// The split's report without the target's name, as JSON.
fn split_json(target: &mut dyn DebugTarget, name: &str) -> serde_json::Value {
    let journal = std::env::temp_dir().join(format!(
        "tagsplit-lossy-{}-{name}.journal.json",
        std::process::id()
    ));
    let options = SplitOptions {
        journal: Some(journal),
        ..SplitOptions::default()
    };
    let report = Split::new(target, PoolTag::new(*b"Leak"), options)
        .run()
        .unwrap();
    let mut v = serde_json::to_value(&report).unwrap();
    v["target"] = serde_json::Value::Null;
    v
}

/// The clean split in process, and the machine's digest afterwards.
fn clean(name: &str) -> (serde_json::Value, u64) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut sim = SimTarget::builtin("part4").unwrap();
    let want = split_json(&mut sim, &format!("sim-{name}"));
    let leaks: Vec<_> = want["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "leak")
        .map(|s| s["new_tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(leaks, ["Lea2"], "{want:#}");
    (want, sim.machine().digest())
}

#[test]
fn split_over_lossy_gdb() {
    let (want, digest) = clean("gdb");
    for seed in seeds(None) {
        let stub = gdb_support::part4_stub(StubFeatures::FULL);
        let relay = relay(stub.addr(), false, seed);
        let options = GdbOptions {
            no_ack: false,
            ..GdbOptions::default()
        };
        let mut target = GdbTarget::connect_with(&relay.local_addr().to_string(), options).unwrap();
        let t0 = std::time::Instant::now();
        let got = split_json(&mut target, &format!("gdb-{seed}"));
        let took = t0.elapsed();
        assert_eq!(got, want, "seed {seed}");
        eprintln!(
            "gdb seed {seed}: split in {took:.2?}, {:?}, nudges {}",
            target.stats(),
            target.nudges()
        );
        drop(target);
        assert_eq!(stub.with_machine(|m| m.digest()), digest, "seed {seed}");
        relay.shutdown();
    }
}

#[test]
fn split_over_lossy_kdcom() {
    let (want, digest) = clean("kdcom");
    for seed in seeds(None) {
        let stub = KdStub::spawn_kdcom(part4(), kd_options()).unwrap();
        let relay = relay(stub.addr(), false, seed);
        let mut target = KdTarget::connect_kdcom(relay.local_addr(), PATIENCE).unwrap();
        let t0 = std::time::Instant::now();
        let got = split_json(&mut target, &format!("kdcom-{seed}"));
        let took = t0.elapsed();
        assert_eq!(got, want, "seed {seed}");
        eprintln!(
            "kdcom seed {seed}: split in {took:.2?}, {:?}",
            target.stats()
        );
        drop(target);
        assert_eq!(stub.with_machine(|m| m.digest()), digest, "seed {seed}");
        relay.shutdown();
    }
}

#[test]
fn split_over_lossy_kdnet() {
    let (want, digest) = clean("kdnet");
    let key: Key = "1.2.3.4".parse().unwrap();
    for seed in seeds(None) {
        let listener = KdnetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), key).unwrap();
        let relay = relay(listener.local_addr().unwrap(), true, seed);
        let stub = KdStub::spawn_kdnet(part4(), relay.local_addr(), key, kd_options()).unwrap();
        let mut target = listener.accept(PATIENCE).unwrap();
        let t0 = std::time::Instant::now();
        let got = split_json(&mut target, &format!("kdnet-{seed}"));
        let took = t0.elapsed();
        assert_eq!(got, want, "seed {seed}");
        eprintln!(
            "kdnet seed {seed}: split in {took:.2?}, {:?}",
            target.stats()
        );
        drop(target);
        assert_eq!(stub.with_machine(|m| m.digest()), digest, "seed {seed}");
        relay.shutdown();
    }
}
