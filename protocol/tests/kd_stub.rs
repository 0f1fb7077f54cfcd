#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The KD stub over targets of different capability, driven by a debugger session: a
//! reduced target (memory and registers only) gets a correct reduced stub; a full one
//! gets load-symbols, kernel addresses, breakpoints and exact runs, over KDCOM and KDNET;
//! a break-in stops a run of any length.

use std::time::Duration;

use tagsplit_protocol::kd::stub::{Stub, StubConfig};
use tagsplit_protocol::kd::{
    GetVersion64, Manipulate, ManipulateApi, MemoryTransfer, PacketType, Payload, Role, Session,
    SessionConfig, SessionEvent, StateChangeKind, context, ext, le, status,
};
use tagsplit_protocol::stub::{
    BreakpointKind, BreakpointOps, KernelInfo, KernelOps, Library, LibraryOps, Resume, RunLimitOps,
    RunState, StopReason, Target, TargetError, X64Registers,
};

const NOW: Duration = Duration::ZERO;

/// 64 bytes at 0x1000; with `full`, every capability, and it runs `limit` (or forever).
struct Toy {
    mem: [u8; 64],
    regs: X64Registers,
    full: bool,
    running: bool,
    limit: Option<u64>,
    ran: u64,
    breakpoints: Vec<u64>,
}

impl Toy {
    fn new(full: bool) -> Self {
        let mut mem = [0u8; 64];
        mem[..4].copy_from_slice(b"Leak");
        Toy {
            mem,
            regs: X64Registers {
                rip: 0x1000,
                ..X64Registers::default()
            },
            full,
            running: false,
            limit: None,
            ran: 0,
            breakpoints: Vec::new(),
        }
    }
}

impl Target for Toy {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let src = addr
            .checked_sub(0x1000)
            .and_then(|a| self.mem.get(a as usize..))
            .filter(|s| !s.is_empty())
            .ok_or(TargetError::Fault)?;
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        let at = addr.checked_sub(0x1000).ok_or(TargetError::Fault)? as usize;
        let dst = self
            .mem
            .get_mut(at..at + data.len())
            .ok_or(TargetError::Fault)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(self.regs)
    }
    fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError> {
        self.regs = *regs;
        Ok(())
    }
    fn resume(&mut self, _how: Resume) -> Result<(), TargetError> {
        if !self.full {
            return Err(TargetError::CannotRun);
        }
        self.running = true;
        Ok(())
    }
    fn poll_run(&mut self) -> RunState {
        self.ran += 1;
        match self.limit.as_mut() {
            Some(0) => {
                self.limit = None;
                self.running = false;
                RunState::Stopped(StopReason::Interrupted)
            }
            Some(l) => {
                *l -= 1;
                RunState::Running(Duration::ZERO)
            }
            None => RunState::Running(Duration::from_millis(10)),
        }
    }
    fn interrupt(&mut self) {
        self.running = false;
        self.limit = None;
    }
    fn support_libraries(&mut self) -> Option<&mut dyn LibraryOps> {
        self.full.then_some(self)
    }
    fn support_breakpoints(&mut self) -> Option<&mut dyn BreakpointOps> {
        self.full.then_some(self)
    }
    fn support_run_limit(&mut self) -> Option<&mut dyn RunLimitOps> {
        self.full.then_some(self)
    }
    fn support_kernel(&mut self) -> Option<&mut dyn KernelOps> {
        self.full.then_some(self)
    }
}

impl LibraryOps for Toy {
    fn libraries(&mut self) -> Vec<Library> {
        vec![Library {
            name: "\\SystemRoot\\system32\\ntoskrnl.exe".into(),
            address: 0x1000,
            size: 64,
        }]
    }
}
impl BreakpointOps for Toy {
    fn insert_breakpoint(&mut self, addr: u64, _: BreakpointKind) -> Result<(), TargetError> {
        self.breakpoints.push(addr);
        Ok(())
    }
    fn remove_breakpoint(&mut self, addr: u64, _: BreakpointKind) -> Result<(), TargetError> {
        self.breakpoints.retain(|&a| a != addr);
        Ok(())
    }
}
impl RunLimitOps for Toy {
    fn set_run_limit(&mut self, ticks: Option<u64>) {
        self.limit = ticks;
    }
    fn default_run(&mut self) -> Option<u64> {
        Some(77)
    }
}
impl KernelOps for Toy {
    fn kernel(&mut self) -> KernelInfo {
        KernelInfo {
            kern_base: 0x1000,
            ps_loaded_module_list: 0x1010,
            debugger_data_list: 0x1020,
            kpcr: 0x1030,
            kprcb: 0x1038,
            thread: 0x1040,
        }
    }
}

