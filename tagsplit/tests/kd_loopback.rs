#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The KD backend against the in-process KD stub over loopback, KDNET and KDCOM: the
//! same answers as the simulator in process.

use tagsplit::PoolTag;
use tagsplit::VirtAddr;
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, RunFor, StopReason};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::kd::KdStubOptions;

fn machine() -> Machine {
    Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
}

fn transports() -> [KdTransport; 2] {
    [
        KdTransport::Kdnet("1.2.3.4".parse().unwrap()),
        KdTransport::Kdcom,
    ]
}

fn options() -> KdStubOptions {
    KdStubOptions {
        default_run_ticks: Some(Scenario::builtin("part4").unwrap().default_run_ticks()),
        ..KdStubOptions::default()
    }
}

#[test]
fn memory_modules_search_and_runs_match_the_machine() {
    for transport in transports() {
        let mut lb = KdTarget::loopback(machine(), transport, options()).unwrap();
        let truth = lb.stub().unwrap().with_machine(|m| m.clone());
        // Modules by walking PsLoadedModuleList over the wire.
        let mods = lb.modules().unwrap();
        let want: Vec<(String, u64)> = truth
            .modules()
            .iter()
            .map(|m| (m.name.clone(), m.base.0))
            .collect();
        let got: Vec<(String, u64)> = mods.iter().map(|m| (m.name.clone(), m.base.0)).collect();
        assert_eq!(got, want, "{transport:?}");
        // Kernel info and the KDBG block through DebuggerDataList.
        let k = lb.kernel_info().unwrap();
        assert_eq!(k.kern_base, truth.kernel().kern_base);
        assert_eq!(k.kdbg, Some(truth.kernel().kdbg));
        // A read larger than one packet is chunked and exact.
        let nt = truth.kernel().kern_base;
        let mut buf = vec![0u8; 10_000];
        assert_eq!(lb.read_memory(nt, &mut buf).unwrap(), 10_000);
        let mut want = vec![0u8; 10_000];
        truth.read(nt, &mut want).unwrap();
        assert_eq!(buf, want);
        // A read into a hole stops short, like a real target.
        let mut hole = vec![0u8; 64];
        assert_eq!(lb.read_memory(VirtAddr(0x10), &mut hole).unwrap(), 0);
        // Search (SearchMemory) equals the simulator's search.
        let last = mods.last().unwrap();
        let (start, end) = (mods[0].base, last.end());
        let hits = lb.search_memory(start, end, b"Leak", 100).unwrap();
        assert_eq!(hits, truth.search(start, end, b"Leak", 100));
        assert!(hits.len() >= 2);
        // Writes land.
        let before = hits[0];
        assert_eq!(lb.write_memory(before, b"Lea1").unwrap(), 4);
        assert_eq!(
            lb.stub().unwrap().with_machine(|m| {
                let mut b = [0u8; 4];
                m.read(before, &mut b).unwrap();
                b
            }),
            *b"Lea1"
        );
        // Exact tick runs.
        let t0 = lb.stub().unwrap().with_machine(|m| m.tick());
        assert_eq!(lb.run(RunFor::Ticks(123)).unwrap(), StopReason::BreakIn);
        assert_eq!(lb.stub().unwrap().with_machine(|m| m.tick()) - t0, 123);
        assert_eq!(
            lb.default_run(),
            RunFor::Ticks(Scenario::builtin("part4").unwrap().default_run_ticks())
        );
        // A wall-clock run ends with a break-in.
        assert_eq!(
            lb.run(RunFor::Time(std::time::Duration::from_millis(50)))
                .unwrap(),
            StopReason::BreakIn
        );
        let stats = lb.stats().unwrap();
        assert!(
            stats.packets_sent > 10 && stats.bytes_received > 10_000,
            "{stats}"
        );
        assert!(stats.round_trips > 5);
        assert!(lb.prints().iter().any(|p| p.contains("KD stub")));
    }
}

#[test]
fn breakpoint_on_an_allocation_site_stops_the_workload() {
    for transport in transports() {
        let mut lb = KdTarget::loopback(machine(), transport, options()).unwrap();
        let site = lb.stub().unwrap().with_machine(|m| {
            m.sites()
                .into_iter()
                .find(|s| s.allocates && s.leaks)
                .unwrap()
                .instr
        });
        lb.set_breakpoint(site).unwrap();
        assert_eq!(
            lb.run(RunFor::Ticks(100_000)).unwrap(),
            StopReason::Breakpoint(site)
        );
        lb.clear_breakpoint(site).unwrap();
        assert_eq!(lb.run(RunFor::Ticks(10)).unwrap(), StopReason::BreakIn);
    }
}

