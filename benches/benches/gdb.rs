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

/// Frames `payload` as `$payload#cs`.
fn frame(payload: &str) -> Vec<u8> {
    let cs = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${payload}#{cs:02x}").into_bytes()
}

/// The packets both stubs are measured on: (name, packet bytes).
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("m addr,1", frame("m10000,1")),
        ("m addr,100", frame("m10000,100")),
        ("m addr,1000", frame("m10000,1000")),
        ("g", frame("g")),
        ("X addr,1", {
            let mut p = b"X10000,1:".to_vec();
            p.push(b'A');
            let cs = p.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            let mut out = vec![b'$'];
            out.extend_from_slice(&p);
            out.extend_from_slice(format!("#{cs:02x}").as_bytes());
            out
        }),
        ("unknown qZ", frame("qZ")),
    ]
}

const MEM_BASE: u64 = 0x10000;
const MEM_SIZE: usize = 0x10000;

mod peer {
    //! The gdbstub side: a flat 64 KiB memory at `MEM_BASE` and an x86-64 register file.
    use gdbstub::common::Signal;
    use gdbstub::conn::Connection;
    use gdbstub::stub::GdbStub;
    use gdbstub::stub::state_machine::GdbStubStateMachine;
    use gdbstub::target::ext::base::BaseOps;
    use gdbstub::target::ext::base::singlethread::{
        SingleThreadBase, SingleThreadResume, SingleThreadResumeOps,
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
                mem: (0..MEM_SIZE).map(|i| (i * 7) as u8).collect(),
                regs: X86_64CoreRegs::default(),
            };
            let stub = GdbStub::new(Sink(Vec::new()));
            let sm = stub.run_state_machine(&mut target).unwrap();
            let mut p = Peer {
                target,
                sm: Some(sm),
            };
            // Prime as gdb does.
            p.feed(&super::frame("qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+"));
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
    //! Our side: `ServerSession` (framing, acks, typed command parse, reply encoding) over
    //! the same flat 64 KiB memory and register file, dispatched the way a stub does.
    use tagsplit_protocol::gdb::{Command, Feature, Reply, ServerEvent, ServerSession};

    use super::{MEM_BASE, MEM_SIZE};

    pub struct Ours {
        session: ServerSession,
        mem: Vec<u8>,
        regs: Vec<u8>,
    }

    impl Ours {
        pub fn new() -> Ours {
            let mut o = Ours {
                session: ServerSession::default(),
                mem: (0..MEM_SIZE).map(|i| (i * 7) as u8).collect(),
                regs: vec![0; 536],
            };
            o.feed(&super::frame("qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+"));
            o.feed(b"+");
            o
        }

        fn slice(&self, addr: u64, len: u64) -> Option<&[u8]> {
            let off = usize::try_from(addr.checked_sub(MEM_BASE)?).ok()?;
            let len = usize::try_from(len).ok()?;
            self.mem.get(off..off.checked_add(len)?)
        }

        fn handle(&mut self, cmd: Command<'_>) -> Reply {
            match cmd {
                Command::QSupported(_) => Reply::Supported(vec![
                    Feature::with_value("PacketSize", "1000"),
                    Feature::supported("swbreak"),
                ]),
                Command::ReadRegisters => Reply::Hex(self.regs.clone()),
                Command::ReadMemory { addr, len } => match self.slice(addr, len) {
                    Some(b) => Reply::Hex(b.to_vec()),
                    None => Reply::Error(0x0e),
                },
                Command::WriteMemoryBinary { addr, data } => {
                    let off = addr.wrapping_sub(MEM_BASE) as usize;
                    match self.mem.get_mut(off..off + data.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(data);
                            Reply::Ok
                        }
                        None => Reply::Error(0x0e),
                    }
                }
                _ => Reply::Empty,
            }
        }

        /// Feeds bytes; returns the number of reply bytes produced.
        pub fn feed(&mut self, bytes: &[u8]) -> usize {
            self.session.receive(bytes);
            while let Some(ev) = self.session.poll_event() {
                if let ServerEvent::Command(packet) = ev {
                    let reply = self.handle(packet.command());
                    self.session.send(&reply);
                }
            }
            let mut n = 0;
            while let Some(out) = self.session.poll_transmit() {
                n += out.len();
            }
            n
        }
    }
}

fn bench_gdb(c: &mut Criterion) {
    let mut group = c.benchmark_group("gdb_stub_packet");
    for (name, pkt) in cases() {
        group.throughput(Throughput::Elements(1));
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
    let big = frame("m10000,100");
    for (name, pkt) in [
        ("qZ after m 256B", frame("qZ")),
        ("m addr,1 after m 256B", frame("m10000,1")),
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
