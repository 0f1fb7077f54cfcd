#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The `gdb://` backend against the simulator's stub: same answers as in process, with a
//! full stub and with a basic one (no qXfer, no qSearch, no X, no no-ack).

mod gdb_support;

use tagsplit::console::Console;
use tagsplit::pool;
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::gdb::GdbTarget;
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{CachedTarget, DebugTarget, RunFor, StopReason, TargetError};
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_protocol::gdb::frame::{Decoder, Event, encode_packet};
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::server::gdb::{BUSY_MESSAGE, GdbStubHandle, StubFeatures};

fn part4() -> Scenario {
    Scenario::builtin("part4").unwrap()
}

fn stub(features: StubFeatures) -> GdbStubHandle {
    gdb_support::part4_stub(features)
}

fn connect(stub: &GdbStubHandle) -> GdbTarget {
    GdbTarget::connect(&stub.addr().to_string()).unwrap()
}

/// myfault.sys on `t`, and its two `Leak` hits.
fn myfault_leak_hits(t: &mut dyn DebugTarget) -> (tagsplit::target::ModuleInfo, Vec<VirtAddr>) {
    let myfault = t
        .modules()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "myfault.sys")
        .unwrap();
    let hits = t
        .search_memory(myfault.base, myfault.end(), b"Leak", 10)
        .unwrap();
    assert_eq!(hits.len(), 2);
    (myfault, hits)
}

/// Everything the console and the split read, compared between the wire and in process.
fn same_view_as_in_process(features: StubFeatures) {
    let stub = stub(features);
    let mut wire = connect(&stub);
    let mut sim = SimTarget::boot(&part4()).unwrap();
    assert_eq!(wire.kernel_info().unwrap(), sim.kernel_info().unwrap());
    assert_eq!(wire.modules().unwrap(), sim.modules().unwrap());
    let (myfault, hits) = myfault_leak_hits(&mut wire);
    assert_eq!(
        hits,
        sim.search_memory(myfault.base, myfault.end(), b"Leak", 10)
            .unwrap()
    );
    // A search across unmapped holes still finds both. With qSearch the stub skips the
    // holes between nt and the drivers (hundreds of GiB); reading page by page is only
    // asked to cross the hole right before myfault's block of mappings.
    let hole_before = stub.with_machine(|m| gdb_support::hole_below(m, myfault.base));
    let from = if features.search {
        sim.modules().unwrap()[0].base
    } else {
        VirtAddr(hole_before.0.get().max(hole_before.1.get() - 16 * 0x1000))
    };
    assert!(hole_before.1 > hole_before.0, "a hole before myfault");
    let wide = wire
        .search_memory(from, myfault.end(), b"Leak", 10)
        .unwrap();
    assert_eq!(
        wide,
        sim.search_memory(from, myfault.end(), b"Leak", 10).unwrap()
    );
    assert!(wide.ends_with(&hits), "{wide:?}");
    // Writes land and read back; a write across into unmapped memory stops short.
    assert_eq!(
        wire.write_memory(hits[0].saturating_add(3), b"1").unwrap(),
        1
    );
    let mut four = [0u8; 4];
    assert_eq!(wire.read_memory(hits[0], &mut four).unwrap(), 4);
    assert_eq!(&four, b"Lea1");
    assert_eq!(
        stub.with_machine(|m| m.search(hits[0], hits[0].saturating_add(4), b"Lea1", 1))
            .len(),
        1
    );
    // A read larger than a packet is chunked and equals the stub machine's memory.
    let mut big = vec![0u8; (3 * 0x4000 + 5).min(myfault.size as usize)];
    assert_eq!(wire.read_memory(myfault.base, &mut big).unwrap(), big.len());
    let mut direct = vec![0u8; big.len()];
    stub.with_machine(|m| m.read(myfault.base, &mut direct))
        .unwrap();
    assert!(
        big == direct,
        "chunked read differs from the machine's memory"
    );
    let mut none = [0u8; 8];
    assert_eq!(wire.read_memory(VirtAddr(0x1000), &mut none).unwrap(), 0);
    // Pool usage through the KDBG block, as the console does in process.
    assert_eq!(
        pool::snapshot(&mut wire).unwrap(),
        pool::snapshot(&mut sim).unwrap()
    );
    let mut console = Console::new();
    assert_eq!(
        console.execute(&mut wire, "!poolused 2"),
        Console::new().execute(&mut sim, "!poolused 2")
    );
    let stats = wire.stats().unwrap();
    assert!(
        stats.round_trips > 5 && stats.bytes_received > stats.round_trips,
        "{stats}"
    );
    // No assertion on re-sends: the reply timer's floor is 2 ms, and a machine running
    // other work can hold a thread longer than that; a copy sent again is harmless, and
    // what came back is checked above.
    drop(wire);
    drop(stub.shutdown());
}

