//! GDB RSP stub throughput: our `ServerSession` against the `gdbstub` crate (0.7.10), the
//! best-known Rust GDB stub, measured in the same run with the same packets.
//!
//! Both sides get the same job: frame + checksum + parse + dispatch + a memory/register
//! callback + reply encoding, fed from memory (no sockets). The peer is primed the way gdb
//! primes a stub (`qSupported` first) and uses its default 4 KiB packet buffer; the
//! "after a large m" cases show the cost that buffer reuse adds to small packets there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tagsplit_protocol::gdb::{frame, hex};

/// Frames `payload` as `$payload#cs`.
fn frame(payload: &str) -> Vec<u8> {
    let cs = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${payload}#{cs:02x}").into_bytes()
}

/// gdb 13.1's `qSupported`, which both stubs are primed with.
const QSUPPORTED: &str = "qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+";

/// `X addr,1:A` framed (binary data is framed as is).
fn x_packet() -> Vec<u8> {
    frame("X10000,1:A")
}

/// The packets both stubs are measured on: (name, packet bytes).
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("m addr,1", frame("m10000,1")),
        ("m addr,100", frame("m10000,100")),
        ("m addr,1000", frame("m10000,1000")),
        ("m addr,1000 zeros", frame(&format!("m{ZERO_BASE:x},1000"))),
        ("g", frame("g")),
        ("?", frame("?")),
        ("X addr,1", x_packet()),
        ("Z0", frame("Z0,10010,1")),
        ("vCont;c", frame("vCont;c")),
        ("unknown qZ", frame("qZ")),
    ]
}

/// Where the zero-filled half of the memory starts.
const ZERO_BASE: u64 = MEM_BASE + (MEM_SIZE as u64) / 2;

/// The memory both stubs serve: a pattern with few runs, then zeros.
fn memory() -> Vec<u8> {
    (0..MEM_SIZE)
        .map(|i| if i < MEM_SIZE / 2 { (i * 7) as u8 } else { 0 })
        .collect()
}

const MEM_BASE: u64 = 0x10000;
const MEM_SIZE: usize = 0x10000;

mod peer {
    //! The gdbstub side: a flat 64 KiB memory at `MEM_BASE` and an x86-64 register file.
    use gdbstub::common::Signal;
    use gdbstub::conn::Connection;
    use gdbstub::stub::GdbStub;
    use gdbstub::stub::SingleThreadStopReason;
    use gdbstub::stub::state_machine::GdbStubStateMachine;
    use gdbstub::target::ext::base::BaseOps;
    use gdbstub::target::ext::base::singlethread::{
        SingleThreadBase, SingleThreadResume, SingleThreadResumeOps,
    };
    use gdbstub::target::ext::breakpoints::{
        Breakpoints, BreakpointsOps, SwBreakpoint, SwBreakpointOps,
    };
    use gdbstub::target::{Target, TargetResult};
    use gdbstub_arch::x86::X86_64_SSE;
    use gdbstub_arch::x86::reg::X86_64CoreRegs;

    use super::{MEM_BASE, MEM_SIZE};

    pub struct Sink(pub Vec<u8>);

    impl Connection for Sink {
        type Error = ();
        fn write(&mut self, byte: u8) -> Result<(), ()> {
            self.0.push(byte);
            Ok(())
        }
        fn write_all(&mut self, buf: &[u8]) -> Result<(), ()> {
            self.0.extend_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), ()> {
            Ok(())
        }
    }

    pub struct FlatTarget {
        pub mem: Vec<u8>,
        pub regs: X86_64CoreRegs,
    }

