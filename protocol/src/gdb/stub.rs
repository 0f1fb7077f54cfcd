//! A GDB stub over any [`Target`]: bytes in, bytes out.
//!
//! [`Stub`] owns a [`ServerSession`] and answers every command from what the target
//! supports: `qSupported` lists only the capabilities the target opts into (and the
//! packets this configuration allows), `qXfer` serves the target description, the library
//! list and the memory map in windows that fit the packet size, `m`/`x` replies are
//! clamped to the packet size (the escaped size for binary replies), `g`/`G`/`p`/`P` use
//! the 536-byte x86-64 layout of [`xml::target_description_x86_64`], and resumes go
//! through the target's run control. A target with [`FileOps`](crate::stub::FileOps)
//! gets gdb's host I/O (`vFile:`, read-only, descriptors kept here, each `pread` cut to a
//! packet) and `qXfer:exec-file`; the library list names each library as gdb fetches it
//! ([`xml::gdb_library_name`]) at its first section. Anything the target lacks gets the
//! empty reply ("unsupported"); a known packet with malformed arguments gets an `E` reply.
//!
//! The stub does no I/O: a transport feeds it what it reads
//! ([`receive`](Stub::receive)), lets a running target progress
//! ([`poll_run`](Stub::poll_run), which says how long the transport may block reading),
//! and writes what [`poll_transmit`](Stub::poll_transmit) returns. One `Stub` serves one
//! client connection; [`disconnect`](Stub::disconnect) removes the breakpoints it set.
//!
//! ```
//! use tagsplit_protocol::gdb::frame;
//! use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
//! use tagsplit_protocol::stub::{Resume, RunState, StopReason, Target, TargetError, X64Registers};
//!
//! struct Rom(Vec<u8>);
//! impl Target for Rom {
//!     fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
//!         let src = usize::try_from(addr).ok().and_then(|a| self.0.get(a..));
//!         let src = src.filter(|s| !s.is_empty()).ok_or(TargetError::Fault)?;
//!         let n = src.len().min(buf.len());
//!         buf[..n].copy_from_slice(&src[..n]);
//!         Ok(n)
//!     }
//!     fn write_memory(&mut self, _: u64, _: &[u8]) -> Result<(), TargetError> {
//!         Err(TargetError::Fault)
//!     }
//!     fn registers(&mut self) -> Result<X64Registers, TargetError> {
//!         Ok(X64Registers::default())
//!     }
//!     fn write_registers(&mut self, _: &X64Registers) -> Result<(), TargetError> {
//!         Err(TargetError::Unsupported)
//!     }
//!     fn resume(&mut self, _: Resume) -> Result<(), TargetError> {
//!         Err(TargetError::CannotRun)
//!     }
//!     fn poll_run(&mut self) -> RunState {
//!         RunState::Stopped(StopReason::Trap)
//!     }
//!     fn interrupt(&mut self) {}
//! }
//!
//! let mut rom = Rom(b"hello".to_vec());
//! let mut stub = Stub::new(StubConfig::default());
//! let wire = frame::encode_packet(b"m1,4", false);
//! // The stub says how much it took; here there is room for all of it.
//! assert_eq!(stub.receive(&mut rom, &wire), wire.len());
//! assert_eq!(stub.poll_transmit().unwrap(), b"+$656c6c6f#39");
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::command::{DEFAULT_RUN_FEATURE, RUN_LIMIT_FEATURE, host_io};
use super::frame;
use super::session;
use super::xml;
use super::{
    BreakpointType, Command, CommandPacket, Expedited, Feature, HexBytes, HostIo, HostIoReply,
    Reply, ResumeKind, SIGINT, SIGTRAP, ServerEvent, ServerSession, SessionConfig, StopKind,
    StopReply, ThreadId, XferObject,
};
use crate::stub::{
    BreakpointKind, FileError, FileInfo, Resume, RunState, StopReason, Target, TargetError,
    X64Registers,
};

/// The errno-style code for a memory fault (`EFAULT`).
pub const E_FAULT: u8 = 0x0e;
/// The longest range one `qCRC` covers (1 GiB): longer ones are refused with `E16`.
pub const MAX_CRC_LEN: u64 = 1 << 30;
/// Bytes `qCRC` reads from the target at a time.
const CRC_PIECE: usize = 4096;
/// The code for a malformed request or an argument the target refuses (`EINVAL`).
pub const E_INVAL: u8 = 0x16;
/// The text of the error a target that cannot run answers to a resume.
pub const CANNOT_RUN: &str = "this target cannot run";
/// The only thread a stub reports.
const THREAD: u64 = 1;
/// The default [`StubConfig::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Files one client may hold open through host I/O (`vFile:open`); one more is refused
/// with `EMFILE`.
pub const MAX_OPEN_FILES: usize = 32;
/// Bytes of a host I/O reply besides its data: `F`, the count in hex and the `;`.
const HOST_IO_HEAD: usize = 24;

/// Protocol choices of a stub (what the target supports is asked of the target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubConfig {
    /// The `PacketSize` advertised; also bounds every reply and the receive buffer.
    pub packet_size: usize,
    /// Offer `QStartNoAckMode`.
    pub no_ack: bool,
    /// Answer `x` binary reads (`binary-upload`).
    pub binary_read: bool,
    /// Answer `X` binary writes (otherwise empty, so clients fall back to `M`).
    pub binary_write: bool,
    /// Commands held unanswered: those that arrive while the target runs (gdb sends none
    /// in all-stop mode) or while the transmit queue is full. At the bound the stub stops
    /// consuming input ([`Stub::receive`] returns less than it was given); no command is
    /// dropped.
    pub max_pending: usize,
    /// Bytes of replies queued for the client before the stub stops answering (and then
    /// stops consuming input) until the transport takes them with
    /// [`Stub::poll_transmit`]. The queue passes it by at most one reply.
    pub max_transmit: usize,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            packet_size: 0x4000,
            no_ack: true,
            binary_read: true,
            binary_write: true,
            max_pending: DEFAULT_MAX_PENDING,
            max_transmit: session::DEFAULT_MAX_TRANSMIT,
        }
    }
}