#[test]
fn full_stub_gives_the_same_view_as_in_process() {
    same_view_as_in_process(StubFeatures::FULL);
}

#[test]
fn basic_stub_degrades_but_gives_the_same_view() {
    same_view_as_in_process(StubFeatures::BASIC);
}

#[test]
fn basic_stub_caps_are_detected() {
    let stub = stub(StubFeatures::BASIC);
    let mut wire = connect(&stub);
    let caps = wire.caps();
    assert!(!caps.libraries && !caps.run_limit);
    let myfault = wire
        .modules()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "myfault.sys")
        .unwrap();
    wire.search_memory(myfault.base, myfault.end(), b"Leak", 2)
        .unwrap();
    wire.write_memory(myfault.base, b"MZ").unwrap();
    let caps = wire.caps();
    assert!(!caps.search && !caps.binary_write, "{caps:?}");
}

#[test]
fn exact_runs_advance_the_machine_by_the_ticks_asked() {
    let stub = stub(StubFeatures::FULL);
    let mut wire = connect(&stub);
    let before = stub.with_machine(|m| m.tick());
    assert_eq!(wire.run(RunFor::Ticks(37)).unwrap(), StopReason::BreakIn);
    assert_eq!(stub.with_machine(|m| m.tick()) - before, 37);
    assert_eq!(
        wire.default_run(),
        RunFor::Ticks(part4().default_run_ticks())
    );
}

#[test]
fn timed_run_is_interrupted() {
    let stub = stub(StubFeatures::BASIC);
    let mut wire = connect(&stub);
    let before = stub.with_machine(|m| m.tick());
    let started = std::time::Instant::now();
    assert_eq!(
        wire.run(RunFor::Time(std::time::Duration::from_millis(150)))
            .unwrap(),
        StopReason::BreakIn
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let ran = stub.with_machine(|m| m.tick()) - before;
    assert!(ran > 0, "the machine ran while continued");
    // It is stopped now: memory access works again.
    assert!(wire.modules().is_ok());
}

#[test]
fn one_client_at_a_time_and_detach_leaves_the_stub_ready() {
    let stub = stub(StubFeatures::FULL);
    let first = connect(&stub);
    match GdbTarget::connect(&stub.addr().to_string()) {
        Err(TargetError::Protocol(msg)) => assert!(msg.contains(BUSY_MESSAGE), "{msg}"),
        other => panic!("second client was not refused: {other:?}"),
    }
    first.detach().unwrap();
    // The stub notices the detach and takes the next client.
    let mut second = (0..50)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            GdbTarget::connect(&stub.addr().to_string()).ok()
        })
        .expect("stub ready after detach");
    assert!(!second.modules().unwrap().is_empty());
    drop(second);
    // Dropping a target detaches too.
    assert!((0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        GdbTarget::connect(&stub.addr().to_string()).is_ok()
    }));
}

#[test]
fn open_scheme_reaches_the_stub() {
    let stub = stub(StubFeatures::FULL);
    let spec = format!("gdb://{}", stub.addr());
    let mut t = tagsplit::target::open(&spec).unwrap();
    assert_eq!(t.describe(), spec);
    assert!(t.kernel_info().unwrap().kdbg.is_some());
    assert!(tagsplit::target::open("gdb://").is_err());
}

