//! The KD stub: the simulated machine as a Windows kernel speaking KD, over KDNET (UDP)
//! or over KDCOM framing on a TCP stream (as VMs expose a serial port).
//!
//! [`KdCore`] is the protocol logic without sockets: KD packets in, KD packets out. On
//! attach it prints a banner (debug I/O), reports a load-symbols state change per module
//! and then a breakpoint exception; while stopped it answers manipulate-state requests
//! (GetVersion, Read/WriteVirtualMemory clamped to 3944 bytes as Windows clamps,
//! SearchMemory, Get/SetContext, Write/RestoreBreakPoint, Read/WriteControlSpace, …;
//! anything else gets `STATUS_UNSUCCESSFUL`); Continue/Continue2 run the workload in
//! slices until a break-in, a breakpoint on an allocation site, or a tick budget, and
//! the stop is reported as an exception state change.
//!
//! [`KdStub`] runs a core on a background thread: [`KdStub::spawn_kdnet`] pokes the
//! debugger at a host address (as a target configured with `hostip:port` does) and
//! [`KdStub::spawn_kdcom`] listens on TCP. Both start from a test in one call.
//!
//! ```no_run
//! use tagsplit_target_sim::machine::Machine;
//! use tagsplit_target_sim::scenario::Scenario;
//! use tagsplit_target_sim::server::kd::{KdStub, KdStubOptions};
//!
//! let machine = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
//! let stub = KdStub::spawn_kdcom(machine, KdStubOptions::default()).unwrap();
//! println!("connect a KDCOM debugger to {}", stub.addr());
//! let machine = stub.shutdown();
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tagsplit_protocol::kd::payload::{ControlReport, Exception64, LoadSymbols64};
use tagsplit_protocol::kd::{
    DebugIo, GetVersion64, MAX_TRANSFER, Manipulate, ManipulateApi, MemoryTransfer, PacketType,
    Role, Session, SessionConfig, SessionEvent, StateChange, StateChangeKind, context, ext, le,
    status,
};
use tagsplit_protocol::kdnet::{Endpoint, EndpointConfig, EndpointEvent, Key};

use super::{SharedMachine, StopFn, StubState, StubThread};
use crate::machine::{CpuContext, Machine, SimStop};
use crate::types::VirtAddr;

/// `STATUS_NO_MORE_ENTRIES`: SearchMemory found nothing.
pub const STATUS_NO_MORE_ENTRIES: u32 = tagsplit_protocol::nt::status::NO_MORE_ENTRIES;
/// The fake `KTHREAD` address reported in state changes.
pub const THREAD: u64 = 0xFFFF_F800_0100_0180;
/// The fake `KPCR` address (control-space selector 0).
pub const KPCR: u64 = 0xFFFF_F800_0100_0000;
/// The fake `KPRCB` address (control-space selector 1).
pub const KPRCB: u64 = 0xFFFF_F800_0100_0180;
/// Size of `KSPECIAL_REGISTERS` as WinDbg reads it (control-space selector 2).
pub const SPECIAL_REGISTERS_LEN: usize = 0xE0;

/// Most ticks an exact (debugger-limited) run takes between looks at the link, so a
/// break-in stops even a run of 10^15 ticks promptly.
pub const EXACT_SLICE_TICKS: u64 = 4096;

/// How a stub behaves.
#[derive(Clone, Debug)]
pub struct KdStubOptions {
    /// Every Continue stops after at most this many ticks (a server-side budget).
    pub stop_after_ticks: Option<u64>,
    /// The scenario's default run length, offered through [`ext::DEFAULT_RUN_SELECTOR`].
    pub default_run_ticks: Option<u64>,
    /// Ticks per slice while running (break-ins are checked between slices).
    pub slice_ticks: u64,
    /// Wall-clock pause per slice while running without an exact limit (pacing).
    pub slice_interval: Duration,
    /// KD retry timeout.
    pub retry_timeout: Duration,
    /// KD retries before the debugger is considered gone.
    pub max_retries: u32,
    /// KDNET: poke interval until a debugger answers.
    pub poke_interval: Duration,
    /// KDNET: while stopped, a debugger silent this long is considered gone and the
    /// stub pokes again (so a new debugger can attach).
    pub reconnect_after: Duration,
    /// The line printed (debug I/O) on attach.
    pub banner: String,
}

impl Default for KdStubOptions {
    fn default() -> Self {
        KdStubOptions {
            stop_after_ticks: None,
            default_run_ticks: None,
            slice_ticks: 10,
            slice_interval: Duration::from_millis(10),
            retry_timeout: Duration::from_millis(200),
            max_retries: 25,
            poke_interval: Duration::from_millis(200),
            reconnect_after: Duration::from_secs(5),
            banner: "tagsplit: simulated Windows x64 kernel (KD stub)\n".to_string(),
        }
    }
}

