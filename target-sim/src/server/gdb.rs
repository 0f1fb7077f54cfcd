//! The GDB remote-protocol stub over TCP.
//!
//! A thin loop around [`ServerSession`] and a [`Machine`]: gdb (or tagsplit's own
//! `gdb://` client) attaches, reads and writes memory, lists modules through
//! `qXfer:libraries:read`, searches with `qSearch:memory` (holes skipped), runs `monitor`
//! commands through an injected handler, sets `Z0`/`Z1` breakpoints on allocation sites and
//! runs the workload with `c`/`vCont;c` until a breakpoint, an interrupt (0x03) or a tick
//! limit.
//!
//! One client at a time: a second connection gets `E.` with a reason and is closed. A
//! detach (`D`) or kill leaves the stub ready for the next client. Sockets get
//! `TCP_NODELAY`, and the ack and the reply to each packet leave in one write.
//!
//! ```no_run
//! use tagsplit_target_sim::machine::Machine;
//! use tagsplit_target_sim::scenario::Scenario;
//! use tagsplit_target_sim::server::gdb::{GdbStub, GdbStubOptions};
//!
//! let machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
//! let stub = GdbStub::spawn(machine, GdbStubOptions::default()).unwrap();
//! println!("target remote {}", stub.addr());
//! let machine = stub.shutdown();
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tagsplit_protocol::gdb::command::{DEFAULT_RUN_FEATURE, RUN_LIMIT_FEATURE};
use tagsplit_protocol::gdb::frame;
use tagsplit_protocol::gdb::xml::{self, Library, MemoryRegion};
use tagsplit_protocol::gdb::{
    BreakpointType, Command, Feature, Reply, ResumeKind, SIGINT, SIGTRAP, ServerEvent,
    ServerSession, SessionConfig, StopKind, StopReply, ThreadId, XferObject,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{SharedMachine, StopFn, StubState, StubThread};
use crate::machine::{CpuContext, Machine, SimStop};
use crate::types::VirtAddr;

/// Runs a `monitor` command on the machine and returns its output text.
pub type MonitorHandler = Box<dyn FnMut(&mut Machine, &str) -> String + Send>;

/// The errno-style code for a memory fault (`EFAULT`).
const E_FAULT: u8 = 0x0e;
/// The code for a malformed or unsupported request (`EINVAL`).
const E_INVAL: u8 = 0x16;
/// The only thread.
const THREAD: u64 = 1;

/// Which optional protocol features the stub offers (all on by default). Turning them off
/// gives a "basics only" stub, to test clients that must degrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubFeatures {
    /// `qXfer:features:read` (the target description).
    pub target_xml: bool,
    /// `qXfer:libraries:read`.
    pub libraries: bool,
    /// `qXfer:memory-map:read`.
    pub memory_map: bool,
    /// `qSearch:memory`.
    pub search: bool,
    /// `X` binary writes (otherwise answered empty, so clients fall back to `M`).
    pub binary_write: bool,
    /// `x` binary reads.
    pub binary_read: bool,
    /// `QStartNoAckMode`.
    pub no_ack: bool,
    /// `QTagsplit.RunLimit` (exact tick-limited resumes).
    pub run_limit: bool,
}

impl StubFeatures {
    /// Everything on.
    pub const FULL: StubFeatures = StubFeatures {
        target_xml: true,
        libraries: true,
        memory_map: true,
        search: true,
        binary_write: true,
        binary_read: true,
        no_ack: true,
        run_limit: true,
    };

    /// Only what every stub has: `g`, `m`, `M`, `c`, `Z0`, `qRcmd` (and a target
    /// description, without which gdb cannot talk to an x86-64 target at all).
    pub const BASIC: StubFeatures = StubFeatures {
        target_xml: true,
        libraries: false,
        memory_map: false,
        search: false,
        binary_write: false,
        binary_read: false,
        no_ack: false,
        run_limit: false,
    };
}

impl Default for StubFeatures {
    fn default() -> Self {
        StubFeatures::FULL
    }
}

/// How a stub behaves.
pub struct GdbStubOptions {
    /// Optional features offered.
    pub features: StubFeatures,
    /// The `PacketSize` advertised (and the receive limit).
    pub packet_size: usize,
    /// Every resume stops (with `T02`) after at most this many ticks, for deterministic tests.
    pub stop_after_ticks: Option<u64>,
    /// Ticks run between checks for an interrupt while running.
    pub slice_ticks: u64,
    /// Wall-clock time per slice while running (pacing: 1 ms per tick by default).
    pub slice_interval: Duration,
    /// Runs `monitor` commands; without one, `monitor` answers with an error text.
    pub monitor: Option<MonitorHandler>,
    /// The scenario's default run length, offered as `QTagsplit.DefaultRun`.
    pub default_run_ticks: Option<u64>,
}

