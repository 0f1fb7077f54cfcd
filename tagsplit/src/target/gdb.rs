//! The GDB remote-protocol backend: [`GdbTarget`] talks RSP to a stub over TCP.
//!
//! Blocking by design: a `std::net::TcpStream` with read timeouts drives a sans-IO
//! [`ClientSession`]; a request is one round trip. In no-ack mode, the batch methods
//! ([`DebugTarget::prefetch`], [`read_fresh_many`](DebugTarget::read_fresh_many),
//! [`write_many`](DebugTarget::write_many), [`search_many`](DebugTarget::search_many))
//! pipeline: up to [`PIPELINE_DEPTH`] idempotent requests go out back to back and their
//! replies are matched by position (see [`GdbTarget::request_many`]), one round trip for
//! the burst. [`WireStats::round_trips`] counts requests and bursts.
//!
//! It degrades instead of failing against stubs that offer only the basics:
//!
//! | needs | with | without |
//! |---|---|---|
//! | modules | `qXfer:libraries:read` (+ `SizeOfImage` from each PE header) | walk `PsLoadedModuleList` via `KDBG` |
//! | search | `qSearch:memory` (the stub skips holes) | chunked reads of what the memory map says is mapped, or, without a map, reads that skip to the next page after a fault ([`search_by_reading`]) |
//! | reads | `x` (`binary-upload+`, ~2x the data per round trip) | `m` |
//! | write | `X` | `M` |
//! | exact runs | `QTagsplit.RunLimit` | continue, wait the time, interrupt (1 ms per tick) |
//! | kernel base | the first library | scan down from `rip` for the `MZ` of `nt` |
//!
//! The `KDBG` block is found without `monitor`: by searching `nt`'s data sections (then the
//! whole image) for the `KDBG` owner tag and checking that the block's `KernBase` is `nt`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tagsplit_protocol::gdb::command::{DEFAULT_RUN_FEATURE, RUN_LIMIT_FEATURE};
use tagsplit_protocol::gdb::remotelog::LogDirection;
use tagsplit_protocol::gdb::xml::{self, MemoryRegion, REG_RIP};
use tagsplit_protocol::gdb::{
    Breakpoint, BreakpointType, ClientEvent, ClientSession, Command, FeatureValue, Features,
    HexBytes, Reply, ResumeAction, ResumeActions, ResumeKind, SessionConfig, StopKind, StopReply,
    XferObject, packet_text,
};
use tagsplit_protocol::nt::layout::{PAGE_SIZE, kdbg};
use tagsplit_protocol::nt::pe::{dos, nt_headers, optional_header};
use tagsplit_protocol::rto::{RtoBounds, RttEstimator};
#[cfg(feature = "sim")]
use tagsplit_target_sim::machine::Machine;
#[cfg(feature = "sim")]
use tagsplit_target_sim::scenario::Scenario;
#[cfg(feature = "sim")]
use tagsplit_target_sim::server::gdb::{
    GdbStub, GdbStubHandle, GdbStubOptions, MonitorHandler, StubFeatures,
};

use super::X64Registers;
use super::record::{PacketLog, TargetKind};
#[cfg(feature = "sim")]
use super::sim::MachineRef;
use super::{
    BlockCache, BoxedTarget, CpuMode, DebugTarget, Interrupt, KernelInfo, ModuleInfo, OpenError,
    OpenOptions, RunFor, StopReason, TargetError, WireStats, read_u32, read_u64, search_by_reading,
    walk_module_list,
};
use crate::VirtAddr;

/// Where x64 kernel space starts (the upper canonical half): Windows runs `nt` there, so
/// a stop with `rip` below it (a BIOS, a user process under gdbserver) has no Windows
/// kernel to find, and finding that out costs no scan.
pub const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;
/// How far below `rip` the `MZ` of `nt` is looked for when no library list is offered:
/// first at every 2 MiB boundary (where Windows 8 and later load `nt`), then at every page
/// (Windows 7), each candidate a 2-byte read, pipelined where the stub allows.
pub const MAX_KERNEL_SCAN: u64 = 16 << 20;
/// The alignment of `nt`'s base on Windows 8 and later.
const NT_ALIGN: u64 = 2 << 20;
/// The bytes at the start of an image read for its `SizeOfImage` (`e_lfanew` and the
/// optional header of every usual PE layout).
const SIZE_OF_IMAGE_READ: usize = 0x200;
/// Most files of a target description read (`target.xml` and what it includes).
pub const MAX_TARGET_XML_FILES: usize = 8;
/// `CR0.PE`: protected mode.
const CR0_PE: u64 = 1;
/// `EFER.LMA`: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// Per-request overhead kept free in a packet (`$`, op, address, `#cs`).
const PACKET_OVERHEAD: usize = 32;

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct GdbOptions {
    /// How long one reply may take (runs wait for their length plus this).
    pub timeout: Duration,
    /// Whether to ask for no-ack mode when the stub offers it (the default: fast on clean
    /// links, and a damaged or lost reply is still recovered from, see
    /// [`GdbTarget::request`]). `false` keeps RSP's ack mode: every packet is
    /// acknowledged, damaged packets are NAKed and sent again by the other end (on the
    /// command line: `gdb://HOST:PORT?ack`).
    pub no_ack: bool,
}

impl Default for GdbOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            no_ack: true,
        }
    }
}

/// How late a reply to an idempotent command may be, in ack mode, before it is asked
/// for again.
pub const REPLY_NUDGE: Duration = Duration::from_millis(500);

/// The reply timer of an idempotent request in no-ack mode (see [`RttEstimator`]): its
/// first guess, floor and ceiling (of the round-trip part; the time the request's and
/// the reply's bytes need on the link, as measured, comes on top).
pub const REPLY_TIMER: RtoBounds = RtoBounds::new(
    Duration::from_millis(500),
    Duration::from_millis(2),
    Duration::from_secs(2),
);

/// Ranges searched side by side ([`DebugTarget::search_many`]) are cut into pieces of at
/// least this many bytes.
pub const SEARCH_PIECE: u64 = 64 << 10;
/// Most pieces one [`DebugTarget::search_many`] cuts its ranges into (larger pieces
/// beyond).
const MAX_SEARCH_PIECES: usize = 4096;

/// A reply still streaming in may take this many request time-outs
/// ([`GdbOptions::timeout`]) in all before it is taken for lost (a large reply on a serial
/// line needs time; a stub that trickles bytes forever must not hold a request forever).
const MAX_STREAMING: u32 = 6;

/// Most requests in flight in one pipelined burst (no-ack mode).
pub const PIPELINE_DEPTH: usize = 128;
/// Most bytes one pipelined burst may expect on the wire, both ways (what the reply timer
/// of the burst allows time for; the replies wait in the socket buffers meanwhile).
pub const PIPELINE_BYTES: usize = 256 << 10;
/// Bursts that lost a reply or a command (the count came up short: every reply of the
/// burst is dropped and its requests are sent one by one) before pipelining is given up
/// for the connection: a stub that drops commands sent back to back costs this many
/// timers, once.
pub const MAX_PIPELINE_FAULTS: u32 = 3;

/// How many times one request is sent in all before the link is declared dead (it also
/// is after [`GdbOptions::timeout`] in which no byte at all came from the stub).
pub const MAX_SENDS: u32 = 20;

/// Commands that may be sent twice: they read, write the same bytes again, set the
/// same breakpoint or run limit again, or ask.
fn idempotent(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::ReadMemory { .. }
            | Command::ReadMemoryBinary { .. }
            | Command::WriteMemory { .. }
            | Command::WriteMemoryBinary { .. }
            | Command::SearchMemory { .. }
            | Command::Crc { .. }
            | Command::ReadRegisters
            | Command::ReadRegister(_)
            | Command::XferRead { .. }
            | Command::HaltReason
            | Command::QSupported(_)
            | Command::InsertBreakpoint(_)
            | Command::RemoveBreakpoint(_)
            | Command::RunLimit(_)
            | Command::StartNoAckMode
    )
}

/// Time the stub may spend on `cmd` beyond copying bytes: a search scans its range
/// (allowed at a gigabyte a second); `qSupported`, the first exchange of a connection,
/// includes whatever the stub and the link set up first. Such a command's round trip
/// measures that work, not the link, and gives the reply timer no sample (one slow first
/// sample would keep the timer tens of milliseconds long for dozens of requests).
fn work_allowance(cmd: &Command) -> Option<Duration> {
    match cmd {
        Command::SearchMemory { len, .. } => Some(Duration::from_nanos(*len)),
        Command::QSupported(_) => Some(Duration::ZERO),
        _ => None,
    }
}

/// The bytes one exchange puts on the wire, both ways, as far as the command tells: the
/// request's frame and the reply's expected size (what the reply timer allows time for).
fn exchange_bytes(cmd: &Command) -> usize {
    let reply = match cmd {
        Command::ReadMemory { len, .. } => len.saturating_mul(2),
        Command::ReadMemoryBinary { len, .. } | Command::XferRead { length: len, .. } => {
            // Escapes make binary replies up to twice as long; allow for a few.
            len.saturating_add(len / 8)
        }
        Command::ReadRegisters => 1200,
        _ => 64,
    };
    cmd.encode()
        .len()
        .saturating_add(8)
        .saturating_add(usize::try_from(reply).unwrap_or(usize::MAX))
}

/// An event from the session as a log line shows it: replies and output as the text on
/// the wire (escaped where binary), not as byte arrays.
fn event_text(ev: &ClientEvent) -> String {
    match ev {
        ClientEvent::Reply(r) => r.to_string(),
        ClientEvent::Output(text) => format!("output '{}'", packet_text(text, 120)),
        ClientEvent::Notification(p) => format!("notification '{}'", packet_text(p, 120)),
        ClientEvent::BadReply(e) => format!("bad reply: {e}"),
        ClientEvent::GaveUp => "the stub gave up".to_owned(),
        ClientEvent::Damaged => "a damaged reply".to_owned(),
        ClientEvent::UnsolicitedStop(s) => format!("an unasked stop reply: {s:?}"),
        other => format!("{other:?}"),
    }
}

/// The memory read of `len` bytes at `addr`: `x` when the stub sends binary, else `m`.
fn read_command(binary: bool, addr: u64, len: usize) -> Command<'static> {
    if binary {
        Command::ReadMemoryBinary {
            addr,
            len: len as u64,
        }
    } else {
        Command::ReadMemory {
            addr,
            len: len as u64,
        }
    }
}

/// Whether `cmd` only reads (memory, registers, state): anything else may change memory
/// or let the target run, and drops the read cache.
fn reads_only(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::QSupported(_)
            | Command::MustReplyEmpty
            | Command::StartNoAckMode
            | Command::SetThread(..)
            | Command::XferRead { .. }
            | Command::TraceStatus
            | Command::HaltReason
            | Command::ThreadInfoFirst
            | Command::ThreadInfoNext
            | Command::CurrentThread
            | Command::Attached(_)
            | Command::ReadRegisters
            | Command::ReadRegister(_)
            | Command::ReadMemory { .. }
            | Command::ReadMemoryBinary { .. }
            | Command::SearchMemory { .. }
            | Command::Crc { .. }
            | Command::VContQuery
            | Command::RunLimit(_)
    )
}