/// A KD packet the core wants sent: type and payload.
pub type Outgoing = (PacketType, Vec<u8>);

/// The stub's protocol logic, without sockets.
#[derive(Debug)]
pub struct KdCore {
    options: KdStubOptions,
    /// State changes still to report in the attach sequence (each after a Continue).
    pending: VecDeque<StateChange>,
    /// A state change is outstanding: the target is stopped, answering requests.
    stopped: bool,
    running: bool,
    /// Ticks left in the current run, if limited.
    budget: Option<u64>,
    /// Whether the current run has an exact (client-set) limit: no pacing.
    exact: bool,
    next_limit: Option<u64>,
    breakpoints: BTreeMap<u32, u64>,
    next_handle: u32,
}

impl KdCore {
    /// A core with `options`.
    pub fn new(options: KdStubOptions) -> KdCore {
        KdCore {
            options,
            pending: VecDeque::new(),
            stopped: false,
            running: false,
            budget: None,
            exact: false,
            next_limit: None,
            breakpoints: BTreeMap::new(),
            next_handle: 1,
        }
    }

    /// Whether the workload is running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether the target is stopped in the debugger (a state change is outstanding).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the current run is paced by the wall clock.
    pub fn is_paced(&self) -> bool {
        self.running && !self.exact
    }

    /// A debugger attached: the banner, then the first of the load-symbols state changes
    /// (the rest and a breakpoint follow, one per Continue). Breakpoints of an earlier
    /// debugger are removed.
    pub fn attach(&mut self, m: &mut Machine) -> Vec<Outgoing> {
        for addr in std::mem::take(&mut self.breakpoints).into_values() {
            m.clear_breakpoint(VirtAddr(addr));
        }
        self.running = false;
        self.budget = None;
        self.next_limit = None;
        self.pending.clear();
        for module in m.modules() {
            let mut path = module.path.clone().into_bytes();
            path.push(0);
            let kind = StateChangeKind::LoadSymbols(LoadSymbols64 {
                path_name_length: u32::try_from(path.len()).unwrap_or(u32::MAX),
                base_of_dll: module.base.0,
                process_id: 0,
                checksum: 0,
                size_of_image: u32::try_from(module.size).unwrap_or(u32::MAX),
                unload_symbols: 0,
            });
            let mut sc = self.state_change(m, &kind);
            sc.set_data(path);
            self.pending.push_back(sc);
        }
        let pc = m.context().rip;
        let bp = self.exception(m, pc);
        self.pending.push_back(bp);
        let mut out = vec![(
            PacketType::DebugIo,
            DebugIo::print_string(0, self.options.banner.as_bytes()).to_bytes(),
        )];
        out.extend(self.next_state_change());
        out
    }

    fn next_state_change(&mut self) -> Option<Outgoing> {
        let sc = self.pending.pop_front()?;
        self.stopped = true;
        Some((PacketType::StateChange64, sc.to_bytes()))
    }

    fn state_change(&self, m: &Machine, kind: &StateChangeKind) -> StateChange {
        let ctx = m.context();
        let mut sc = StateChange::new(kind, 0, 1, THREAD, ctx.rip);
        sc.set_processor_level(6);
        let mut stream = [0u8; 16];
        let count = match m.read(VirtAddr(ctx.rip), &mut stream) {
            Ok(()) => 16,
            Err(e) => e.done,
        };
        sc.set_control_report(&ControlReport {
            dr6: 0,
            dr7: 0,
            eflags: u32::try_from(ctx.rflags & 0xFFFF_FFFF).unwrap_or(0x202),
            instruction_count: u16::try_from(count).unwrap_or(0),
            report_flags: 3,
            instruction_stream: stream,
            seg_cs: 0x10,
            seg_ds: 0x2B,
            seg_es: 0x2B,
            seg_fs: 0x53,
        });
        sc
    }

    fn exception(&self, m: &Machine, address: u64) -> StateChange {
        let kind = StateChangeKind::Exception(Exception64 {
            code: status::BREAKPOINT,
            flags: 0,
            record: 0,
            address,
            number_parameters: 1,
            information: [0; 15],
            first_chance: 1,
        });
        self.state_change(m, &kind)
    }

    /// A debugger's break-in: if running, stop and report a breakpoint exception.
    pub fn break_in(&mut self, m: &Machine) -> Vec<Outgoing> {
        if !self.running {
            return Vec::new();
        }
        self.stop(m, m.context().rip)
    }

    fn stop(&mut self, m: &Machine, address: u64) -> Vec<Outgoing> {
        self.running = false;
        self.budget = None;
        self.stopped = true;
        let sc = self.exception(m, address);
        vec![(PacketType::StateChange64, sc.to_bytes())]
    }