impl Default for GdbStubOptions {
    fn default() -> Self {
        Self {
            features: StubFeatures::FULL,
            packet_size: 0x4000,
            stop_after_ticks: None,
            slice_ticks: 10,
            slice_interval: Duration::from_millis(10),
            monitor: None,
            default_run_ticks: None,
        }
    }
}

impl std::fmt::Debug for GdbStubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdbStubOptions")
            .field("features", &self.features)
            .field("packet_size", &self.packet_size)
            .field("stop_after_ticks", &self.stop_after_ticks)
            .field("slice_ticks", &self.slice_ticks)
            .field("slice_interval", &self.slice_interval)
            .field("monitor", &self.monitor.is_some())
            .field("default_run_ticks", &self.default_run_ticks)
            .finish()
    }
}

/// What the stub does after a command.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Send these replies (console output first, then the reply).
    Reply(Vec<Reply>),
    /// Resume: run until a stop, then send the stop reply.
    Resume,
    /// Reply `OK` and drop the connection.
    Detach,
    /// Drop the connection without a reply.
    Close,
}

/// The protocol logic of the stub, without sockets: commands in, replies out.
pub(crate) struct StubCore {
    options: GdbStubOptions,
    target_xml: Vec<u8>,
    /// Breakpoints the client inserted, by address.
    breakpoints: BTreeMap<u64, StopKind>,
    /// Why the machine last stopped (the answer to `?`).
    last_stop: StopReply,
    /// The tick budget of the current resume.
    budget: Option<u64>,
    /// A `QTagsplit.RunLimit` for the next resume.
    next_limit: Option<u64>,
    /// Whether the current run is paced by the wall clock (not an exact client-limited run).
    paced: bool,
}

impl StubCore {
    /// A core with `options`.
    pub(crate) fn new(options: GdbStubOptions) -> Self {
        Self {
            options,
            target_xml: xml::target_description_x86_64().into_bytes(),
            breakpoints: BTreeMap::new(),
            last_stop: StopReply::thread(SIGTRAP, THREAD, None),
            budget: None,
            next_limit: None,
            paced: true,
        }
    }

    /// Forgets per-client state (breakpoints are removed from the machine).
    fn reset_client(&mut self, machine: &mut Machine) {
        for addr in std::mem::take(&mut self.breakpoints).into_keys() {
            machine.clear_breakpoint(VirtAddr(addr));
        }
        self.budget = None;
        self.next_limit = None;
    }

    fn features(&self) -> Vec<Feature> {
        let f = self.options.features;
        let mut list = vec![Feature::with_value(
            "PacketSize",
            &format!("{:x}", self.options.packet_size),
        )];
        let mut on = |enabled: bool, name: &str| {
            if enabled {
                list.push(Feature::supported(name));
            }
        };
        on(f.target_xml, "qXfer:features:read");
        on(f.libraries, "qXfer:libraries:read");
        on(f.memory_map, "qXfer:memory-map:read");
        on(f.no_ack, "QStartNoAckMode");
        on(f.run_limit, RUN_LIMIT_FEATURE);
        on(f.binary_read, "binary-upload");
        on(true, "swbreak");
        on(true, "hwbreak");
        on(true, "vContSupported");
        if let (true, Some(t)) = (f.run_limit, self.options.default_run_ticks) {
            list.push(Feature::with_value(DEFAULT_RUN_FEATURE, &format!("{t:x}")));
        }
        list
    }

    /// The largest data payload a hex reply carries: `PacketSize / 2`, so gdb's own
    /// `m` of `PacketSize / 2` bytes (0x2000 for 0x4000) is answered in one reply.
    fn max_data(&self) -> usize {
        (self.options.packet_size / 2).max(1)
    }

    fn xfer(
        &self,
        machine: &Machine,
        object: &XferObject,
        annex: &str,
        offset: u64,
        length: u64,
    ) -> Reply {
        let f = self.options.features;
        let doc: Vec<u8> = match object {
            XferObject::Features if f.target_xml && annex == "target.xml" => {
                self.target_xml.clone()
            }
            XferObject::Libraries if f.libraries && annex.is_empty() => {
                library_list(machine).into_bytes()
            }
            XferObject::MemoryMap if f.memory_map && annex.is_empty() => {
                memory_map(machine).into_bytes()
            }
            XferObject::Features | XferObject::Libraries | XferObject::MemoryMap
                if f.target_xml || f.libraries || f.memory_map =>
            {
                return Reply::Error(0);
            }
            _ => return Reply::Empty,
        };
        // Escaping can double the size; keep each chunk within the packet.
        let limit = length.min(self.max_data() as u64);
        let (window, more) = xml::xfer_window(&doc, offset, limit);
        Reply::Xfer {
            more,
            data: window.to_vec(),
        }
    }

