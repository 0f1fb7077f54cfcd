//! The GDB remote-protocol stub over TCP: the simulator as a [`Target`] and a blocking
//! transport around the protocol's [`Stub`].
//!
//! All protocol knowledge (negotiation, `qXfer` windows, the `g` layout, breakpoints,
//! reduced answers for what a target lacks) lives in
//! [`tagsplit_protocol::gdb::stub`]. This module only says what the simulator supports
//! ([`SimTarget`]) and moves bytes: gdb (or tagsplit's own `gdb://` client) attaches,
//! reads and writes memory, lists modules (and serves each module's image file through
//! host I/O, so that gdb loads them itself), searches, runs `monitor` commands through an
//! injected handler, sets breakpoints on allocation sites and runs the workload until a
//! breakpoint, an interrupt (0x03) or a tick limit.
//!
//! One thread accepts and one thread serves the client, with blocking std sockets: while
//! the target is stopped the client thread blocks on its socket; while it runs, the
//! socket's read time-out is the target's next deadline (one slice of paced run). A second
//! client gets `E.` with [`BUSY_MESSAGE`] and is closed (and logged); at most
//! [`MAX_REFUSING`] are answered at once, more are closed at once. An attached client that
//! sends nothing within [`GdbStubOptions::first_packet_timeout`] is dropped, so that a
//! silent connection cannot keep gdb out. Input the stub has no room for (a client that
//! does not read its replies) stays in the one [`READ_BUFFER`] and nothing more is read
//! until the replies are written; a write blocked longer than
//! [`GdbStubOptions::write_timeout`] drops the client. A detach (`D`) or
//! kill leaves the stub ready for the next client. Sockets get `TCP_NODELAY`, and the ack
//! and the reply to each packet leave in one write. The handle stops everything cleanly.
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

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tagsplit_protocol::gdb::remotelog::{BoxedLogWriter, LogDirection, RemoteLogWriter};
use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
use tagsplit_protocol::gdb::{Reply, ServerEvent, ServerSession};
use tagsplit_protocol::stub::{
    BreakpointKind, BreakpointOps, FileError, FileInfo, FileOps, KernelInfo, KernelOps, Library,
    LibraryOps, MemoryMapOps, MemoryRegion, MonitorOps, Resume, RunLimitOps, RunState, SearchOps,
    StopReason, Target, TargetError, X64Registers,
};

use super::{SharedMachine, StopFn, StubState, StubThread, lock, read_within};
use crate::machine::{Machine, SimStop};
use crate::types::VirtAddr;

/// Most ticks an exact (client-limited) run takes between looks at the link, so that a
/// break-in stops even a run of 10^15 ticks promptly.
pub const EXACT_SLICE_TICKS: u64 = 4096;

/// The fake `KTHREAD` address the simulator reports (KD state changes, control space).
pub const THREAD: u64 = 0xFFFF_F800_0100_0180;
/// The fake `KPCR` address (KD control-space selector 0).
pub const KPCR: u64 = 0xFFFF_F800_0100_0000;
/// The fake `KPRCB` address (KD control-space selector 1).
pub const KPRCB: u64 = 0xFFFF_F800_0100_0180;

/// Runs a `monitor` command on the machine and returns its output text.
pub type MonitorHandler = Box<dyn FnMut(&mut Machine, &str) -> String + Send>;

/// Which optional features the stub offers (all on by default). Turning them off gives a
/// "basics only" stub, to test clients that must degrade: the simulator then simply does
/// not opt into the capability, and the protocol's stub answers as any stub without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubFeatures {
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
    /// `QTagsplit.RunLimit` (exact tick-limited resumes, our extension).
    pub run_limit: bool,
    /// Host I/O (`vFile:open`/`pread`/`fstat`/`close`): each module's image file, under
    /// the name `qXfer:libraries` lists, so that gdb loads the modules itself.
    pub files: bool,
}

impl StubFeatures {
    /// Everything on.
    pub const FULL: StubFeatures = StubFeatures {
        libraries: true,
        memory_map: true,
        search: true,
        binary_write: true,
        binary_read: true,
        no_ack: true,
        run_limit: true,
        files: true,
    };