    impl Target for FlatTarget {
        type Arch = X86_64_SSE;
        type Error = ();
        fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
            BaseOps::SingleThread(self)
        }
        fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
            true
        }
        fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
            Some(self)
        }
    }

    impl Breakpoints for FlatTarget {
        fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
            Some(self)
        }
    }

    impl SwBreakpoint for FlatTarget {
        fn add_sw_breakpoint(&mut self, _addr: u64, _kind: usize) -> TargetResult<bool, Self> {
            Ok(true)
        }
        fn remove_sw_breakpoint(&mut self, _addr: u64, _kind: usize) -> TargetResult<bool, Self> {
            Ok(true)
        }
    }

    impl SingleThreadBase for FlatTarget {
        fn read_registers(&mut self, regs: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
            *regs = self.regs.clone();
            Ok(())
        }
        fn write_registers(&mut self, regs: &X86_64CoreRegs) -> TargetResult<(), Self> {
            self.regs = regs.clone();
            Ok(())
        }
        fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
            let off = start.wrapping_sub(MEM_BASE) as usize;
            let avail = MEM_SIZE.saturating_sub(off).min(data.len());
            if off >= MEM_SIZE {
                return Ok(0);
            }
            data[..avail].copy_from_slice(&self.mem[off..off + avail]);
            Ok(avail)
        }
        fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
            let off = start.wrapping_sub(MEM_BASE) as usize;
            if off + data.len() > MEM_SIZE {
                return Err(gdbstub::target::TargetError::NonFatal);
            }
            self.mem[off..off + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
            Some(self)
        }
    }

    impl SingleThreadResume for FlatTarget {
        fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    pub struct Peer {
        pub target: FlatTarget,
        pub sm: Option<GdbStubStateMachine<'static, FlatTarget, Sink>>,
    }

    impl Peer {
        pub fn new() -> Peer {
            let mut target = FlatTarget {
                mem: super::memory(),
                regs: X86_64CoreRegs::default(),
            };
            let stub = GdbStub::new(Sink(Vec::new()));
            let sm = stub.run_state_machine(&mut target).unwrap();
            let mut p = Peer {
                target,
                sm: Some(sm),
            };
            // Prime as gdb does.
            p.feed(&super::frame(super::QSUPPORTED));
            p.feed(b"+");
            p
        }

        /// Feeds bytes; returns the number of reply bytes produced.
        pub fn feed(&mut self, bytes: &[u8]) -> usize {
            let mut sm = self.sm.take().unwrap();
            for &b in bytes {
                sm = match sm {
                    GdbStubStateMachine::Idle(s) => s.incoming_data(&mut self.target, b).unwrap(),
                    GdbStubStateMachine::Running(s) => {
                        s.incoming_data(&mut self.target, b).unwrap()
                    }
                    other => other,
                };
            }
            // The target stops at once (as ours does): report it, which sends the reply.
            if let GdbStubStateMachine::Running(s) = sm {
                sm = s
                    .report_stop(&mut self.target, SingleThreadStopReason::SwBreak(()))
                    .unwrap();
            }
            let n = match &mut sm {
                GdbStubStateMachine::Idle(s) => {
                    let c = s.borrow_conn();
                    let n = c.0.len();
                    c.0.clear();
                    n
                }
                GdbStubStateMachine::Running(s) => {
                    let c = s.borrow_conn();
                    let n = c.0.len();
                    c.0.clear();
                    n
                }
                _ => 0,
            };
            self.sm = Some(sm);
            n
        }
    }
}

mod ours {
    //! Our side: the protocol's GDB stub core (`gdb::stub::Stub`: framing, acks, typed
    //! command parse, dispatch, reply encoding) over the same flat 64 KiB memory and
    //! register file; its replies are moved into one reused buffer, as a transport does.
    use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
    use tagsplit_protocol::stub::FlatTarget;

    use super::MEM_BASE;

    pub struct Ours {
        stub: Stub,
        target: FlatTarget,
        out: Vec<u8>,
    }

    impl Ours {
        pub fn new() -> Ours {
            let mut o = Ours {
                stub: Stub::new(StubConfig {
                    packet_size: 0x2000 + 0x100,
                    ..StubConfig::default()
                }),
                target: FlatTarget::new(MEM_BASE, super::memory()),
                out: Vec::new(),
            };
            o.feed(&super::frame(super::QSUPPORTED));
            o.feed(b"+");
            o
        }