/// The 536-byte `g` block for `regs` (x87 and SSE state at their reset values).
pub fn registers_to_g(regs: &X64Registers) -> Vec<u8> {
    let mut g = Vec::with_capacity(xml::G_PACKET_LEN);
    registers_to_g_into(regs, &mut g);
    g
}

/// Appends the `g` block of `regs` to `g` (see [`registers_to_g`]).
pub fn registers_to_g_into(regs: &X64Registers, g: &mut Vec<u8>) {
    for r in [
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15, regs.rip,
    ] {
        g.extend_from_slice(&r.to_le_bytes());
    }
    g.extend_from_slice(&(regs.rflags as u32).to_le_bytes());
    for s in [regs.cs, regs.ss, regs.ds, regs.es, regs.fs, regs.gs] {
        g.extend_from_slice(&u32::from(s).to_le_bytes());
    }
    g.extend_from_slice(&[0u8; 80]); // st0-st7
    g.extend_from_slice(&0x37fu32.to_le_bytes()); // fctrl
    g.extend_from_slice(&[0u8; 28]); // fstat .. fop
    g.extend_from_slice(&[0u8; 256]); // xmm0-xmm15
    g.extend_from_slice(&0x1f80u32.to_le_bytes()); // mxcsr
}

/// Applies a `g` block to `regs` (the integer registers; x87/SSE are ignored). Fields
/// beyond the end of a short block keep their value.
pub fn registers_from_g(regs: &mut X64Registers, g: &[u8]) {
    let u64_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            g.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(g.get(o..o + 4)?.try_into().ok()?)) };
    let wide: [&mut u64; 17] = [
        &mut regs.rax,
        &mut regs.rbx,
        &mut regs.rcx,
        &mut regs.rdx,
        &mut regs.rsi,
        &mut regs.rdi,
        &mut regs.rbp,
        &mut regs.rsp,
        &mut regs.r8,
        &mut regs.r9,
        &mut regs.r10,
        &mut regs.r11,
        &mut regs.r12,
        &mut regs.r13,
        &mut regs.r14,
        &mut regs.r15,
        &mut regs.rip,
    ];
    for (i, r) in wide.into_iter().enumerate() {
        if let Some(v) = u64_at(i) {
            *r = v;
        }
    }
    if let Some(v) = u32_at(136) {
        regs.rflags = u64::from(v);
    }
    let segs: [&mut u16; 6] = [
        &mut regs.cs,
        &mut regs.ss,
        &mut regs.ds,
        &mut regs.es,
        &mut regs.fs,
        &mut regs.gs,
    ];
    for (i, s) in segs.into_iter().enumerate() {
        if let Some(v) = u32_at(140 + 4 * i) {
            *s = v as u16;
        }
    }
}

/// What the stub does after a command.
enum Action {
    /// Stay stopped (replies were queued).
    Stay,
    /// The target runs; the stop reply comes from [`Stub::poll_run`].
    Run,
    /// The client leaves: close after the queued bytes are written.
    Close,
}

/// The GDB stub state machine for one client. See the [module docs](self).
#[derive(Debug)]
pub struct Stub {
    config: StubConfig,
    session: ServerSession,
    /// Commands received while the target ran (all-stop: handled once it stops).
    pending: VecDeque<CommandPacket>,
    /// Reused for memory and register replies.
    scratch: Vec<u8>,
    /// Breakpoints the client inserted, by address.
    breakpoints: BTreeMap<u64, BreakpointKind>,
    /// Why the target last stopped (the answer to `?`).
    last_stop: StopReply,
    /// Files the client opened through host I/O, by descriptor.
    files: BTreeMap<u64, FileInfo>,
    running: bool,
    closed: bool,
}

impl Stub {
    /// A stub for a new client connection.
    pub fn new(config: StubConfig) -> Self {
        let max_packet = config.packet_size.saturating_add(0x100);
        Self {
            config,
            session: ServerSession::new(SessionConfig {
                max_packet,
                max_transmit: config.max_transmit,
                // Commands go straight to `pending`, which has its own bound.
                max_events: 1,
                ..SessionConfig::default()
            }),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            breakpoints: BTreeMap::new(),
            last_stop: StopReply::thread(SIGTRAP, THREAD, None),
            files: BTreeMap::new(),
            running: false,
            closed: false,
        }
    }

    /// Feeds bytes read from the client and answers complete commands; returns how many
    /// bytes were consumed.
    ///
    /// Commands that arrive while the target runs wait for it to stop (a break-in stops
    /// it). The stub consumes input only while it holds fewer than
    /// [`StubConfig::max_pending`] unanswered commands and fewer than
    /// [`StubConfig::max_transmit`] bytes of replies: the transport keeps the rest,
    /// writes what [`poll_transmit`](Self::poll_transmit) returns, and offers the rest
    /// again (an empty `bytes` answers held commands once there is room). A client that
    /// never reads its replies thus stops being read, and nothing is dropped.
    #[must_use = "the bytes not consumed must be offered again"]
    pub fn receive<T: Target + ?Sized>(&mut self, target: &mut T, bytes: &[u8]) -> usize {
        let mut used = 0;
        loop {
            while let Some(event) = self.session.poll_event() {
                match event {
                    ServerEvent::Command(cmd) => self.pending.push_back(cmd),
                    ServerEvent::Interrupt if self.running => {
                        target.interrupt();
                        self.stopped(target, StopReason::Interrupted);
                    }
                    ServerEvent::GaveUp => self.closed = true,
                    _ => {}
                }
            }
            // Stopped: answered at once. Running: kept until the target stops.
            self.handle_pending(target);
            if !self.wants_input() {
                break;
            }
            let Some(rest) = bytes.get(used..).filter(|r| !r.is_empty()) else {
                break;
            };
            let n = self.session.receive_some(rest);
            if n == 0 {
                break;
            }
            used += n;
        }
        used
    }

    /// Whether the stub consumes input now: it is open, holds fewer than
    /// [`StubConfig::max_pending`] commands and its transmit queue is under
    /// [`StubConfig::max_transmit`].
    pub fn wants_input(&self) -> bool {
        !self.closed && self.pending.len() < self.config.max_pending && self.session.wants_input()
    }