    /// While running: runs one slice of the workload (at most [`EXACT_SLICE_TICKS`] of an
    /// exact run); reports a stop if one happens.
    pub fn step(&mut self, m: &mut Machine) -> Vec<Outgoing> {
        if !self.running {
            return Vec::new();
        }
        let slice = if self.exact {
            // In chunks, so that a break-in reaches even a very long exact run.
            self.budget
                .unwrap_or(self.options.slice_ticks)
                .min(EXACT_SLICE_TICKS)
        } else {
            self.options.slice_ticks
        };
        let ticks = self.budget.map_or(slice, |b| b.min(slice));
        let out = m.run(ticks);
        if let Some(b) = self.budget.as_mut() {
            *b = b.saturating_sub(out.ticks_run);
        }
        match out.stop {
            Some(SimStop::Breakpoint(addr)) => self.stop(m, addr.0),
            Some(_) => self.stop(m, m.context().rip),
            None if self.budget == Some(0) => self.stop(m, m.context().rip),
            None => Vec::new(),
        }
    }

    /// Handles one data packet from the debugger; returns the packets to send.
    pub fn handle(&mut self, m: &mut Machine, ty: PacketType, payload: &[u8]) -> Vec<Outgoing> {
        if ty != PacketType::StateManipulate {
            return Vec::new();
        }
        let Ok(req) = Manipulate::parse(payload) else {
            return Vec::new();
        };
        match req.api() {
            ManipulateApi::Continue { .. } | ManipulateApi::Continue2 { .. } => self.resume(),
            api => {
                let reply = self.manipulate(m, &req, api);
                vec![(PacketType::StateManipulate, reply.to_bytes())]
            }
        }
    }

    fn resume(&mut self) -> Vec<Outgoing> {
        if !self.stopped {
            return Vec::new();
        }
        self.stopped = false;
        if let Some(next) = self.next_state_change() {
            return vec![next];
        }
        let limits = [self.next_limit.take(), self.options.stop_after_ticks];
        self.exact = limits.first().copied().flatten().is_some();
        self.budget = limits.into_iter().flatten().min();
        self.running = true;
        Vec::new()
    }

    fn manipulate(&mut self, m: &mut Machine, req: &Manipulate, api: ManipulateApi) -> Manipulate {
        use ManipulateApi as M;
        let fail = |req: &Manipulate, api: &ManipulateApi| {
            req.reply(status::UNSUCCESSFUL, api, Vec::new())
        };
        match api {
            M::GetVersion(_) => {
                let k = m.kernel();
                // DebuggerDataList points at the list head whose Flink is the KDBG block.
                let mut head = [0u8; 8];
                let list = match m.read(k.kdbg, &mut head) {
                    Ok(()) => u64::from_le_bytes(head),
                    Err(_) => k.kdbg.0,
                };
                let v = GetVersion64 {
                    major_version: 0x000F,
                    minor_version: 19041,
                    protocol_version: 6,
                    kd_secondary_version: 2,
                    flags: 0x0007,
                    machine_type: 0x8664,
                    max_packet_type: 12,
                    max_state_change: 3,
                    max_manipulate: 0x31,
                    simulation: 0,
                    unused: 0,
                    kern_base: k.kern_base.0,
                    ps_loaded_module_list: k.ps_loaded_module_list.0,
                    debugger_data_list: list,
                };
                req.reply(status::SUCCESS, &M::GetVersion(v), Vec::new())
            }
            M::ReadVirtualMemory(t) => {
                let want = usize::try_from(t.count)
                    .unwrap_or(MAX_TRANSFER)
                    .min(MAX_TRANSFER);
                let mut buf = vec![0u8; want];
                let got = match m.read(VirtAddr(t.address), &mut buf) {
                    Ok(()) => want,
                    Err(e) => e.done,
                };
                buf.truncate(got);
                transfer_reply(req, t, want, got, M::ReadVirtualMemory, buf)
            }
            M::WriteVirtualMemory(t) => {
                let n = usize::try_from(t.count).unwrap_or(0).min(req.data().len());
                let data = req.data().get(..n).unwrap_or(&[]);
                let done = match m.write(VirtAddr(t.address), data) {
                    Ok(()) => n,
                    Err(e) => e.done,
                };
                transfer_reply(req, t, n, done, M::WriteVirtualMemory, Vec::new())
            }
            M::SearchMemory {
                address,
                length,
                pattern_length,
            } => {
                let n = usize::try_from(pattern_length)
                    .unwrap_or(0)
                    .min(req.data().len());
                let pattern = req.data().get(..n).unwrap_or(&[]);
                let end = VirtAddr(address.saturating_add(length));
                let hit = if pattern.is_empty() {
                    None
                } else {
                    m.search(VirtAddr(address), end, pattern, 1)
                        .first()
                        .copied()
                };
                match hit {
                    Some(h) => req.reply(
                        status::SUCCESS,
                        &M::SearchMemory {
                            address: h.0,
                            length,
                            pattern_length,
                        },
                        Vec::new(),
                    ),
                    None => req.reply(STATUS_NO_MORE_ENTRIES, &api, Vec::new()),
                }
            }
            M::GetContext { .. } => req.reply(status::SUCCESS, &api, context_bytes(m.context())),
            M::SetContext { .. } => {
                if req.data().len() < context::SIZE {
                    return fail(req, &api);
                }
                set_context(m.context_mut(), req.data());
                req.reply(status::SUCCESS, &api, Vec::new())
            }
            M::WriteBreakPoint { address, .. } => {
                let handle = self.next_handle;
                self.next_handle = self.next_handle.wrapping_add(1).max(1);
                m.set_breakpoint(VirtAddr(address));
                self.breakpoints.insert(handle, address);
                req.reply(
                    status::SUCCESS,
                    &M::WriteBreakPoint { address, handle },
                    Vec::new(),
                )
            }
            M::RestoreBreakPoint { handle } => match self.breakpoints.remove(&handle) {
                Some(addr) => {
                    if !self.breakpoints.values().any(|&a| a == addr) {
                        m.clear_breakpoint(VirtAddr(addr));
                    }
                    req.reply(status::SUCCESS, &api, Vec::new())
                }
                None => fail(req, &api),
            },
            M::ReadControlSpace(t) => {
                let data: Option<Vec<u8>> = match t.address {
                    0 => Some(KPCR.to_le_bytes().to_vec()),
                    1 => Some(KPRCB.to_le_bytes().to_vec()),
                    3 => Some(THREAD.to_le_bytes().to_vec()),
                    2 => Some(vec![0u8; SPECIAL_REGISTERS_LEN]),
                    ext::DEFAULT_RUN_SELECTOR => self
                        .options
                        .default_run_ticks
                        .map(|t| t.to_le_bytes().to_vec()),
                    ext::TICK_SELECTOR => Some(m.tick().to_le_bytes().to_vec()),
                    _ => None,
                };
                match data {
                    Some(mut d) => {
                        d.truncate(usize::try_from(t.count).unwrap_or(0));
                        let n = d.len();
                        transfer_reply(req, t, n, n, M::ReadControlSpace, d)
                    }
                    None => fail(req, &api),
                }
            }
            M::WriteControlSpace(t) => match t.address {
                2 => {
                    let n = usize::try_from(t.count).unwrap_or(0);
                    transfer_reply(req, t, n, n, M::WriteControlSpace, Vec::new())
                }
                ext::RUN_LIMIT_SELECTOR if req.data().len() >= 8 => {
                    self.next_limit = Some(le::u64_at(req.data(), 0));
                    transfer_reply(req, t, 8, 8, M::WriteControlSpace, Vec::new())
                }
                _ => fail(req, &api),
            },
            other => {
                tracing::debug!("kd stub: unsupported {}", other.number().name());
                fail(req, &other)
            }
        }
    }
}