/// The least time the `qC` barrier after a re-sent request waits for its reply before
/// sending it again.
const BARRIER_WAIT: Duration = Duration::from_millis(20);

/// What one wait for a reply came to.
enum Waited {
    /// The reply.
    Reply(Reply),
    /// A frame failed its checksum (or did not parse) in no-ack mode: the reply was
    /// damaged on the way.
    Damaged,
    /// Nothing came in time.
    Late,
}

/// What the stub offered, and what turned out to be missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StubCaps {
    /// The advertised `PacketSize`.
    pub packet_size: usize,
    /// `qXfer:libraries:read`.
    pub libraries: bool,
    /// `qSearch:memory` (assumed until the stub answers it empty).
    pub search: bool,
    /// `X` (assumed until the stub answers it empty).
    pub binary_write: bool,
    /// `qXfer:memory-map:read` (lets searches without `qSearch` skip holes).
    pub memory_map: bool,
    /// `qXfer:features:read`: a target description (which registers `p` reads).
    pub target_xml: bool,
    /// `qCRC` (assumed until the stub answers it empty).
    pub crc: bool,
    /// `qC` answers with the current thread (asked on connect): the barrier that drops
    /// stale replies ends on its reply.
    pub current_thread: bool,
    /// `x` binary reads (`binary-upload+`): about twice the data per round trip of `m`.
    pub binary_read: bool,
    /// `QTagsplit.RunLimit`.
    pub run_limit: bool,
    /// `QTagsplit.DefaultRun`.
    pub default_run: Option<u64>,
}

/// A [`DebugTarget`] over a GDB stub.
pub struct GdbTarget {
    /// The stub said the target exited (`W`/`X`, how): every request fails from then on.
    exited: Option<String>,
    stream: TcpStream,
    session: ClientSession,
    spec: String,
    options: GdbOptions,
    caps: StubCaps,
    modules: Option<Vec<ModuleInfo>>,
    regions: Option<Vec<MemoryRegion>>,
    kernel: Option<KernelInfo>,
    /// Console output (`O` packets) received with the last reply.
    output: Vec<u8>,
    buf: Vec<u8>,
    detached: bool,
    interrupt: Option<Interrupt>,
    /// Late replies asked for again, and commands sent again.
    nudges: u64,
    /// The reply timer's round-trip estimate (no-ack mode).
    rtt: RttEstimator,
    /// When the last byte came from the stub.
    last_byte: Instant,
    /// Damaged frames seen so far (the session's bad checksums and oversize frames).
    damaged_seen: u64,
    /// A pipelined burst is waiting for its replies: damaged frames come as events, one
    /// per reply, not from the counters.
    in_burst: bool,
    /// Bursts whose replies came up short (see [`MAX_PIPELINE_FAULTS`]).
    pipeline_faults: u32,
    /// The processor's mode at this stop (dropped by anything that may let it run).
    mode: Option<CpuMode>,
    /// The registers the target description names (see `described_registers`).
    described: Option<Vec<(String, u32)>>,
    /// The last stop reply (to tell a lost resume from a run that happened).
    last_stop: Option<StopReply>,
    /// The longest a run took to come back so far (the patience for the next one).
    slowest_run: Option<Duration>,
    /// Memory read while stopped (small reads: headers, fields, the code around a hit),
    /// in no-ack mode; dropped by every command that may change memory or let the target
    /// run.
    cache: BlockCache,
    /// Software breakpoints set through this client (`Z0`), to tell a stop at one of
    /// them from the target's own `int 3` (both are `swbreak` stops).
    breakpoints: std::collections::BTreeSet<u64>,
    /// The session log (`--log-packets`): every byte each way, `w` = what we sent.
    log: Option<PacketLog>,
}

/// The RSP interrupt byte (Ctrl-C), sent while the target runs.
const INTERRUPT_BYTE: u8 = 0x03;

impl std::fmt::Debug for GdbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdbTarget")
            .field("spec", &self.spec)
            .field("caps", &self.caps)
            .finish()
    }
}

/// Splits `HOST:PORT[?ack]` (the part after `gdb://`) into the address and the options.
fn parse_spec(rest: &str) -> Result<(&str, GdbOptions), String> {
    let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
    let addr = addr.trim_end_matches('/');
    if addr.is_empty() {
        return Err("expected gdb://HOST:PORT[?ack]".into());
    }
    let mut options = GdbOptions::default();
    for opt in query.split('&').filter(|o| !o.is_empty()) {
        match opt {
            "ack" => options.no_ack = false,
            other => return Err(format!("unknown option '{other}' (expected 'ack')")),
        }
    }
    Ok((addr, options))
}

/// Opens `gdb://HOST:PORT[?ack]` (the part after the scheme); `?ack` keeps RSP's ack
/// mode ([`GdbOptions::no_ack`] `false`). Logs the session when `record` says so.
pub(crate) fn open(rest: &str, record: &OpenOptions) -> Result<BoxedTarget, OpenError> {
    let spec = format!("gdb://{rest}");
    record.check(&spec, TargetKind::Gdb)?;
    let (addr, options) = parse_spec(rest).map_err(|reason| OpenError::Bad { spec, reason })?;
    let log = record.open_packet_log()?;
    Ok(Box::new(GdbTarget::connect_logged(addr, options, log)?))
}

/// Bytes of an x86-64 `g` block up to and including `gs`: 17 registers of 8 bytes
/// (`rax`..`r15`, `rip`), then `eflags` and six selectors of 4 bytes.
const G_INTEGER_BYTES: usize = 17 * 8 + 7 * 4;

fn protocol(msg: impl Into<String>) -> TargetError {
    TargetError::Protocol(msg.into())
}

impl GdbTarget {
    /// Connects to `addr` (`HOST:PORT`) with default options and does the handshake.
    pub fn connect(addr: &str) -> Result<GdbTarget, TargetError> {
        Self::connect_with(addr, GdbOptions::default())
    }

    /// Connects with `options`.
    pub fn connect_with(addr: &str, options: GdbOptions) -> Result<GdbTarget, TargetError> {
        Self::connect_logged(addr, options, None)
    }