    fn read_memory(&self, machine: &Machine, addr: u64, len: u64, limit: usize) -> Option<Vec<u8>> {
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(limit);
        let mut buf = vec![0u8; len];
        let got = match machine.read(VirtAddr(addr), &mut buf) {
            Ok(()) => len,
            Err(e) => e.done.min(len),
        };
        buf.truncate(got);
        (got > 0 || len == 0).then_some(buf)
    }

    fn write_memory(machine: &mut Machine, addr: u64, data: &[u8]) -> Reply {
        match machine.write(VirtAddr(addr), data) {
            Ok(()) => Reply::Ok,
            Err(_) => Reply::Error(E_FAULT),
        }
    }

    /// Handles one command.
    fn handle(&mut self, machine: &mut Machine, cmd: Command) -> Action {
        let f = self.options.features;
        let reply = match cmd {
            Command::QSupported(_) => Reply::Supported(self.features()),
            Command::StartNoAckMode if f.no_ack => Reply::Ok,
            Command::SetThread(..) => Reply::Ok,
            Command::XferRead {
                object,
                annex,
                offset,
                length,
            } => self.xfer(machine, &object, &annex, offset, length),
            Command::HaltReason => Reply::Stop(self.last_stop),
            Command::ThreadInfoFirst => Reply::ThreadList(vec![ThreadId::Id(THREAD)]),
            Command::ThreadInfoNext => Reply::ThreadListEnd,
            Command::CurrentThread => Reply::CurrentThread(ThreadId::Id(THREAD)),
            Command::Attached(_) => Reply::Attached(true),
            Command::ReadRegisters => Reply::Hex(registers_to_g(machine.context())),
            Command::WriteRegisters(data) => {
                if data.len() == xml::G_PACKET_LEN {
                    registers_from_g(machine.context_mut(), &data);
                    Reply::Ok
                } else {
                    Reply::Error(E_INVAL)
                }
            }
            Command::ReadRegister(n) => {
                let g = registers_to_g(machine.context());
                match xml::register_span(n as usize).and_then(|(o, w)| g.get(o..o + w)) {
                    Some(bytes) => Reply::Hex(bytes.to_vec()),
                    None => Reply::Error(E_INVAL),
                }
            }
            Command::WriteRegister { reg, value } => {
                let mut g = registers_to_g(machine.context());
                match xml::register_span(reg as usize).and_then(|(o, w)| g.get_mut(o..o + w)) {
                    Some(slot) if slot.len() == value.len() => {
                        slot.copy_from_slice(&value);
                        registers_from_g(machine.context_mut(), &g);
                        Reply::Ok
                    }
                    _ => Reply::Error(E_INVAL),
                }
            }
            Command::ReadMemory { addr, len } => {
                match self.read_memory(machine, addr, len, self.max_data()) {
                    Some(data) => Reply::Hex(data),
                    None => Reply::Error(E_FAULT),
                }
            }
            Command::ReadMemoryBinary { addr, len } if f.binary_read => {
                // Binary data is escaped on the wire: keep the escaped form within a packet.
                let room = self.options.packet_size.saturating_sub(8).max(1);
                match self.read_memory(machine, addr, len, room) {
                    Some(mut data) => {
                        let mut escaped = 0usize;
                        let fits = data
                            .iter()
                            .take_while(|&&b| {
                                escaped += if frame::needs_escape(b) { 2 } else { 1 };
                                escaped <= room
                            })
                            .count();
                        data.truncate(fits.max(1).min(data.len()));
                        Reply::Binary(data)
                    }
                    None => Reply::Error(E_FAULT),
                }
            }
            Command::WriteMemory { addr, data } => Self::write_memory(machine, addr, &data),
            Command::WriteMemoryBinary { addr, data } if f.binary_write => {
                Self::write_memory(machine, addr, &data)
            }
            Command::SearchMemory { addr, len, pattern } if f.search => {
                let end = addr.saturating_add(len);
                let hit = machine
                    .search(VirtAddr(addr), VirtAddr(end), &pattern, 1)
                    .first()
                    .copied();
                Reply::SearchResult(hit.map(|a| a.0))
            }
            Command::Monitor(text) => return Action::Reply(self.monitor(machine, &text)),
            Command::InsertBreakpoint(bp) => match bp.kind {
                BreakpointType::Software | BreakpointType::Hardware => {
                    let kind = if bp.kind == BreakpointType::Software {
                        StopKind::SwBreak
                    } else {
                        StopKind::HwBreak
                    };
                    machine.set_breakpoint(VirtAddr(bp.addr));
                    self.breakpoints.insert(bp.addr, kind);
                    Reply::Ok
                }
                _ => Reply::Empty,
            },
            Command::RemoveBreakpoint(bp) => match bp.kind {
                BreakpointType::Software | BreakpointType::Hardware => {
                    if self.breakpoints.remove(&bp.addr).is_some() {
                        machine.clear_breakpoint(VirtAddr(bp.addr));
                    }
                    Reply::Ok
                }
                _ => Reply::Empty,
            },
            Command::VContQuery => Reply::VContSupported(
                ["c", "C", "s", "S", "t"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            ),
            Command::RunLimit(ticks) if f.run_limit => {
                self.next_limit = (ticks > 0).then_some(ticks);
                Reply::Ok
            }
            Command::VCont(actions) => {
                // One thread: the first action that applies to it decides.
                match actions.first().map(|a| a.kind) {
                    Some(ResumeKind::Continue | ResumeKind::ContinueSignal(_)) => {
                        return self.resume();
                    }
                    Some(
                        ResumeKind::Step | ResumeKind::StepSignal(_) | ResumeKind::RangeStep { .. },
                    ) => {
                        return self.step();
                    }
                    Some(ResumeKind::Stop) => Reply::Stop(self.stopped(SIGINT)),
                    None => Reply::Error(E_INVAL),
                }
            }
            Command::Continue(_) => return self.resume(),
            Command::Step(_) => return self.step(),
            Command::Detach(_) => {
                self.reset_client(machine);
                return Action::Detach;
            }
            // A kernel is not killed: the client goes away, the machine stays.
            Command::Kill => {
                self.reset_client(machine);
                return Action::Close;
            }
            Command::VKill(_) => {
                self.reset_client(machine);
                return Action::Detach;
            }
            _ => Reply::Empty,
        };
        Action::Reply(vec![reply])
    }

    fn stopped(&mut self, signal: u8) -> StopReply {
        self.last_stop = StopReply::thread(signal, THREAD, None);
        self.last_stop
    }

    /// The simulator has no instruction stepping: a step reports a stop where it is (gdb
    /// then re-inserts its breakpoints and continues, and the machine passes the
    /// breakpoint it stopped at).
    fn step(&mut self) -> Action {
        Action::Reply(vec![Reply::Stop(self.stopped(SIGTRAP))])
    }

    fn resume(&mut self) -> Action {
        let exact = self.next_limit.take();
        self.paced = exact.is_none();
        let limits = [exact, self.options.stop_after_ticks];
        self.budget = limits.into_iter().flatten().min();
        Action::Resume
    }

    /// Runs one slice of the workload; returns the stop reply if it stopped.
    fn run_slice(&mut self, machine: &mut Machine) -> Option<StopReply> {
        let slice = self.options.slice_ticks.max(1);
        let ticks = self.budget.map_or(slice, |b| b.min(slice));
        let outcome = machine.run(ticks);
        if let Some(b) = self.budget.as_mut() {
            *b = b.saturating_sub(outcome.ticks_run);
        }
        let stop = match outcome.stop {
            Some(SimStop::Breakpoint(addr)) => {
                let reason = self.breakpoints.get(&addr.0).copied();
                StopReply::thread(SIGTRAP, THREAD, reason)
            }
            Some(_) => StopReply::thread(SIGTRAP, THREAD, None),
            None if self.budget == Some(0) => StopReply::thread(SIGINT, THREAD, None),
            None => return None,
        };
        self.budget = None;
        self.last_stop = stop;
        Some(stop)
    }

    /// Interrupts a run.
    fn interrupt(&mut self) -> StopReply {
        self.budget = None;
        self.stopped(SIGINT)
    }

    fn monitor(&mut self, machine: &mut Machine, text: &[u8]) -> Vec<Reply> {
        let line = String::from_utf8_lossy(text);
        let Some(handler) = self.options.monitor.as_mut() else {
            return vec![Reply::ErrorText(
                "no monitor commands on this stub (no console attached)".into(),
            )];
        };
        let mut output = handler(machine, line.trim());
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        let chunk = self.max_data().saturating_sub(1).max(1);
        let mut replies: Vec<Reply> = output
            .as_bytes()
            .chunks(chunk)
            .map(|c| Reply::Output(c.to_vec()))
            .collect();
        replies.push(Reply::Ok);
        replies
    }
}

/// The 536-byte `g` block for `ctx` (x87 and SSE state at their reset values).
pub fn registers_to_g(ctx: &CpuContext) -> Vec<u8> {
    let mut g = Vec::with_capacity(xml::G_PACKET_LEN);
    for r in [
        ctx.rax, ctx.rbx, ctx.rcx, ctx.rdx, ctx.rsi, ctx.rdi, ctx.rbp, ctx.rsp, ctx.r8, ctx.r9,
        ctx.r10, ctx.r11, ctx.r12, ctx.r13, ctx.r14, ctx.r15, ctx.rip,
    ] {
        g.extend_from_slice(&r.to_le_bytes());
    }
    g.extend_from_slice(&(ctx.rflags as u32).to_le_bytes());
    for s in [ctx.cs, ctx.ss, ctx.ds, ctx.es, ctx.fs, ctx.gs] {
        g.extend_from_slice(&u32::from(s).to_le_bytes());
    }
    g.extend_from_slice(&[0u8; 80]); // st0-st7
    g.extend_from_slice(&0x37fu32.to_le_bytes()); // fctrl
    g.extend_from_slice(&[0u8; 28]); // fstat .. fop
    g.extend_from_slice(&[0u8; 256]); // xmm0-xmm15
    g.extend_from_slice(&0x1f80u32.to_le_bytes()); // mxcsr
    g
}

/// Applies a 536-byte `g` block to `ctx` (the general registers; x87/SSE are not modelled).
fn registers_from_g(ctx: &mut CpuContext, g: &[u8]) {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            g.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(g.get(o..o + 4)?.try_into().ok()?)) };
    let regs: [&mut u64; 17] = [
        &mut ctx.rax,
        &mut ctx.rbx,
        &mut ctx.rcx,
        &mut ctx.rdx,
        &mut ctx.rsi,
        &mut ctx.rdi,
        &mut ctx.rbp,
        &mut ctx.rsp,
        &mut ctx.r8,
        &mut ctx.r9,
        &mut ctx.r10,
        &mut ctx.r11,
        &mut ctx.r12,
        &mut ctx.r13,
        &mut ctx.r14,
        &mut ctx.r15,
        &mut ctx.rip,
    ];
    for (i, r) in regs.into_iter().enumerate() {
        if let Some(v) = u64_at(i) {
            *r = v;
        }
    }
    if let Some(v) = u32_at(136) {
        ctx.rflags = u64::from(v);
    }
    let segs: [&mut u16; 6] = [
        &mut ctx.cs,
        &mut ctx.ss,
        &mut ctx.ds,
        &mut ctx.es,
        &mut ctx.fs,
        &mut ctx.gs,
    ];
    for (i, s) in segs.into_iter().enumerate() {
        if let Some(v) = u32_at(140 + 4 * i) {
            *s = v as u16;
        }
    }
}