/// The reply to a memory transfer of `want` bytes of which `done` succeeded: success only
/// when all of them did, `ActualBytes` = `done`.
fn transfer_reply(
    req: &Manipulate,
    t: MemoryTransfer,
    want: usize,
    done: usize,
    wrap: fn(MemoryTransfer) -> ManipulateApi,
    data: Vec<u8>,
) -> Manipulate {
    let st = if done == want {
        status::SUCCESS
    } else {
        status::UNSUCCESSFUL
    };
    let actual = u32::try_from(done).unwrap_or(0);
    req.reply(st, &wrap(MemoryTransfer { actual, ..t }), data)
}

/// The AMD64 `CONTEXT` for the simulated registers.
pub fn context_bytes(c: &CpuContext) -> Vec<u8> {
    let mut b = vec![0u8; context::SIZE];
    le::put_u32(&mut b, context::CONTEXT_FLAGS, context::CONTEXT_ALL);
    le::put_u32(&mut b, context::MX_CSR, 0x1F80);
    le::put_u16(&mut b, context::SEG_CS, c.cs);
    le::put_u16(&mut b, context::SEG_DS, c.ds);
    le::put_u16(&mut b, context::SEG_ES, c.es);
    le::put_u16(&mut b, context::SEG_FS, c.fs);
    le::put_u16(&mut b, context::SEG_GS, c.gs);
    le::put_u16(&mut b, context::SEG_SS, c.ss);
    le::put_u32(
        &mut b,
        context::EFLAGS,
        u32::try_from(c.rflags & 0xFFFF_FFFF).unwrap_or(0),
    );
    for (i, v) in gprs(c).iter().enumerate() {
        le::put_u64(&mut b, context::gpr(i), *v);
    }
    le::put_u64(&mut b, context::RIP, c.rip);
    b
}

fn gprs(c: &CpuContext) -> [u64; 16] {
    [
        c.rax, c.rcx, c.rdx, c.rbx, c.rsp, c.rbp, c.rsi, c.rdi, c.r8, c.r9, c.r10, c.r11, c.r12,
        c.r13, c.r14, c.r15,
    ]
}