    /// Bytes the stub holds for this client: the session's queues
    /// ([`ServerSession::queued_bytes`]) and the payloads of unanswered commands.
    pub fn buffered(&self) -> usize {
        let pending: usize = self.pending.iter().map(|p| p.payload().len()).sum();
        self.session.queued_bytes().saturating_add(pending)
    }

    /// Commands received and not answered yet.
    pub fn pending_commands(&self) -> usize {
        self.pending.len()
    }

    /// Lets a running target progress. Returns `None` when the target is stopped (the
    /// transport may block on its input), or how long the transport may wait for input
    /// before calling again.
    pub fn poll_run<T: Target + ?Sized>(&mut self, target: &mut T) -> Option<Duration> {
        if !self.running {
            return None;
        }
        match target.poll_run() {
            RunState::Running(wait) => Some(wait),
            RunState::Stopped(reason) => {
                self.stopped(target, reason);
                self.handle_pending(target);
                self.running.then_some(Duration::ZERO)
            }
        }
    }

    /// Takes the bytes to write to the client.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// Moves the bytes to write to the client into `out` (appended), returning how many;
    /// a transport that keeps one `out` buffer and empties it after each write allocates
    /// nothing per reply ([`ServerSession::poll_transmit_into`]).
    pub fn poll_transmit_into(&mut self, out: &mut Vec<u8>) -> usize {
        self.session.poll_transmit_into(out)
    }

    /// Whether the target runs (a stop reply is owed).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether the client detached or killed the session (or the link failed): write what
    /// [`poll_transmit`](Self::poll_transmit) returns, then close the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The client is gone: stop a running target and remove the breakpoints it set.
    pub fn disconnect<T: Target + ?Sized>(&mut self, target: &mut T) {
        if std::mem::take(&mut self.running) {
            target.interrupt();
        }
        let breakpoints = std::mem::take(&mut self.breakpoints);
        if let Some(ops) = target.support_breakpoints() {
            for (addr, kind) in breakpoints {
                let _ = ops.remove_breakpoint(addr, kind);
            }
        }
        if let Some(ops) = target.support_run_limit() {
            ops.set_run_limit(None);
        }
        self.pending.clear();
        self.files.clear();
        self.closed = true;
    }

    /// The underlying session (counters, ack mode).
    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// Reports a stop: `T` with the thread, `swbreak`/`hwbreak` where it applies, and
    /// `rbp`, `rsp`, `rip` expedited ([`Expedited`]), so gdb shows where the target
    /// stopped without asking for the registers first.
    fn stopped<T: Target + ?Sized>(&mut self, target: &mut T, reason: StopReason) {
        let stop = match reason {
            StopReason::Breakpoint(addr) => {
                let kind = self.breakpoints.get(&addr).map(|k| match k {
                    BreakpointKind::Hardware => StopKind::HwBreak,
                    _ => StopKind::SwBreak,
                });
                StopReply::thread(SIGTRAP, THREAD, kind)
            }
            // gdb's `swbreak` is for any software breakpoint instruction, planted by
            // gdb or not, with the PC reported at the instruction.
            StopReason::BreakInstruction(_) => {
                StopReply::thread(SIGTRAP, THREAD, Some(StopKind::SwBreak))
            }
            StopReason::Interrupted => StopReply::thread(SIGINT, THREAD, None),
            StopReason::Exited(code) => StopReply::Exited(code),
            _ => StopReply::thread(SIGTRAP, THREAD, None),
        };
        let stop = match target.registers() {
            Ok(r) => stop.with_registers(Expedited {
                rbp: r.rbp,
                rsp: r.rsp,
                rip: r.rip,
            }),
            Err(_) => stop,
        };
        self.last_stop = stop;
        self.running = false;
        self.session.send(&Reply::Stop(stop));
    }

    fn handle_pending<T: Target + ?Sized>(&mut self, target: &mut T) {
        while !self.running
            && !self.closed
            && self.session.queued_transmit() < self.config.max_transmit
        {
            let Some(packet) = self.pending.pop_front() else {
                break;
            };
            let action = self.handle(target, packet.command());
            self.session.recycle(packet);
            match action {
                Action::Stay => {}
                Action::Run => self.running = true,
                Action::Close => {
                    self.disconnect(target);
                }
            }
        }
    }

    fn send(&mut self, reply: &Reply) -> Action {
        self.session.send(reply);
        Action::Stay
    }

    /// Sends `data` as a hex reply and keeps its buffer for the next one.
    fn send_hex(&mut self, data: Vec<u8>, len: usize) -> Action {
        self.session.send_hex(data.get(..len).unwrap_or_default());
        self.scratch = data;
        Action::Stay
    }

    /// The largest data payload a hex reply carries: `PacketSize / 2`, so gdb's own `m`
    /// of `PacketSize / 2` bytes is answered in one reply.
    fn max_data(&self) -> usize {
        (self.config.packet_size / 2).max(1)
    }

    fn features<T: Target + ?Sized>(&self, target: &mut T) -> Vec<Feature> {
        let mut list = vec![
            Feature::with_value("PacketSize", &format!("{:x}", self.config.packet_size)),
            Feature::supported("qXfer:features:read"),
        ];
        let mut on = |enabled: bool, name: &str| {
            if enabled {
                list.push(Feature::supported(name));
            }
        };
        on(target.support_libraries().is_some(), "qXfer:libraries:read");
        on(
            target.support_memory_map().is_some(),
            "qXfer:memory-map:read",
        );
        on(self.config.no_ack, "QStartNoAckMode");
        on(self.config.binary_read, "binary-upload");
        let breakpoints = target.support_breakpoints().is_some();
        on(breakpoints, "swbreak");
        on(breakpoints, "hwbreak");
        on(true, "vContSupported");
        let exec_file = target
            .support_files()
            .is_some_and(|ops| ops.exec_file().is_some());
        on(exec_file, "qXfer:exec-file:read");
        if let Some(ops) = target.support_run_limit() {
            let default = ops.default_run();
            list.push(Feature::supported(RUN_LIMIT_FEATURE));
            if let Some(t) = default {
                list.push(Feature::with_value(DEFAULT_RUN_FEATURE, &format!("{t:x}")));
            }
        }
        list
    }