        /// Feeds bytes; returns the number of reply bytes produced.
        pub fn feed(&mut self, bytes: &[u8]) -> usize {
            let used = self.stub.receive(&mut self.target, bytes);
            debug_assert_eq!(used, bytes.len());
            while self.stub.poll_run(&mut self.target).is_some() {}
            let n = self.stub.poll_transmit_into(&mut self.out);
            self.out.clear();
            n
        }

        /// The last reply, for checking (feeds `bytes` and keeps what came back).
        pub fn reply(&mut self, bytes: &[u8]) -> Vec<u8> {
            let _ = self.stub.receive(&mut self.target, bytes);
            while self.stub.poll_run(&mut self.target).is_some() {}
            let mut out = Vec::new();
            self.stub.poll_transmit_into(&mut out);
            out
        }
    }
}

/// Our `m` replies carry exactly the memory (checked once, before timing).
fn check_our_replies() {
    let mut us = ours::Ours::new();
    for (addr, len) in [(MEM_BASE, 0x1000usize), (ZERO_BASE, 0x1000), (MEM_BASE, 1)] {
        let reply = us.reply(&frame(&format!("m{addr:x},{len:x}")));
        // `+` (the ack), `$`, the body, `#cs`.
        let body = &reply[2..reply.len() - 3];
        let hex = frame::unescape(body, 1 << 16).unwrap();
        let off = (addr - MEM_BASE) as usize;
        assert!(
            hex == hex::encode_hex(&memory()[off..off + len]),
            "m{addr:x},{len:x}: the reply does not carry the memory"
        );
    }
}

fn bench_gdb(c: &mut Criterion) {
    check_our_replies();
    let mut group = c.benchmark_group("gdb_stub_packet");
    group.throughput(Throughput::Elements(1));
    // The floor for a 4 KiB read: SIMD hex of the same 4 KiB, nothing else.
    let src = memory()[..0x1000].to_vec();
    let mut dst = vec![0u8; 0x2000];
    group.bench_function("floor: faster-hex encode 4 KiB", |b| {
        b.iter(|| {
            faster_hex::hex_encode(black_box(&src), &mut dst).unwrap();
            black_box(dst[0])
        })
    });
    for (name, pkt) in cases() {
        let mut us = ours::Ours::new();
        let mut peer = peer::Peer::new();
        let (ours_len, peer_len) = (us.feed(&pkt), peer.feed(&pkt));
        assert!(
            ours_len > 0 && peer_len > 0,
            "a stub answered nothing to {name}"
        );
        eprintln!("{name}: reply bytes: tagsplit {ours_len}, gdbstub {peer_len}");
        group.bench_with_input(BenchmarkId::new("tagsplit", name), &pkt, |b, pkt| {
            b.iter(|| black_box(us.feed(black_box(pkt))))
        });

        group.bench_with_input(BenchmarkId::new("gdbstub-0.7.10", name), &pkt, |b, pkt| {
            b.iter(|| black_box(peer.feed(black_box(pkt))))
        });
    }
    // The small-packet cost after one large reply has dirtied the packet buffer.
    let big = frame("m10000,1000");
    for (name, pkt) in [
        ("qZ after m 4KiB", frame("qZ")),
        ("m addr,1 after m 4KiB", frame("m10000,1")),
    ] {
        let mut us = ours::Ours::new();
        us.feed(&big);
        group.bench_with_input(BenchmarkId::new("tagsplit", name), &pkt, |b, pkt| {
            b.iter(|| black_box(us.feed(black_box(pkt))))
        });
        let mut peer = peer::Peer::new();
        peer.feed(&big);
        group.bench_with_input(BenchmarkId::new("gdbstub-0.7.10", name), &pkt, |b, pkt| {
            b.iter(|| black_box(peer.feed(black_box(pkt))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_gdb);
criterion_main!(benches);