/// Loads registers from an AMD64 `CONTEXT`.
pub fn set_context(c: &mut CpuContext, b: &[u8]) {
    let r = |i| le::u64_at(b, context::gpr(i));
    c.rax = r(0);
    c.rcx = r(1);
    c.rdx = r(2);
    c.rbx = r(3);
    c.rsp = r(4);
    c.rbp = r(5);
    c.rsi = r(6);
    c.rdi = r(7);
    c.r8 = r(8);
    c.r9 = r(9);
    c.r10 = r(10);
    c.r11 = r(11);
    c.r12 = r(12);
    c.r13 = r(13);
    c.r14 = r(14);
    c.r15 = r(15);
    c.rip = le::u64_at(b, context::RIP);
    c.rflags = u64::from(le::u32_at(b, context::EFLAGS));
    c.cs = le::u16_at(b, context::SEG_CS);
    c.ds = le::u16_at(b, context::SEG_DS);
    c.es = le::u16_at(b, context::SEG_ES);
    c.fs = le::u16_at(b, context::SEG_FS);
    c.gs = le::u16_at(b, context::SEG_GS);
    c.ss = le::u16_at(b, context::SEG_SS);
}

// ---------------------------------------------------------------------------------------
// Transports.
// ---------------------------------------------------------------------------------------

/// State shared by the stub thread and its handle.
struct Shared {
    machine: SharedMachine,
    core: Mutex<KdCore>,
    stop: AtomicBool,
    attached: AtomicBool,
    attaches: AtomicU64,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut Machine, &mut KdCore) -> R) -> R {
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

/// Starts KD stubs.
#[derive(Debug)]
pub struct KdStub;

impl KdStub {
    /// Serves `machine` over KDNET: binds UDP on 127.0.0.1 (ephemeral port) and pokes the
    /// debugger listening at `host` with `key` until it answers.
    pub fn spawn_kdnet(
        machine: Machine,
        host: SocketAddr,
        key: Key,
        options: KdStubOptions,
    ) -> std::io::Result<KdStubHandle> {
        let bind = if host.is_ipv4() {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
        };
        Self::spawn_kdnet_at(bind, machine, host, key, options)
    }

    /// Serves `machine` over KDNET from `bind`, poking `host`.
    pub fn spawn_kdnet_at(
        bind: SocketAddr,
        machine: Machine,
        host: SocketAddr,
        key: Key,
        options: KdStubOptions,
    ) -> std::io::Result<KdStubHandle> {
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(2)))?;
        let addr = sock.local_addr()?;
        let shared = Self::shared(machine, &options);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kdnet-stub".into())
            .spawn(move || kdnet_loop(&sock, host, key, &options, &s))?;
        Ok(KdStubHandle::new(addr, shared, thread))
    }

    /// Serves `machine` with KDCOM framing over TCP on 127.0.0.1 (ephemeral port).
    pub fn spawn_kdcom(machine: Machine, options: KdStubOptions) -> std::io::Result<KdStubHandle> {
        Self::spawn_kdcom_at(SocketAddr::from(([127, 0, 0, 1], 0)), machine, options)
    }

    /// Serves `machine` with KDCOM framing over TCP on `addr`.
    pub fn spawn_kdcom_at(
        addr: SocketAddr,
        machine: Machine,
        options: KdStubOptions,
    ) -> std::io::Result<KdStubHandle> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Self::shared(machine, &options);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kdcom-stub".into())
            .spawn(move || kdcom_loop(&listener, &options, &s))?;
        Ok(KdStubHandle::new(addr, shared, thread))
    }

    fn shared(machine: Machine, options: &KdStubOptions) -> Arc<Shared> {
        Arc::new(Shared {
            machine: SharedMachine::new(machine),
            core: Mutex::new(KdCore::new(options.clone())),
            stop: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            attaches: AtomicU64::new(0),
        })
    }
}

/// A running KD stub.
pub struct KdStubHandle {
    inner: StubThread<Shared>,
}

impl std::fmt::Debug for KdStubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdStubHandle")
            .field("addr", &self.inner.addr())
            .finish_non_exhaustive()
    }
}

impl KdStubHandle {
    fn new(addr: SocketAddr, shared: Arc<Shared>, thread: JoinHandle<()>) -> Self {
        let stop: StopFn<Shared> = Box::new(|s| s.stop.store(true, Ordering::SeqCst));
        KdStubHandle {
            inner: StubThread::new(addr, shared, thread, stop),
        }
    }