/// A KDCOM stub and a debugger session joined by an in-memory line.
struct Line {
    target: Toy,
    stub: Stub,
    debugger: Session,
}

impl Line {
    fn attach(full: bool) -> Self {
        let mut line = Line {
            target: Toy::new(full),
            stub: Stub::kdcom(StubConfig {
                banner: "hello\n".into(),
                ..StubConfig::default()
            }),
            debugger: Session::new(SessionConfig::kdcom(Role::Debugger)),
        };
        line.stub.attach(&mut line.target, NOW);
        line
    }

    fn shuttle(&mut self) -> Vec<Payload> {
        let mut got = Vec::new();
        loop {
            let mut moved = false;
            while let Some(b) = self.debugger.poll_transmit() {
                self.stub.receive(&mut self.target, NOW, &b);
                moved = true;
            }
            while let Some(b) = self.stub.poll_transmit() {
                self.debugger.handle_bytes(NOW, &b);
                moved = true;
            }
            while let Some(ev) = self.debugger.poll_event() {
                if let SessionEvent::Packet {
                    packet_type,
                    payload,
                    ..
                } = ev
                {
                    got.push(Payload::parse(packet_type, &payload).unwrap());
                }
            }
            if !moved {
                return got;
            }
        }
    }

    fn send(&mut self, api: ManipulateApi, data: Vec<u8>) -> Vec<Payload> {
        let r = Manipulate::request(&api, data);
        self.debugger
            .send(NOW, PacketType::StateManipulate, r.to_bytes());
        self.shuttle()
    }