    fn xfer<T: Target + ?Sized>(
        &self,
        target: &mut T,
        object: &XferObject<'_>,
        annex: &[u8],
        offset: u64,
        length: u64,
    ) -> Reply {
        let doc = match object {
            XferObject::Features if annex == b"target.xml" => {
                xml::target_description_x86_64().into_bytes()
            }
            XferObject::Libraries => match target.support_libraries() {
                Some(ops) if annex.is_empty() => {
                    let mut libs = ops.libraries();
                    for lib in &mut libs {
                        lib.address = first_segment(target, lib.address);
                        lib.name = xml::gdb_library_name(&lib.name);
                    }
                    xml::library_list(&libs).into_bytes()
                }
                Some(_) => return Reply::Error(E_INVAL),
                None => return Reply::Empty,
            },
            XferObject::MemoryMap => match target.support_memory_map() {
                Some(ops) if annex.is_empty() => {
                    let regions = ops.memory_map();
                    xml::memory_map(&regions).into_bytes()
                }
                Some(_) => return Reply::Error(E_INVAL),
                None => return Reply::Empty,
            },
            // The annex names a process; there is one.
            XferObject::Other(b"exec-file") => {
                match target.support_files().map(|ops| ops.exec_file()) {
                    Some(Some(name)) => xml::gdb_library_name(&name).into_bytes(),
                    Some(None) | None => return Reply::Empty,
                }
            }
            XferObject::Features => return Reply::Error(0),
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

    fn read_memory<T: Target + ?Sized>(
        target: &mut T,
        addr: u64,
        len: u64,
        limit: usize,
    ) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let got = Self::read_memory_into(target, addr, len, limit, &mut buf)?;
        buf.truncate(got);
        Some(buf)
    }

    /// Reads up to `len` (at most `limit`) bytes at `addr` into the start of `buf`, which
    /// grows as needed and is never shrunk or cleared (so a reused buffer is not zeroed
    /// again on every read); returns how many bytes were read, `None` when not even the
    /// first byte could be (a zero-length read succeeds empty).
    fn read_memory_into<T: Target + ?Sized>(
        target: &mut T,
        addr: u64,
        len: u64,
        limit: usize,
        buf: &mut Vec<u8>,
    ) -> Option<usize> {
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(limit);
        if buf.len() < len {
            buf.resize(len, 0);
        }
        if len == 0 {
            return Some(0);
        }
        let dst = buf.get_mut(..len)?;
        let got = target.read_memory(addr, dst).map_or(0, |n| n.min(len));
        (got > 0).then_some(got)
    }

    /// `qCRC`: gdb's CRC-32 ([`super::CRC32`]) of `len` bytes at `addr`, read in pieces
    /// of [`CRC_PIECE`] bytes; `E0e` if any byte cannot be read, `E16` for a range over
    /// [`MAX_CRC_LEN`] (the stub answers each packet in bounded time).
    fn crc<T: Target + ?Sized>(target: &mut T, addr: u64, len: u64) -> Reply {
        if len > MAX_CRC_LEN || addr.checked_add(len).is_none() {
            return Reply::Error(E_INVAL);
        }
        let mut digest = super::CRC32.digest();
        let mut piece = [0u8; CRC_PIECE];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(CRC_PIECE, |n| n.min(CRC_PIECE));
            let Some(dst) = piece.get_mut(..n) else {
                return Reply::Error(E_FAULT);
            };
            match target.read_memory(addr + done, dst) {
                Ok(got) if got == n => digest.update(dst),
                _ => return Reply::Error(E_FAULT),
            }
            done += n as u64;
        }
        Reply::Crc(digest.finalize())
    }

    fn read_binary<T: Target + ?Sized>(&self, target: &mut T, addr: u64, len: u64) -> Reply {
        // Binary data is escaped on the wire: keep the escaped form within a packet.
        let room = self.config.packet_size.saturating_sub(8).max(1);
        let Some(mut data) = Self::read_memory(target, addr, len, room) else {
            return Reply::Error(E_FAULT);
        };
        truncate_escaped(&mut data, room);
        Reply::Binary(data)
    }

    /// A host I/O request (`vFile:`), answered from the target's [`FileOps`]
    /// (`crate::stub::FileOps`); the empty reply without them.
    fn host_io<T: Target + ?Sized>(&mut self, target: &mut T, io: HostIo<'_>) -> Reply {
        let Some(ops) = target.support_files() else {
            return Reply::Empty;
        };
        let errno = |e: FileError| {
            HostIoReply::Error(match e {
                FileError::NotFound => host_io::ENOENT,
                FileError::Denied => host_io::EACCES,
                _ => host_io::EUNKNOWN,
            })
        };
        const WRITES: u64 = host_io::O_WRONLY
            | host_io::O_RDWR
            | host_io::O_APPEND
            | host_io::O_CREAT
            | host_io::O_TRUNC
            | host_io::O_EXCL;
        let reply = match io {
            // One filesystem, whichever process gdb names.
            HostIo::Setfs(_) => HostIoReply::Value(0),
            HostIo::Open { flags, .. } if flags & WRITES != 0 => HostIoReply::Error(host_io::EROFS),
            HostIo::Open { .. } if self.files.len() >= MAX_OPEN_FILES => {
                HostIoReply::Error(host_io::EMFILE)
            }
            HostIo::Open { name, .. } => match ops.open_file(&name.to_vec()) {
                Ok(info) => {
                    // The lowest free descriptor, as `open` gives.
                    let fd = (0u64..)
                        .find(|fd| !self.files.contains_key(fd))
                        .unwrap_or_default();
                    self.files.insert(fd, info);
                    HostIoReply::Value(fd)
                }
                Err(e) => errno(e),
            },
            HostIo::Close(fd) => match self.files.remove(&fd) {
                Some(_) => HostIoReply::Value(0),
                None => HostIoReply::Error(host_io::EBADF),
            },
            HostIo::Pread { fd, count, offset } => match self.files.get(&fd) {
                Some(file) => {
                    // Escaping can double the data: read what fits in a packet.
                    let room = self.config.packet_size.saturating_sub(HOST_IO_HEAD).max(1);
                    let want = usize::try_from(count).unwrap_or(usize::MAX).min(room);
                    let mut data = vec![0u8; want];
                    match ops.read_file(file.id, offset, &mut data) {
                        Ok(n) => {
                            data.truncate(n.min(want));
                            truncate_escaped(&mut data, room);
                            HostIoReply::Data(data)
                        }
                        Err(e) => errno(e),
                    }
                }
                None => HostIoReply::Error(host_io::EBADF),
            },
            HostIo::Fstat(fd) => match self.files.get(&fd) {
                Some(file) => {
                    HostIoReply::Data(host_io::stat_regular_file(file.size, fd as u32 + 1).to_vec())
                }
                None => HostIoReply::Error(host_io::EBADF),
            },
            HostIo::Pwrite { fd, .. } if !self.files.contains_key(&fd) => {
                HostIoReply::Error(host_io::EBADF)
            }
            HostIo::Pwrite { .. } | HostIo::Unlink(_) => HostIoReply::Error(host_io::EROFS),
            // Files served are never symbolic links.
            HostIo::Readlink(name) => match ops.open_file(&name.to_vec()) {
                Ok(_) => HostIoReply::Error(host_io::EINVAL),
                Err(e) => errno(e),
            },
        };
        Reply::HostIo(reply)
    }