    /// The stub's own address (UDP for KDNET, the TCP listener for KDCOM).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// Runs `f` on the machine (between packets).
    pub fn with_machine<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        self.inner.with_machine(f)
    }

    /// Whether a debugger is attached.
    pub fn client_attached(&self) -> bool {
        self.inner.shared().attached.load(Ordering::SeqCst)
    }

    /// How many times a debugger attached so far.
    pub fn attaches(&self) -> u64 {
        self.inner.shared().attaches.load(Ordering::SeqCst)
    }

    /// Blocks until the stub thread ends (it runs until [`shutdown`](Self::shutdown)).
    pub fn wait(self) {
        self.inner.wait();
    }

    /// Stops the stub and returns the machine.
    pub fn shutdown(self) -> Machine {
        self.inner.shutdown()
    }
}

fn session_config(options: &KdStubOptions, kdnet: bool) -> SessionConfig {
    let base = if kdnet {
        SessionConfig::kdnet(Role::Target)
    } else {
        SessionConfig::kdcom(Role::Target)
    };
    SessionConfig {
        retry_timeout: options.retry_timeout,
        max_retries: options.max_retries,
        ..base
    }
}

/// Dispatches session events to the core; returns (packets to send, debugger gone).
fn dispatch(shared: &Shared, events: Vec<SessionEvent>) -> (Vec<Outgoing>, bool) {
    let mut out = Vec::new();
    let mut gone = false;
    for ev in events {
        match ev {
            SessionEvent::Packet {
                packet_type,
                payload,
                ..
            } => {
                out.extend(shared.with(|m, c| c.handle(m, packet_type, &payload)));
            }
            SessionEvent::BreakIn => out.extend(shared.with(|m, c| c.break_in(m))),
            SessionEvent::SendFailed { .. } => gone = true,
            _ => {}
        }
    }
    (out, gone)
}