    /// Only what every stub has: `g`, `m`, `M`, `c`, `Z0`, `qRcmd` and the target
    /// description (without which gdb cannot talk to an x86-64 target at all).
    pub const BASIC: StubFeatures = StubFeatures {
        libraries: false,
        memory_map: false,
        search: false,
        binary_write: false,
        binary_read: false,
        no_ack: false,
        run_limit: false,
        files: false,
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
    /// Ticks run between looks at the client's input while running.
    pub slice_ticks: u64,
    /// Wall-clock time per slice of a paced run (a `c` from gdb); exact runs
    /// (`QTagsplit.RunLimit`) are not paced.
    pub slice_interval: Duration,
    /// Runs `monitor` commands; without one, `monitor` is not offered.
    pub monitor: Option<MonitorHandler>,
    /// The scenario's default run length, offered as `QTagsplit.DefaultRun`.
    pub default_run_ticks: Option<u64>,
    /// How long an attached client may take to send its first whole packet; then it is
    /// dropped so that the next client can attach (gdb speaks at once). `None`: forever.
    pub first_packet_timeout: Option<Duration>,
    /// How long one write to the client may block (a client that stops reading its
    /// replies holds the stub this long at most, then is dropped). `None`: forever.
    pub write_timeout: Option<Duration>,
    /// Commands held unanswered per client ([`StubConfig::max_pending`]).
    pub max_pending: usize,
    /// Reply bytes queued per client before input stops being read
    /// ([`StubConfig::max_transmit`]).
    pub max_transmit: usize,
    /// Where to log every attached client's session in gdb's `set remotelogfile` format
    /// ([`tagsplit_protocol::gdb::remotelog`]), from the client's point of view as gdb
    /// logs it: `w` is what the client sent, `r` what the stub answered; each connection
    /// ends with `End of log`. Refused clients are not logged. A write error stops the
    /// logging (logged as a warning), not the stub. `None`: no log, and no cost.
    pub packet_log: Option<Box<dyn std::io::Write + Send>>,
}

/// The default [`GdbStubOptions::first_packet_timeout`].
pub const DEFAULT_FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`GdbStubOptions::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused clients (a second client while one is attached) waited on at once; more are
/// closed at once without an answer, so a flood of connections costs no threads.
pub const MAX_REFUSING: usize = 8;
/// Bytes read from the client at a time (the only per-connection input buffer).
pub const READ_BUFFER: usize = 0x4000;

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
            first_packet_timeout: Some(DEFAULT_FIRST_PACKET_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            max_pending: tagsplit_protocol::gdb::stub::DEFAULT_MAX_PENDING,
            max_transmit: tagsplit_protocol::gdb::session::DEFAULT_MAX_TRANSMIT,
            packet_log: None,
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
            .field("first_packet_timeout", &self.first_packet_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_transmit", &self.max_transmit)
            .field("packet_log", &self.packet_log.is_some())
            .finish()
    }
}

impl GdbStubOptions {
    /// The protocol choices these options make.
    fn stub_config(&self) -> StubConfig {
        let f = self.features;
        StubConfig {
            packet_size: self.packet_size,
            no_ack: f.no_ack,
            binary_read: f.binary_read,
            binary_write: f.binary_write,
            max_pending: self.max_pending,
            max_transmit: self.max_transmit,
        }
    }
}

/// The run state of the simulator between packets (it outlives client connections).
#[derive(Debug)]
pub struct SimRun {
    options: GdbStubOptions,
    /// The tick budget of the current resume.
    budget: Option<u64>,
    /// A `QTagsplit.RunLimit` for the next resume.
    next_limit: Option<u64>,
    /// Whether the current run is paced by the wall clock (not an exact client-limited run).
    paced: bool,
    /// A step was asked for: the next poll reports it done.
    stepping: bool,
}

impl SimRun {
    /// The run state for `options`.
    pub fn new(options: GdbStubOptions) -> Self {
        Self {
            options,
            budget: None,
            next_limit: None,
            paced: true,
            stepping: false,
        }
    }
}

/// The simulator as a debug [`Target`]: a machine and its run state.
#[derive(Debug)]
pub struct SimTarget<'a> {
    machine: &'a mut Machine,
    run: &'a mut SimRun,
}

impl<'a> SimTarget<'a> {
    /// The target view of `machine`, running as `run` says.
    pub fn new(machine: &'a mut Machine, run: &'a mut SimRun) -> Self {
        Self { machine, run }
    }
}

impl Target for SimTarget<'_> {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        match self.machine.read(VirtAddr(addr), buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) if e.done > 0 => Ok(e.done.min(buf.len())),
            Err(_) => Err(TargetError::Fault),
        }
    }

    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        self.machine
            .write(VirtAddr(addr), data)
            .map_err(|_| TargetError::Fault)
    }

    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(*self.machine.context())
    }

    fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError> {
        *self.machine.context_mut() = *regs;
        Ok(())
    }

    /// The simulator has no instruction stepping: a step reports a stop where it is (gdb
    /// then re-inserts its breakpoints and continues, and the machine passes the
    /// breakpoint it stopped at).
    fn resume(&mut self, how: Resume) -> Result<(), TargetError> {
        let run = &mut *self.run;
        if how == Resume::Step {
            run.stepping = true;
            return Ok(());
        }
        let exact = run.next_limit.take();
        run.paced = exact.is_none();
        run.budget = [exact, run.options.stop_after_ticks]
            .into_iter()
            .flatten()
            .min();
        Ok(())
    }

    /// Runs one slice of the workload.
    fn poll_run(&mut self) -> RunState {
        let run = &mut *self.run;
        if std::mem::take(&mut run.stepping) {
            return RunState::Stopped(StopReason::Trap);
        }
        let slice = if run.paced {
            run.options.slice_ticks.max(1)
        } else {
            // In chunks, so that a break-in reaches even a very long exact run.
            EXACT_SLICE_TICKS
        };
        let ticks = run.budget.map_or(slice, |b| b.min(slice));
        let outcome = self.machine.run(ticks);
        if let Some(b) = run.budget.as_mut() {
            *b = b.saturating_sub(outcome.ticks_run);
        }
        let reason = match outcome.stop {
            Some(SimStop::Breakpoint(addr)) => StopReason::Breakpoint(addr.0),
            Some(SimStop::PoolHitTag { at, .. }) => StopReason::BreakInstruction(at.0),
            None if run.budget == Some(0) => StopReason::Interrupted,
            None if run.paced => return RunState::Running(run.options.slice_interval),
            None => return RunState::Running(Duration::ZERO),
        };
        run.budget = None;
        RunState::Stopped(reason)
    }

    fn interrupt(&mut self) {
        self.run.budget = None;
        self.run.stepping = false;
    }

    fn support_search(&mut self) -> Option<&mut dyn SearchOps> {
        self.run.options.features.search.then_some(self)
    }

    fn support_libraries(&mut self) -> Option<&mut dyn LibraryOps> {
        self.run.options.features.libraries.then_some(self)
    }

    fn support_memory_map(&mut self) -> Option<&mut dyn MemoryMapOps> {
        self.run.options.features.memory_map.then_some(self)
    }

    fn support_monitor(&mut self) -> Option<&mut dyn MonitorOps> {
        self.run.options.monitor.is_some().then_some(self)
    }

    fn support_breakpoints(&mut self) -> Option<&mut dyn BreakpointOps> {
        Some(self)
    }

    fn support_run_limit(&mut self) -> Option<&mut dyn RunLimitOps> {
        self.run.options.features.run_limit.then_some(self)
    }

    fn support_kernel(&mut self) -> Option<&mut dyn KernelOps> {
        Some(self)
    }

    fn support_files(&mut self) -> Option<&mut dyn FileOps> {
        self.run.options.features.files.then_some(self)
    }
}

/// The module image files, by the names the library list gives (or the module's own
/// name), matched without regard to case or to `/` against `\`: gdb asks for
/// `\SystemRoot\system32\ntoskrnl.exe` as listed, or rewritten with `/` (its
/// `target-file-system-kind` setting). Each reads as the file the module was loaded from,
/// before any patch ([`Machine::read_module_file`]).
impl FileOps for SimTarget<'_> {
    fn open_file(&mut self, name: &[u8]) -> Result<FileInfo, FileError> {
        let norm = |b: &u8| match b {
            b'/' => b'\\',
            c => c.to_ascii_lowercase(),
        };
        let same =
            |a: &[u8], b: &[u8]| a.len() == b.len() && a.iter().map(norm).eq(b.iter().map(norm));
        let modules = self.machine.modules();
        let index = modules
            .iter()
            .position(|m| same(m.path.as_bytes(), name) || same(m.name.as_bytes(), name))
            .ok_or(FileError::NotFound)?;
        let size = self
            .machine
            .module_file_size(index)
            .ok_or(FileError::NotFound)?;
        Ok(FileInfo {
            id: index as u64,
            size,
        })
    }

    fn read_file(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FileError> {
        let index = usize::try_from(id).map_err(|_| FileError::NotFound)?;
        self.machine
            .read_module_file(index, offset, buf)
            .ok_or(FileError::NotFound)
    }

    /// The kernel, `ntoskrnl.exe`: the image a kernel debugger starts from.
    fn exec_file(&mut self) -> Option<String> {
        self.machine.modules().into_iter().next().map(|m| m.path)
    }
}

/// The simulated kernel's addresses, and fixed processor blocks.
impl KernelOps for SimTarget<'_> {
    fn kernel(&mut self) -> KernelInfo {
        let k = self.machine.kernel();
        // DebuggerDataList points at the list head whose Flink is the KDBG block.
        let mut head = [0u8; 8];
        let list = match self.machine.read(k.kdbg, &mut head) {
            Ok(()) => u64::from_le_bytes(head),
            Err(_) => k.kdbg.0,
        };
        KernelInfo {
            kern_base: k.kern_base.0,
            ps_loaded_module_list: k.ps_loaded_module_list.0,
            debugger_data_list: list,
            kpcr: KPCR,
            kprcb: KPRCB,
            thread: THREAD,
        }
    }
}

impl SearchOps for SimTarget<'_> {
    fn search(&mut self, start: u64, end: u64, pattern: &[u8]) -> Result<Option<u64>, TargetError> {
        let hits = self
            .machine
            .search(VirtAddr(start), VirtAddr(end), pattern, 1);
        Ok(hits.first().map(|a| a.0))
    }
}

/// Every module, named by its full path, at its base.
impl LibraryOps for SimTarget<'_> {
    fn libraries(&mut self) -> Vec<Library> {
        self.machine
            .modules()
            .into_iter()
            .map(|m| Library {
                name: m.path,
                address: m.base.0,
                size: m.size,
            })
            .collect()
    }
}

/// The mapped regions, adjacent ones merged.
impl MemoryMapOps for SimTarget<'_> {
    fn memory_map(&mut self) -> Vec<MemoryRegion> {
        let mut regions: Vec<MemoryRegion> = Vec::new();
        for r in self.machine.memory().regions() {
            let len = r.end.0.saturating_sub(r.start.0);
            match regions.last_mut() {
                Some(last) if last.start.saturating_add(last.length) == r.start.0 => {
                    last.length += len;
                }
                _ => regions.push(MemoryRegion {
                    start: r.start.0,
                    length: len,
                }),
            }
        }
        regions
    }
}

impl MonitorOps for SimTarget<'_> {
    fn monitor(&mut self, command: &str) -> String {
        match self.run.options.monitor.as_mut() {
            Some(handler) => handler(self.machine, command),
            None => String::new(),
        }
    }
}

impl BreakpointOps for SimTarget<'_> {
    fn insert_breakpoint(&mut self, addr: u64, _kind: BreakpointKind) -> Result<(), TargetError> {
        self.machine.set_breakpoint(VirtAddr(addr));
        Ok(())
    }

    fn remove_breakpoint(&mut self, addr: u64, _kind: BreakpointKind) -> Result<(), TargetError> {
        self.machine.clear_breakpoint(VirtAddr(addr));
        Ok(())
    }
}

impl RunLimitOps for SimTarget<'_> {
    fn set_run_limit(&mut self, ticks: Option<u64>) {
        self.run.next_limit = ticks;
    }

    fn default_run(&mut self) -> Option<u64> {
        self.run.options.default_run_ticks
    }
}

/// The state shared by the accept thread, the client thread and the handle.
struct Shared {
    machine: SharedMachine,
    run: Mutex<SimRun>,
    config: StubConfig,
    /// A client is attached.
    busy: AtomicBool,
    /// The handle asked the stub to stop.
    stopping: AtomicBool,
    /// The attached client's socket, to shut it down when the stub stops.
    client: Mutex<Option<TcpStream>>,
    /// The first-packet and write time-outs.
    first_packet_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// Refused clients being answered now.
    refusing: AtomicUsize,
    /// The most bytes a client connection held at once (the stub's queues plus input
    /// read and not yet taken), over all connections.
    peak_buffered: AtomicUsize,
    /// The session log ([`GdbStubOptions::packet_log`]); emptied by a write error.
    log: Option<Mutex<Option<BoxedLogWriter>>>,
}

impl Shared {
    /// Logs bytes of the attached client's session (`Write`: from the client).
    fn log(&self, direction: LogDirection, bytes: &[u8]) {
        if let Some(log) = &self.log {
            let mut log = lock(log);
            if let Some(w) = log.as_mut()
                && let Err(e) = w.log(direction, bytes)
            {
                tracing::warn!("gdb stub: packet log: {e}; logging stopped");
                *log = None;
            }
        }
    }

    /// Ends the log of a client's session (`End of log`).
    fn end_log(&self) {
        if let Some(log) = &self.log {
            let mut log = lock(log);
            if let Some(w) = log.as_mut()
                && let Err(e) = w.finish()
            {
                tracing::warn!("gdb stub: packet log: {e}; logging stopped");
                *log = None;
            }
        }
    }
}

impl Shared {
    /// Runs `f` on the stub's view of the machine.
    fn with<R>(&self, f: impl FnOnce(&mut SimTarget<'_>) -> R) -> R {
        self.machine
            .with_core(&self.run, |m, run| f(&mut SimTarget::new(m, run)))
    }

    /// Shuts down the attached client's socket, if any (its thread then ends).
    fn drop_client(&self) {
        if let Some(s) = lock(&self.client).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
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
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let (first_packet_timeout, write_timeout) =
            (options.first_packet_timeout, options.write_timeout);
        let mut options = options;
        let log = options
            .packet_log
            .take()
            .map(|w| Mutex::new(Some(RemoteLogWriter::new(w))));
        let shared = Arc::new(Shared {
            machine: SharedMachine::new(machine),
            config: options.stub_config(),
            run: Mutex::new(SimRun::new(options)),
            busy: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            client: Mutex::new(None),
            first_packet_timeout,
            write_timeout,
            refusing: AtomicUsize::new(0),
            peak_buffered: AtomicUsize::new(0),
            log,
        });
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gdb-stub".into())
            .spawn(move || accept_loop(&listener, &task_shared))?;
        let stop: StopFn<Shared> = Box::new(move |shared| {
            shared.stopping.store(true, Ordering::SeqCst);
            shared.drop_client();
            // Wake the blocking accept with a connection of our own.
            let mut wake = addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let _ = TcpStream::connect(wake);
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
        self.inner.shared().busy.load(Ordering::SeqCst)
    }

    /// The most bytes one client connection has held at once so far: the stub's queues
    /// ([`Stub::buffered`]) plus input read from the socket and not yet taken by the
    /// stub. It stays under [`GdbStubOptions::max_transmit`] plus the pending commands,
    /// one reply and [`READ_BUFFER`], however the client behaves.
    pub fn peak_buffered(&self) -> usize {
        self.inner.shared().peak_buffered.load(Ordering::SeqCst)
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

/// Accepts clients until the handle stops the stub; one is served at a time.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        threads.retain(|t| !t.is_finished());
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("gdb stub: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |p| p.to_string());
        let spawned = if shared.busy.swap(true, Ordering::SeqCst) {
            if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
                shared.refusing.fetch_sub(1, Ordering::SeqCst);
                tracing::info!("gdb client {peer} closed: another client is attached");
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            tracing::info!("gdb client {peer} refused: another client is attached");
            let s = Arc::clone(shared);
            std::thread::Builder::new()
                .name("gdb-refuse".into())
                .spawn(move || {
                    refuse(stream);
                    s.refusing.fetch_sub(1, Ordering::SeqCst);
                })
        } else {
            tracing::info!("gdb client {peer} attached");
            *lock(&shared.client) = stream.try_clone().ok();
            let s = Arc::clone(shared);
            std::thread::Builder::new()
                .name("gdb-client".into())
                .spawn(move || {
                    // `serve_client` frees the stub for the next client exactly once.
                    if let Err(e) = serve_client(stream, &s) {
                        tracing::info!("gdb client {peer}: {e}");
                    }
                    tracing::info!("gdb client {peer} detached");
                })
        };
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                tracing::warn!("gdb stub: cannot start a client thread: {e}");
                shared.busy.store(false, Ordering::SeqCst);
            }
        }
    }
    shared.drop_client();
    for t in threads {
        let _ = t.join();
    }
}

/// The text a second client gets.
pub const BUSY_MESSAGE: &str = "another debugger is attached to this stub (one client at a time)";

/// How long a refused client has to send its first packet.
const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// Answers the first packet of a second client with `E.` + [`BUSY_MESSAGE`], then closes.
fn refuse(mut stream: TcpStream) {
    let mut session = ServerSession::default();
    let mut buf = [0u8; 1024];
    // The wait is for the whole first packet: a client that trickles bytes is not kept.
    let deadline = Instant::now() + REFUSE_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let Ok(n @ 1..) = stream.read(&mut buf) else {
            break;
        };
        session.receive(buf.get(..n).unwrap_or_default());
        if std::iter::from_fn(|| session.poll_event()).any(|e| matches!(e, ServerEvent::Command(_)))
        {
            break;
        }
    }
    session.send(&Reply::ErrorText(BUSY_MESSAGE.into()));
    if let Some(bytes) = session.poll_transmit() {
        let _ = stream.write_all(&bytes);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves one client until it detaches, disconnects or the stub stops.
fn serve_client(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut stub = Stub::new(shared.config);
    stream.set_write_timeout(shared.write_timeout)?;
    let mut slot = Slot { shared, held: true };
    let result = client_loop(&mut stream, &mut slot, &mut stub, Input::new());
    shared.end_log();
    slot.free(&mut stub);
    let _ = stream.shutdown(Shutdown::Both);
    result
}

/// The stub's one client slot, held by the serving thread until [`Slot::free`].
struct Slot<'a> {
    shared: &'a Shared,
    held: bool,
}

impl Slot<'_> {
    /// Detaches the stub from the target and lets the next client in (once).
    fn free(&mut self, stub: &mut Stub) {
        if std::mem::take(&mut self.held) {
            self.shared.with(|t| stub.disconnect(t));
            *lock(&self.shared.client) = None;
            self.shared.busy.store(false, Ordering::SeqCst);
        }
    }
}

/// Bytes read from the client and not yet taken by the stub (`start..end` of `buf`).
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn new() -> Self {
        Input {
            buf: vec![0u8; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Reads into the (empty) buffer, waiting at most `wait`.
    fn read(
        &mut self,
        stream: &mut TcpStream,
        wait: Option<Duration>,
    ) -> std::io::Result<Option<usize>> {
        let got = read_within(stream, wait, &mut self.buf)?;
        self.start = 0;
        self.end = got.unwrap_or(0).min(self.buf.len());
        Ok(got)
    }
}

fn client_loop(
    stream: &mut TcpStream,
    slot: &mut Slot<'_>,
    stub: &mut Stub,
    mut input: Input,
) -> std::io::Result<()> {
    let shared = slot.shared;
    // Until its first whole packet, a client has the first-packet time-out: one that
    // says nothing (or trickles bytes that never make a packet) is dropped.
    let first_deadline = shared
        .first_packet_timeout
        .map(|limit| (Instant::now() + limit, limit));
    loop {
        let silent = stub.session().stats().packets_received == 0;
        let deadline = first_deadline.filter(|_| silent);
        if let Some((at, limit)) = deadline
            && Instant::now() >= at
        {
            tracing::info!("gdb client sent no packet in {limit:?}: dropped");
            return Ok(());
        }
        // Bytes already read go to the stub first; it takes what it has room for.
        if !input.pending().is_empty() {
            let used = shared.with(|t| stub.receive(t, input.pending()));
            input.start = input.start.saturating_add(used).min(input.end);
            let held = stub.buffered().saturating_add(input.pending().len());
            shared.peak_buffered.fetch_max(held, Ordering::SeqCst);
        }
        // A running target makes progress; the answer is how long input may be waited for.
        let wait = shared.with(|t| stub.poll_run(t));
        // A detach: free the stub before its last reply leaves, so a client that
        // reconnects as soon as it reads `OK` is served, not refused as busy.
        let closing = stub.is_closed() || shared.stopping.load(Ordering::SeqCst);
        if closing {
            slot.free(stub);
        }
        if let Some(bytes) = stub.poll_transmit() {
            // Blocks while the client does not read, at most the write time-out: the
            // stub meanwhile reads nothing more (backpressure).
            stream.write_all(&bytes)?;
            shared.log(LogDirection::Read, &bytes);
        }
        if closing {
            return Ok(());
        }
        if !input.pending().is_empty() {
            if !stub.wants_input() {
                // Held back while the target runs with a full command queue: let it run.
                std::thread::sleep(wait.unwrap_or(Duration::from_millis(1)).min(HELD_POLL));
            }
            continue;
        }
        let wait = match deadline {
            Some((at, _)) => {
                let left = at.saturating_duration_since(Instant::now());
                Some(wait.map_or(left, |w| w.min(left)))
            }
            None => wait,
        };
        match input.read(stream, wait)? {
            Some(0) => return Ok(()),
            Some(_) => shared.log(LogDirection::Write, input.pending()),
            None => {}
        }
    }
}

/// The longest sleep while input is held back (the target runs with a full queue).
const HELD_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use tagsplit_protocol::gdb::frame::{self, Event};
    use tagsplit_protocol::gdb::xml;

    /// A machine, its run state and a stub for one client, driven with packet payloads.
    struct Rig {
        machine: Machine,
        run: SimRun,
        stub: Stub,
    }

    impl Rig {
        fn new(options: GdbStubOptions) -> Self {
            let config = options.stub_config();
            Rig {
                machine: Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap(),
                run: SimRun::new(options),
                stub: Stub::new(config),
            }
        }

        /// Sends one packet; returns the payloads of the packets sent back.
        fn ask(&mut self, payload: &[u8]) -> Vec<Vec<u8>> {
            let mut t = SimTarget::new(&mut self.machine, &mut self.run);
            let wire = frame::encode_packet(payload, false);
            assert_eq!(self.stub.receive(&mut t, &wire), wire.len());
            self.answers()
        }

        /// The module called `name`.
        fn module(&self, name: &str) -> crate::machine::SimModule {
            self.machine
                .modules()
                .into_iter()
                .find(|x| x.name == name)
                .unwrap()
        }

        fn ask1(&mut self, payload: &[u8]) -> String {
            let r = self.ask(payload);
            assert_eq!(r.len(), 1, "{r:?}");
            String::from_utf8_lossy(&r[0]).into_owned()
        }

        /// Runs until the stub sends its stop reply; returns it.
        fn run_to_stop(&mut self, limit: usize) -> String {
            for _ in 0..limit {
                let mut t = SimTarget::new(&mut self.machine, &mut self.run);
                self.stub.poll_run(&mut t);
                let r = self.answers();
                if let Some(p) = r.last() {
                    return String::from_utf8_lossy(p).into_owned();
                }
            }
            panic!("no stop after {limit} polls")
        }

        fn answers(&mut self) -> Vec<Vec<u8>> {
            let bytes = self.stub.poll_transmit().unwrap_or_default();
            frame::Decoder::default()
                .decode(&bytes)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Packet(p) => Some(p),
                    _ => None,
                })
                .collect()
        }
    }

    /// gdb's view of the modules: the library list names each module as gdb fetches it
    /// (`/`, not `\`) at its first section, the kernel is the executable, and host I/O
    /// reads each module's file as loaded: its headers and sections are the image's
    /// bytes, its export directory names the site functions, and a patch of the image
    /// does not show in it.
    #[test]
    fn host_io_serves_each_module_file_as_loaded() {
        let mut rig = Rig::new(GdbStubOptions::default());
        let supported = rig.ask1(b"qSupported:swbreak+");
        assert!(supported.contains("qXfer:exec-file:read+"), "{supported}");
        let myfault = rig.module("myfault.sys");
        let listed = rig.ask1(b"qXfer:libraries:read::0,10000");
        let entry = format!(
            "<library name=\"/??/C:/Windows/system32/drivers/myfault.sys\"><segment address=\"{:#x}\"/>",
            myfault.base.0 + 0x1000
        );
        assert!(listed.contains(&entry), "{listed}");
        assert_eq!(
            rig.ask1(b"qXfer:exec-file:read:1:0,1000"),
            "l/SystemRoot/system32/ntoskrnl.exe"
        );
        let read_file = |rig: &mut Rig, name: &str| {
            let mut open = b"vFile:open:".to_vec();
            tagsplit_protocol::gdb::hex::encode_hex_into(name.as_bytes(), &mut open);
            open.extend_from_slice(b",0,0");
            let fd = rig.ask1(&open);
            let fd = fd.strip_prefix('F').unwrap().to_owned();
            let stat = rig.ask(format!("vFile:fstat:{fd}").as_bytes());
            let size = u64::from_be_bytes(stat[0][4 + 28..4 + 36].try_into().unwrap());
            let mut file = Vec::new();
            loop {
                let r = rig.ask(format!("vFile:pread:{fd},4000,{:x}", file.len()).as_bytes());
                let semi = r[0].iter().position(|&c| c == b';').unwrap();
                if semi + 1 == r[0].len() {
                    break;
                }
                file.extend_from_slice(&r[0][semi + 1..]);
            }
            assert_eq!(rig.ask1(format!("vFile:close:{fd}").as_bytes()), "F0");
            assert_eq!(file.len() as u64, size);
            file
        };
        // gdb asks with `/`; the loader's own name (and any case) finds the same file.
        let file = read_file(&mut rig, "/??/C:/Windows/system32/drivers/myfault.sys");
        assert_eq!(
            read_file(&mut rig, r"\??\C:\WINDOWS\system32\drivers\MYFAULT.SYS"),
            file
        );
        let layout = crate::image::FileLayout::parse(&file).unwrap();
        assert_eq!(layout.file_size(), file.len() as u64);
        for &(at, raw, rva) in &layout.sections {
            let mut loaded = vec![0u8; raw as usize];
            rig.machine
                .read(myfault.base.saturating_add(rva), &mut loaded)
                .unwrap();
            assert_eq!(&file[at as usize..(at + raw) as usize], &loaded[..]);
        }
        let hits = memchr::memmem::find_iter(&file, b"Leak").count();
        assert_eq!(hits, 2);
        assert!(memchr::memmem::find(&file, b"AllocSite2\0").is_some());
        assert!(memchr::memmem::find(&file, b"MYFAULT.SYS\0").is_some());
        // A debugger's patch changes memory, not the file.
        let site = rig.machine.search(
            myfault.base,
            myfault.base.saturating_add(myfault.size),
            b"Leak",
            1,
        )[0];
        rig.machine.write(site, b"Lea1").unwrap();
        assert_eq!(
            read_file(&mut rig, "/??/C:/Windows/system32/drivers/myfault.sys"),
            file
        );
        assert_eq!(rig.ask1(b"vFile:open:2f6e6f6e65,0,0"), "F-1,2");
        // Past the end nothing is read; there is no module 1000.
        let mut four = [0u8; 4];
        let index = rig.machine.modules().len() - 1;
        assert_eq!(
            rig.machine.read_module_file(index, u64::MAX, &mut four),
            Some(0)
        );
        assert_eq!(rig.machine.read_module_file(1000, 0, &mut four), None);
    }

    #[test]
    fn core_answers_the_connect_sequence_and_memory() {
        let mut rig = Rig::new(GdbStubOptions::default());
        let supported = rig.ask1(b"qSupported:swbreak+");
        assert!(supported.contains("qXfer:libraries:read+"), "{supported}");
        assert!(supported.contains("QTagsplit.RunLimit+"), "{supported}");
        let lib = rig.ask1(b"qXfer:libraries:read::0,10000");
        let libs = xml::parse_library_list(lib.strip_prefix('l').unwrap());
        assert_eq!(libs.len(), rig.machine.modules().len());
        let myfault = rig.module("myfault.sys");
        let hit = rig.ask1(
            format!(
                "qSearch:memory:{:x};{:x};Leak",
                myfault.base.0, myfault.size
            )
            .as_bytes(),
        );
        let hit = u64::from_str_radix(hit.strip_prefix("1,").unwrap(), 16).unwrap();
        assert_eq!(rig.ask1(format!("m{hit:x},4").as_bytes()), "4c65616b");
        assert_eq!(rig.ask1(b"m10,4"), "E0e");
        let mut x = format!("X{:x},1:", hit + 3).into_bytes();
        x.push(b'1');
        assert_eq!(rig.ask1(&x), "OK");
        assert_eq!(rig.ask1(format!("m{hit:x},4").as_bytes()), "4c656131");
        // No monitor handler: the stub says it has no such command.
        assert_eq!(rig.ask1(b"qRcmd,6c6d"), "");
        assert_eq!(rig.ask1(b"g").len(), 2 * xml::G_PACKET_LEN);
    }

    /// `qSearch:memory` with a length up to the whole address space (as a fuzzed client
    /// sends) is answered with the machine's first hit, or `0` when there is none.
    #[test]
    fn a_search_of_the_whole_address_space_is_answered() {
        let mut rig = Rig::new(GdbStubOptions::default());
        let kern_base = rig.machine.kernel().kern_base.0;
        for (address, length) in [
            (0u64, u64::MAX),
            (kern_base, u64::MAX),
            (0x1000, 0xffff_ffff_ffff_0000),
        ] {
            let truth = rig.machine.search(
                VirtAddr(address),
                VirtAddr(address.saturating_add(length)),
                b"Leak",
                1,
            );
            let hit = truth.first().expect("a driver holds the tag").0;
            let ask = format!("qSearch:memory:{address:x};{length:x};Leak");
            assert_eq!(rig.ask1(ask.as_bytes()), format!("1,{hit:x}"));
            let ask = format!("qSearch:memory:{address:x};{length:x};Zq9X-not-there");
            assert_eq!(rig.ask1(ask.as_bytes()), "0");
        }
    }

    #[test]
    fn basic_stub_answers_empty_to_optional_packets() {
        let mut rig = Rig::new(GdbStubOptions {
            features: StubFeatures::BASIC,
            ..GdbStubOptions::default()
        });
        let supported = rig.ask1(b"qSupported");
        assert!(!supported.contains("libraries"), "{supported}");
        assert!(!supported.contains("QStartNoAckMode"), "{supported}");
        assert_eq!(rig.ask1(b"qSearch:memory:0;1;L"), "");
        assert_eq!(rig.ask1(b"X0,0:"), "");
        assert_eq!(rig.ask1(b"QStartNoAckMode"), "");
        assert_eq!(rig.ask1(b"qXfer:libraries:read::0,10"), "");
        assert_eq!(rig.ask1(b"QTagsplit.RunLimit:3"), "");
        assert!(
            rig.ask1(b"qXfer:features:read:target.xml:0,10")
                .starts_with('m')
        );
    }

    #[test]
    fn monitor_output_comes_before_ok() {
        let mut rig = Rig::new(GdbStubOptions {
            monitor: Some(Box::new(|m: &mut Machine, line: &str| {
                format!("{line} on {}", m.name())
            })),
            ..GdbStubOptions::default()
        });
        let r = rig.ask(b"qRcmd,6c6d");
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[1], b"OK");
        assert!(r[0].starts_with(b"O6c6d206f6e20"), "{r:?}");
    }

    #[test]
    fn breakpoint_on_an_allocation_site_stops_with_swbreak_and_limit_stops_with_sigint() {
        let mut rig = Rig::new(GdbStubOptions {
            stop_after_ticks: Some(100_000),
            ..GdbStubOptions::default()
        });
        let site = rig
            .machine
            .sites()
            .into_iter()
            .find(|s| s.allocates && s.tag.to_string() == "Leak")
            .unwrap();
        let z = format!("Z0,{:x},1", site.instr.0);
        assert_eq!(rig.ask1(z.as_bytes()), "OK");
        assert!(rig.ask(b"vCont;c").is_empty());
        let stop = rig.run_to_stop(100_000);
        assert_eq!(
            stop,
            format!("T05thread:01;swbreak:;{}", expedited(&rig.machine))
        );
        assert_eq!(rig.machine.context().rip, site.instr.0);
        // Without the breakpoint a limited run ends with SIGINT after exactly the limit.
        assert_eq!(rig.ask1(format!("z{}", &z[1..]).as_bytes()), "OK");
        assert_eq!(rig.ask1(b"QTagsplit.RunLimit:19"), "OK");
        let before = rig.machine.tick();
        assert!(rig.ask(b"vCont;c").is_empty());
        let stop = rig.run_to_stop(100);
        assert_eq!(stop, format!("T02thread:01;{}", expedited(&rig.machine)));
        assert_eq!(rig.machine.tick() - before, 25);
    }

    /// The `rbp`, `rsp`, `rip` pairs a stop reply expedites for the machine's context.
    fn expedited(m: &Machine) -> String {
        let c = m.context();
        let hex = |v: u64| {
            v.to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        format!("06:{};07:{};10:{};", hex(c.rbp), hex(c.rsp), hex(c.rip))
    }

    #[test]
    fn stop_after_ticks_ends_every_continue_after_exactly_n_ticks() {
        let mut rig = Rig::new(GdbStubOptions {
            stop_after_ticks: Some(7),
            ..GdbStubOptions::default()
        });
        for _ in 0..2 {
            let before = rig.machine.tick();
            assert!(rig.ask(b"c").is_empty());
            assert!(rig.run.paced, "a continue from gdb runs on the wall clock");
            let want = |m: &Machine| format!("T02thread:01;{}", expedited(m));
            assert_eq!(rig.run_to_stop(100), want(&rig.machine));
            assert_eq!(rig.machine.tick() - before, 7);
            assert_eq!(rig.ask1(b"?"), want(&rig.machine));
        }
        // A client's exact limit below the server's wins, and is not paced.
        assert_eq!(rig.ask1(b"QTagsplit.RunLimit:3"), "OK");
        let before = rig.machine.tick();
        assert!(rig.ask(b"c").is_empty());
        assert!(!rig.run.paced);
        rig.run_to_stop(100);
        assert_eq!(rig.machine.tick() - before, 3);
    }

    #[test]
    fn interrupt_stops_a_run_and_disconnect_removes_breakpoints() {
        let mut rig = Rig::new(GdbStubOptions::default());
        let site = rig.machine.sites()[0].instr;
        assert_eq!(rig.ask1(format!("Z0,{:x},1", site.0).as_bytes()), "OK");
        assert!(rig.ask(b"c").is_empty());
        let mut t = SimTarget::new(&mut rig.machine, &mut rig.run);
        assert_eq!(rig.stub.receive(&mut t, &[0x03]), 1);
        let want = format!("T02thread:01;{}", expedited(&rig.machine));
        assert_eq!(rig.answers(), vec![want.into_bytes()]);
        let mut t = SimTarget::new(&mut rig.machine, &mut rig.run);
        rig.stub.disconnect(&mut t);
        assert!(!rig.machine.clear_breakpoint(site), "already removed");
    }

    #[test]
    fn binary_reads_keep_the_escaped_reply_within_the_packet() {
        let mut rig = Rig::new(GdbStubOptions {
            packet_size: 208,
            ..GdbStubOptions::default()
        });
        let base = rig.machine.modules()[0].base;
        rig.machine.write(base, &[b'#'; 300]).unwrap();
        let r = rig.ask(format!("x{:x},12c", base.0).as_bytes());
        // 200 bytes of room, every byte escaped: 100 bytes.
        assert_eq!(r[0], [&b"b"[..], &[b'#'; 100]].concat());
        let r = rig.ask(format!("x{:x},12c", base.0 + 300).as_bytes());
        assert_eq!(r[0].len(), 201);
        assert_eq!(rig.ask1(b"x10,4"), "E0e");
    }
}