    fn write_memory<T: Target + ?Sized>(target: &mut T, addr: u64, data: &[u8]) -> Reply {
        match target.write_memory(addr, data) {
            Ok(()) => Reply::Ok,
            Err(e) => error_reply(e),
        }
    }

    fn write_register<T: Target + ?Sized>(target: &mut T, reg: u32, value: HexBytes<'_>) -> Reply {
        let Ok(regs) = target.registers() else {
            return Reply::Error(E_INVAL);
        };
        let mut g = registers_to_g(&regs);
        let span = xml::register_span(reg as usize);
        match span.and_then(|(o, w)| g.get_mut(o..o.saturating_add(w))) {
            Some(slot) if slot.len() == value.len() => {
                slot.iter_mut().zip(value.iter()).for_each(|(d, s)| *d = s);
                let mut regs = regs;
                registers_from_g(&mut regs, &g);
                match target.write_registers(&regs) {
                    Ok(()) => Reply::Ok,
                    Err(e) => error_reply(e),
                }
            }
            _ => Reply::Error(E_INVAL),
        }
    }

    fn breakpoint<T: Target + ?Sized>(
        &mut self,
        target: &mut T,
        kind: BreakpointType,
        addr: u64,
        insert: bool,
    ) -> Reply {
        let kind = match kind {
            BreakpointType::Software => BreakpointKind::Software,
            BreakpointType::Hardware => BreakpointKind::Hardware,
            _ => return Reply::Empty,
        };
        let Some(ops) = target.support_breakpoints() else {
            return Reply::Empty;
        };
        if insert {
            match ops.insert_breakpoint(addr, kind) {
                Ok(()) => {
                    self.breakpoints.insert(addr, kind);
                    Reply::Ok
                }
                Err(e) => error_reply(e),
            }
        } else {
            if self.breakpoints.remove(&addr).is_some() {
                let _ = ops.remove_breakpoint(addr, kind);
            }
            Reply::Ok
        }
    }

    fn resume<T: Target + ?Sized>(&mut self, target: &mut T, how: Resume) -> Action {
        match target.resume(how) {
            Ok(()) => Action::Run,
            Err(TargetError::CannotRun) => self.send(&Reply::ErrorText(CANNOT_RUN.into())),
            Err(e) => self.send(&error_reply(e)),
        }
    }

    fn monitor<T: Target + ?Sized>(&mut self, target: &mut T, text: HexBytes<'_>) -> Action {
        let Some(ops) = target.support_monitor() else {
            return self.send(&Reply::Empty);
        };
        let text = text.to_vec();
        let line = String::from_utf8_lossy(&text);
        let mut output = ops.monitor(line.trim());
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        let chunk = self.max_data().saturating_sub(1).max(1);
        for piece in output.as_bytes().chunks(chunk) {
            self.session.send_output(piece);
        }
        self.send(&Reply::Ok)
    }