fn kdcom_loop(listener: &TcpListener, options: &KdStubOptions, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                tracing::info!("kdcom debugger {peer} attached");
                shared.attached.store(true, Ordering::SeqCst);
                shared.attaches.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = serve_kdcom(stream, options, shared) {
                    tracing::info!("kdcom debugger {peer}: {e}");
                }
                shared.attached.store(false, Ordering::SeqCst);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_kdcom(
    mut stream: TcpStream,
    options: &KdStubOptions,
    shared: &Shared,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let start = Instant::now();
    let mut session = Session::new(session_config(options, false));
    for (ty, p) in shared.with(|m, c| c.attach(m)) {
        session.send(start.elapsed(), ty, p);
    }
    let mut buf = vec![0u8; 8192];
    while !shared.stop.load(Ordering::SeqCst) {
        while let Some(unit) = session.poll_transmit() {
            stream.write_all(&unit)?;
        }
        let (running, paced) = shared.with(|_, c| (c.is_running(), c.is_paced()));
        let wait = if paced {
            options.slice_interval
        } else {
            Duration::from_millis(2)
        };
        stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => session.handle_bytes(start.elapsed(), buf.get(..n).unwrap_or(&[])),
            // Nothing yet, or a signal landed in the read (EINTR): read again.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        let now = start.elapsed();
        session.handle_timeout(now);
        let events: Vec<SessionEvent> = std::iter::from_fn(|| session.poll_event()).collect();
        let (mut out, _) = dispatch(shared, events);
        if running {
            out.extend(shared.with(|m, c| c.step(m)));
        }
        for (ty, p) in out {
            session.send(now, ty, p);
        }
    }
    Ok(())
}

fn kdnet_endpoint(
    sock: &UdpSocket,
    host: SocketAddr,
    key: Key,
    options: &KdStubOptions,
    now: Duration,
) -> Endpoint {
    let random = [0x5Au8; 32];
    let mut cfg = EndpointConfig::new(Role::Target, key, random);
    cfg.poke_interval = options.poke_interval;
    cfg.session = session_config(options, true);
    cfg.local = sock.local_addr().unwrap_or(cfg.local);
    cfg.peer = host;
    Endpoint::new(cfg, now)
}

fn kdnet_loop(
    sock: &UdpSocket,
    host: SocketAddr,
    key: Key,
    options: &KdStubOptions,
    shared: &Shared,
) {
    let start = Instant::now();
    let mut ep = kdnet_endpoint(sock, host, key, options, start.elapsed());
    let mut last_heard = start.elapsed();
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::SeqCst) {
        let now = start.elapsed();
        ep.handle_timeout(now);
        while let Some(d) = ep.poll_transmit() {
            if let Err(e) = sock.send_to(&d, host) {
                tracing::debug!("kdnet stub: send to {host}: {e}");
            }
        }
        let paced = shared.with(|_, c| c.is_paced());
        let wait = if paced {
            options.slice_interval
        } else {
            Duration::from_millis(2)
        };
        let _ = sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        if let Ok((n, _from)) = sock.recv_from(&mut buf) {
            last_heard = start.elapsed();
            ep.handle_datagram(last_heard, buf.get(..n).unwrap_or(&[]));
        }
        let now = start.elapsed();
        let mut events = Vec::new();
        let mut connected = false;
        while let Some(ev) = ep.poll_event() {
            match ev {
                EndpointEvent::Connected { .. } => connected = true,
                EndpointEvent::Kd(k) => events.push(k),
                EndpointEvent::Rejected(e) => tracing::debug!("kdnet stub: {e}"),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if connected {
            tracing::info!("kdnet debugger at {host} attached");
            shared.attached.store(true, Ordering::SeqCst);
            shared.attaches.fetch_add(1, Ordering::SeqCst);
            out.extend(shared.with(|m, c| c.attach(m)));
        }
        let (more, gone) = dispatch(shared, events);
        out.extend(more);
        let (running, stopped) = shared.with(|_, c| (c.is_running(), c.is_stopped()));
        if running {
            out.extend(shared.with(|m, c| c.step(m)));
        }
        for (ty, p) in out {
            ep.send(now, ty, p);
        }
        let silent = ep.is_connected()
            && stopped
            && now.saturating_sub(last_heard) > options.reconnect_after;
        if (gone || silent) && !ep.is_soliciting() {
            tracing::info!("kdnet debugger silent; poking for a new one");
            ep.solicit(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use tagsplit_protocol::kd::Payload;

    fn machine() -> Machine {
        Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap()
    }

    fn reply(out: &[Outgoing]) -> Manipulate {
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, PacketType::StateManipulate);
        Manipulate::parse(&out[0].1).unwrap()
    }

    /// Sends `cont` (which must get no immediate reply) and steps until the core reports.
    fn run_until_stop(core: &mut KdCore, m: &mut Machine, cont: &Manipulate) -> Vec<Outgoing> {
        assert!(
            core.handle(m, PacketType::StateManipulate, &cont.to_bytes())
                .is_empty()
        );
        let mut out = Vec::new();
        while out.is_empty() {
            out = core.step(m);
        }
        out
    }

    fn req(core: &mut KdCore, m: &mut Machine, api: ManipulateApi, data: Vec<u8>) -> Manipulate {
        let r = Manipulate::request(&api, data);
        reply(&core.handle(m, PacketType::StateManipulate, &r.to_bytes()))
    }

    #[test]
    fn attach_sequence_then_requests() {
        let mut m = machine();
        let mut core = KdCore::new(KdStubOptions {
            stop_after_ticks: Some(50),
            ..KdStubOptions::default()
        });
        let out = core.attach(&mut m);
        assert_eq!(out[0].0, PacketType::DebugIo);
        let mut loads = 0;
        let mut next = out[1].clone();
        loop {
            let Payload::StateChange(sc) = Payload::parse(next.0, &next.1).unwrap() else {
                panic!()
            };
            match sc.kind() {
                StateChangeKind::LoadSymbols(_) => loads += 1,
                StateChangeKind::Exception(e) => {
                    assert_eq!(e.code, status::BREAKPOINT);
                    break;
                }
                other => panic!("{other:?}"),
            }
            let cont = Manipulate::request(
                &ManipulateApi::Continue2 {
                    status: status::DBG_CONTINUE,
                    trace_flag: 0,
                    dr7: 0,
                    symbol_start: 0,
                    symbol_end: 0,
                },
                vec![],
            );
            let o = core.handle(&mut m, PacketType::StateManipulate, &cont.to_bytes());
            next = o[0].clone();
        }
        assert_eq!(loads, m.modules().len());
        // GetVersion.
        let v = req(
            &mut core,
            &mut m,
            ManipulateApi::GetVersion(GetVersion64::default()),
            vec![],
        );
        let ManipulateApi::GetVersion(v) = v.api() else {
            panic!()
        };
        assert_eq!(v.kern_base, m.kernel().kern_base.0);
        assert_eq!(v.ps_loaded_module_list, m.kernel().ps_loaded_module_list.0);
        assert_ne!(v.debugger_data_list, 0);
        // Reads are clamped to 3944 bytes.
        let base = m.kernel().kern_base.0;
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::ReadVirtualMemory(MemoryTransfer {
                address: base,
                count: 10_000,
                actual: 0,
            }),
            vec![],
        );
        assert_eq!(r.data().len(), MAX_TRANSFER);
        assert_eq!(&r.data()[..2], b"MZ");
        // Unsupported API.
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::ReadMsr(tagsplit_protocol::kd::ReadWriteMsr {
                msr: 0x176,
                low: 0,
                high: 0,
            }),
            vec![],
        );
        assert_eq!(r.return_status(), status::UNSUCCESSFUL);
        // Run limit ext + continue → stops after exactly that many ticks.
        let t0 = m.tick();
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::WriteControlSpace(MemoryTransfer {
                address: ext::RUN_LIMIT_SELECTOR,
                count: 8,
                actual: 0,
            }),
            25u64.to_le_bytes().to_vec(),
        );
        assert_eq!(r.return_status(), status::SUCCESS);
        let cont = Manipulate::request(
            &ManipulateApi::Continue {
                status: status::DBG_CONTINUE,
            },
            vec![],
        );
        let out = run_until_stop(&mut core, &mut m, &cont);
        assert_eq!(m.tick() - t0, 25);
        assert_eq!(out[0].0, PacketType::StateChange64);
        // Without a client limit, the server's budget (50 ticks) ends the run.
        let t1 = m.tick();
        let _ = run_until_stop(&mut core, &mut m, &cont);
        assert_eq!(m.tick() - t1, 50);
        // A break-in while running stops at once.
        assert!(
            core.handle(&mut m, PacketType::StateManipulate, &cont.to_bytes())
                .is_empty()
        );
        assert!(core.is_running());
        let out = core.break_in(&m);
        assert_eq!(out.len(), 1);
        assert!(!core.is_running() && core.is_stopped());
    }

    #[test]
    fn context_search_breakpoints_and_control_space() {
        let mut m = machine();
        let mut core = KdCore::new(KdStubOptions::default());
        let _ = core.attach(&mut m);
        // GetContext: a full AMD64 CONTEXT; SetContext round-trips registers.
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::GetContext { unused: 0 },
            vec![],
        );
        assert_eq!(r.data().len(), context::SIZE);
        assert_eq!(le::u64_at(r.data(), context::RIP), m.context().rip);
        let mut ctx = r.data().to_vec();
        le::put_u64(&mut ctx, context::gpr(8), 0x1234_5678);
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::SetContext {
                context_flags: context::CONTEXT_ALL,
            },
            ctx,
        );
        assert_eq!(r.return_status(), status::SUCCESS);
        assert_eq!(m.context().r8, 0x1234_5678);
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::SetContext { context_flags: 0 },
            vec![0; 8],
        );
        assert_eq!(r.return_status(), status::UNSUCCESSFUL);
        // SearchMemory finds the first hit, then nothing past the last.
        let mods = m.modules();
        let (start, end) = (
            mods[0].base.0,
            mods.last().unwrap().base.0 + mods.last().unwrap().size,
        );
        let truth = m.search(VirtAddr(start), VirtAddr(end), b"Leak", 10);
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::SearchMemory {
                address: start,
                length: end - start,
                pattern_length: 4,
            },
            b"Leak".to_vec(),
        );
        assert_eq!(
            r.api(),
            ManipulateApi::SearchMemory {
                address: truth[0].0,
                length: end - start,
                pattern_length: 4
            }
        );
        let last = truth.last().unwrap().0 + 1;
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::SearchMemory {
                address: last,
                length: end - last,
                pattern_length: 4,
            },
            b"Leak".to_vec(),
        );
        assert_eq!(r.return_status(), STATUS_NO_MORE_ENTRIES);
        // Breakpoint handles.
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::WriteBreakPoint {
                address: truth[0].0,
                handle: 0,
            },
            vec![],
        );
        let ManipulateApi::WriteBreakPoint { handle, .. } = r.api() else {
            panic!()
        };
        assert_ne!(handle, 0);
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::RestoreBreakPoint { handle },
            vec![],
        );
        assert_eq!(r.return_status(), status::SUCCESS);
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::RestoreBreakPoint { handle },
            vec![],
        );
        assert_eq!(r.return_status(), status::UNSUCCESSFUL);
        // Control space: KPRCB pointer, special registers, unknown selectors refused.
        let rd = |core: &mut KdCore, m: &mut Machine, sel: u64, count: u32| {
            req(
                core,
                m,
                ManipulateApi::ReadControlSpace(MemoryTransfer {
                    address: sel,
                    count,
                    actual: 0,
                }),
                vec![],
            )
        };
        assert_eq!(rd(&mut core, &mut m, 1, 8).data(), &KPRCB.to_le_bytes());
        assert_eq!(
            rd(&mut core, &mut m, 2, 0xE0).data().len(),
            SPECIAL_REGISTERS_LEN
        );
        assert_eq!(
            rd(&mut core, &mut m, 9, 8).return_status(),
            status::UNSUCCESSFUL
        );
        assert_eq!(
            rd(&mut core, &mut m, ext::DEFAULT_RUN_SELECTOR, 8).return_status(),
            status::UNSUCCESSFUL,
            "no default run configured"
        );
        // A write out of mapped memory is partial.
        let r = req(
            &mut core,
            &mut m,
            ManipulateApi::WriteVirtualMemory(MemoryTransfer {
                address: 0x10,
                count: 4,
                actual: 0,
            }),
            vec![1, 2, 3, 4],
        );
        assert_eq!(r.return_status(), status::UNSUCCESSFUL);
        assert_eq!(
            r.api(),
            ManipulateApi::WriteVirtualMemory(MemoryTransfer {
                address: 0x10,
                count: 4,
                actual: 0
            })
        );
    }
}