type Usage = Vec<(String, u64, i128, Vec<i128>)>;

fn split_report(target: &mut dyn DebugTarget) -> (Vec<String>, Usage) {
    let report = Split::new(target, PoolTag::new(*b"Leak"), SplitOptions::default())
        .run()
        .unwrap();
    let leaks = report
        .leaks()
        .map(|s| format!("{} {}", s.new_tag, s.hit.location()))
        .collect();
    let usage = report
        .sites
        .iter()
        .map(|s| {
            (
                s.new_tag.to_string(),
                s.allocs(),
                s.net_growth(),
                s.growth.clone(),
            )
        })
        .collect();
    (leaks, usage)
}

/// Requirement 5: the split over the wire gives the in-process verdict and numbers.
#[test]
fn split_over_the_wire_matches_in_process() {
    let stub = stub(StubFeatures::FULL);
    let mut wire = connect(&stub);
    let mut sim = SimTarget::boot(&part4()).unwrap();
    let over_wire = split_report(&mut wire);
    let in_process = split_report(&mut sim);
    assert_eq!(over_wire, in_process);
    assert_eq!(over_wire.0, vec!["Lea2 myfault.sys+0x1621".to_string()]);
    let stats = wire.stats().unwrap();
    eprintln!("part4 split over gdb (full stub): {stats}");
    assert!(stats.round_trips < 2000, "{stats}");
    // And the console's !poolused afterwards agrees too.
    assert_eq!(
        Console::new().execute(&mut wire, "!poolused 2"),
        Console::new().execute(&mut sim, "!poolused 2")
    );
}

/// Without qSearch but with a memory map, the fallback search reads only mapped memory, so
/// it crosses the hundreds of GiB between nt and the drivers in a bounded number of reads.
#[test]
fn search_without_qsearch_uses_the_memory_map_to_skip_holes() {
    let features = StubFeatures {
        search: false,
        ..StubFeatures::FULL
    };
    let stub = stub(features);
    let mut wire = connect(&stub);
    let mut sim = SimTarget::boot(&part4()).unwrap();
    let mods = sim.modules().unwrap();
    let (nt, myfault) = (
        mods[0].clone(),
        mods.iter()
            .find(|m| m.name == "myfault.sys")
            .unwrap()
            .clone(),
    );
    let before = wire.stats().unwrap().round_trips;
    let hits = wire
        .search_memory(nt.end(), myfault.end(), b"Leak", 10)
        .unwrap();
    assert_eq!(
        hits,
        sim.search_memory(nt.end(), myfault.end(), b"Leak", 10)
            .unwrap()
    );
    assert!(hits.len() >= 2);
    let caps = wire.caps();
    assert!(!caps.search && caps.memory_map, "{caps:?}");
    let used = wire.stats().unwrap().round_trips - before;
    let mapped: u64 = stub.with_machine(|m| {
        m.memory()
            .regions()
            .filter(|r| r.end.get() > nt.end().get() && r.start.get() < myfault.end().get())
            .map(|r| r.end.get() - r.start.get())
            .sum()
    });
    // About one 16 KiB read per mapped 16 KiB, plus a qSearch probe and the map.
    assert!(
        used <= mapped / 0x3fe0 + 64,
        "{used} round trips for {mapped:#x} mapped bytes"
    );
}

#[test]
fn breakpoints_go_through_the_trait_as_z0_packets() {
    let stub = stub(StubFeatures::FULL);
    let mut wire = connect(&stub);
    let site = stub.with_machine(|m| {
        m.sites()
            .into_iter()
            .find(|s| s.allocates && s.leaks)
            .unwrap()
            .instr
    });
    wire.set_breakpoint(site).unwrap();
    assert_eq!(
        wire.run(RunFor::Ticks(100_000)).unwrap(),
        StopReason::Breakpoint(site)
    );
    wire.clear_breakpoint(site).unwrap();
    assert_eq!(wire.run(RunFor::Ticks(10)).unwrap(), StopReason::BreakIn);
}