/// The library list of `machine`: every module, named by its full path, at its base.
pub fn library_list(machine: &Machine) -> String {
    let libs: Vec<Library> = machine
        .modules()
        .into_iter()
        .map(|m| Library {
            name: m.path,
            address: m.base.0,
        })
        .collect();
    xml::library_list(&libs)
}

/// The memory map of `machine`: its mapped regions, adjacent ones merged.
pub fn memory_map(machine: &Machine) -> String {
    let mut regions: Vec<MemoryRegion> = Vec::new();
    for r in machine.memory().regions() {
        let len = r.end.0.saturating_sub(r.start.0);
        match regions.last_mut() {
            Some(last) if last.start.saturating_add(last.length) == r.start.0 => last.length += len,
            _ => regions.push(MemoryRegion {
                start: r.start.0,
                length: len,
            }),
        }
    }
    xml::memory_map(&regions)
}

/// The state shared by the accept loop and the client task.
struct Shared {
    machine: SharedMachine,
    core: Mutex<StubCore>,
    busy: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Machine, &mut StubCore) -> R) -> R {
        self.machine.with_core(&self.core, f)
    }
}

impl StubState for Shared {
    fn machine(&self) -> &SharedMachine {
        &self.machine
    }

    fn into_machine(self) -> Machine {
        self.machine.into_machine()
    }
}

