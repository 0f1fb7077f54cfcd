#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! An [`Interrupt`] triggered from another thread while a wire target really runs (its
//! machine's clock is seen moving) breaks in through the backend's waker: the run
//! returns `Interrupted`, and the target is stopped and answers at once. The run asked
//! for (10^15 ticks) would never end by itself.

mod gdb_support;

use gdb_support::{kd_options, part4};

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use tagsplit::target::kd::{KdTarget, KdnetListener};
use tagsplit::target::{DebugTarget, Interrupt, RunFor, TargetError};
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::server::gdb::StubFeatures;
use tagsplit_target_sim::server::kd::KdStub;

/// A give-up time against a hung run (never a pass criterion).
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs `target` "forever" while a watcher thread triggers the interrupt once `clock`
/// shows the machine has advanced 1,000 ticks past where it was.
fn interrupt_a_running(target: &mut dyn DebugTarget, clock: &(dyn Fn() -> u64 + Sync)) {
    let interrupt = Interrupt::new();
    target.set_interrupt(Some(interrupt.clone()));
    let start = clock();
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            let give_up = Instant::now() + PATIENCE;
            while clock() < start + 1000 {
                assert!(Instant::now() < give_up, "the target never ran");
                // Not a spin: the stub needs the machine lock to make progress.
                std::thread::sleep(Duration::from_millis(1));
            }
            interrupt.trigger();
        });
        target.run(RunFor::Ticks(1_000_000_000_000_000))
    });
    assert!(matches!(r, Err(TargetError::Interrupted)), "{r:?}");
    // Stopped and answering.
    let mut b = [0u8; 2];
    let base = target.modules().unwrap()[0].base;
    assert_eq!(target.read_memory(base, &mut b).unwrap(), 2);
    assert_eq!(&b, b"MZ");
}

#[test]
fn an_interrupt_breaks_into_a_running_gdb_target() {
    let stub = gdb_support::part4_stub(StubFeatures::FULL);
    let mut target = tagsplit::target::open(&format!("gdb://{}", stub.addr())).unwrap();
    interrupt_a_running(target.as_mut(), &|| stub.with_machine(|m| m.tick()));
}

#[test]
fn an_interrupt_breaks_into_a_running_kdcom_target() {
    let stub = KdStub::spawn_kdcom(part4(), kd_options()).unwrap();
    let mut target = KdTarget::connect_kdcom(stub.addr(), PATIENCE).unwrap();
    interrupt_a_running(&mut target, &|| stub.with_machine(|m| m.tick()));
}

#[test]
fn an_interrupt_breaks_into_a_running_kdnet_target() {
    let key: Key = "1.2.3.4".parse().unwrap();
    let listener = KdnetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), key).unwrap();
    let stub =
        KdStub::spawn_kdnet(part4(), listener.local_addr().unwrap(), key, kd_options()).unwrap();
    let mut target = listener.accept(PATIENCE).unwrap();
    interrupt_a_running(&mut target, &|| stub.with_machine(|m| m.tick()));
}