#[test]
fn a_cached_basic_stub_walks_the_module_list_in_fewer_round_trips() {
    let stub = stub(StubFeatures::BASIC);
    let mut plain = connect(&stub);
    let before = plain.stats().unwrap().round_trips;
    let mods = plain.modules().unwrap();
    let uncached = plain.stats().unwrap().round_trips - before;
    drop(plain);
    let mut cached = CachedTarget::new(connect(&stub));
    let before = cached.stats().unwrap().round_trips;
    assert_eq!(cached.modules().unwrap(), mods);
    let first = cached.stats().unwrap().round_trips - before;
    assert!(
        first < uncached,
        "{first} round trips cached, {uncached} without"
    );
    // Stopped, nothing changed: the second walk costs nothing but the kernel info.
    let before = cached.stats().unwrap().round_trips;
    assert_eq!(cached.modules().unwrap(), mods);
    assert!(cached.stats().unwrap().round_trips - before < first);
}

/// A stub whose target has exited answers every command with `W00` (QEMU after its guest
/// quit, gdbserver after its process ended): a read fails with "disconnected", not with a
/// malformed reply, and nothing is sent after it.
#[test]
fn an_exited_target_fails_every_request_after_it() {
    let (addr, server) = fake_stub(|ev, out| {
        let Event::Packet(p) = ev else { return };
        let reply: &[u8] = match p.as_slice() {
            p if p.starts_with(b"qSupported") => b"PacketSize=4000",
            b"?" => b"T05thread:01;",
            p if p.starts_with(b"m") => b"W00",
            _ => b"",
        };
        out.push(b'+');
        out.extend(encode_packet(reply, false));
    });
    let mut t = GdbTarget::connect(&addr.to_string()).unwrap();
    let mut buf = [0u8; 4];
    assert!(matches!(
        t.read_memory(VirtAddr(0x1000), &mut buf),
        Err(TargetError::Disconnected)
    ));
    let reads_so_far = 1;
    assert!(matches!(
        t.read_memory(VirtAddr(0x2000), &mut buf),
        Err(TargetError::Disconnected)
    ));
    drop(t);
    let seen = server.join().unwrap();
    let reads = seen.iter().filter(|p| p.starts_with('m')).count();
    assert_eq!(reads, reads_so_far, "{seen:?}");
}

/// A stub of our own making on 127.0.0.1:0 for one client: `answer` gets each decoded
/// event and appends what to send back. The thread gives back every packet seen, as
/// text, when the client goes.
fn fake_stub(
    mut answer: impl FnMut(&Event, &mut Vec<u8>) + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_nodelay(true).unwrap();
        let mut decoder = Decoder::default();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return seen,
                Ok(n) => n,
            };
            let mut out = Vec::new();
            for ev in decoder.decode(&buf[..n]) {
                if let Event::Packet(p) = &ev {
                    seen.push(String::from_utf8_lossy(p).into_owned());
                }
                answer(&ev, &mut out);
            }
            if conn.write_all(&out).is_err() {
                return seen;
            }
        }
    });
    (addr, server)
}