    /// Handles one command while the target is stopped.
    fn handle<T: Target + ?Sized>(&mut self, target: &mut T, cmd: Command<'_>) -> Action {
        let reply = match cmd {
            Command::QSupported(_) => Reply::Supported(self.features(target)),
            Command::StartNoAckMode if self.config.no_ack => Reply::Ok,
            Command::SetThread(..) => Reply::Ok,
            Command::XferRead {
                object,
                annex,
                offset,
                length,
            } => self.xfer(target, &object, annex, offset, length),
            Command::HaltReason => Reply::Stop(self.last_stop),
            Command::ThreadInfoFirst => Reply::ThreadList(vec![ThreadId::Id(THREAD)]),
            Command::ThreadInfoNext => Reply::ThreadListEnd,
            Command::CurrentThread => Reply::CurrentThread(ThreadId::Id(THREAD)),
            Command::Attached(_) => Reply::Attached(true),
            Command::ReadRegisters => match target.registers() {
                Ok(regs) => {
                    let mut g = std::mem::take(&mut self.scratch);
                    g.clear();
                    registers_to_g_into(&regs, &mut g);
                    let len = g.len();
                    return self.send_hex(g, len);
                }
                Err(e) => error_reply(e),
            },
            Command::WriteRegisters(data) if data.len() == xml::G_PACKET_LEN => {
                match target.registers() {
                    Ok(mut regs) => {
                        registers_from_g(&mut regs, &data.to_vec());
                        match target.write_registers(&regs) {
                            Ok(()) => Reply::Ok,
                            Err(e) => error_reply(e),
                        }
                    }
                    Err(e) => error_reply(e),
                }
            }
            Command::WriteRegisters(_) => Reply::Error(E_INVAL),
            Command::ReadRegister(n) => {
                let regs = target.registers();
                let g = regs.map(|r| registers_to_g(&r)).unwrap_or_default();
                let span = xml::register_span(n as usize);
                match span.and_then(|(o, w)| g.get(o..o.saturating_add(w))) {
                    Some(bytes) => Reply::Hex(bytes.to_vec()),
                    None => Reply::Error(E_INVAL),
                }
            }
            Command::WriteRegister { reg, value } => Self::write_register(target, reg, value),
            Command::ReadMemory { addr, len } => {
                let mut buf = std::mem::take(&mut self.scratch);
                if let Some(got) =
                    Self::read_memory_into(target, addr, len, self.max_data(), &mut buf)
                {
                    return self.send_hex(buf, got);
                }
                self.scratch = buf;
                Reply::Error(E_FAULT)
            }
            Command::ReadMemoryBinary { addr, len } if self.config.binary_read => {
                self.read_binary(target, addr, len)
            }
            Command::WriteMemory { addr, data } => Self::write_memory(target, addr, &data.to_vec()),
            Command::WriteMemoryBinary { addr, data } if self.config.binary_write => {
                Self::write_memory(target, addr, data)
            }
            Command::SearchMemory { addr, len, pattern } => match target.support_search() {
                Some(ops) => match ops.search(addr, addr.saturating_add(len), pattern) {
                    Ok(hit) => Reply::SearchResult(hit),
                    Err(e) => error_reply(e),
                },
                None => Reply::Empty,
            },
            Command::Crc { addr, len } => Self::crc(target, addr, len),
            Command::HostIo(io) => self.host_io(target, io),
            Command::Monitor(text) => return self.monitor(target, text),
            Command::InsertBreakpoint(bp) => self.breakpoint(target, bp.kind, bp.addr, true),
            Command::RemoveBreakpoint(bp) => self.breakpoint(target, bp.kind, bp.addr, false),
            Command::VContQuery => Reply::VContSupported(
                ["c", "C", "s", "S", "t"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            ),
            Command::RunLimit(ticks) => match target.support_run_limit() {
                Some(ops) => {
                    ops.set_run_limit((ticks > 0).then_some(ticks));
                    Reply::Ok
                }
                None => Reply::Empty,
            },
            // One thread: the first action decides.
            Command::VCont(actions) => match actions.first().map(|a| a.kind) {
                Some(ResumeKind::Continue | ResumeKind::ContinueSignal(_)) => {
                    return self.resume(target, Resume::Continue);
                }
                Some(
                    ResumeKind::Step | ResumeKind::StepSignal(_) | ResumeKind::RangeStep { .. },
                ) => return self.resume(target, Resume::Step),
                Some(ResumeKind::Stop) => {
                    self.last_stop = StopReply::thread(SIGINT, THREAD, None);
                    Reply::Stop(self.last_stop)
                }
                None => Reply::Error(E_INVAL),
            },
            Command::Continue(_) => return self.resume(target, Resume::Continue),
            Command::Step(_) => return self.resume(target, Resume::Step),
            Command::Detach(_) | Command::VKill(_) => {
                self.session.send(&Reply::Ok);
                return Action::Close;
            }
            // The target is not killed: the client goes away, the target stays.
            Command::Kill => return Action::Close,
            // A command the stub knows, with arguments it cannot take.
            Command::Malformed(_) => Reply::Error(E_INVAL),
            _ => Reply::Empty,
        };
        self.send(&reply)
    }
}

/// Where gdb expects a library's first segment: for a PE image at `base`, its lowest
/// section (`base + 0x1000` for the usual layout), which is where gdb's own reading of the
/// file puts the first segment and relocates the file from (the image base there would
/// put every symbol a page off); `base` itself when no PE headers are found there.
fn first_segment<T: Target + ?Sized>(target: &mut T, base: u64) -> u64 {
    use crate::nt::pe::{dos, file_header, nt_headers, section};
    let mut read = |addr: u64, buf: &mut [u8]| matches!(target.read_memory(addr, buf), Ok(n) if n == buf.len());
    let u16_at = |b: &[u8], at: u64| {
        let at = at as usize;
        Some(u64::from(u16::from_le_bytes(
            b.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let u32_at = |b: &[u8], at: u64| {
        let at = at as usize;
        Some(u64::from(u32::from_le_bytes(
            b.get(at..at + 4)?.try_into().ok()?,
        )))
    };
    let mut lowest = || -> Option<u64> {
        let mut head = [0u8; dos::SIZE as usize];
        if !read(base, &mut head) || head.get(..2)? != dos::MAGIC {
            return None;
        }
        let lfanew = u32_at(&head, dos::E_LFANEW).filter(|&v| v <= 0x1000)?;
        let mut nt = [0u8; (nt_headers::OPTIONAL_HEADER) as usize];
        let nt_at = base.checked_add(lfanew)?;
        if !read(nt_at, &mut nt) || nt.get(..4)? != nt_headers::SIGNATURE {
            return None;
        }
        let fh = nt_headers::FILE_HEADER;
        let count = u16_at(&nt, fh + file_header::NUMBER_OF_SECTIONS)?.min(96);
        let optional = u16_at(&nt, fh + file_header::SIZE_OF_OPTIONAL_HEADER)?;
        let table = nt_at.checked_add(nt_headers::OPTIONAL_HEADER + optional)?;
        let mut low: Option<u64> = None;
        for i in 0..count {
            let mut entry = [0u8; section::SIZE as usize];
            if !read(table.checked_add(i * section::SIZE)?, &mut entry) {
                return None;
            }
            let rva = u32_at(&entry, section::VIRTUAL_ADDRESS)?;
            low = Some(low.map_or(rva, |l| l.min(rva)));
        }
        base.checked_add(low?)
    };
    lowest().unwrap_or(base)
}

/// Cuts `data` to the longest prefix (at least one byte, if any) whose escaped form
/// (`}` before `#`, `$`, `}`, `*`) fits in `room` bytes.
fn truncate_escaped(data: &mut Vec<u8>, room: usize) {
    let mut escaped = 0usize;
    let fits = data
        .iter()
        .take_while(|&&b| {
            escaped += if frame::needs_escape(b) { 2 } else { 1 };
            escaped <= room
        })
        .count();
    data.truncate(fits.max(1).min(data.len()));
}

/// The reply for a failed target operation.
fn error_reply(e: TargetError) -> Reply {
    match e {
        TargetError::Fault => Reply::Error(E_FAULT),
        TargetError::CannotRun => Reply::ErrorText(CANNOT_RUN.into()),
        _ => Reply::Error(E_INVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::ReplyKind;
    use crate::gdb::frame::{Decoder, Event, encode_packet};

    /// 16 bytes at 0x1000 that cannot run, with no optional capability.
    struct Rom([u8; 16]);

    impl Target for Rom {
        fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
            let off = addr.checked_sub(0x1000).ok_or(TargetError::Fault)? as usize;
            let src = self.0.get(off..).unwrap_or_default();
            let n = src.len().min(buf.len());
            if n == 0 {
                return Err(TargetError::Fault);
            }
            buf[..n].copy_from_slice(&src[..n]);
            Ok(n)
        }
        fn write_memory(&mut self, _: u64, _: &[u8]) -> Result<(), TargetError> {
            Err(TargetError::Fault)
        }
        fn registers(&mut self) -> Result<X64Registers, TargetError> {
            Ok(X64Registers {
                rip: 0x1000,
                ..X64Registers::default()
            })
        }
        fn write_registers(&mut self, _: &X64Registers) -> Result<(), TargetError> {
            Err(TargetError::Unsupported)
        }
        fn resume(&mut self, _: Resume) -> Result<(), TargetError> {
            Err(TargetError::CannotRun)
        }
        fn poll_run(&mut self) -> RunState {
            RunState::Stopped(StopReason::Trap)
        }
        fn interrupt(&mut self) {}
    }

    fn ask(stub: &mut Stub, rom: &mut Rom, payload: &[u8]) -> Vec<String> {
        ask_raw(stub, rom, payload)
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn a_target_with_no_capabilities_gets_a_reduced_stub() {
        let mut rom = Rom(*b"0123456789abcdef");
        let mut stub = Stub::new(StubConfig::default());
        let supported = ask(&mut stub, &mut rom, b"qSupported:swbreak+").join("");
        assert!(supported.contains("qXfer:features:read+"), "{supported}");
        for absent in ["libraries", "memory-map", "swbreak", "RunLimit"] {
            assert!(!supported.contains(absent), "{absent} in {supported}");
        }
        for unsupported in [
            &b"qXfer:libraries:read::0,100"[..],
            b"qXfer:memory-map:read::0,100",
            b"qSearch:memory:1000;10;45",
            b"qRcmd,6c6d",
            b"Z0,1000,1",
            b"QTagsplit.RunLimit:5",
            b"vFile:setfs:0",
        ] {
            assert_eq!(
                ask(&mut stub, &mut rom, unsupported),
                [""],
                "{unsupported:?}"
            );
        }
        assert_eq!(ask(&mut stub, &mut rom, b"m100e,4"), ["6566"]);
        assert_eq!(ask(&mut stub, &mut rom, b"m2000,4"), ["E0e"]);
        assert_eq!(ask(&mut stub, &mut rom, b"M1000,1:00"), ["E0e"]);
        // A machine that cannot run says so and stays stopped.
        assert_eq!(
            ask(&mut stub, &mut rom, b"vCont;c"),
            [format!("E.{CANNOT_RUN}")]
        );
        assert!(!stub.is_running());
        assert_eq!(ask(&mut stub, &mut rom, b"?"), ["T05thread:01;"]);
        assert_eq!(ask(&mut stub, &mut rom, b"D"), ["OK"]);
        assert!(stub.is_closed());
    }

    /// `qCRC` answers gdb's CRC-32 of readable memory, and an error for a range with an
    /// unreadable byte or one too long to answer in bounded time.
    #[test]
    fn crc_of_memory_as_compare_sections_asks() {
        let mut rom = Rom(*b"0123456789abcdef");
        let mut stub = Stub::new(StubConfig::default());
        // The check value of CRC-32/MPEG-2.
        assert_eq!(crate::gdb::crc32(b"123456789"), 0x0376_e6e7);
        let want = format!("C{:x}", crate::gdb::crc32(b"0123456789abcdef"));
        assert_eq!(ask(&mut stub, &mut rom, b"qCRC:1000,10"), [want]);
        let want = format!("C{:x}", crate::gdb::crc32(b"3456"));
        assert_eq!(ask(&mut stub, &mut rom, b"qCRC:1003,4"), [want]);
        assert_eq!(ask(&mut stub, &mut rom, b"qCRC:1000,11"), ["E0e"]);
        let too_long = format!("qCRC:1000,{:x}", MAX_CRC_LEN + 1);
        assert_eq!(ask(&mut stub, &mut rom, too_long.as_bytes()), ["E16"]);
        assert_eq!(ask(&mut stub, &mut rom, b"qCRC:1000"), ["E16"]);
    }

    /// `Rom`, plus one file, `/boot/x.sys`: 0x5000 bytes, each its offset's low byte.
    struct Disk(Rom);

    impl Target for Disk {
        fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
            self.0.read_memory(addr, buf)
        }
        fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
            self.0.write_memory(addr, data)
        }
        fn registers(&mut self) -> Result<X64Registers, TargetError> {
            self.0.registers()
        }
        fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError> {
            self.0.write_registers(regs)
        }
        fn resume(&mut self, how: Resume) -> Result<(), TargetError> {
            self.0.resume(how)
        }
        fn poll_run(&mut self) -> RunState {
            self.0.poll_run()
        }
        fn interrupt(&mut self) {}
        fn support_files(&mut self) -> Option<&mut dyn crate::stub::FileOps> {
            Some(self)
        }
    }

    const DISK_FILE: u64 = 0x5000;

    impl crate::stub::FileOps for Disk {
        fn open_file(&mut self, name: &[u8]) -> Result<FileInfo, FileError> {
            match name {
                b"/boot/x.sys" => Ok(FileInfo {
                    id: 7,
                    size: DISK_FILE,
                }),
                b"/boot/secret" => Err(FileError::Denied),
                _ => Err(FileError::NotFound),
            }
        }
        fn read_file(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FileError> {
            assert_eq!(id, 7);
            let n = DISK_FILE.saturating_sub(offset).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (offset as usize + i) as u8;
            }
            Ok(n)
        }
    }

    /// The raw payloads of the replies to `payload` (binary data as it is, unescaped).
    fn ask_raw<T: Target>(stub: &mut Stub, target: &mut T, payload: &[u8]) -> Vec<Vec<u8>> {
        let wire = encode_packet(payload, false);
        assert_eq!(stub.receive(target, &wire), wire.len());
        let bytes = stub.poll_transmit().unwrap_or_default();
        Decoder::default()
            .decode(&bytes)
            .into_iter()
            .filter_map(|e| match e {
                Event::Packet(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// gdb's host I/O session for a library, as gdb 13 sends it: `setfs`, `open`,
    /// `fstat`, `pread`s in windows that fit the packet, `close`; and the errors gdb
    /// expects for what the target refuses.
    #[test]
    fn host_io_serves_the_targets_files_in_packet_sized_reads() {
        let mut disk = Disk(Rom([0; 16]));
        let mut stub = Stub::new(StubConfig {
            packet_size: 0x400,
            ..StubConfig::default()
        });
        let mut ask = |p: &[u8]| ask_raw(&mut stub, &mut disk, p);
        let open = |name: &[u8]| {
            let mut p = b"vFile:open:".to_vec();
            crate::gdb::hex::encode_hex_into(name, &mut p);
            p.extend_from_slice(b",0,0");
            p
        };
        assert_eq!(ask(b"vFile:setfs:0"), [b"F0".to_vec()]);
        assert_eq!(ask(&open(b"/boot/x.sys")), [b"F0".to_vec()]);
        assert_eq!(ask(&open(b"/boot/x.sys")), [b"F1".to_vec()]);
        assert_eq!(ask(b"vFile:close:1"), [b"F0".to_vec()]);
        assert_eq!(ask(b"vFile:close:1"), [b"F-1,9".to_vec()]);
        assert_eq!(ask(&open(b"/boot/none")), [b"F-1,2".to_vec()]);
        assert_eq!(ask(&open(b"/boot/secret")), [b"F-1,d".to_vec()]);
        // Write access is refused: the files are read-only.
        let mut rw = open(b"/boot/x.sys");
        rw.truncate(rw.len() - 3);
        rw.extend_from_slice(b"202,1a4");
        assert_eq!(ask(&rw), [b"F-1,1e".to_vec()]);
        let fstat = ask(b"vFile:fstat:0");
        assert_eq!(fstat[0][..4], *b"F40;");
        assert_eq!(fstat[0][4 + 28..4 + 36], DISK_FILE.to_be_bytes());
        // Read the whole file as gdb does: ask for far more than fits, take what comes.
        let mut file = Vec::new();
        loop {
            let reply = ask(format!("vFile:pread:0,100000,{:x}", file.len()).as_bytes());
            let Reply::HostIo(HostIoReply::Data(data)) =
                Reply::parse(ReplyKind::HostIo, &reply[0]).unwrap()
            else {
                panic!("{reply:?}")
            };
            // The escaped reply fits in a packet (every 0x23, 0x24, 0x2a, 0x7d doubles).
            assert!(crate::gdb::frame::encode_packet(&reply[0], false).len() <= 0x400 + 4);
            if data.is_empty() {
                assert_eq!(reply[0], b"F0;");
                break;
            }
            assert!(data.len() > 0x300, "{}", data.len());
            file.extend(data);
        }
        assert_eq!(file.len() as u64, DISK_FILE);
        assert!(file.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(ask(b"vFile:pread:5,10,0"), [b"F-1,9".to_vec()]);
        assert_eq!(ask(b"vFile:pwrite:0,0,x"), [b"F-1,1e".to_vec()]);
        assert_eq!(ask(b"vFile:unlink:78"), [b"F-1,1e".to_vec()]);
        assert_eq!(
            ask(b"vFile:readlink:2f626f6f742f782e737973"),
            [b"F-1,16".to_vec()]
        );
        assert_eq!(ask(b"vFile:readlink:78"), [b"F-1,2".to_vec()]);
        assert_eq!(ask(b"vFile:pread:0,4000"), [b"E16".to_vec()]);
        // A bounded number of descriptors: one more is EMFILE.
        for _ in 1..MAX_OPEN_FILES {
            assert_eq!(ask(&open(b"/boot/x.sys"))[0][0], b'F');
        }
        assert_eq!(ask(&open(b"/boot/x.sys")), [b"F-1,18".to_vec()]);
        stub.disconnect(&mut disk);
        assert!(stub.files.is_empty());
    }

    #[test]
    fn malformed_known_packets_get_an_error_not_the_empty_reply() {
        let mut rom = Rom([0; 16]);
        let mut stub = Stub::new(StubConfig::default());
        for bad in [
            &b"m1000"[..],
            b"m1000,zz",
            b"M1000,2:00",
            b"Z0,1000",
            b"qXfer:features:read:target.xml:0",
            b"qRcmd,6",
            b"G00",
        ] {
            assert_eq!(
                ask(&mut stub, &mut rom, bad),
                [format!("E{E_INVAL:02x}")],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pipelined_commands_are_all_answered_in_order() {
        let mut rom = Rom(*b"0123456789abcdef");
        let mut stub = Stub::new(StubConfig::default());
        let mut wire = Vec::new();
        for i in 0..200u64 {
            wire.extend(encode_packet(
                format!("m{:x},1", 0x1000 + i % 16).as_bytes(),
                false,
            ));
        }
        assert_eq!(stub.receive(&mut rom, &wire), wire.len());
        let bytes = stub.poll_transmit().unwrap_or_default();
        let replies: Vec<_> = Decoder::default()
            .decode(&bytes)
            .into_iter()
            .filter_map(|e| match e {
                Event::Packet(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 200);
        assert_eq!(replies[17], b"31");
    }

    #[test]
    fn registers_round_trip_through_the_g_block() {
        let regs = X64Registers {
            rip: 0x1122_3344_5566_7788,
            rflags: 0x246,
            cs: 0x10,
            r8: 7,
            ..X64Registers::default()
        };
        let g = registers_to_g(&regs);
        assert_eq!(g.len(), xml::G_PACKET_LEN);
        assert_eq!(&g[128..136], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&g[532..536], &0x1f80u32.to_le_bytes());
        let mut back = X64Registers::default();
        registers_from_g(&mut back, &g);
        assert_eq!(back, regs);
    }
}