    /// Connects with `options`, logging every byte of the session to `log` (gdb's
    /// `set remotelogfile` format: `w` is what this client sent, `r` what the stub sent),
    /// from the first packet to the detach; the log is ended (`End of log`) when the
    /// target is dropped.
    pub fn connect_logged(
        addr: &str,
        options: GdbOptions,
        log: Option<PacketLog>,
    ) -> Result<GdbTarget, TargetError> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| protocol(format!("{addr} resolves to no address")))?;
        let stream = TcpStream::connect_timeout(&sock, options.timeout)?;
        stream.set_nodelay(true)?;
        let mut t = GdbTarget {
            stream,
            session: ClientSession::new(SessionConfig {
                max_packet: 1 << 20,
                run_length: false,
                ..SessionConfig::default()
            }),
            spec: format!("gdb://{addr}"),
            options,
            caps: StubCaps::default(),
            modules: None,
            regions: None,
            kernel: None,
            output: Vec::new(),
            buf: vec![0u8; 0x10000],
            detached: false,
            interrupt: None,
            nudges: 0,
            // No rate is assumed before the link is measured: a reply still on its way
            // keeps the timer from firing while its bytes arrive (`receiving`), so a
            // slow serial line costs no copy, and a reply lost on a fast lossy link is
            // asked for again after a round trip's timer, not after the 0.8 s a 9 KB
            // library list would need at 115,200 baud.
            rtt: RttEstimator::default(),
            last_byte: Instant::now(),
            damaged_seen: 0,
            in_burst: false,
            pipeline_faults: 0,
            mode: None,
            described: None,
            last_stop: None,
            slowest_run: None,
            cache: BlockCache::new(),
            exited: None,
            breakpoints: std::collections::BTreeSet::new(),
            log,
        };
        t.handshake()?;
        Ok(t)
    }

    fn handshake(&mut self) -> Result<(), TargetError> {
        let ours = Features::new(b"swbreak+;hwbreak+;vContSupported+;xmlRegisters=i386");
        let features = match self.request(&Command::QSupported(ours))? {
            Reply::Supported(f) => f,
            Reply::ErrorText(e) => return Err(protocol(format!("stub refused: {e}"))),
            other => return Err(protocol(format!("unexpected qSupported reply {other}"))),
        };
        let has = |name: &str| {
            features
                .iter()
                .any(|f| f.name == name && f.value == FeatureValue::Supported)
        };
        let value = |name: &str| {
            features.iter().find_map(|f| match &f.value {
                FeatureValue::Value(v) if f.name == name => u64::from_str_radix(v, 16).ok(),
                _ => None,
            })
        };
        self.caps = StubCaps {
            // gdb's own default when a stub says nothing.
            packet_size: value("PacketSize").map_or(400, |v| v.clamp(64, 1 << 20) as usize),
            libraries: has("qXfer:libraries:read"),
            search: true,
            binary_write: true,
            memory_map: has("qXfer:memory-map:read"),
            target_xml: has("qXfer:features:read"),
            crc: true,
            current_thread: false,
            binary_read: has("binary-upload"),
            run_limit: has(RUN_LIMIT_FEATURE),
            default_run: value(DEFAULT_RUN_FEATURE),
        };
        if self.options.no_ack && has("QStartNoAckMode") {
            self.request(&Command::StartNoAckMode)?;
        }
        self.halt_reason()?;
        // Whether `qC` works: the barrier after a re-sent request relies on its reply.
        self.caps.current_thread = match self.request(&Command::CurrentThread)? {
            Reply::CurrentThread(_) => true,
            Reply::Raw(p) => p.starts_with(b"QC"),
            _ => false,
        };
        Ok(())
    }

    /// Learns the stop state like gdb does (`?`), and checks the stub is sane. A target
    /// still running when we attach (a stub that answers `?` only once it stops) is
    /// interrupted: when `?` is not answered within its timer, the interrupt byte goes
    /// out with `?` once more (a stopped stub ignores the byte and answers the `?`, a
    /// lossy link's lost `?` is sent again the same way), and so on until
    /// [`GdbOptions::timeout`]. A stop reply that the interrupt brings after the answer
    /// is told apart later as an unasked one.
    fn halt_reason(&mut self) -> Result<(), TargetError> {
        let started = Instant::now();
        let mut interrupted = false;
        loop {
            self.session.send(&Command::HaltReason);
            self.write_out()?;
            let timer = self
                .rtt
                .timeout(&REPLY_TIMER, exchange_bytes(&Command::HaltReason));
            let deadline = (Instant::now() + timer).min(started + self.options.timeout);
            match self.wait_event(deadline, !self.session.ack_mode())? {
                Waited::Reply(Reply::Stop(s)) => {
                    self.last_stop = Some(s);
                    return Ok(());
                }
                Waited::Reply(other) => {
                    return Err(protocol(format!("unexpected reply to '?': {other}")));
                }
                Waited::Damaged => {}
                Waited::Late => {
                    if Instant::now() >= started + self.options.timeout {
                        return Err(TargetError::Timeout);
                    }
                    if !interrupted {
                        tracing::info!(
                            "gdb: no answer to '?' (the target may be running): interrupting it"
                        );
                        interrupted = true;
                    }
                    self.send_raw(&[INTERRUPT_BYTE])?;
                    self.nudges += 1;
                }
            }
        }
    }

    /// What the stub offered.
    pub fn caps(&self) -> StubCaps {
        self.caps
    }

    fn write_out(&mut self) -> Result<(), TargetError> {
        if let Some(bytes) = self.session.poll_transmit() {
            self.send_raw(&bytes)?;
        }
        Ok(())
    }

    /// Writes bytes to the stub (logged first when a log is kept).
    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TargetError> {
        if let Some(log) = &self.log {
            log.log(LogDirection::Write, bytes);
        }
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Waits for the reply to the outstanding command until `deadline`. With `recover`
    /// (no-ack mode), a frame that fails its checksum or a reply that does not parse ends
    /// the wait as [`Waited::Damaged`]; without, damaged frames are left to ack mode (or
    /// ignored) and a reply that does not parse is an error.
    fn wait_event(&mut self, deadline: Instant, recover: bool) -> Result<Waited, TargetError> {
        loop {
            while let Some(ev) = self.session.poll_event() {
                if tracing::enabled!(tracing::Level::TRACE) {
                    tracing::trace!("gdb: <- {}", event_text(&ev));
                }
                match ev {
                    ClientEvent::Reply(r) => {
                        self.write_out()?;
                        return Ok(Waited::Reply(r));
                    }
                    ClientEvent::Output(text) => self.output.extend_from_slice(&text),
                    ClientEvent::BadReply(_) if recover => return Ok(Waited::Damaged),
                    ClientEvent::Damaged => return Ok(Waited::Damaged),
                    ClientEvent::UnsolicitedStop(stop) => {
                        tracing::debug!(
                            "gdb: the stub says unasked that the target stopped: {stop:?}"
                        );
                        self.last_stop = Some(stop);
                    }
                    ClientEvent::BadReply(e) => return Err(protocol(e.to_string())),
                    ClientEvent::GaveUp => {
                        return Err(protocol("the stub keeps rejecting our packets"));
                    }
                    _ => {}
                }
            }
            let stats = self.session.stats();
            let damaged = stats.bad_checksums.saturating_add(stats.oversize);
            if damaged != self.damaged_seen {
                self.damaged_seen = damaged;
                if recover && !self.session.ack_mode() && !self.in_burst {
                    return Ok(Waited::Damaged);
                }
            }
            self.write_out()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Waited::Late);
            }
            self.stream.set_read_timeout(Some(left))?;
            // Precisely (the read time-out, a backstop, is rounded up to the tick); a
            // signal ends the wait early, and the loop looks at the deadline again.
            if !super::wait::readable_within(super::wait::as_fd(&self.stream), left)? {
                continue;
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(TargetError::Disconnected),
                Ok(n) => {
                    self.last_byte = Instant::now();
                    let bytes = self.buf.get(..n).unwrap_or_default().to_vec();
                    if let Some(log) = &self.log {
                        log.log(LogDirection::Read, &bytes);
                    }
                    self.session.receive(&bytes);
                }
                // A signal landed in the read: not an error, read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Waited::Late);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for the reply to the outstanding command until `deadline` (damaged frames
    /// are left to ack mode).
    fn wait_reply(&mut self, deadline: Instant) -> Result<Reply, TargetError> {
        loop {
            match self.wait_event(deadline, false)? {
                Waited::Reply(r) => return Ok(r),
                Waited::Damaged => {}
                Waited::Late => return Err(TargetError::Timeout),
            }
        }
    }

    /// Reads and drops the replies to copies of a command sent again (they would be taken
    /// for the next command's replies: RSP replies carry no sequence number, and a late
    /// copy of a read answers the next read of the same length with the wrong bytes).
    /// Sends `qC` and drops every reply until `qC`'s own comes (the stub answers in
    /// order), for at most [`GdbOptions::timeout`]; a stub without `qC` answers empty,
    /// which ends it too. `qC` sent again when its reply is late. A waiting window alone
    /// was not enough: on a loaded machine a copy's reply came after it, and a split
    /// over a 1 ms link read another address's bytes for the KDBG block.
    fn drain(&mut self, bytes: usize) -> Result<(), TargetError> {
        let started = Instant::now();
        // Patient: a `qC` sent again brings a second `QC` that the next command would
        // take for its reply.
        let timer = (self.rtt.timeout(&REPLY_TIMER, bytes.max(64)) * 4).max(BARRIER_WAIT);
        let mut until = Instant::now();
        loop {
            // Bytes still streaming in (a long stale reply on a slow link): wait on.
            if self.session.receiving() && self.last_byte + timer > Instant::now() {
                until = until.max(self.last_byte + timer);
            } else if Instant::now() >= until {
                if Instant::now() >= started + self.options.timeout {
                    return Err(TargetError::Timeout);
                }
                self.session.send(&Command::CurrentThread);
                self.write_out()?;
                until = Instant::now() + timer;
            }
            match self.wait_event(until, true)? {
                Waited::Reply(Reply::CurrentThread(_)) => return Ok(()),
                // Only a stub without `qC` ends the barrier with an empty reply: where
                // `qC` works, an empty reply is a stale one (a re-sent `p` that the stub
                // does not know), and taking it for the barrier's left `QC` in flight to
                // answer the next command (gdbserver under load).
                Waited::Reply(Reply::Empty) if !self.caps.current_thread => return Ok(()),
                Waited::Reply(Reply::Raw(p)) if p.starts_with(b"QC") => return Ok(()),
                Waited::Reply(r) => tracing::debug!("gdb: dropped a stale reply {r}"),
                Waited::Damaged | Waited::Late => {}
            }
        }
    }

    /// Sends one command and waits for its reply (console output is collected).
    ///
    /// In no-ack mode (the default) an idempotent command (see `idempotent`: reads,
    /// queries, writes of the same bytes, breakpoints, the run limit) is sent again at
    /// once when its reply arrives damaged (a bad checksum), and when no reply came within
    /// the reply timer: the measured round trip (SRTT + 4·RTTVAR, within [`REPLY_TIMER`],
    /// doubled per time-out in a row) plus the time its bytes need on the link. The copy
    /// starts with `$`, which resyncs both ends' framing after a lost byte; replies to
    /// earlier copies that come late are dropped. The request fails after [`MAX_SENDS`]
    /// copies, or when no byte at all came from the stub for [`GdbOptions::timeout`].
    ///
    /// In ack mode (see [`GdbOptions::no_ack`]) a reply to an idempotent command that is
    /// late by the same timer (at least [`REPLY_NUDGE`]) is asked for again with a `-`
    /// (the stub re-sends a reply it has not seen acknowledged); if it is still late the
    /// command itself is sent again. The request fails after `timeout` in all.
    ///
    /// Either way a reply that is still streaming in (a frame begun, its last byte within
    /// one timer) is waited for, not asked for again.
    ///
    /// A `Wxx`/`Xxx` reply to a command that is not a resume or `?` means the target
    /// exited (QEMU's guest quit, gdbserver's process ended): it fails with
    /// [`TargetError::Disconnected`] (logged with its status), and so does every request
    /// after it.
    pub fn request(&mut self, cmd: &Command) -> Result<Reply, TargetError> {
        if let Some(how) = &self.exited {
            tracing::debug!("gdb: not sent, the target {how}: {cmd:?}");
            return Err(TargetError::Disconnected);
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!("gdb: -> {}", packet_text(&cmd.encode(), 120));
        }
        let reply = self.request_once(cmd)?;
        self.exit_check(cmd, reply)
    }

    /// `reply` to `cmd`, unless it says the target exited (see [`request`](Self::request)).
    fn exit_check(&mut self, cmd: &Command, reply: Reply) -> Result<Reply, TargetError> {
        match (&reply, cmd.reply_kind()) {
            (Reply::Stop(stop), kind) if kind != tagsplit_protocol::gdb::ReplyKind::Stop => {
                let how = match stop {
                    StopReply::Exited(code) => format!("exited with status {code}"),
                    StopReply::Terminated(sig) => format!("was terminated by signal {sig}"),
                    StopReply::Signal { .. } => return Ok(reply),
                };
                tracing::warn!("gdb: the target {how} (the reply to {cmd:?})");
                self.exited = Some(how);
                Err(TargetError::Disconnected)
            }
            _ => Ok(reply),
        }
    }

    /// Whether requests may be pipelined: no-ack mode (in ack mode every packet waits for
    /// its `+`), and not given up on for this connection.
    fn pipelining(&self) -> bool {
        !self.session.ack_mode()
            && self.pipeline_faults < MAX_PIPELINE_FAULTS
            && self.exited.is_none()
    }

    /// Sends `cmds` and returns their replies in order, like [`request`](Self::request)
    /// of each. In no-ack mode, when every command is idempotent, they go out in bursts
    /// of up to [`PIPELINE_DEPTH`] (and [`PIPELINE_BYTES`]) back to back, one round trip
    /// a burst. RSP replies carry no sequence number, so a burst's replies are matched
    /// by position, and only when as many came as were sent (intact or damaged): a
    /// damaged reply's command goes out again in the next burst; a burst that came up
    /// short (a command or a whole reply lost, which would shift every later reply) is
    /// drained with the `qC` barrier and its commands are sent again one by one. After
    /// [`MAX_PIPELINE_FAULTS`] short bursts the connection stops pipelining. A `W`/`X`
    /// reply ends it all as in [`request`](Self::request).
    pub fn request_many(&mut self, cmds: &[Command<'_>]) -> Result<Vec<Reply>, TargetError> {
        if cmds.len() < 2 || !self.pipelining() || !cmds.iter().all(idempotent) {
            return cmds.iter().map(|c| self.request(c)).collect();
        }
        self.output.clear();
        if !cmds.iter().all(reads_only) {
            self.cache.clear();
        }
        let mut out: Vec<Option<Reply>> = vec![None; cmds.len()];
        let mut todo: Vec<usize> = (0..cmds.len()).collect();
        // A reply damaged in every burst (a link that corrupts most frames): after a few
        // rounds the rest go one by one, with the single request's own recovery.
        for _round in 0..4 {
            if todo.is_empty() || !self.pipelining() {
                break;
            }
            let mut again = Vec::new();
            let mut start = 0;
            while start < todo.len() {
                let mut end = start;
                let mut bytes = 0usize;
                while let Some(&i) = todo.get(end) {
                    let b = cmds.get(i).map_or(0, exchange_bytes);
                    if end > start && (end - start >= PIPELINE_DEPTH || bytes + b > PIPELINE_BYTES)
                    {
                        break;
                    }
                    bytes = bytes.saturating_add(b);
                    end += 1;
                }
                let burst = todo.get(start..end).unwrap_or_default();
                let sent: Vec<&Command<'_>> = burst.iter().filter_map(|&i| cmds.get(i)).collect();
                match self.burst(&sent, bytes)? {
                    Some(replies) => {
                        for (&i, r) in burst.iter().zip(replies) {
                            match r {
                                Some(r) => {
                                    if let Some(cmd) = cmds.get(i) {
                                        let r = self.exit_check(cmd, r)?;
                                        if let Some(slot) = out.get_mut(i) {
                                            *slot = Some(r);
                                        }
                                    }
                                }
                                None => again.push(i),
                            }
                        }
                    }
                    // Came up short: these go one by one, now.
                    None => self.request_each(cmds, burst, &mut out)?,
                }
                start = end;
            }
            self.nudges += again.len() as u64;
            todo = again;
        }
        self.request_each(cmds, &todo, &mut out)?;
        out.into_iter()
            .map(|r| r.ok_or_else(|| protocol("a pipelined request got no reply")))
            .collect()
    }

    /// [`request`](Self::request) of `cmds[i]` for each `i` of `which`, one by one, each
    /// reply into `out[i]`.
    fn request_each(
        &mut self,
        cmds: &[Command<'_>],
        which: &[usize],
        out: &mut [Option<Reply>],
    ) -> Result<(), TargetError> {
        for &i in which {
            if let Some(cmd) = cmds.get(i) {
                let r = self.request(cmd)?;
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        Ok(())
    }

    /// Whether `qSearch` may carry `pattern`: the stub has not refused it, and the pattern
    /// fits a packet with room to spare.
    fn qsearch_fits(&self, pattern: &[u8]) -> bool {
        self.caps.search && pattern.len() < self.caps.packet_size / 2
    }

    /// One pipelined burst: sends `cmds` back to back and waits for as many replies
    /// (`None` for a damaged one). `Ok(None)` when fewer came in time: the stream has been
    /// drained (the `qC` barrier) and nothing of the burst can be trusted.
    fn burst(
        &mut self,
        cmds: &[&Command<'_>],
        bytes: usize,
    ) -> Result<Option<Vec<Option<Reply>>>, TargetError> {
        let wire_before = self.on_wire();
        for cmd in cmds {
            if tracing::enabled!(tracing::Level::TRACE) {
                tracing::trace!("gdb: -> {} (pipelined)", packet_text(&cmd.encode(), 120));
            }
            self.session.send_pipelined(cmd);
        }
        self.write_out()?;
        let sent = Instant::now();
        let work: Duration = cmds.iter().filter_map(|c| work_allowance(c)).sum();
        let timer = self.rtt.timeout(&REPLY_TIMER, bytes).saturating_add(work);
        // While replies keep coming, the burst is alive: each may take a single reply's
        // timer after the last byte.
        let quiet = self.rtt.timeout(&REPLY_TIMER, 64);
        // However long bytes keep trickling in, a burst ends by this.
        let hard = sent + timer.max(self.options.timeout);
        let mut until = sent + timer;
        let mut replies = Vec::with_capacity(cmds.len());
        self.in_burst = true;
        let result = loop {
            if replies.len() == cmds.len() {
                break Ok(true);
            }
            match self.wait_event(until, true) {
                Ok(Waited::Reply(r)) => replies.push(Some(r)),
                Ok(Waited::Damaged) => replies.push(None),
                Ok(Waited::Late)
                    if self.last_byte + quiet > Instant::now() && Instant::now() < hard =>
                {
                    until = (self.last_byte + quiet).min(hard);
                }
                Ok(Waited::Late) => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        self.in_burst = false;
        if !result? {
            self.pipeline_faults += 1;
            self.nudges += 1;
            tracing::debug!(
                "gdb: a pipelined burst of {} got {} replies; draining, then one by one",
                cmds.len(),
                replies.len()
            );
            self.drain(bytes)?;
            return Ok(None);
        }
        if work.is_zero() && replies.iter().all(Option::is_some) {
            self.rtt
                .sample(sent.elapsed(), self.crossed_since(wire_before));
        }
        Ok(Some(replies))
    }

    /// One request and its reply (see [`request`](Self::request)).
    fn request_once(&mut self, cmd: &Command) -> Result<Reply, TargetError> {
        self.output.clear();
        if !reads_only(cmd) {
            self.cache.clear();
            self.mode = None;
        }
        if self.session.ack_mode() {
            return self.request_ack_mode(cmd);
        }
        let retry = idempotent(cmd);
        let bytes = exchange_bytes(cmd);
        let started = Instant::now();
        let wire_before = self.on_wire();
        let mut copies = 0u32;
        loop {
            self.session.send(cmd);
            self.write_out()?;
            copies += 1;
            let sent = Instant::now();
            let work = work_allowance(cmd);
            let timer = self
                .rtt
                .timeout(&REPLY_TIMER, bytes)
                .saturating_add(work.unwrap_or_default());
            let mut until = if retry {
                sent + timer
            } else {
                sent + self.options.timeout
            };
            let waited = loop {
                match self.wait_event(until, retry)? {
                    // A reply still streaming in on a slow link is not late: wait on
                    // while bytes keep coming.
                    Waited::Late if retry && self.session.receiving() => {
                        let quiet = self.last_byte + timer;
                        // However long a reply trickles in, it ends by this (a stub that
                        // sends a byte now and then must not hold the request forever).
                        let hard = started + self.options.timeout.saturating_mul(MAX_STREAMING);
                        if quiet <= Instant::now() || Instant::now() >= hard {
                            break Waited::Late;
                        }
                        until = quiet.min(hard);
                    }
                    other => break other,
                }
            };
            match waited {
                Waited::Reply(r) => {
                    if copies == 1 && work.is_none() {
                        // The bytes that crossed, not the ones expected: a run-length
                        // encoded or short reply taken for its full size made the link
                        // look four times faster than it is, and a 160-byte read of
                        // tracker entries was sent again on a serial line.
                        self.rtt
                            .sample(sent.elapsed(), self.crossed_since(wire_before));
                    } else {
                        self.rtt.reset_backoff();
                    }
                    // Any copy's reply may still come: a frame taken for a damaged reply
                    // may have been a stale one from before.
                    if copies > 1 {
                        self.drain(bytes)?;
                    }
                    return Ok(r);
                }
                Waited::Damaged => {
                    tracing::debug!("gdb: reply damaged, sending the command again");
                }
                Waited::Late => {
                    let silent =
                        Instant::now() >= started.max(self.last_byte) + self.options.timeout;
                    let too_long = Instant::now()
                        >= started + self.options.timeout.saturating_mul(MAX_STREAMING);
                    if !retry || silent || too_long || copies >= MAX_SENDS {
                        return Err(TargetError::Timeout);
                    }
                    self.rtt.back_off();
                    tracing::debug!("gdb: no reply in time, sending the command again");
                }
            }
            if copies >= MAX_SENDS {
                return Err(TargetError::Timeout);
            }
            self.nudges += 1;
        }
    }

    /// Bytes sent and received so far.
    fn on_wire(&self) -> u64 {
        let w = self.session.stats();
        w.bytes_sent.saturating_add(w.bytes_received)
    }

    /// Bytes that crossed the wire (both ways) since [`on_wire`](Self::on_wire) gave
    /// `before`: what a round-trip sample is for.
    fn crossed_since(&self, before: u64) -> usize {
        usize::try_from(self.on_wire().saturating_sub(before)).unwrap_or(usize::MAX)
    }

    /// [`request`](Self::request) in ack mode.
    fn request_ack_mode(&mut self, cmd: &Command) -> Result<Reply, TargetError> {
        let wire_before = self.on_wire();
        self.session.send(cmd);
        self.write_out()?;
        let sent = Instant::now();
        let deadline = sent + self.options.timeout;
        if !idempotent(cmd) {
            return self.wait_reply(deadline);
        }
        let bytes = exchange_bytes(cmd);
        let work = work_allowance(cmd);
        let mut nudges = 0u32;
        loop {
            let timer = self
                .rtt
                .timeout(&REPLY_TIMER, bytes)
                .saturating_add(work.unwrap_or_default())
                .max(REPLY_NUDGE);
            // A reply still streaming in on a slow link is not late, up to a bound.
            let hard = sent + self.options.timeout.saturating_mul(MAX_STREAMING);
            let limit = if self.session.receiving() {
                hard
            } else {
                deadline
            };
            let step = (Instant::now() + timer).min(limit);
            match self.wait_reply(step) {
                Err(TargetError::Timeout)
                    if self.session.receiving()
                        && Instant::now() < self.last_byte + timer
                        && Instant::now() < hard => {}
                Err(TargetError::Timeout) if Instant::now() < deadline => {
                    nudges += 1;
                    self.nudges += 1;
                    self.rtt.back_off();
                    if nudges % 2 == 1 {
                        tracing::debug!("gdb: reply late, asking for it again");
                        self.send_raw(b"-")?;
                    } else {
                        tracing::debug!("gdb: reply still late, sending the command again");
                        self.session.send(cmd);
                        self.write_out()?;
                    }
                }
                Ok(r) => {
                    if nudges == 0 && work.is_none() {
                        self.rtt
                            .sample(sent.elapsed(), self.crossed_since(wire_before));
                    }
                    return Ok(r);
                }
                other => return other,
            }
        }
    }

    /// How many times a late reply was asked for again or its command re-sent (and, in
    /// no-ack mode, runs recovered).
    pub fn nudges(&self) -> u64 {
        self.nudges
    }

    /// Runs a `monitor` command and returns its output.
    pub fn monitor(&mut self, line: &str) -> Result<String, TargetError> {
        match self.request(&Command::Monitor(HexBytes::raw(line.as_bytes())))? {
            Reply::Ok | Reply::Empty => Ok(String::from_utf8_lossy(&self.output).into_owned()),
            Reply::ErrorText(e) => Err(protocol(e)),
            other => Err(protocol(format!("unexpected monitor reply {other}"))),
        }
    }

    /// Detaches (the stub stays up for the next client).
    pub fn detach(mut self) -> Result<(), TargetError> {
        self.detached = true;
        self.request(&Command::Detach(None)).map(|_| ())
    }

    /// The largest number of bytes one `m` can return.
    fn read_chunk(&self) -> usize {
        (self.caps.packet_size.saturating_sub(PACKET_OVERHEAD) / 2).max(16)
    }

    /// The bytes one memory read asks for: twice as many with `x` as with `m`.
    fn transfer_chunk(&self) -> usize {
        if self.caps.binary_read {
            self.caps
                .packet_size
                .saturating_sub(PACKET_OVERHEAD)
                .max(16)
        } else {
            self.read_chunk()
        }
    }

    fn rip(&mut self) -> Result<u64, TargetError> {
        let n = u32::try_from(REG_RIP).unwrap_or(16);
        let bytes = match self.request(&Command::ReadRegister(n))? {
            Reply::Hex(b) if b.len() == 8 => b,
            // Stubs without `p`: take it from `g`.
            _ => match self.request(&Command::ReadRegisters)? {
                Reply::Hex(g) => {
                    let (off, w) = xml::register_span(REG_RIP).unwrap_or((128, 8));
                    g.get(off..off + w).map(<[u8]>::to_vec).unwrap_or_default()
                }
                other => return Err(protocol(format!("unexpected 'g' reply {other}"))),
            },
        };
        let arr: [u8; 8] = bytes.try_into().map_err(|_| protocol("short rip"))?;
        Ok(u64::from_le_bytes(arr))
    }

    /// The image base and size of the library whose first segment a library list puts
    /// at `segment`: gdb's convention (and our stub's) is the image's first section, a
    /// page above the `MZ` header for every usual PE layout, which is looked for first
    /// (one read); a stub that lists the base itself costs a second read.
    fn image_of_segment(&mut self, segment: VirtAddr) -> Result<(VirtAddr, u64), TargetError> {
        if let Some(below) = segment.get().checked_sub(PAGE_SIZE) {
            let base = VirtAddr(below);
            let mut head = [0u8; SIZE_OF_IMAGE_READ];
            let got = self.read_memory(base, &mut head)?;
            if head.get(..got.min(2)) == Some(&b"MZ"[..])
                && let Ok(size) = self.size_from_head(base, &head, got)
                && size > PAGE_SIZE
            {
                return Ok((base, size));
            }
        }
        Ok((segment, self.size_of_image(segment)?))
    }

    /// `SizeOfImage` from the PE header at `base`.
    fn size_of_image(&mut self, base: VirtAddr) -> Result<u64, TargetError> {
        // One read of the start of the image holds `e_lfanew` and, for every usual PE
        // layout, `SizeOfImage` too: one round trip per module, not two.
        let mut head = [0u8; SIZE_OF_IMAGE_READ];
        let got = self.read_memory(base, &mut head)?;
        self.size_from_head(base, &head, got)
    }

    /// `SizeOfImage` of the image at `base` whose first `got` bytes are `head` (what is
    /// not in them is read).
    fn size_from_head(
        &mut self,
        base: VirtAddr,
        head: &[u8],
        got: usize,
    ) -> Result<u64, TargetError> {
        let field = |off: u64| {
            let off = usize::try_from(off).ok()?;
            let bytes = head.get(off..off.checked_add(4)?.min(got))?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        let lfanew = match field(dos::E_LFANEW) {
            Some(v) => u64::from(v),
            None => u64::from(read_u32(self, base.saturating_add(dos::E_LFANEW))?),
        };
        if lfanew > 0x1000 {
            return Err(TargetError::BadKernelData(format!(
                "no PE header at {base}"
            )));
        }
        let at = lfanew + nt_headers::OPTIONAL_HEADER + optional_header::SIZE_OF_IMAGE;
        match field(at) {
            Some(v) => Ok(u64::from(v)),
            None => Ok(u64::from(read_u32(self, base.saturating_add(at))?)),
        }
    }

    /// Reads a whole `qXfer` object; `None` if the stub does not offer it.
    fn xfer_read(&mut self, object: XferObject<'_>) -> Result<Option<Vec<u8>>, TargetError> {
        self.xfer_read_annex(object, b"")
    }

    /// [`xfer_read`](Self::xfer_read) of the document `annex` names (`target.xml`).
    fn xfer_read_annex(
        &mut self,
        object: XferObject<'_>,
        annex: &[u8],
    ) -> Result<Option<Vec<u8>>, TargetError> {
        let mut doc = Vec::new();
        loop {
            let cmd = Command::XferRead {
                object,
                annex,
                offset: doc.len() as u64,
                length: self.read_chunk() as u64,
            };
            match self.request(&cmd)? {
                Reply::Xfer { more, data } => {
                    let empty = data.is_empty();
                    doc.extend_from_slice(&data);
                    if !more || empty {
                        return Ok(Some(doc));
                    }
                }
                _ => return Ok(None),
            }
            if doc.len() > 16 << 20 {
                return Err(protocol(format!(
                    "qXfer {} document larger than 16 MiB",
                    String::from_utf8_lossy(object.name())
                )));
            }
        }
    }

    /// The registers the stub's target description names, with their `p` numbers
    /// (includes followed, at most [`MAX_TARGET_XML_FILES`] files); empty without one.
    /// Cached for the connection.
    fn described_registers(&mut self) -> Result<Vec<(String, u32)>, TargetError> {
        if let Some(r) = &self.described {
            return Ok(r.clone());
        }
        let mut regs = Vec::new();
        if self.caps.target_xml {
            // Depth first, in document order: numbering continues across files.
            let mut todo = vec!["target.xml".to_owned()];
            let mut read = 0;
            while let Some(file) = todo.pop() {
                read += 1;
                if read > MAX_TARGET_XML_FILES {
                    break;
                }
                let Some(doc) = self.xfer_read_annex(XferObject::Features, file.as_bytes())? else {
                    break;
                };
                let text = String::from_utf8_lossy(&doc);
                // A file's registers, then its includes in order (QEMU's top file has
                // only includes; ours has only registers).
                let next = regs.last().map_or(0, |(_, n): &(String, u32)| n + 1);
                regs.extend(xml::target_registers(&text, next));
                let mut includes = xml::target_includes(&text);
                includes.reverse();
                todo.extend(includes);
            }
        }
        self.described = Some(regs.clone());
        Ok(regs)
    }

    /// The value of register `num` (`p`), little-endian, up to 8 bytes.
    fn register_value(&mut self, num: u32) -> Result<u64, TargetError> {
        match self.request(&Command::ReadRegister(num))? {
            Reply::Hex(b) if !b.is_empty() => {
                let mut v = [0u8; 8];
                for (d, s) in v.iter_mut().zip(&b) {
                    *d = *s;
                }
                Ok(u64::from_le_bytes(v))
            }
            other => Err(protocol(format!("unexpected 'p' reply {other}"))),
        }
    }

    /// The stub's memory map (cached until the target runs), if it offers one.
    fn memory_map(&mut self) -> Result<Option<Vec<MemoryRegion>>, TargetError> {
        if self.regions.is_none() && self.caps.memory_map {
            match self.xfer_read(XferObject::MemoryMap)? {
                Some(doc) => {
                    self.regions = Some(xml::parse_memory_map(&String::from_utf8_lossy(&doc)))
                }
                None => self.caps.memory_map = false,
            }
        }
        Ok(self.regions.clone())
    }

    fn modules_from_library_list(&mut self) -> Result<Option<Vec<ModuleInfo>>, TargetError> {
        if !self.caps.libraries {
            return Ok(None);
        }
        let Some(doc) = self.xfer_read(XferObject::Libraries)? else {
            self.caps.libraries = false;
            return Ok(None);
        };
        let libs = xml::parse_library_list(&String::from_utf8_lossy(&doc));
        // Every header in one burst where the stub allows pipelining (a page below the
        // segment, see `image_of_segment`).
        let heads: Vec<(VirtAddr, usize)> = libs
            .iter()
            .map(|l| {
                let base = l.address.checked_sub(PAGE_SIZE).unwrap_or(l.address);
                (VirtAddr(base), SIZE_OF_IMAGE_READ)
            })
            .collect();
        self.prefetch(&heads)?;
        let mut out = Vec::with_capacity(libs.len());
        for lib in libs {
            let (base, size) = self.image_of_segment(VirtAddr(lib.address))?;
            let path = xml::windows_library_name(&lib.name);
            let name = path.rsplit(['\\', '/']).next().unwrap_or(&path).to_owned();
            out.push(ModuleInfo {
                name,
                path,
                base,
                size,
            });
        }
        Ok(Some(out))
    }

    /// Finds `nt`: the first module, or the `MZ` page at or below `rip`.
    fn kernel_base(&mut self) -> Result<VirtAddr, TargetError> {
        // The module list read before (by `modules`) already names `nt`.
        if let Some(base) = self
            .modules
            .as_ref()
            .and_then(|m| m.first())
            .map(|nt| nt.base)
        {
            return Ok(base);
        }
        if let Some(mods) = self.modules_from_library_list()?
            && let Some(base) = mods.first().map(|nt| nt.base)
        {
            self.modules = Some(mods);
            return Ok(base);
        }
        let rip = self.rip()?;
        if rip < KERNEL_SPACE {
            return Err(TargetError::BadKernelData(format!(
                "no Windows kernel here: the stub lists no libraries, and rip {rip:#x} is not in x64 kernel space (at or above {KERNEL_SPACE:#x}, where nt runs)"
            )));
        }
        let top = rip & !(PAGE_SIZE - 1);
        let floor = top.saturating_sub(MAX_KERNEL_SCAN);
        let aligned = (floor..=top).rev().filter(|a| a % NT_ALIGN == 0);
        let pages = (floor..=top)
            .rev()
            .step_by(PAGE_SIZE as usize)
            .filter(|a| a % NT_ALIGN != 0);
        for candidates in [aligned.collect::<Vec<u64>>(), pages.collect()] {
            let mut bufs = vec![[0u8; 2]; candidates.len()];
            let mut reads: Vec<(VirtAddr, &mut [u8])> = candidates
                .iter()
                .map(|&a| VirtAddr(a))
                .zip(bufs.iter_mut().map(|b| &mut b[..]))
                .collect();
            let got = self.read_fresh_many(&mut reads)?;
            drop(reads);
            for ((&page, mz), n) in candidates.iter().zip(&bufs).zip(got) {
                if n == 2 && *mz == *b"MZ" && self.size_of_image(VirtAddr(page)).is_ok() {
                    return Ok(VirtAddr(page));
                }
            }
        }
        Err(TargetError::BadKernelData(format!(
            "no Windows kernel found: no library list, and no PE image (`MZ`) at any page from rip {rip:#x} down {} MiB",
            MAX_KERNEL_SCAN >> 20
        )))
    }

    /// Finds the `KDDEBUGGER_DATA64` block in `nt`: data sections first, then the image.
    fn find_kdbg(&mut self, nt: VirtAddr, nt_size: u64) -> Result<VirtAddr, TargetError> {
        let mut ranges: Vec<(VirtAddr, VirtAddr)> = crate::pe::sections(self, nt)
            .map(|s| {
                s.into_iter()
                    .filter(|s| !s.is_executable())
                    .map(|s| (s.start, s.end()))
                    .collect()
            })
            .unwrap_or_default();
        ranges.push((nt, nt.saturating_add(nt_size)));
        for (start, end) in ranges {
            for hit in self.search_memory(start, end, &kdbg::OWNER_TAG, 64)? {
                let Some(block) = hit.get().checked_sub(kdbg::OWNER_TAG_OFFSET).map(VirtAddr)
                else {
                    continue;
                };
                if read_u64(self, block.saturating_add(kdbg::KERN_BASE)).ok() == Some(nt.get()) {
                    return Ok(block);
                }
            }
        }
        Err(TargetError::BadKernelData(format!(
            "no KDBG block in the kernel image at {nt}"
        )))
    }

    fn search_with_qsearch(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Option<Vec<VirtAddr>>, TargetError> {
        let mut hits = Vec::new();
        let mut at = start.get();
        while at < end.get() && hits.len() < max_hits {
            let cmd = Command::SearchMemory {
                addr: at,
                len: end.get() - at,
                pattern,
            };
            match self.request(&cmd)? {
                Reply::SearchResult(Some(hit)) if hit >= at && hit < end.get() => {
                    hits.push(VirtAddr(hit));
                    at = hit + 1;
                }
                Reply::SearchResult(_) => break,
                Reply::Empty => {
                    self.caps.search = false;
                    return Ok(None);
                }
                other => return Err(protocol(format!("unexpected qSearch reply {other}"))),
            }
        }
        Ok(Some(hits))
    }

    fn write_chunk(&mut self, addr: VirtAddr, data: &[u8]) -> Result<bool, TargetError> {
        if self.caps.binary_write {
            match self.request(&Command::WriteMemoryBinary {
                addr: addr.get(),
                data,
            })? {
                Reply::Ok => return Ok(true),
                Reply::Empty => self.caps.binary_write = false,
                // A lost 0x00 byte passes the checksum but not the stub's length check:
                // the same bytes once more in hex, which a lost byte cannot pass.
                _ => {}
            }
        }
        Ok(self.request(&Command::WriteMemory {
            addr: addr.get(),
            data: HexBytes::raw(data),
        })? == Reply::Ok)
    }

    /// Inserts (`Z0`) or removes (`z0`) a software breakpoint of x86 kind 1.
    fn software_breakpoint(&mut self, addr: VirtAddr, insert: bool) -> Result<(), TargetError> {
        let bp = Breakpoint {
            kind: BreakpointType::Software,
            addr: addr.get(),
            size: 1,
        };
        let cmd = if insert {
            Command::InsertBreakpoint(bp)
        } else {
            Command::RemoveBreakpoint(bp)
        };
        match self.request(&cmd)? {
            Reply::Ok => {
                if insert {
                    self.breakpoints.insert(addr.get());
                } else {
                    self.breakpoints.remove(&addr.get());
                }
                Ok(())
            }
            Reply::Empty => Err(TargetError::Unsupported("breakpoints")),
            other => Err(protocol(format!(
                "breakpoint at {addr}: unexpected reply {other}"
            ))),
        }
    }

    /// How long a run may stay silent, in no-ack mode, before the stop reply is asked for
    /// with `?`: four times the longest run so far and four reply timers, at least 25 ms
    /// (1 s before any run has been seen).
    fn run_patience(&self) -> Duration {
        let timer = self.rtt.timeout(&REPLY_TIMER, 64);
        match self.slowest_run {
            Some(run) => (run * 4).max(timer * 4).max(Duration::from_millis(25)),
            None => Duration::from_secs(1).max(timer * 4),
        }
    }

    /// The registers (`g`), to tell a resume that never reached the stub from a run that
    /// stopped where it started.
    fn register_snapshot(&mut self) -> Result<Option<Vec<u8>>, TargetError> {
        Ok(match self.request(&Command::ReadRegisters)? {
            Reply::Hex(g) => Some(g),
            _ => None,
        })
    }

    /// No-ack mode: the stop reply did not come in time, or came damaged. Sends the
    /// interrupt again if one was due, asks `?` (a stub holds it while the target runs,
    /// and answers at once when it is stopped), and drops a second stop reply. `None`
    /// when the resume evidently never reached the stub: the stop and the registers are
    /// those from before it.
    fn recover_stop(
        &mut self,
        interrupt_sent: bool,
        before: &(Option<StopReply>, Option<Vec<u8>>),
    ) -> Result<Option<StopReply>, TargetError> {
        self.nudges += 1;
        if interrupt_sent {
            tracing::debug!("gdb: no stop reply after the interrupt, interrupting again");
            self.session.send_interrupt();
            self.write_out()?;
        }
        tracing::debug!("gdb: stop reply late or damaged, asking with '?'");
        let stop = match self.request(&Command::HaltReason)? {
            Reply::Stop(s) => s,
            other => return Err(protocol(format!("unexpected reply to '?': {other}"))),
        };
        // The resume's own stop reply, if it comes after all.
        self.drain(64)?;
        if Some(stop) == before.0 && before.1.is_some() && self.register_snapshot()? == before.1 {
            tracing::debug!("gdb: the resume was lost, sending it again");
            return Ok(None);
        }
        Ok(Some(stop))
    }

    /// Resumes and waits for the stop reply; sends an interrupt at `interrupt_at`, or as
    /// soon as the [`Interrupt`] is triggered (its waker writes the interrupt byte on a
    /// clone of the socket; the result is then [`TargetError::Interrupted`] once the
    /// target has stopped). Nothing polls: the read blocks until a reply or a deadline.
    ///
    /// In no-ack mode a stop reply that arrives damaged, or does not come within
    /// [`run_patience`](Self::run_patience) (of the resume, or of the interrupt), is asked
    /// for again ([`recover_stop`](Self::recover_stop)); a resume that never reached the
    /// stub is sent again.
    fn resume_and_wait(&mut self, interrupt_at: Option<Instant>) -> Result<StopReply, TargetError> {
        self.resume_and_wait_from(interrupt_at, None)
    }

    /// [`resume_and_wait`](Self::resume_and_wait), with the registers from before the
    /// resume when they were read already (`Some`: pipelined with the run limit).
    fn resume_and_wait_from(
        &mut self,
        interrupt_at: Option<Instant>,
        registers: Option<Option<Vec<u8>>>,
    ) -> Result<StopReply, TargetError> {
        self.output.clear();
        self.mode = None;
        let recover = !self.session.ack_mode();
        let before = match registers {
            _ if !recover => (None, None),
            Some(regs) => (self.last_stop, regs),
            None => (self.last_stop, self.register_snapshot()?),
        };
        let resume = Command::VCont(ResumeActions::list(&[ResumeAction {
            kind: ResumeKind::Continue,
            thread: None,
        }]));
        self.session.send(&resume);
        self.write_out()?;
        let started = Instant::now();
        // At most one interrupt byte, from whichever comes first.
        let sent = Arc::new(AtomicBool::new(false));
        let _waker = match (&self.interrupt, self.stream.try_clone()) {
            (Some(interrupt), Ok(clone)) => {
                let sent = sent.clone();
                let log = self.log.clone();
                Some(interrupt.on_trigger(move || {
                    if !sent.swap(true, Ordering::SeqCst) {
                        if let Some(log) = &log {
                            log.log(LogDirection::Write, &[INTERRUPT_BYTE]);
                        }
                        let _ = (&clone).write_all(&[INTERRUPT_BYTE]);
                    }
                }))
            }
            _ => None,
        };
        // A run bounded by the stub (or by our interrupt): allow generously for it.
        let patience = self.options.timeout.saturating_mul(6);
        let mut deadline = Instant::now() + patience;
        let mut suspect =
            (recover && interrupt_at.is_none()).then(|| started + self.run_patience());
        let mut user_grace = false;
        let stop = loop {
            let now = Instant::now();
            let due = interrupt_at.filter(|_| !sent.load(Ordering::SeqCst));
            if due.is_some_and(|at| now >= at) {
                if !sent.swap(true, Ordering::SeqCst) {
                    self.session.send_interrupt();
                    self.write_out()?;
                }
                deadline = now + patience;
                if recover {
                    suspect = Some(now + self.run_patience());
                }
            }
            let until = [due.filter(|at| *at > now), Some(deadline), suspect]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(deadline);
            let waited = self.wait_event(until, recover)?;
            let lost = match waited {
                Waited::Reply(Reply::Stop(s)) => break s,
                Waited::Reply(other) => {
                    return Err(protocol(format!("unexpected resume reply {other}")));
                }
                Waited::Damaged => true,
                Waited::Late => suspect.is_some_and(|at| Instant::now() >= at),
            };
            if lost {
                let interrupt_sent = sent.load(Ordering::SeqCst);
                match self.recover_stop(interrupt_sent, &before)? {
                    Some(s) => break s,
                    None => {
                        self.session.send(&resume);
                        self.write_out()?;
                        if interrupt_sent {
                            // It never ran: the interrupt is due again.
                            sent.store(false, Ordering::SeqCst);
                        }
                        suspect = interrupt_at
                            .is_none()
                            .then(|| Instant::now() + self.run_patience());
                        continue;
                    }
                }
            }
            if Instant::now() < deadline {
                continue;
            }
            // The interrupt went out (from the waker) after this wait began: give the
            // stop reply its full time from now, once.
            if !user_grace && super::interrupted(self.interrupt.as_ref()) {
                user_grace = true;
                deadline = Instant::now() + patience;
                continue;
            }
            return Err(TargetError::Timeout);
        };
        self.last_stop = Some(stop);
        let took = started.elapsed();
        self.slowest_run = Some(self.slowest_run.map_or(took, |s| s.max(took)));
        if super::interrupted(self.interrupt.as_ref()) {
            tracing::debug!("broke in on request: {stop:?}");
            return Err(TargetError::Interrupted);
        }
        Ok(stop)
    }
}

/// Sorted regions with touching ones merged (a match may straddle their border).
fn merge_adjacent(regions: &[MemoryRegion]) -> Vec<MemoryRegion> {
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<MemoryRegion> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.start.saturating_add(last.length) >= r.start => {
                let end = r
                    .start
                    .saturating_add(r.length)
                    .max(last.start.saturating_add(last.length));
                last.length = end - last.start;
            }
            _ => out.push(r),
        }
    }
    out
}

impl DebugTarget for GdbTarget {
    fn describe(&self) -> String {
        self.spec.clone()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        // Small reads (headers, fields, the code around a hit) go through the block cache
        // in no-ack mode. (In ack mode with it, a lossy link's seed 0 stalled until the
        // time-out: not understood, so ack mode reads everything from the stub.)
        if self.session.ack_mode() {
            return self.read_fresh(addr, buf);
        }
        let mut cache = std::mem::take(&mut self.cache);
        let r = cache.read(addr, buf, |at, dst| self.read_fresh(at, dst));
        self.cache = cache;
        r
    }

    fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let mut done = 0usize;
        while done < buf.len() {
            let binary = self.caps.binary_read;
            let chunk = self.transfer_chunk();
            let want = (buf.len() - done).min(chunk);
            let at = addr.saturating_add(done as u64).get();
            let cmd = read_command(binary, at, want);
            let (data, asked, hex) = match self.request(&cmd)? {
                // A binary reply that lost a 0x00 byte on the way still passes RSP's
                // checksum (a sum of the bytes), one byte short: a short binary reply is
                // read again in hex, whose digits a lost byte cannot hide in.
                Reply::Binary(d) if d.len() < want => {
                    let len = want.min(self.read_chunk());
                    match self.request(&Command::ReadMemory {
                        addr: at,
                        len: len as u64,
                    })? {
                        Reply::Hex(h) => (h, len, true),
                        Reply::Error(_) | Reply::ErrorText(_) | Reply::Empty => break,
                        other => {
                            return Err(protocol(format!("unexpected memory read reply {other}")));
                        }
                    }
                }
                Reply::Hex(d) => (d, want, true),
                Reply::Binary(d) => (d, want, false),
                Reply::Empty if binary => {
                    self.caps.binary_read = false;
                    continue;
                }
                Reply::Error(_) | Reply::ErrorText(_) | Reply::Empty => break,
                other => return Err(protocol(format!("unexpected memory read reply {other}"))),
            };
            let n = data.len().min(asked);
            if let (Some(dst), Some(src)) = (buf.get_mut(done..done + n), data.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
            // A hex reply shorter than asked ends at unreadable memory.
            if n == 0 || (n < asked && hex) {
                break;
            }
        }
        Ok(done)
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        let chunk = self.read_chunk();
        let mut done = 0usize;
        for piece in data.chunks(chunk) {
            if !self.write_chunk(addr.saturating_add(done as u64), piece)? {
                break;
            }
            done += piece.len();
        }
        Ok(done)
    }

    fn prefetch(&mut self, ranges: &[(VirtAddr, usize)]) -> Result<(), TargetError> {
        if !self.pipelining() {
            return Ok(());
        }
        let max = self.transfer_chunk();
        let mut cache = std::mem::take(&mut self.cache);
        let r = cache.prefetch(ranges, max, |runs| super::read_fresh_each(self, runs));
        self.cache = cache;
        r
    }

    fn crc32_many(
        &mut self,
        ranges: &[(VirtAddr, usize)],
    ) -> Result<Option<Vec<Option<u32>>>, TargetError> {
        if !self.caps.crc {
            return Ok(None);
        }
        let cmds: Vec<Command<'static>> = ranges
            .iter()
            .map(|&(addr, len)| Command::Crc {
                addr: addr.get(),
                len: len as u64,
            })
            .collect();
        let replies = self.request_many(&cmds)?;
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            match r {
                Reply::Crc(c) => out.push(Some(c)),
                Reply::Empty => {
                    self.caps.crc = false;
                    return Ok(None);
                }
                Reply::Error(_) | Reply::ErrorText(_) => out.push(None),
                other => return Err(protocol(format!("unexpected qCRC reply {other}"))),
            }
        }
        Ok(Some(out))
    }

    fn read_fresh_many(
        &mut self,
        reads: &mut [(VirtAddr, &mut [u8])],
    ) -> Result<Vec<usize>, TargetError> {
        if reads.len() < 2 || !self.pipelining() {
            return reads
                .iter_mut()
                .map(|(addr, buf)| self.read_fresh(*addr, buf))
                .collect();
        }
        let binary = self.caps.binary_read;
        let plan = pieces_of(reads.iter().map(|(_, b)| b.len()), self.transfer_chunk());
        let cmds: Vec<Command<'static>> = plan
            .iter()
            .map(|&(i, off, want)| {
                let at = reads.get(i).map_or(0, |(a, _)| a.get());
                read_command(binary, at.saturating_add(off as u64), want)
            })
            .collect();
        self.run_pieces(reads.len(), &plan, &cmds, |t, i, off, want, reply| {
            let Some((addr, buf)) = reads.get_mut(i) else {
                return Ok(Piece::End);
            };
            let data = match reply {
                Reply::Binary(b) if binary && b.len() == want => b,
                Reply::Hex(h) if h.len() <= want => h,
                Reply::Error(_) | Reply::ErrorText(_) => return Ok(Piece::End),
                // Anything else (a short binary reply, `x` refused): this read goes on
                // one request at a time, with `read_fresh`'s own handling.
                _ => {
                    let rest = buf.get_mut(off..).unwrap_or_default();
                    return Ok(Piece::Rest(
                        t.read_fresh(addr.saturating_add(off as u64), rest)?,
                    ));
                }
            };
            let n = data.len().min(want);
            if let (Some(dst), Some(src)) = (buf.get_mut(off..off + n), data.get(..n)) {
                dst.copy_from_slice(src);
            }
            // A hex reply shorter than asked ends at unreadable memory.
            Ok(Piece::Took(n))
        })
    }

    fn write_many(&mut self, writes: &[(VirtAddr, &[u8])]) -> Result<Vec<usize>, TargetError> {
        if writes.len() < 2 || !self.pipelining() {
            return writes
                .iter()
                .map(|(addr, data)| self.write_memory(*addr, data))
                .collect();
        }
        let binary = self.caps.binary_write;
        let plan = pieces_of(writes.iter().map(|(_, d)| d.len()), self.read_chunk());
        let cmds: Vec<Command<'_>> = plan
            .iter()
            .map(|&(i, off, len)| {
                let (at, data) = writes.get(i).copied().unwrap_or((VirtAddr(0), &[]));
                let addr = at.get().saturating_add(off as u64);
                let piece = data.get(off..off + len).unwrap_or_default();
                if binary {
                    Command::WriteMemoryBinary { addr, data: piece }
                } else {
                    Command::WriteMemory {
                        addr,
                        data: HexBytes::raw(piece),
                    }
                }
            })
            .collect();
        self.run_pieces(writes.len(), &plan, &cmds, |t, i, off, len, reply| {
            if reply == Reply::Ok {
                return Ok(Piece::Took(len));
            }
            // Refused (or `X` unknown): the rest of this write one request at a time,
            // with `write_memory`'s own fall-backs.
            let Some(&(addr, data)) = writes.get(i) else {
                return Ok(Piece::End);
            };
            let rest = data.get(off..).unwrap_or_default();
            Ok(Piece::Rest(
                t.write_memory(addr.saturating_add(off as u64), rest)?,
            ))
        })
    }

    fn search_many(
        &mut self,
        ranges: &[(VirtAddr, VirtAddr, usize)],
        pattern: &[u8],
    ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
        if pattern.is_empty() || !(self.pipelining() && self.qsearch_fits(pattern)) {
            return ranges
                .iter()
                .map(|&(start, end, max)| self.search_memory(start, end, pattern, max))
                .collect();
        }
        // First every range whole, side by side, for its first hit: one request a range,
        // which is what a range without hits costs anyway (bytes matter on a serial
        // line). Then what follows a first hit is cut into pieces searched side by side:
        // as many more rounds as the piece with the most hits needs, not the range. A
        // piece reaches `pattern.len() - 1` bytes into the next, so a match across the
        // cut is found (in the piece it starts in: `qSearch` reports matches that fit in
        // its range).
        let firsts: Vec<(VirtAddr, VirtAddr, usize)> = ranges
            .iter()
            .map(|&(start, end, max)| (start, end, max.min(1)))
            .collect();
        let mut hits = self.search_pieces(&firsts, pattern)?;
        let rest: Vec<(usize, VirtAddr, VirtAddr)> = ranges
            .iter()
            .zip(&hits)
            .enumerate()
            .filter_map(|(r, (&(_, end, max), h))| {
                let first = h.first()?;
                (max > 1 && first.get() < end.get()).then(|| (r, first.saturating_add(1), end))
            })
            .collect();
        let total: u64 = rest
            .iter()
            .map(|(_, s, e)| e.get().saturating_sub(s.get()))
            .sum();
        let piece = SEARCH_PIECE.max(total / MAX_SEARCH_PIECES as u64 + 1);
        let overlap = pattern.len() as u64 - 1;
        let mut pieces: Vec<(VirtAddr, VirtAddr, usize)> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for &(r, start, end) in &rest {
            let max = ranges.get(r).map_or(0, |&(_, _, m)| m);
            let mut at = start.get();
            while at < end.get() {
                let cut = at.saturating_add(piece).min(end.get());
                let reach = cut.saturating_add(overlap).min(end.get());
                pieces.push((VirtAddr(at), VirtAddr(reach), max));
                owner.push(r);
                at = cut;
            }
        }
        let found = self.search_pieces(&pieces, pattern)?;
        for ((r, (start, _, _)), piece_hits) in owner.iter().zip(&pieces).zip(found) {
            let Some(h) = hits.get_mut(*r) else { continue };
            // Matches that start in this piece (the overlap's belong to the next).
            let cut = start.get().saturating_add(piece);
            h.extend(piece_hits.into_iter().filter(|a| a.get() < cut));
        }
        for (h, &(_, _, max)) in hits.iter_mut().zip(ranges) {
            h.truncate(max);
        }
        Ok(hits)
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        if let Some(k) = self.kernel {
            return Ok(k);
        }
        let nt = self.kernel_base()?;
        let nt_size = self.size_of_image(nt)?;
        let block = self.find_kdbg(nt, nt_size)?;
        let list = read_u64(self, block.saturating_add(kdbg::PS_LOADED_MODULE_LIST))?;
        let info = KernelInfo {
            kern_base: nt,
            ps_loaded_module_list: VirtAddr(list),
            kdbg: Some(block),
        };
        self.kernel = Some(info);
        Ok(info)
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        if let Some(m) = &self.modules {
            return Ok(m.clone());
        }
        let mods = match self.modules_from_library_list()? {
            Some(m) => m,
            None => {
                let k = self.kernel_info()?;
                walk_module_list(self, k.ps_loaded_module_list)?
            }
        };
        self.modules = Some(mods.clone());
        Ok(mods)
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        if pattern.is_empty() || end <= start || max_hits == 0 {
            return Ok(Vec::new());
        }
        if self.qsearch_fits(pattern)
            && let Some(hits) = self.search_with_qsearch(start, end, pattern, max_hits)?
        {
            return Ok(hits);
        }
        let chunk = self.transfer_chunk();
        let Some(regions) = self.memory_map()? else {
            return search_by_reading(self, start, end, pattern, max_hits, chunk);
        };
        // Read only what the map says is there: holes cost nothing, however large.
        let mut hits = Vec::new();
        for r in merge_adjacent(&regions) {
            let lo = start.get().max(r.start);
            let hi = end.get().min(r.start.saturating_add(r.length));
            if lo >= hi || hits.len() >= max_hits {
                continue;
            }
            let left = max_hits - hits.len();
            hits.extend(search_by_reading(
                self,
                VirtAddr(lo),
                VirtAddr(hi),
                pattern,
                left,
                chunk,
            )?);
        }
        Ok(hits)
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        // Modules may load and memory be mapped while the target runs.
        self.modules = None;
        self.regions = None;
        self.cache.clear();
        let stop = match how_long {
            RunFor::Ticks(n) if self.caps.run_limit => {
                // The run limit and the registers from before the run (to tell a lost
                // resume, see `resume_and_wait`) in one burst where the stub pipelines.
                let limit = Command::RunLimit(n.max(1));
                let (limit_reply, before) = if self.session.ack_mode() {
                    (self.request(&limit)?, None)
                } else {
                    let mut replies = self
                        .request_many(&[limit, Command::ReadRegisters])?
                        .into_iter();
                    let limit_reply = replies.next().unwrap_or(Reply::Empty);
                    let regs = match replies.next() {
                        Some(Reply::Hex(g)) => Some(g),
                        _ => None,
                    };
                    (limit_reply, Some(regs))
                };
                match limit_reply {
                    Reply::Ok => self.resume_and_wait_from(None, before)?,
                    other => return Err(protocol(format!("unexpected RunLimit reply {other}"))),
                }
            }
            RunFor::Ticks(n) => {
                let ms = n.saturating_mul(super::TICKS_PER_MS.max(1));
                self.resume_and_wait(Some(Instant::now() + Duration::from_millis(ms)))?
            }
            RunFor::Time(d) => self.resume_and_wait(Some(Instant::now() + d))?,
        };
        Ok(match stop {
            StopReply::Signal {
                reason: Some(StopKind::SwBreak),
                registers,
                ..
            } => {
                // Ours, or the target's own `int 3` (a `PoolHitTag` check). `rip` comes
                // with the stop reply when the stub expedites it.
                let rip = match registers {
                    Some(r) => r.rip,
                    None => self.rip()?,
                };
                if self.breakpoints.contains(&rip) {
                    StopReason::Breakpoint(VirtAddr(rip))
                } else {
                    StopReason::BreakInstruction(VirtAddr(rip))
                }
            }
            StopReply::Signal {
                reason: Some(StopKind::HwBreak),
                registers,
                ..
            } => StopReason::Breakpoint(VirtAddr(match registers {
                Some(r) => r.rip,
                None => self.rip()?,
            })),
            StopReply::Signal {
                signal: tagsplit_protocol::gdb::SIGINT,
                ..
            } => StopReason::BreakIn,
            StopReply::Signal { signal, .. } => {
                StopReason::Other(format!("stopped with signal {signal}"))
            }
            StopReply::Exited(code) => {
                StopReason::Other(format!("target exited with status {code}"))
            }
            StopReply::Terminated(sig) => {
                StopReason::Other(format!("target terminated by signal {sig}"))
            }
        })
    }

    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    /// One `g`: the x86-64 `g` block (gdb's `org.gnu.gdb.i386.core` order: `rax rbx rcx
    /// rdx rsi rdi rbp rsp r8`..`r15 rip` as 8 bytes each, then `eflags cs ss ds es fs
    /// gs` as 4 bytes each, then x87/SSE state, which is ignored). A block too short to
    /// hold the segment selectors is a protocol error.
    fn cpu_mode(&mut self) -> Result<CpuMode, TargetError> {
        if let Some(m) = self.mode {
            return Ok(m);
        }
        let regs = self.described_registers()?;
        let num = |name: &str| regs.iter().find(|(n, _)| n == name).map(|(_, r)| *r);
        let mode = match num("cr0") {
            // No control registers described (our stub, gdbserver): x64, as documented.
            None => CpuMode::Long64,
            Some(cr0) if self.register_value(cr0)? & CR0_PE == 0 => CpuMode::Real16,
            Some(_) => match num("efer") {
                Some(efer) if self.register_value(efer)? & EFER_LMA != 0 => CpuMode::Long64,
                Some(_) => CpuMode::Protected32,
                None => CpuMode::Long64,
            },
        };
        self.mode = Some(mode);
        Ok(mode)
    }

    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        match self.request(&Command::ReadRegisters)? {
            Reply::Hex(g) if g.len() >= G_INTEGER_BYTES => {
                let mut regs = X64Registers::default();
                tagsplit_protocol::gdb::stub::registers_from_g(&mut regs, &g);
                Ok(regs)
            }
            Reply::Hex(g) => Err(protocol(format!(
                "'g' reply of {} bytes, fewer than the {G_INTEGER_BYTES} of x86-64's integer registers",
                g.len()
            ))),
            other => Err(protocol(format!("unexpected 'g' reply {other}"))),
        }
    }

    /// `Z0,ADDR,1`; a stub without breakpoints answers empty: unsupported.
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.software_breakpoint(addr, true)
    }

    /// `z0,ADDR,1`.
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.software_breakpoint(addr, false)
    }

    fn max_read(&self) -> usize {
        self.transfer_chunk()
    }

    fn stats(&self) -> Option<WireStats> {
        let s = self.session.stats();
        Some(WireStats {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            round_trips: self.session.round_trips(),
            // NAKed packets sent again, and requests and runs recovered.
            retransmissions: s.retransmissions + self.nudges,
        })
    }

    fn default_run(&self) -> RunFor {
        match self.caps.default_run {
            Some(ticks) => RunFor::Ticks(ticks),
            None => RunFor::Time(Duration::from_secs(1)),
        }
    }
}

impl GdbTarget {
    /// [`DebugTarget::search_many`] of `ranges`, pipelined: one `qSearch` per range still
    /// searching, each round.
    fn search_pieces(
        &mut self,
        ranges: &[(VirtAddr, VirtAddr, usize)],
        pattern: &[u8],
    ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
        let mut hits: Vec<Vec<VirtAddr>> = vec![Vec::new(); ranges.len()];
        // Where each range's next search starts; ranges still searching.
        let mut at: Vec<u64> = ranges.iter().map(|(s, _, _)| s.get()).collect();
        let mut live: Vec<usize> = (0..ranges.len())
            .filter(|&i| ranges.get(i).is_some_and(|&(s, e, m)| s < e && m > 0))
            .collect();
        while !live.is_empty() {
            if !(self.pipelining() && self.qsearch_fits(pattern)) {
                for &i in &live {
                    if let (Some(&(_, end, max)), Some(&from), Some(h)) =
                        (ranges.get(i), at.get(i), hits.get_mut(i))
                    {
                        let left = max.saturating_sub(h.len());
                        h.extend(self.search_memory(VirtAddr(from), end, pattern, left)?);
                    }
                }
                break;
            }
            let cmds: Vec<Command<'_>> = live
                .iter()
                .filter_map(|&i| {
                    let (_, end, _) = ranges.get(i)?;
                    let from = *at.get(i)?;
                    Some(Command::SearchMemory {
                        addr: from,
                        len: end.get().saturating_sub(from),
                        pattern,
                    })
                })
                .collect();
            let replies = self.request_many(&cmds)?;
            if replies.contains(&Reply::Empty) {
                // No `qSearch` after all: the loop above searches what is left.
                self.caps.search = false;
                continue;
            }
            let mut next = Vec::with_capacity(live.len());
            for (&i, reply) in live.iter().zip(replies) {
                let (Some(&(_, end, max)), Some(from), Some(h)) =
                    (ranges.get(i), at.get_mut(i), hits.get_mut(i))
                else {
                    continue;
                };
                match reply {
                    Reply::SearchResult(Some(hit)) if hit >= *from && hit < end.get() => {
                        h.push(VirtAddr(hit));
                        *from = hit + 1;
                        if h.len() < max && *from < end.get() {
                            next.push(i);
                        }
                    }
                    Reply::SearchResult(_) => {}
                    other => return Err(protocol(format!("unexpected qSearch reply {other}"))),
                }
            }
            live = next;
        }
        Ok(hits)
    }
}

impl GdbTarget {
    /// Sends `cmds` (one per piece of `plan`: item, offset, length) pipelined and hands
    /// each reply to `take`, in order, for the pieces of an item still going on: how
    /// many bytes of each of the `items` were done.
    fn run_pieces(
        &mut self,
        items: usize,
        plan: &[(usize, usize, usize)],
        cmds: &[Command<'_>],
        mut take: impl FnMut(&mut Self, usize, usize, usize, Reply) -> Result<Piece, TargetError>,
    ) -> Result<Vec<usize>, TargetError> {
        let replies = self.request_many(cmds)?;
        let mut done = vec![0usize; items];
        let mut open = vec![true; items];
        for (&(i, off, len), reply) in plan.iter().zip(replies) {
            if !open.get(i).copied().unwrap_or(false) || done.get(i) != Some(&off) {
                continue;
            }
            let (n, goes_on) = match take(self, i, off, len, reply)? {
                Piece::Took(n) => (n, n == len),
                Piece::End => (0, false),
                Piece::Rest(n) => (n, false),
            };
            if let (Some(d), Some(o)) = (done.get_mut(i), open.get_mut(i)) {
                *d = off + n;
                *o = goes_on;
            }
        }
        Ok(done)
    }
}

/// What one pipelined piece of a batched read or write came to.
enum Piece {
    /// This many bytes of the piece (fewer than its length end the item).
    Took(usize),
    /// Nothing more of this item.
    End,
    /// The rest of the item was done one request at a time: this many bytes from the
    /// piece's offset on.
    Rest(usize),
}

/// The pieces (item, offset, length) of items of `lens` bytes, at most `chunk` each.
fn pieces_of(lens: impl Iterator<Item = usize>, chunk: usize) -> Vec<(usize, usize, usize)> {
    let chunk = chunk.max(1);
    lens.enumerate()
        .flat_map(|(i, len)| {
            (0..len)
                .step_by(chunk)
                .map(move |off| (i, off, chunk.min(len - off)))
        })
        .collect()
}

impl Drop for GdbTarget {
    fn drop(&mut self) {
        // Best effort: detach so the stub is ready for the next client at once.
        self.options.timeout = Duration::from_millis(500);
        if !self.detached && !self.session.awaiting_reply() {
            let _ = self.request(&Command::Detach(None));
        }
        if let Some(log) = &self.log {
            log.finish();
        }
    }
}

#[cfg(feature = "sim")]
/// A `monitor` handler for the simulator's GDB stub: runs each line on a WinDbg-style
/// [`Console`](crate::console::Console) over the stub's machine (`monitor !poolused 2`,
/// `monitor dc ADDR l1`, `monitor lm`).
pub fn console_monitor(default_ticks: u64) -> MonitorHandler {
    let mut console = crate::console::Console::new();
    Box::new(move |machine: &mut Machine, line: &str| {
        let mut target = MachineRef::new(machine, default_ticks);
        console.execute(&mut target, line)
    })
}

#[cfg(feature = "sim")]
/// Boots `scenario` and serves it over GDB RSP at `addr` (use `127.0.0.1:0` for an
/// ephemeral port), with the console as `monitor` and the scenario's default run offered.
pub fn serve_scenario(
    scenario: &Scenario,
    addr: std::net::SocketAddr,
    stop_after_ticks: Option<u64>,
    features: StubFeatures,
) -> Result<GdbStubHandle, TargetError> {
    serve_scenario_logged(scenario, addr, stop_after_ticks, features, None)
}

#[cfg(feature = "sim")]
/// [`serve_scenario`], logging every client's session to `packet_log` in gdb's
/// `set remotelogfile` format, from the client's point of view (`w` is what the client
/// sent): see [`GdbStubOptions::packet_log`].
pub fn serve_scenario_logged(
    scenario: &Scenario,
    addr: std::net::SocketAddr,
    stop_after_ticks: Option<u64>,
    features: StubFeatures,
    packet_log: Option<Box<dyn std::io::Write + Send>>,
) -> Result<GdbStubHandle, TargetError> {
    let machine = Machine::boot(scenario)
        .map_err(|e| TargetError::BadKernelData(format!("simulator failed to boot: {e}")))?;
    let options = GdbStubOptions {
        features,
        stop_after_ticks,
        monitor: Some(console_monitor(scenario.default_run_ticks())),
        default_run_ticks: Some(scenario.default_run_ticks()),
        packet_log,
        ..GdbStubOptions::default()
    };
    Ok(GdbStub::spawn_at(addr, machine, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_takes_ack_mode_as_an_option() {
        let (addr, o) = parse_spec("127.0.0.1:1234").unwrap();
        assert_eq!((addr, o.no_ack), ("127.0.0.1:1234", true));
        let (addr, o) = parse_spec("127.0.0.1:1234?ack").unwrap();
        assert_eq!((addr, o.no_ack), ("127.0.0.1:1234", false));
        assert!(
            parse_spec("h:1?fast")
                .unwrap_err()
                .contains("unknown option 'fast'")
        );
        assert!(parse_spec("?ack").is_err());
    }

    #[test]
    fn merges_touching_and_overlapping_regions() {
        let r = |start, length| MemoryRegion { start, length };
        let merged = merge_adjacent(&[
            r(0x3000, 0x1000),
            r(0x1000, 0x1000),
            r(0x2000, 0x1000),
            r(0x8000, 0x10),
        ]);
        assert_eq!(merged, vec![r(0x1000, 0x3000), r(0x8000, 0x10)]);
        assert_eq!(
            merge_adjacent(&[r(0, 0x100), r(0x80, 0x10)]),
            vec![r(0, 0x100)]
        );
    }
}