/// A no-ack stub of our own making whose memory byte at `a` is `a & 0xff`: it answers
/// `m` and `qC`, damages the reply to the `m` commands numbered in `damage` (counting
/// from 1) and ignores those numbered in `drop` (as if the command were lost on the way).
/// Returns the listener's address and the thread, which gives back every command seen.
fn scripted_stub(
    damage: &'static [usize],
    drop: &'static [usize],
) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    let mut reads = 0usize;
    let mut acks = true;
    fake_stub(move |ev, out| {
        let Event::Packet(p) = ev else { return };
        let text = String::from_utf8_lossy(p).into_owned();
        if acks {
            out.push(b'+');
        }
        let reply: Vec<u8> = if text.starts_with("qSupported") {
            b"PacketSize=4000;QStartNoAckMode+".to_vec()
        } else if text == "QStartNoAckMode" {
            acks = false;
            b"OK".to_vec()
        } else if text == "?" {
            b"T05thread:01;".to_vec()
        } else if text == "qC" {
            b"QC1".to_vec()
        } else if let Some(args) = text.strip_prefix('m') {
            reads += 1;
            if drop.contains(&reads) {
                return;
            }
            let (a, l) = args.split_once(',').unwrap();
            let a = u64::from_str_radix(a, 16).unwrap();
            let l = u64::from_str_radix(l, 16).unwrap();
            (a..a + l)
                .flat_map(|x| format!("{:02x}", x & 0xff).into_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let mut frame = encode_packet(&reply, false);
        if text.starts_with('m') && damage.contains(&reads) {
            let last = frame.len() - 1;
            frame[last] = if frame[last] == b'0' { b'1' } else { b'0' };
        }
        out.extend(frame);
    })
}

/// Eight scattered reads, pipelined, against [`scripted_stub`]: `(the bytes each read
/// got right, round trips they took (`None` when a timer fired on a loaded machine and
/// sent something again), the commands the stub saw)`.
fn eight_reads(
    damage: &'static [usize],
    lose: &'static [usize],
) -> (bool, Option<u64>, Vec<String>) {
    let (addr, server) = scripted_stub(damage, lose);
    let mut t = GdbTarget::connect(&addr.to_string()).unwrap();
    let before = t.stats().unwrap();
    let addrs: Vec<VirtAddr> = (0..8u64).map(|i| VirtAddr(0x1000 + i * 0x110)).collect();
    let mut bufs = vec![[0u8; 16]; 8];
    let mut reads: Vec<(VirtAddr, &mut [u8])> = addrs
        .iter()
        .copied()
        .zip(bufs.iter_mut().map(|b| &mut b[..]))
        .collect();
    let got = t.read_fresh_many(&mut reads).unwrap();
    std::mem::drop(reads);
    let right = got.iter().all(|&n| n == 16)
        && addrs.iter().zip(&bufs).all(|(a, b)| {
            b.iter()
                .enumerate()
                .all(|(i, &x)| u64::from(x) == (a.get() + i as u64) & 0xff)
        });
    let after = t.stats().unwrap();
    let resent = after.retransmissions - before.retransmissions;
    let expected_resends = damage.len() as u64;
    let trips = (resent == expected_resends).then_some(after.round_trips - before.round_trips);
    std::mem::drop(t);
    (right, trips, server.join().unwrap())
}

/// In no-ack mode scattered reads go out back to back: one round trip for eight.
#[test]
fn scattered_reads_are_pipelined_in_one_round_trip() {
    let (right, trips, seen) = eight_reads(&[], &[]);
    assert!(right);
    if let Some(trips) = trips {
        assert_eq!(trips, 1);
        assert_eq!(seen.iter().filter(|c| c.starts_with('m')).count(), 8);
    }
}

/// A damaged reply in a burst takes its command's place: the other seven are kept and
/// only that read goes out again.
#[test]
fn a_damaged_reply_in_a_burst_costs_only_its_own_read_again() {
    let (right, trips, seen) = eight_reads(&[3], &[]);
    assert!(right);
    let reads: Vec<&String> = seen.iter().filter(|c| c.starts_with('m')).collect();
    assert_eq!(reads[8], reads[2], "{seen:?}");
    if let Some(trips) = trips {
        assert_eq!(trips, 2);
        assert_eq!(reads.len(), 9, "{seen:?}");
    }
}

/// A command lost in a burst would shift every later reply onto the wrong read: the burst
/// comes up short, is drained with the `qC` barrier, and every read goes out again one by
/// one, each with the right bytes.
#[test]
fn a_burst_that_comes_up_short_is_drained_and_sent_again_one_by_one() {
    let (right, _, seen) = eight_reads(&[], &[4]);
    assert!(right);
    // (The first `qC` is the connection's: whether the stub answers it.)
    let mut after_barrier: Vec<&String> = seen
        .iter()
        .skip_while(|c| c.as_str() != "qC")
        .skip(1)
        .skip_while(|c| c.as_str() != "qC")
        .filter(|c| c.starts_with('m'))
        .collect();
    // (A read may go twice when its timer fires on a loaded machine.)
    after_barrier.dedup();
    assert_eq!(after_barrier.len(), 8, "{seen:?}");
}

/// `search_many` cuts ranges into pieces searched side by side: the hits are those of
/// one `search_memory` per range, in order and capped, including a match written across
/// a piece's edge and overlapping matches.
#[test]
fn searching_many_ranges_finds_what_searching_each_finds() {
    use tagsplit::target::gdb::SEARCH_PIECE;
    let stub = stub(StubFeatures::FULL);
    let mut wire = connect(&stub);
    let mods = wire.modules().unwrap();
    let nt = mods[0].clone();
    assert!(nt.size > 2 * SEARCH_PIECE, "{nt:?}");
    // A pattern across the edge of the first piece, and an overlapping run of it.
    let edge = nt.base.saturating_add(SEARCH_PIECE - 3);
    let pattern = b"\xf1\xf2\xf1\xf2\xf1";
    assert_eq!(wire.write_memory(edge, pattern).unwrap(), pattern.len());
    let ranges: Vec<(VirtAddr, VirtAddr, usize)> = mods
        .iter()
        .map(|m| (m.base, m.end(), 1000))
        .chain([(nt.base, nt.end(), 1), (nt.base, nt.base, 5)])
        .collect();
    for pat in [&b"\xf1\xf2\xf1"[..], b"Lea", b"\x48\x89"] {
        let before = wire.stats().unwrap().round_trips;
        let many = wire.search_many(&ranges, pat).unwrap();
        let trips = wire.stats().unwrap().round_trips - before;
        let before = wire.stats().unwrap().round_trips;
        let each: Vec<Vec<VirtAddr>> = ranges
            .iter()
            .map(|&(s, e, max)| wire.search_memory(s, e, pat, max).unwrap())
            .collect();
        let one_by_one = wire.stats().unwrap().round_trips - before;
        assert_eq!(many, each, "{pat:?}");
        assert!(trips < one_by_one, "{pat:?}: {trips} vs {one_by_one}");
    }
    let crossing = wire.search_many(&ranges[..1], b"\xf1\xf2\xf1").unwrap();
    assert_eq!(crossing[0], [edge, edge.saturating_add(2)]);
}

/// A stub whose target still runs when we attach answers `?` only once it stops: the
/// client interrupts it (the `0x03` byte) and attaches.
#[test]
fn a_target_still_running_on_attach_is_interrupted() {
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = running.clone();
    let (addr, server) = fake_stub(move |ev, out| {
        use std::sync::atomic::Ordering;
        let reply: &[u8] = match ev {
            Event::Interrupt if still.swap(false, Ordering::SeqCst) => b"T02thread:01;",
            Event::Packet(p) => {
                out.push(b'+');
                match p.as_slice() {
                    b"?" if still.load(Ordering::SeqCst) => return,
                    b"?" => b"T02thread:01;",
                    p if p.starts_with(b"qSupported") => b"PacketSize=4000",
                    p if p.starts_with(b"m") => b"2a",
                    _ => b"",
                }
            }
            _ => return,
        };
        out.extend(encode_packet(reply, false));
    });
    let mut t = GdbTarget::connect(&addr.to_string()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(t.read_memory(VirtAddr(0x1000), &mut b).unwrap(), 1);
    assert_eq!(b, [0x2a]);
    drop(t);
    server.join().unwrap();
    // Interrupted once: the stub answered `?` after it.
    assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
}

/// A restore is verified with one `qCRC` per patch (pipelined) where the stub answers it:
/// the CRC the stub computes is the one of the bytes read, and restored sites check out.
#[test]
fn a_restore_is_verified_with_qcrc() {
    use tagsplit::split::PatchGuard;
    use tagsplit::split::journal::{PatchRecord, RestoreState, restore_many};
    let stub = stub(StubFeatures::FULL);
    let mut wire = connect(&stub);
    let (myfault, hits) = myfault_leak_hits(&mut wire);
    let mut bytes = [0u8; 64];
    wire.read_memory(myfault.base, &mut bytes).unwrap();
    let crcs = wire.crc32_many(&[(myfault.base, 64)]).unwrap().unwrap();
    assert_eq!(crcs, [Some(tagsplit_protocol::gdb::crc32(&bytes))]);
    let records: Vec<PatchRecord> = hits
        .iter()
        .zip([b"Lea1", b"Lea2"])
        .map(|(&a, new)| PatchRecord {
            module: myfault.name.clone(),
            base: myfault.base,
            timestamp: None,
            offset: a.get() - myfault.base.get(),
            address: a,
            original: b"Leak".to_vec(),
            new: new.to_vec(),
        })
        .collect();
    let mut guard = PatchGuard::new(&mut wire);
    guard.apply_many(&records).unwrap();
    std::mem::forget(guard);
    let before = wire.stats().unwrap();
    let states = restore_many(&mut wire, &records);
    assert_eq!(states, [RestoreState::Restored, RestoreState::Restored]);
    assert!(wire.caps().crc);
    let after = wire.stats().unwrap();
    if after.retransmissions == before.retransmissions {
        // Check, write, CRC: three bursts for both patches.
        assert_eq!(after.round_trips - before.round_trips, 3);
    }
    for a in hits {
        let mut b = [0u8; 4];
        wire.read_memory(a, &mut b).unwrap();
        assert_eq!(&b, b"Leak");
    }
}

/// A stub that answers a read with a frame that never ends, one byte at a time: the read
/// fails (time-out) instead of waiting for ever, in no-ack mode and in ack mode.
#[test]
fn a_reply_that_trickles_for_ever_ends_in_a_time_out() {
    use std::io::{Read, Write};
    use tagsplit::target::gdb::GdbOptions;
    for no_ack in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_nodelay(true).unwrap();
            let mut decoder = Decoder::default();
            let mut acks = true;
            let mut buf = [0u8; 4096];
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                for ev in decoder.decode(&buf[..n]) {
                    let Event::Packet(p) = ev else { continue };
                    let mut out = if acks { b"+".to_vec() } else { Vec::new() };
                    let reply: &[u8] = match p.as_slice() {
                        p if p.starts_with(b"qSupported") => b"PacketSize=4000;QStartNoAckMode+",
                        b"QStartNoAckMode" => {
                            acks = false;
                            b"OK"
                        }
                        b"?" => b"T05thread:01;",
                        b"qC" => b"QC1",
                        p if p.starts_with(b"m") => {
                            // `$` and then a digit every 10 ms until the client goes.
                            out.push(b'$');
                            if conn.write_all(&out).is_err() {
                                return;
                            }
                            while conn.write_all(b"0").is_ok() {
                                std::thread::sleep(std::time::Duration::from_millis(10));
                            }
                            return;
                        }
                        _ => b"",
                    };
                    out.extend(encode_packet(reply, false));
                    if conn.write_all(&out).is_err() {
                        return;
                    }
                }
            }
        });
        let options = GdbOptions {
            timeout: std::time::Duration::from_millis(100),
            no_ack,
        };
        let mut t = GdbTarget::connect_with(&addr.to_string(), options).unwrap();
        let mut b = [0u8; 4];
        let r = t.read_fresh(VirtAddr(0x1000), &mut b);
        assert!(
            matches!(r, Err(TargetError::Timeout)),
            "no_ack {no_ack}: {r:?}"
        );
        drop(t);
        server.join().unwrap();
    }
}
