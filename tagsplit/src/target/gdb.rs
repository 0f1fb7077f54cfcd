//! The GDB remote-protocol backend: [`GdbTarget`] talks RSP to a stub over TCP.
//!
//! Blocking by design: a `std::net::TcpStream` with read timeouts drives a sans-IO
//! [`ClientSession`]; every request is one round trip (no pipelining), which keeps the
//! backend simple and makes [`WireStats::round_trips`] an exact count.
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
use tagsplit_protocol::gdb::xml::{self, MemoryRegion, REG_RIP};
use tagsplit_protocol::gdb::{
    Breakpoint, BreakpointType, ClientEvent, ClientSession, Command, FeatureValue, Features,
    HexBytes, Reply, ResumeAction, ResumeActions, ResumeKind, SessionConfig, StopKind, StopReply,
    XferObject,
};
use tagsplit_protocol::nt::layout::{PAGE_SIZE, kdbg};
use tagsplit_protocol::nt::pe::{dos, nt_headers, optional_header};
#[cfg(feature = "sim")]
use tagsplit_target_sim::machine::Machine;
#[cfg(feature = "sim")]
use tagsplit_target_sim::scenario::Scenario;
#[cfg(feature = "sim")]
use tagsplit_target_sim::server::gdb::{
    GdbStub, GdbStubHandle, GdbStubOptions, MonitorHandler, StubFeatures,
};

#[cfg(feature = "sim")]
use super::sim::MachineRef;
use super::{
    BoxedTarget, DebugTarget, Interrupt, KernelInfo, ModuleInfo, OpenError, RunFor, StopReason,
    TargetError, WireStats, read_u32, read_u64, search_by_reading, walk_module_list,
};
use crate::VirtAddr;

/// How far below `rip` the `MZ` of `nt` is looked for when no library list is offered.
const MAX_KERNEL_SCAN: u64 = 64 << 20;
/// Per-request overhead kept free in a packet (`$`, op, address, `#cs`).
const PACKET_OVERHEAD: usize = 32;

/// Connection settings.
#[derive(Clone, Copy, Debug)]
pub struct GdbOptions {
    /// How long one reply may take (runs wait for their length plus this).
    pub timeout: Duration,
    /// Whether to ask for no-ack mode when the stub offers it. Keep ack mode (`false`) on a
    /// link that may corrupt or lose bytes (a serial line, a lossy relay): damaged packets
    /// are then sent again, and late replies asked for again.
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

/// Commands that may be sent twice: they read, or write the same bytes again.
fn idempotent(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::ReadMemory { .. }
            | Command::ReadMemoryBinary { .. }
            | Command::WriteMemory { .. }
            | Command::WriteMemoryBinary { .. }
            | Command::SearchMemory { .. }
            | Command::ReadRegisters
            | Command::ReadRegister(_)
            | Command::XferRead { .. }
            | Command::HaltReason
            | Command::QSupported(_)
    )
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
    /// `x` binary reads (`binary-upload+`): about twice the data per round trip of `m`.
    pub binary_read: bool,
    /// `QTagsplit.RunLimit`.
    pub run_limit: bool,
    /// `QTagsplit.DefaultRun`.
    pub default_run: Option<u64>,
}