/// Starts stubs.
pub struct GdbStub;

impl GdbStub {
    /// Serves `machine` on 127.0.0.1 with an ephemeral port, on a background thread.
    pub fn spawn(machine: Machine, options: GdbStubOptions) -> std::io::Result<GdbStubHandle> {
        Self::spawn_at(SocketAddr::from(([127, 0, 0, 1], 0)), machine, options)
    }

    /// Serves `machine` on `addr`, on a background thread.
    pub fn spawn_at(
        addr: SocketAddr,
        machine: Machine,
        options: GdbStubOptions,
    ) -> std::io::Result<GdbStubHandle> {
        let listener = StdListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            machine: SharedMachine::new(machine),
            core: Mutex::new(StubCore::new(options)),
            busy: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gdb-stub".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, task_shared, stop_rx).await,
                        Err(e) => tracing::error!("gdb stub: {e}"),
                    }
                });
            })?;
        let stop: StopFn<Shared> = Box::new(move |_| {
            let _ = stop_tx.send(true);
        });
        Ok(GdbStubHandle {
            inner: StubThread::new(addr, shared, thread, stop),
        })
    }
}

/// A running stub.
pub struct GdbStubHandle {
    inner: StubThread<Shared>,
}

impl GdbStubHandle {
    /// The address the stub listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// Runs `f` on the machine (between packets).
    pub fn with_machine<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        self.inner.with_machine(f)
    }

    /// Whether a client is attached.
    pub fn client_attached(&self) -> bool {
        self.inner
            .shared()
            .busy
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Blocks until the stub stops (it runs until [`shutdown`](Self::shutdown) or the
    /// process ends).
    pub fn wait(self) {
        self.inner.wait();
    }

    /// Stops the stub, drops any client, and returns the machine.
    pub fn shutdown(self) -> Machine {
        self.inner.shutdown()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                if shared.busy.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    clients.spawn(refuse(stream));
                    continue;
                }
                tracing::info!("gdb client {peer} attached");
                let s = Arc::clone(&shared);
                let stop = stop.clone();
                clients.spawn(async move {
                    if let Err(e) = serve_client(stream, &s, stop).await {
                        tracing::info!("gdb client {peer}: {e}");
                    }
                    s.with(|m, c| c.reset_client(m));
                    s.busy.store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!("gdb client {peer} detached");
                });
            }
        }
    }
    clients.shutdown().await;
}