fn split_json(target: &mut dyn DebugTarget) -> serde_json::Value {
    let journal = std::env::temp_dir().join(format!(
        "tagsplit-kd-test-{}-{}.journal.json",
        std::process::id(),
        target.describe().replace([':', '/', ',', '=', '.'], "_")
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

#[test]
fn split_over_kdnet_and_kdcom_equals_in_process() {
    let mut sim = SimTarget::builtin("part4").unwrap();
    let want = split_json(&mut sim);
    assert!(want["sites"].as_array().unwrap().len() >= 2);
    for transport in transports() {
        let mut lb = KdTarget::loopback(machine(), transport, options()).unwrap();
        let got = split_json(&mut lb);
        assert_eq!(got, want, "{transport:?}");
        let s = lb.stats().unwrap();
        assert!(s.packets_sent > 0);
        // The machine was restored exactly as in process.
        let digest = lb.stub().unwrap().with_machine(|m| m.digest());
        assert_eq!(digest, sim.machine().digest(), "{transport:?}");
    }
}

#[test]
fn a_second_debugger_can_attach_after_the_first_leaves() {
    use std::net::SocketAddr;
    use std::time::Duration;
    use tagsplit::target::kd::{KdTarget, KdnetListener};
    use tagsplit_target_sim::server::kd::KdStub;

    // KDNET: the stub pokes again once the first debugger has gone silent. The test holds
    // the debugger's socket, so the second debugger takes over the very same port.
    let key = "1.2.3.4".parse().unwrap();
    let sock = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let host = sock.local_addr().unwrap();
    let listener = KdnetListener::from_socket(sock.try_clone().unwrap(), key).unwrap();
    let opts = KdStubOptions {
        reconnect_after: Duration::from_millis(300),
        ..options()
    };
    let stub = KdStub::spawn_kdnet(machine(), host, key, opts.clone()).unwrap();
    let mut first = listener.accept(Duration::from_secs(20)).unwrap();
    assert!(!first.modules().unwrap().is_empty());
    // An idle debugger (longer than reconnect_after) keeps its session: the stub pokes
    // for a newcomer (seen through its handle), but the old debugger ignores the pokes and
    // carries on exactly.
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while !stub.soliciting() {
        assert!(
            std::time::Instant::now() < give_up,
            "the stub never poked again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = stub.with_machine(|m| m.tick());
    assert_eq!(first.run(RunFor::Ticks(7)).unwrap(), StopReason::BreakIn);
    assert_eq!(stub.with_machine(|m| m.tick()) - t0, 7);
    assert_eq!(stub.attaches(), 1);
    assert!(!stub.soliciting(), "the old debugger kept its session");
    drop(first);
    let listener = KdnetListener::from_socket(sock, key).unwrap();
    let mut second = listener.accept(Duration::from_secs(20)).unwrap();
    assert!(!second.modules().unwrap().is_empty());
    assert_eq!(stub.attaches(), 2);
    drop(second);
    drop(stub);

    // KDCOM: a new TCP connection is a new debugger.
    let stub = KdStub::spawn_kdcom(machine(), opts).unwrap();
    for _ in 0..2 {
        let mut t = KdTarget::connect_kdcom(stub.addr(), Duration::from_secs(20)).unwrap();
        assert_eq!(t.run(RunFor::Ticks(5)).unwrap(), StopReason::BreakIn);
    }
    assert_eq!(stub.attaches(), 2);
}

#[test]
fn small_reads_are_cached_while_stopped_and_dropped_on_write_and_run() {
    let mut lb = KdTarget::loopback(machine(), KdTransport::Kdcom, options()).unwrap();
    let nt = lb.stub().unwrap().with_machine(|m| m.kernel().kern_base);
    let rt = |t: &KdTarget| t.stats().unwrap().round_trips;
    let mut a = [0u8; 8];
    lb.read_memory(nt, &mut a).unwrap();
    let after_first = rt(&lb);
    let mut b = [0u8; 16];
    lb.read_memory(nt.saturating_add(0x100), &mut b).unwrap();
    assert_eq!(rt(&lb), after_first, "same block: no round trip");
    // A write is seen by the next read (the cache is dropped).
    assert_eq!(
        lb.write_memory(nt.saturating_add(0x100), b"WXYZ").unwrap(),
        4
    );
    lb.read_memory(nt.saturating_add(0x100), &mut b).unwrap();
    assert_eq!(&b[..4], b"WXYZ");
    // A read across a block edge is stitched from two blocks.
    let mut c = [0u8; 32];
    lb.read_memory(nt.saturating_add(0x3F0), &mut c).unwrap();
    let mut want = [0u8; 32];
    lb.stub()
        .unwrap()
        .with_machine(|m| m.read(nt.saturating_add(0x3F0), &mut want))
        .unwrap();
    assert_eq!(c, want);
    // Running drops the cache: memory the workload changed is read fresh.
    lb.run(RunFor::Ticks(3)).unwrap();
    let before = rt(&lb);
    lb.read_memory(nt, &mut a).unwrap();
    assert_eq!(rt(&lb), before + 1);
}