    fn req(&mut self, api: ManipulateApi, data: Vec<u8>) -> Manipulate {
        match self.send(api, data).as_slice() {
            [Payload::Manipulate(m)] => m.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn go(&mut self) -> Vec<Payload> {
        let cont = ManipulateApi::Continue {
            status: status::DBG_CONTINUE,
        };
        self.send(cont, vec![])
    }
}

fn state_changes(got: &[Payload]) -> Vec<StateChangeKind> {
    got.iter()
        .filter_map(|p| match p {
            Payload::StateChange(sc) => Some(sc.kind()),
            _ => None,
        })
        .collect()
}

fn transfer(address: u64, count: u32) -> MemoryTransfer {
    MemoryTransfer {
        address,
        count,
        actual: 0,
    }
}

#[test]
fn a_reduced_target_gets_memory_registers_and_no_kernel() {
    let mut line = Line::attach(false);
    let got = line.shuttle();
    assert!(matches!(&got[0], Payload::DebugIo(d) if d.text() == "hello\n"));
    // No libraries: no load-symbols, straight to the breakpoint.
    let kinds = state_changes(&got);
    assert!(
        matches!(kinds.as_slice(), [StateChangeKind::Exception(e)] if e.code == status::BREAKPOINT)
    );
    let v = line.req(ManipulateApi::GetVersion(GetVersion64::default()), vec![]);
    let ManipulateApi::GetVersion(v) = v.api() else {
        panic!()
    };
    assert_eq!(
        (v.kern_base, v.ps_loaded_module_list, v.debugger_data_list),
        (0, 0, 0)
    );
    assert_eq!(v.machine_type, 0x8664);
    // Memory: a read across the end is partial, a read outside fails, a write lands.
    let r = line.req(
        ManipulateApi::ReadVirtualMemory(transfer(0x1000, 4)),
        vec![],
    );
    assert_eq!(
        (r.return_status(), r.data()),
        (status::SUCCESS, &b"Leak"[..])
    );
    let r = line.req(
        ManipulateApi::ReadVirtualMemory(transfer(0x103c, 8)),
        vec![],
    );
    assert_eq!(r.return_status(), status::UNSUCCESSFUL);
    assert_eq!(r.data().len(), 4);
    let r = line.req(ManipulateApi::ReadVirtualMemory(transfer(0x10, 8)), vec![]);
    assert_eq!(
        (r.return_status(), r.data().len()),
        (status::UNSUCCESSFUL, 0)
    );
    let w = ManipulateApi::WriteVirtualMemory(transfer(0x1003, 1));
    assert_eq!(line.req(w, b"2".to_vec()).return_status(), status::SUCCESS);
    assert_eq!(&line.target.mem[..4], b"Lea2");
    // Registers through the AMD64 CONTEXT.
    let r = line.req(ManipulateApi::GetContext { unused: 0 }, vec![]);
    assert_eq!(le::u64_at(r.data(), context::RIP), 0x1000);
    let mut ctx = r.data().to_vec();
    le::put_u64(&mut ctx, context::gpr(0), 0xabcd);
    let set = ManipulateApi::SetContext {
        context_flags: context::CONTEXT_ALL,
    };
    assert_eq!(line.req(set, ctx).return_status(), status::SUCCESS);
    assert_eq!(line.target.regs.rax, 0xabcd);
    // What it lacks is refused as Windows refuses it.
    let bp = ManipulateApi::WriteBreakPoint {
        address: 0x1000,
        handle: 0,
    };
    assert_eq!(line.req(bp, vec![]).return_status(), status::UNSUCCESSFUL);
    let search = ManipulateApi::SearchMemory {
        address: 0x1000,
        length: 64,
        pattern_length: 4,
    };
    assert_eq!(
        line.req(search, b"Lea2".to_vec()).return_status(),
        status::UNSUCCESSFUL
    );
    let limit = ManipulateApi::WriteControlSpace(transfer(ext::RUN_LIMIT_SELECTOR, 8));
    assert_eq!(
        line.req(limit, 5u64.to_le_bytes().to_vec()).return_status(),
        status::UNSUCCESSFUL
    );
    for sel in [0, 1, 3, ext::DEFAULT_RUN_SELECTOR] {
        let r = line.req(ManipulateApi::ReadControlSpace(transfer(sel, 8)), vec![]);
        assert_eq!(r.return_status(), status::UNSUCCESSFUL, "selector {sel:#x}");
    }
    // It cannot run: Continue reports a stop where it is, at once.
    let kinds = state_changes(&line.go());
    assert!(matches!(kinds.as_slice(), [StateChangeKind::Exception(e)] if e.address == 0x1000));
    assert!(line.stub.is_stopped() && !line.stub.is_running());
}

#[test]
fn a_full_target_gets_symbols_kernel_breakpoints_and_exact_runs() {
    let mut line = Line::attach(true);
    let kinds = state_changes(&line.shuttle());
    assert!(
        matches!(kinds.as_slice(), [StateChangeKind::LoadSymbols(l)] if l.base_of_dll == 0x1000 && l.size_of_image == 64)
    );
    let kinds = state_changes(&line.go());
    assert!(matches!(kinds.as_slice(), [StateChangeKind::Exception(_)]));
    let v = line.req(ManipulateApi::GetVersion(GetVersion64::default()), vec![]);
    let ManipulateApi::GetVersion(v) = v.api() else {
        panic!()
    };
    assert_eq!(
        (v.kern_base, v.ps_loaded_module_list, v.debugger_data_list),
        (0x1000, 0x1010, 0x1020)
    );
    let r = line.req(ManipulateApi::ReadControlSpace(transfer(1, 8)), vec![]);
    assert_eq!(r.data(), 0x1038u64.to_le_bytes());
    let r = line.req(
        ManipulateApi::ReadControlSpace(transfer(ext::DEFAULT_RUN_SELECTOR, 8)),
        vec![],
    );
    assert_eq!(r.data(), 77u64.to_le_bytes());
    let bp = ManipulateApi::WriteBreakPoint {
        address: 0x1008,
        handle: 0,
    };
    assert_eq!(line.req(bp, vec![]).return_status(), status::SUCCESS);
    assert_eq!(line.target.breakpoints, [0x1008]);
    // An exact run: the target stops itself after its limit; the stub reports it.
    let limit = ManipulateApi::WriteControlSpace(transfer(ext::RUN_LIMIT_SELECTOR, 8));
    assert_eq!(
        line.req(limit, 3u64.to_le_bytes().to_vec()).return_status(),
        status::SUCCESS
    );
    assert!(line.go().is_empty());
    let mut polls = 0;
    while line.stub.poll_run(&mut line.target, NOW).is_some() {
        polls += 1;
    }
    assert_eq!(polls, 3);
    assert_eq!(state_changes(&line.shuttle()).len(), 1);
    // A run without end stops on a break-in.
    line.target.limit = Some(u64::MAX);
    assert!(line.go().is_empty());
    assert_eq!(
        line.stub.poll_run(&mut line.target, NOW),
        Some(Duration::ZERO)
    );
    line.debugger.send_break_in();
    let kinds = state_changes(&line.shuttle());
    assert!(
        matches!(kinds.as_slice(), [StateChangeKind::Exception(e)] if e.code == status::BREAKPOINT)
    );
    assert!(!line.target.running && line.stub.is_stopped());
    // The debugger leaves: its breakpoints go with it.
    line.stub.disconnect(&mut line.target);
    assert!(line.target.breakpoints.is_empty());
}

/// A KDNET debugger with key 1.2.3.4 answers the stub's poke and reads 4 bytes at 0x1000.
#[cfg(feature = "kdnet")]
fn kdnet_debugger_reads(stub: &mut Stub, target: &mut Toy) -> Option<Manipulate> {
    use tagsplit_protocol::kdnet::{Endpoint, EndpointConfig, EndpointEvent};

    let key = "1.2.3.4".parse().unwrap();
    let mut debugger = Endpoint::new(EndpointConfig::new(Role::Debugger, key, [0x44; 32]), NOW);
    let read = Manipulate::request(
        &ManipulateApi::ReadVirtualMemory(transfer(0x1000, 4)),
        vec![],
    );
    let mut sent_read = false;
    let mut reply = None;
    for _ in 0..50 {
        while let Some(d) = stub.poll_transmit() {
            debugger.handle_datagram(NOW, &d);
        }
        while let Some(ev) = debugger.poll_event() {
            match ev {
                EndpointEvent::Kd(SessionEvent::Packet {
                    packet_type,
                    payload,
                    ..
                }) => {
                    if let Ok(Payload::Manipulate(m)) = Payload::parse(packet_type, &payload) {
                        reply = Some(m);
                    }
                }
                EndpointEvent::Connected { .. } if !sent_read => {
                    debugger.send(NOW, PacketType::StateManipulate, read.to_bytes());
                    sent_read = true;
                }
                _ => {}
            }
        }
        while let Some(d) = debugger.poll_transmit() {
            stub.receive(target, NOW, &d);
        }
        if reply.is_some() {
            break;
        }
    }
    reply
}

#[cfg(feature = "kdnet")]
#[test]
fn over_kdnet_the_stub_pokes_attaches_and_answers() {
    use tagsplit_protocol::kdnet::EndpointConfig;

    let key = "1.2.3.4".parse().unwrap();
    let config = EndpointConfig {
        local: "127.0.0.1:50001".parse().unwrap(),
        peer: "127.0.0.1:50000".parse().unwrap(),
        ..EndpointConfig::new(Role::Target, key, [0x33; 32])
    };
    let mut target = Toy::new(false);
    let mut stub = Stub::kdnet(StubConfig::default(), config, NOW);
    // Nothing happens until the poke timer fires, which the stub's deadline says.
    assert_eq!(stub.poll_timeout(), Some(NOW));
    stub.handle_timeout(&mut target, NOW);
    let reply = kdnet_debugger_reads(&mut stub, &mut target);
    assert_eq!(stub.attaches(), 1);
    assert!(stub.is_attached());
    assert_eq!(reply.expect("a reply to the read").data(), b"Leak");
}

/// The target side of KDNET's refusals: a WriteVirtualMemory datagram replayed, or sent
/// from another address, never reaches the target's memory; the stub counts it and hands
/// the reason to the transport to log.
#[cfg(feature = "kdnet")]
#[test]
fn over_kdnet_replayed_or_foreign_writes_never_touch_memory() {
    use tagsplit_protocol::kdnet::{Endpoint, EndpointConfig, EndpointEvent, KdnetError};

    let key = "1.2.3.4".parse().unwrap();
    let (target_addr, debugger_addr) = (
        "127.0.0.1:50001".parse().unwrap(),
        "127.0.0.1:50000".parse().unwrap(),
    );
    let stranger = "127.0.0.1:50002".parse().unwrap();
    let config = EndpointConfig {
        local: target_addr,
        peer: debugger_addr,
        ..EndpointConfig::new(Role::Target, key, [0x33; 32])
    };
    let mut target = Toy::new(false);
    let mut stub = Stub::kdnet(StubConfig::default(), config, NOW);
    let mut debugger = Endpoint::new(EndpointConfig::new(Role::Debugger, key, [0x44; 32]), NOW);
    stub.handle_timeout(&mut target, NOW);
    // Handshake and attach sequence, delivering everything with real addresses.
    let mut connected = false;
    for _ in 0..50 {
        while let Some(d) = stub.poll_transmit() {
            debugger.handle_datagram_from(NOW, target_addr, &d);
        }
        while let Some(ev) = debugger.poll_event() {
            connected |= matches!(ev, EndpointEvent::Connected { .. });
        }
        while let Some(d) = debugger.poll_transmit() {
            stub.receive_from(&mut target, NOW, debugger_addr, &d);
        }
        if connected && stub.is_attached() && debugger.is_idle() {
            break;
        }
    }
    assert!(stub.is_attached());
    // One write of "Evil" at 0x1000: delivered once, it lands.
    let write = Manipulate::request(
        &ManipulateApi::WriteVirtualMemory(transfer(0x1000, 4)),
        b"Evil".to_vec(),
    );
    debugger.send(NOW, PacketType::StateManipulate, write.to_bytes());
    let datagram = debugger.poll_transmit().expect("the write datagram");
    stub.receive_from(&mut target, NOW, debugger_addr, &datagram);
    assert_eq!(&target.mem[..4], b"Evil");
    // Put the bytes back, then replay the same datagram, and send it from a stranger.
    target.mem[..4].copy_from_slice(b"Leak");
    stub.receive_from(&mut target, NOW, debugger_addr, &datagram);
    stub.receive_from(&mut target, NOW, stranger, &datagram);
    assert_eq!(&target.mem[..4], b"Leak", "memory untouched");
    let stats = stub.kdnet_stats().unwrap();
    assert_eq!((stats.rejected_replay, stats.rejected_peer), (1, 1));
    let reasons: Vec<KdnetError> = std::iter::from_fn(|| stub.poll_rejected()).collect();
    assert!(
        matches!(
            reasons.as_slice(),
            [KdnetError::Replayed { .. }, KdnetError::WrongPeer { .. }]
        ),
        "{reasons:?}"
    );
}

/// The most a KD stub holds however its debugger behaves: the stream decoder's partial
/// packet, the answers queued behind the one in flight (each at most a full packet
/// framed), and the control packets of one chunk of input not yet taken.
fn kd_bound(chunk: usize) -> usize {
    use tagsplit_protocol::kd::session::DEFAULT_MAX_QUEUED;
    use tagsplit_protocol::kd::{HEADER_LEN, PACKET_MAX_SIZE, stream};
    stream::MAX_BUFFERED + (DEFAULT_MAX_QUEUED + 2) * (PACKET_MAX_SIZE + HEADER_LEN + 1) + chunk
}

/// Feeds `wire` in chunks of `chunk` bytes to the stub, dropping what it answers, and
/// checks its buffers after every chunk.
fn feed_hostile(line: &mut Line, wire: &[u8], chunk: usize) {
    for piece in wire.chunks(chunk) {
        line.stub.receive(&mut line.target, NOW, piece);
        assert!(
            line.stub.buffered() <= kd_bound(chunk),
            "{}",
            line.stub.buffered()
        );
        while line.stub.poll_transmit().is_some() {}
    }
}

#[test]
fn a_debugger_claiming_huge_lengths_leaves_the_stub_bounded_and_serving() {
    let mut line = Line::attach(false);
    line.shuttle();
    // A data header that claims 0xFFFF bytes, then a megabyte of garbage.
    let mut wire = vec![0x30, 0x30, 0x30, 0x30, 0x02, 0x30, 0xFF, 0xFF];
    wire.extend([0u8; 8]);
    let mut x = 0x1234_5678u32;
    wire.extend((0..1 << 20).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    // A header that claims the most a packet may hold, and never delivers it.
    let mut almost = vec![0x30, 0x30, 0x30, 0x30, 0x02, 0x30];
    almost.extend((tagsplit_protocol::kd::PACKET_MAX_SIZE as u16).to_le_bytes());
    almost.extend([0u8; 8]);
    almost.extend(vec![0x41; 3000]);
    wire.extend(almost);
    // Endless leader bytes.
    wire.extend(vec![0x30; 1 << 20]);
    wire.extend(vec![0x69; 1 << 16]);
    feed_hostile(&mut line, &wire, 4096);
    // The same debugger behaves again: it is answered.
    line.shuttle();
    let r = line.req(
        ManipulateApi::ReadVirtualMemory(transfer(0x1000, 4)),
        vec![],
    );
    assert_eq!(r.data(), b"Leak");
    assert!(line.stub.buffered() <= kd_bound(0));
}

#[test]
fn a_debugger_that_never_acknowledges_answers_cannot_grow_the_queue() {
    let mut line = Line::attach(false);
    line.shuttle();
    let read = Manipulate::request(
        &ManipulateApi::ReadVirtualMemory(transfer(0x1000, 4000)),
        vec![],
    );
    // 1000 requests; the debugger sees the stub's ACKs but never its answers.
    for _ in 0..1000 {
        line.debugger
            .send(NOW, PacketType::StateManipulate, read.to_bytes());
        while let Some(b) = line.debugger.poll_transmit() {
            line.stub.receive(&mut line.target, NOW, &b);
        }
        while let Some(b) = line.stub.poll_transmit() {
            // Control packets (ACKs) only: the answers are lost on the way.
            if b.starts_with(&[0x69; 4]) {
                line.debugger.handle_bytes(NOW, &b);
            }
        }
        while line.debugger.poll_event().is_some() {}
        assert!(
            line.stub.buffered() <= kd_bound(0),
            "{}",
            line.stub.buffered()
        );
    }
    // Each new request is taken as the acknowledgement of the answer before it (KD is
    // lock-step: `SessionConfig::implicit_acks`), so the answers do not even queue up;
    // a stub without that drops what is beyond `max_queued` (`send_dropped`).
    let s = line.stub.session_stats();
    assert!(s.send_dropped == 0 || s.send_dropped > 900, "{s:?}");
    // The debugger asks the stub to resend (as after a lost packet) and ACKs from now
    // on: the queued answers drain and a new request is answered.
    line.debugger.reset(NOW);
    let drained = line.shuttle();
    assert!(drained.len() <= tagsplit_protocol::kd::session::DEFAULT_MAX_QUEUED + 1);
    let r = line.req(
        ManipulateApi::ReadVirtualMemory(transfer(0x1000, 4)),
        vec![],
    );
    assert_eq!(r.data(), b"Leak");
}

#[cfg(feature = "kdnet")]
#[test]
fn maximal_kdnet_datagrams_of_garbage_leave_the_stub_bounded() {
    let key = "1.2.3.4".parse().unwrap();
    let config = tagsplit_protocol::kdnet::EndpointConfig {
        local: "127.0.0.1:50001".parse().unwrap(),
        peer: "127.0.0.1:50000".parse().unwrap(),
        ..tagsplit_protocol::kdnet::EndpointConfig::new(Role::Target, key, [0x33; 32])
    };
    let mut target = Toy::new(false);
    let mut stub = Stub::kdnet(StubConfig::default(), config, NOW);
    stub.handle_timeout(&mut target, NOW);
    // Maximal UDP payloads, with and without the KDNET magic.
    let mut datagram = vec![0xA5u8; 65_507];
    datagram[..4].copy_from_slice(b"MDBG");
    for i in 0..200u32 {
        datagram[8..12].copy_from_slice(&i.to_le_bytes());
        stub.receive(&mut target, NOW, &datagram);
        stub.receive(&mut target, NOW, &datagram[4..]);
        while stub.poll_rejected().is_some() {}
        assert!(stub.buffered() <= kd_bound(0), "{}", stub.buffered());
    }
    assert_eq!(stub.kdnet_stats().unwrap().rejected, 400);
    // A good debugger answers the next poke and is served.
    let reply = kdnet_debugger_reads(&mut stub, &mut target);
    assert_eq!(reply.expect("a reply to the read").data(), b"Leak");
}