/// A [`DebugTarget`] over a GDB stub.
pub struct GdbTarget {
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

/// Opens `gdb://HOST:PORT` (the part after the scheme).
pub(crate) fn open(rest: &str) -> Result<BoxedTarget, OpenError> {
    let addr = rest.trim_end_matches('/');
    if addr.is_empty() {
        return Err(OpenError::Bad {
            spec: format!("gdb://{rest}"),
            reason: "expected gdb://HOST:PORT".into(),
        });
    }
    Ok(Box::new(GdbTarget::connect(addr)?))
}

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
        };
        t.handshake()?;
        Ok(t)
    }

    fn handshake(&mut self) -> Result<(), TargetError> {
        let ours = Features::new(b"swbreak+;hwbreak+;vContSupported+;xmlRegisters=i386");
        let features = match self.request(&Command::QSupported(ours))? {
            Reply::Supported(f) => f,
            Reply::ErrorText(e) => return Err(protocol(format!("stub refused: {e}"))),
            other => return Err(protocol(format!("unexpected qSupported reply {other:?}"))),
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
            binary_read: has("binary-upload"),
            run_limit: has(RUN_LIMIT_FEATURE),
            default_run: value(DEFAULT_RUN_FEATURE),
        };
        if self.options.no_ack && has("QStartNoAckMode") {
            self.request(&Command::StartNoAckMode)?;
        }
        // Learn the stop state like gdb does (and check the stub is sane).
        match self.request(&Command::HaltReason)? {
            Reply::Stop(_) => Ok(()),
            other => Err(protocol(format!("unexpected reply to '?': {other:?}"))),
        }
    }

    /// What the stub offered.
    pub fn caps(&self) -> StubCaps {
        self.caps
    }

    fn write_out(&mut self) -> Result<(), TargetError> {
        if let Some(bytes) = self.session.poll_transmit() {
            self.stream.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Waits for the reply to the outstanding command until `deadline`.
    fn wait_reply(&mut self, deadline: Instant) -> Result<Reply, TargetError> {
        loop {
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    ClientEvent::Reply(r) => {
                        self.write_out()?;
                        return Ok(r);
                    }
                    ClientEvent::Output(text) => self.output.extend_from_slice(&text),
                    ClientEvent::BadReply(e) => return Err(protocol(e.to_string())),
                    ClientEvent::GaveUp => {
                        return Err(protocol("the stub keeps rejecting our packets"));
                    }
                    _ => {}
                }
            }
            self.write_out()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TargetError::Timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(TargetError::Disconnected),
                Ok(n) => {
                    let bytes = self.buf.get(..n).unwrap_or_default().to_vec();
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
                    return Err(TargetError::Timeout);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one command and waits for its reply (console output is collected).
    ///
    /// In ack mode (a link that may corrupt, see [`GdbOptions::no_ack`]) a reply that is
    /// [`REPLY_NUDGE`] late to an idempotent command is asked for again with a `-` (the
    /// stub re-sends a reply it has not seen acknowledged, and a `$` resyncs framing
    /// after a lost byte); if it is still late the command itself is sent again (it may
    /// have lost a byte on the way). The request fails after `timeout` in all.
    pub fn request(&mut self, cmd: &Command) -> Result<Reply, TargetError> {
        self.output.clear();
        self.session.send(cmd);
        self.write_out()?;
        let deadline = Instant::now() + self.options.timeout;
        if !self.session.ack_mode() || !idempotent(cmd) {
            return self.wait_reply(deadline);
        }
        let mut nudges = 0u32;
        loop {
            let step = (Instant::now() + REPLY_NUDGE).min(deadline);
            match self.wait_reply(step) {
                Err(TargetError::Timeout) if Instant::now() < deadline => {
                    nudges += 1;
                    self.nudges += 1;
                    if nudges % 2 == 1 {
                        tracing::debug!("gdb: reply late, asking for it again");
                        self.stream.write_all(b"-")?;
                    } else {
                        tracing::debug!("gdb: reply still late, sending the command again");
                        self.session.send(cmd);
                        self.write_out()?;
                    }
                }
                other => return other,
            }
        }
    }

    /// How many times a late reply was asked for again or its command re-sent.
    pub fn nudges(&self) -> u64 {
        self.nudges
    }

    /// Runs a `monitor` command and returns its output.
    pub fn monitor(&mut self, line: &str) -> Result<String, TargetError> {
        match self.request(&Command::Monitor(HexBytes::raw(line.as_bytes())))? {
            Reply::Ok | Reply::Empty => Ok(String::from_utf8_lossy(&self.output).into_owned()),
            Reply::ErrorText(e) => Err(protocol(e)),
            other => Err(protocol(format!("unexpected monitor reply {other:?}"))),
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
                other => return Err(protocol(format!("unexpected 'g' reply {other:?}"))),
            },
        };
        let arr: [u8; 8] = bytes.try_into().map_err(|_| protocol("short rip"))?;
        Ok(u64::from_le_bytes(arr))
    }

    /// `SizeOfImage` from the PE header at `base`.
    fn size_of_image(&mut self, base: VirtAddr) -> Result<u64, TargetError> {
        let lfanew = u64::from(read_u32(self, base.saturating_add(dos::E_LFANEW))?);
        if lfanew > 0x1000 {
            return Err(TargetError::BadKernelData(format!(
                "no PE header at {base}"
            )));
        }
        let at = lfanew + nt_headers::OPTIONAL_HEADER + optional_header::SIZE_OF_IMAGE;
        Ok(u64::from(read_u32(self, base.saturating_add(at))?))
    }

    /// Reads a whole `qXfer` object; `None` if the stub does not offer it.
    fn xfer_read(&mut self, object: XferObject<'_>) -> Result<Option<Vec<u8>>, TargetError> {
        let mut doc = Vec::new();
        loop {
            let cmd = Command::XferRead {
                object,
                annex: b"",
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
        let mut out = Vec::with_capacity(libs.len());
        for lib in libs {
            let base = VirtAddr(lib.address);
            let size = self.size_of_image(base)?;
            let name = lib
                .name
                .rsplit(['\\', '/'])
                .next()
                .unwrap_or(&lib.name)
                .to_owned();
            out.push(ModuleInfo {
                name,
                path: lib.name,
                base,
                size,
            });
        }
        Ok(Some(out))
    }

    /// Finds `nt`: the first module, or the `MZ` page at or below `rip`.
    fn kernel_base(&mut self) -> Result<VirtAddr, TargetError> {
        if let Some(mods) = self.modules_from_library_list()?
            && let Some(base) = mods.first().map(|nt| nt.base)
        {
            self.modules = Some(mods);
            return Ok(base);
        }
        let rip = self.rip()?;
        let mut page = rip & !(PAGE_SIZE - 1);
        let floor = page.saturating_sub(MAX_KERNEL_SCAN);
        while page >= floor && page > 0 {
            let mut mz = [0u8; 2];
            if self.read_memory(VirtAddr(page), &mut mz)? == 2
                && mz == *b"MZ"
                && self.size_of_image(VirtAddr(page)).is_ok()
            {
                return Ok(VirtAddr(page));
            }
            page -= PAGE_SIZE;
        }
        Err(TargetError::BadKernelData(format!(
            "no kernel image below rip {rip:#x}"
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
                other => return Err(protocol(format!("unexpected qSearch reply {other:?}"))),
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
                _ => return Ok(false),
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
            Reply::Ok => Ok(()),
            Reply::Empty => Err(TargetError::Unsupported("breakpoints")),
            other => Err(protocol(format!(
                "breakpoint at {addr}: unexpected reply {other:?}"
            ))),
        }
    }

    /// Resumes and waits for the stop reply; sends an interrupt at `interrupt_at`, or as
    /// soon as the [`Interrupt`] is triggered (its waker writes the interrupt byte on a
    /// clone of the socket; the result is then [`TargetError::Interrupted`] once the
    /// target has stopped). Nothing polls: the read blocks until a reply or a deadline.
    fn resume_and_wait(&mut self, interrupt_at: Option<Instant>) -> Result<StopReply, TargetError> {
        self.output.clear();
        self.session
            .send(&Command::VCont(ResumeActions::list(&[ResumeAction {
                kind: ResumeKind::Continue,
                thread: None,
            }])));
        self.write_out()?;
        // At most one interrupt byte, from whichever comes first.
        let sent = Arc::new(AtomicBool::new(false));
        let _waker = match (&self.interrupt, self.stream.try_clone()) {
            (Some(interrupt), Ok(clone)) => {
                let sent = sent.clone();
                Some(interrupt.on_trigger(move || {
                    if !sent.swap(true, Ordering::SeqCst) {
                        let _ = (&clone).write_all(&[INTERRUPT_BYTE]);
                    }
                }))
            }
            _ => None,
        };
        // A run bounded by the stub (or by our interrupt): allow generously for it.
        let patience = self.options.timeout.saturating_mul(6);
        let mut deadline = Instant::now() + patience;
        let mut user_grace = false;
        loop {
            let now = Instant::now();
            let due = interrupt_at.filter(|_| !sent.load(Ordering::SeqCst));
            if due.is_some_and(|at| now >= at) {
                if !sent.swap(true, Ordering::SeqCst) {
                    self.session.send_interrupt();
                    self.write_out()?;
                }
                deadline = now + patience;
            }
            let until = due
                .filter(|at| *at > now)
                .map_or(deadline, |at| at.min(deadline));
            match self.wait_reply(until) {
                Ok(Reply::Stop(s)) if super::interrupted(self.interrupt.as_ref()) => {
                    tracing::debug!("broke in on request: {s:?}");
                    return Err(TargetError::Interrupted);
                }
                Ok(Reply::Stop(s)) => return Ok(s),
                Ok(other) => return Err(protocol(format!("unexpected resume reply {other:?}"))),
                Err(TargetError::Timeout) if Instant::now() < deadline => {}
                // The interrupt went out (from the waker) after this wait began: give the
                // stop reply its full time from now, once.
                Err(TargetError::Timeout)
                    if !user_grace && super::interrupted(self.interrupt.as_ref()) =>
                {
                    user_grace = true;
                    deadline = Instant::now() + patience;
                }
                Err(e) => return Err(e),
            }
        }
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
        let mut done = 0usize;
        while done < buf.len() {
            let binary = self.caps.binary_read;
            let chunk = self.transfer_chunk();
            let want = (buf.len() - done).min(chunk);
            let at = addr.saturating_add(done as u64).get();
            let cmd = if binary {
                Command::ReadMemoryBinary {
                    addr: at,
                    len: want as u64,
                }
            } else {
                Command::ReadMemory {
                    addr: at,
                    len: want as u64,
                }
            };
            let data = match self.request(&cmd)? {
                Reply::Hex(d) | Reply::Binary(d) => d,
                Reply::Empty if binary => {
                    self.caps.binary_read = false;
                    continue;
                }
                Reply::Error(_) | Reply::ErrorText(_) | Reply::Empty => break,
                other => return Err(protocol(format!("unexpected memory read reply {other:?}"))),
            };
            let n = data.len().min(want);
            if let (Some(dst), Some(src)) = (buf.get_mut(done..done + n), data.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
            if n == 0 || (n < want && !binary) {
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
        if self.caps.search
            && pattern.len() < self.caps.packet_size / 2
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
        let stop = match how_long {
            RunFor::Ticks(n) if self.caps.run_limit => {
                match self.request(&Command::RunLimit(n.max(1)))? {
                    Reply::Ok => self.resume_and_wait(None)?,
                    other => return Err(protocol(format!("unexpected RunLimit reply {other:?}"))),
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
                reason: Some(StopKind::SwBreak | StopKind::HwBreak),
                ..
            } => StopReason::Breakpoint(VirtAddr(self.rip()?)),
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

    /// `Z0,ADDR,1`; a stub without breakpoints answers empty: unsupported.
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.software_breakpoint(addr, true)
    }

    /// `z0,ADDR,1`.
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.software_breakpoint(addr, false)
    }

    fn stats(&self) -> Option<WireStats> {
        let s = self.session.stats();
        Some(WireStats {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            round_trips: self.session.round_trips(),
            retransmissions: s.retransmissions,
        })
    }

    fn default_run(&self) -> RunFor {
        match self.caps.default_run {
            Some(ticks) => RunFor::Ticks(ticks),
            None => RunFor::Time(Duration::from_secs(1)),
        }
    }
}

impl Drop for GdbTarget {
    fn drop(&mut self) {
        // Best effort: detach so the stub is ready for the next client at once.
        self.options.timeout = Duration::from_millis(500);
        if !self.detached && !self.session.awaiting_reply() {
            let _ = self.request(&Command::Detach(None));
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
    let machine = Machine::boot(scenario)
        .map_err(|e| TargetError::BadKernelData(format!("simulator failed to boot: {e}")))?;
    let options = GdbStubOptions {
        features,
        stop_after_ticks,
        monitor: Some(console_monitor(scenario.default_run_ticks())),
        default_run_ticks: Some(scenario.default_run_ticks()),
        ..GdbStubOptions::default()
    };
    Ok(GdbStub::spawn_at(addr, machine, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