/// The text a second client gets.
pub const BUSY_MESSAGE: &str = "another debugger is attached to this stub (one client at a time)";

/// Answers the first packet of a second client with `E.` + [`BUSY_MESSAGE`], then closes.
async fn refuse(mut stream: TcpStream) {
    let mut session = ServerSession::default();
    let mut buf = [0u8; 1024];
    let wait = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let _ = stream.readable().await;
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    session.receive(buf.get(..n).unwrap_or_default());
                    if let Some(ServerEvent::Command(_)) = session.poll_event() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    let _ = wait.await;
    session.send(&Reply::ErrorText(BUSY_MESSAGE.into()));
    if let Some(bytes) = session.poll_transmit() {
        let _ = stream.write_all(&bytes).await;
    }
    let _ = stream.shutdown().await;
}

/// What a client sent, in order.
#[derive(Debug, PartialEq)]
enum Pending {
    /// A command packet.
    Command(Command),
    /// The interrupt byte (0x03).
    Interrupt,
}

/// Serves one client until it detaches, disconnects or the stub stops.
async fn serve_client(
    mut stream: TcpStream,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let packet_size = shared.with(|_, c| c.options.packet_size);
    let slice_interval = shared.with(|_, c| c.options.slice_interval);
    let mut session = ServerSession::new(SessionConfig {
        max_packet: packet_size + 0x100,
        ..SessionConfig::default()
    });
    // Commands and interrupts in arrival order: an interrupt that arrives behind a resume
    // (in the same read) stops the run that resume starts.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut running = false;
    let mut buf = vec![0u8; 0x4000];
    let mut close_after_write = false;
    loop {
        // Take input: block while stopped; while running, wait at most one slice interval
        // (no wait at all in an exact, client-limited run).
        let readable = if running {
            let wait = if shared.with(|_, c| c.paced) {
                slice_interval
            } else {
                Duration::ZERO
            };
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = tokio::time::timeout(wait, stream.readable()) => r.is_ok(),
            }
        } else {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                r = stream.readable() => { r?; true }
            }
        };
        if readable {
            match stream.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => session.receive(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ServerEvent::Command(cmd) => {
                    tracing::trace!(target: "gdb_stub", "<- {cmd:?}");
                    pending.push_back(Pending::Command(cmd));
                }
                ServerEvent::Interrupt if running && pending.is_empty() => {
                    running = false;
                    let stop = shared.with(|_, c| c.interrupt());
                    session.send(&Reply::Stop(stop));
                }
                ServerEvent::Interrupt if pending.is_empty() => {}
                ServerEvent::Interrupt => pending.push_back(Pending::Interrupt),
                ServerEvent::GaveUp => {
                    return Err(std::io::Error::other("client keeps rejecting our packets"));
                }
                _ => {}
            }
        }
        if running && pending.front() == Some(&Pending::Interrupt) {
            pending.pop_front();
            running = false;
            let stop = shared.with(|_, c| c.interrupt());
            session.send(&Reply::Stop(stop));
        }
        if running && let Some(stop) = shared.with(|m, c| c.run_slice(m)) {
            running = false;
            session.send(&Reply::Stop(stop));
        }
        // All-stop: commands are handled only while the target is stopped.
        while !running && !close_after_write {
            let cmd = match pending.pop_front() {
                None => break,
                // The target is stopped: nothing to interrupt.
                Some(Pending::Interrupt) => continue,
                Some(Pending::Command(cmd)) => cmd,
            };
            match shared.with(|m, c| c.handle(m, cmd)) {
                Action::Reply(replies) => replies.iter().for_each(|r| session.send(r)),
                Action::Resume => running = true,
                Action::Detach => {
                    session.send(&Reply::Ok);
                    close_after_write = true;
                }
                Action::Close => close_after_write = true,
            }
        }
        // The acks and the replies leave in one write.
        if let Some(bytes) = session.poll_transmit() {
            stream.write_all(&bytes).await?;
        }
        if close_after_write {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use tagsplit_protocol::gdb::{Breakpoint, ResumeAction};

    fn machine() -> Machine {
        Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
    }

    fn one(action: Action) -> Reply {
        match action {
            Action::Reply(mut r) if r.len() == 1 => r.remove(0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn g_is_536_bytes_and_round_trips() {
        let mut ctx = CpuContext {
            rip: 0x1122_3344_5566_7788,
            rflags: 0x246,
            cs: 0x10,
            r8: 7,
            ..CpuContext::default()
        };
        let g = registers_to_g(&ctx);
        assert_eq!(g.len(), xml::G_PACKET_LEN);
        assert_eq!(&g[128..136], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&g[532..536], &0x1f80u32.to_le_bytes());
        let mut back = CpuContext::default();
        registers_from_g(&mut back, &g);
        ctx.rflags &= 0xffff_ffff;
        assert_eq!(back, ctx);
    }

    #[test]
    fn core_answers_the_connect_sequence_and_memory() {
        let mut m = machine();
        let mut core = StubCore::new(GdbStubOptions::default());
        let Reply::Supported(f) = one(core.handle(&mut m, Command::QSupported(vec![]))) else {
            panic!()
        };
        assert!(f.contains(&Feature::supported("qXfer:libraries:read")));
        let Reply::Xfer { more: false, data } = one(core.handle(
            &mut m,
            Command::XferRead {
                object: XferObject::Libraries,
                annex: String::new(),
                offset: 0,
                length: 0x10000,
            },
        )) else {
            panic!()
        };
        let libs = xml::parse_library_list(std::str::from_utf8(&data).unwrap());
        assert_eq!(libs.len(), m.modules().len());
        let myfault = m
            .modules()
            .into_iter()
            .find(|x| x.name == "myfault.sys")
            .unwrap();
        let end = myfault.base.0 + myfault.size;
        let Reply::SearchResult(Some(hit)) = one(core.handle(
            &mut m,
            Command::SearchMemory {
                addr: myfault.base.0,
                len: myfault.size,
                pattern: b"Leak".to_vec(),
            },
        )) else {
            panic!()
        };
        assert_eq!(
            one(core.handle(&mut m, Command::ReadMemory { addr: hit, len: 4 })),
            Reply::Hex(b"Leak".to_vec())
        );
        let Reply::SearchResult(Some(second)) = one(core.handle(
            &mut m,
            Command::SearchMemory {
                addr: hit + 1,
                len: end - hit - 1,
                pattern: b"Leak".to_vec(),
            },
        )) else {
            panic!()
        };
        assert!(second > hit);
        assert_eq!(
            one(core.handle(&mut m, Command::ReadMemory { addr: 0x10, len: 4 })),
            Reply::Error(E_FAULT)
        );
        assert_eq!(
            one(core.handle(
                &mut m,
                Command::WriteMemoryBinary {
                    addr: hit + 3,
                    data: vec![0x31]
                }
            )),
            Reply::Ok
        );
        assert_eq!(
            one(core.handle(&mut m, Command::ReadMemory { addr: hit, len: 4 })),
            Reply::Hex(b"Lea1".to_vec())
        );
        assert!(matches!(
            core.handle(&mut m, Command::Monitor(b"lm".to_vec()))
                .as_slice_reply(),
            [Reply::ErrorText(_)]
        ));
    }

    #[test]
    fn basic_stub_answers_empty_to_optional_packets() {
        let mut m = machine();
        let mut core = StubCore::new(GdbStubOptions {
            features: StubFeatures::BASIC,
            ..GdbStubOptions::default()
        });
        assert_eq!(
            one(core.handle(
                &mut m,
                Command::SearchMemory {
                    addr: 0,
                    len: 1,
                    pattern: b"L".to_vec()
                }
            )),
            Reply::Empty
        );
        assert_eq!(
            one(core.handle(
                &mut m,
                Command::WriteMemoryBinary {
                    addr: 0,
                    data: vec![]
                }
            )),
            Reply::Empty
        );
        assert_eq!(
            one(core.handle(&mut m, Command::StartNoAckMode)),
            Reply::Empty
        );
        assert_eq!(
            one(core.handle(
                &mut m,
                Command::XferRead {
                    object: XferObject::Libraries,
                    annex: String::new(),
                    offset: 0,
                    length: 10
                }
            )),
            Reply::Error(0)
        );
    }

    #[test]
    fn breakpoint_on_an_allocation_site_stops_with_swbreak_and_limit_stops_with_sigint() {
        let mut m = machine();
        let site = m
            .sites()
            .into_iter()
            .find(|s| s.allocates && s.tag.to_string() == "Leak")
            .unwrap();
        let mut core = StubCore::new(GdbStubOptions {
            stop_after_ticks: Some(100_000),
            ..GdbStubOptions::default()
        });
        let bp = Breakpoint {
            kind: BreakpointType::Software,
            addr: site.instr.0,
            size: 1,
        };
        assert_eq!(
            one(core.handle(&mut m, Command::InsertBreakpoint(bp))),
            Reply::Ok
        );
        let resume = Command::VCont(vec![ResumeAction {
            kind: ResumeKind::Continue,
            thread: None,
        }]);
        assert_eq!(core.handle(&mut m, resume.clone()), Action::Resume);
        let stop = (0..100_000).find_map(|_| core.run_slice(&mut m)).unwrap();
        assert_eq!(
            stop,
            StopReply::thread(SIGTRAP, THREAD, Some(StopKind::SwBreak))
        );
        assert_eq!(m.context().rip, site.instr.0);
        // Without the breakpoint a limited run ends with SIGINT after exactly the limit.
        assert_eq!(
            one(core.handle(&mut m, Command::RemoveBreakpoint(bp))),
            Reply::Ok
        );
        assert_eq!(one(core.handle(&mut m, Command::RunLimit(25))), Reply::Ok);
        let before = m.tick();
        assert_eq!(core.handle(&mut m, resume), Action::Resume);
        let stop = (0..100).find_map(|_| core.run_slice(&mut m)).unwrap();
        assert_eq!(stop, StopReply::thread(SIGINT, THREAD, None));
        assert_eq!(m.tick() - before, 25);
    }

    #[test]
    fn stop_after_ticks_ends_every_continue_after_exactly_n_ticks() {
        let mut m = machine();
        let mut core = StubCore::new(GdbStubOptions {
            stop_after_ticks: Some(7),
            ..GdbStubOptions::default()
        });
        for _ in 0..2 {
            let before = m.tick();
            assert_eq!(core.handle(&mut m, Command::Continue(None)), Action::Resume);
            assert!(core.paced, "a continue from gdb runs on the wall clock");
            let stop = (0..100).find_map(|_| core.run_slice(&mut m)).unwrap();
            assert_eq!(stop, StopReply::thread(SIGINT, THREAD, None));
            assert_eq!(m.tick() - before, 7);
            assert_eq!(
                one(core.handle(&mut m, Command::HaltReason)),
                Reply::Stop(stop)
            );
        }
        // A client's exact limit below the server's wins, and is not paced.
        assert_eq!(one(core.handle(&mut m, Command::RunLimit(3))), Reply::Ok);
        let before = m.tick();
        assert_eq!(core.handle(&mut m, Command::Continue(None)), Action::Resume);
        assert!(!core.paced);
        (0..100).find_map(|_| core.run_slice(&mut m)).unwrap();
        assert_eq!(m.tick() - before, 3);
    }

    #[test]
    fn binary_reads_keep_the_escaped_reply_within_the_packet() {
        let mut m = machine();
        let base = m.modules()[0].base;
        m.write(base, &[b'#'; 300]).unwrap();
        let mut core = StubCore::new(GdbStubOptions {
            packet_size: 208,
            ..GdbStubOptions::default()
        });
        let Reply::Binary(data) = one(core.handle(
            &mut m,
            Command::ReadMemoryBinary {
                addr: base.0,
                len: 300,
            },
        )) else {
            panic!()
        };
        // 200 bytes of room, every byte escaped: 100 bytes.
        assert_eq!(data, vec![b'#'; 100]);
        let Reply::Binary(data) = one(core.handle(
            &mut m,
            Command::ReadMemoryBinary {
                addr: base.0 + 300,
                len: 300,
            },
        )) else {
            panic!()
        };
        assert_eq!(data.len(), 200);
        assert_eq!(
            one(core.handle(&mut m, Command::ReadMemoryBinary { addr: 0x10, len: 4 })),
            Reply::Error(E_FAULT)
        );
    }

    trait AsSliceReply {
        fn as_slice_reply(&self) -> &[Reply];
    }
    impl AsSliceReply for Action {
        fn as_slice_reply(&self) -> &[Reply] {
            match self {
                Action::Reply(r) => r,
                _ => &[],
            }
        }
    }
}
