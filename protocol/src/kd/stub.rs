//! A KD stub over any [`Target`]: what a Windows kernel says to its kernel debugger.
//!
//! [`Stub`] owns the link (a KDCOM [`Session`] for a byte stream, or with feature `kdnet`
//! a KDNET [`Endpoint`] for datagrams) and speaks the target side of KD. When a debugger
//! attaches it prints the configured banner (debug I/O), reports one load-symbols state
//! change per library (if the target opts into [`LibraryOps`](crate::stub::LibraryOps))
//! and then a breakpoint exception, one per Continue. While stopped it answers
//! manipulate-state requests from what the target supports: `GetVersion` (the addresses of
//! [`KernelOps`](crate::stub::KernelOps), zeros without it), Read/WriteVirtualMemory
//! (clamped to [`MAX_TRANSFER`] bytes as Windows clamps), `SearchMemory`
//! ([`SearchOps`](crate::stub::SearchOps)), Get/SetContext (the AMD64 `CONTEXT`, see
//! [`context`]), Write/RestoreBreakPoint
//! ([`BreakpointOps`](crate::stub::BreakpointOps)), Read/WriteControlSpace; anything else
//! gets `STATUS_UNSUCCESSFUL`. Continue runs the target until it stops, a break-in arrives
//! or a run limit ends, and the stop is reported as an exception state change.
//!
//! Tagsplit's own extension, exact-length runs ([`ext`] selectors in control
//! space), is answered only for a target with [`RunLimitOps`](crate::stub::RunLimitOps);
//! a real Windows target refuses those selectors the same way.
//!
//! The stub does no I/O and reads no clock: a transport passes what it reads to
//! [`receive`](Stub::receive) with its `now`, calls [`handle_timeout`](Stub::handle_timeout)
//! at [`poll_timeout`](Stub::poll_timeout), lets a running target progress with
//! [`poll_run`](Stub::poll_run) (which says how long it may block reading), and sends what
//! [`poll_transmit`](Stub::poll_transmit) returns (KDCOM bytes, or one UDP payload each).
//!
//! ```
//! use std::time::Duration;
//! use tagsplit_protocol::kd::stub::{Stub, StubConfig};
//! use tagsplit_protocol::kd::{
//!     GetVersion64, Manipulate, ManipulateApi, MemoryTransfer, PacketType, Payload, Role,
//!     Session, SessionConfig, SessionEvent,
//! };
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
//! let now = Duration::ZERO;
//! let mut rom = Rom(b"hello".to_vec());
//! let mut stub = Stub::kdcom(StubConfig::default());
//! let mut debugger = Session::new(SessionConfig::kdcom(Role::Debugger));
//! stub.attach(&mut rom, now); // a debugger connected: banner and breakpoint follow
//! let read = ManipulateApi::ReadVirtualMemory(MemoryTransfer { address: 1, count: 4, actual: 0 });
//! debugger.send(now, PacketType::StateManipulate, Manipulate::request(&read, vec![]).to_bytes());
//! // Shuttle bytes both ways until the reply to the read arrives.
//! let reply = loop {
//!     while let Some(b) = debugger.poll_transmit() { stub.receive(&mut rom, now, &b); }
//!     while let Some(b) = stub.poll_transmit() { debugger.handle_bytes(now, &b); }
//!     if let Some(SessionEvent::Packet { packet_type, payload, .. }) = debugger.poll_event() {
//!         if let Ok(Payload::Manipulate(m)) = Payload::parse(packet_type, &payload) {
//!             break m;
//!         }
//!     }
//! };
//! assert_eq!(reply.data(), b"ello");
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::payload::{ControlReport, Exception64, LoadSymbols64};
use super::{
    DebugIo, GetVersion64, IdScheme, MAX_TRANSFER, Manipulate, ManipulateApi, MemoryTransfer,
    PacketType, Role, Session, SessionConfig, SessionEvent, StateChange, StateChangeKind, context,
    ext, le, status,
};
#[cfg(feature = "kdnet")]
use crate::kdnet::{Endpoint, EndpointConfig, EndpointEvent};
use crate::stub::{BreakpointKind, KernelInfo, Resume, RunState, StopReason, Target};

/// Size of `KSPECIAL_REGISTERS` as WinDbg reads it (control-space selector 2).
pub const SPECIAL_REGISTERS_LEN: usize = 0xE0;

/// Protocol choices of a KD stub (what the target supports is asked of the target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubConfig {
    /// The line printed (debug I/O) when a debugger attaches; empty: none.
    pub banner: String,
    /// How long a sent packet waits for its acknowledgement before it is resent.
    pub retry_timeout: Duration,
    /// Resends before the debugger is considered gone.
    pub max_retries: u32,
    /// KDNET: while stopped, a debugger silent this long is considered gone and the stub
    /// pokes again, so that a new debugger can attach (the old one keeps its session by
    /// sending anything).
    pub reconnect_after: Duration,
}

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            banner: String::new(),
            retry_timeout: Duration::from_millis(200),
            max_retries: 25,
            reconnect_after: Duration::from_secs(5),
        }
    }
}

impl StubConfig {
    fn session(&self, base: SessionConfig) -> SessionConfig {
        SessionConfig {
            retry_timeout: self.retry_timeout,
            max_retries: self.max_retries,
            check_payloads: true,
            // KDNET only: KDCOM does not checksum the header, and one flipped id bit makes
            // a stale packet look new.
            implicit_acks: base.scheme == IdScheme::Kdnet,
            ..base
        }
    }
}

/// The link a stub speaks over.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per stub, never moved in a loop
enum Link {
    Kdcom(Session),
    #[cfg(feature = "kdnet")]
    Kdnet(Endpoint),
}

/// The KD stub state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Stub {
    config: StubConfig,
    link: Link,
    /// State changes still to report in the attach sequence (each after a Continue).
    pending: VecDeque<StateChange>,
    /// A state change is outstanding: the target is stopped, answering requests.
    stopped: bool,
    /// The target runs (a state change is owed).
    running: bool,
    /// The current run is a single step.
    stepping: bool,
    /// Breakpoints the debugger set, by handle.
    breakpoints: BTreeMap<u32, u64>,
    next_handle: u32,
    attaches: u64,
    /// When the debugger was last heard from (KDNET reconnection).
    last_heard: Duration,
    /// KDNET datagrams refused since the transport last asked (at most
    /// [`MAX_REJECTIONS_KEPT`]; the endpoint's counters keep the totals).
    #[cfg(feature = "kdnet")]
    rejected: VecDeque<crate::kdnet::KdnetError>,
}

/// Most refused-datagram reasons a [`Stub`] keeps for [`Stub::poll_rejected`]; older ones
/// are dropped (the counts stay in [`Stub::kdnet_stats`]).
pub const MAX_REJECTIONS_KEPT: usize = 64;

impl Stub {
    fn with_link(config: StubConfig, link: Link) -> Self {
        Self {
            config,
            link,
            pending: VecDeque::new(),
            stopped: false,
            running: false,
            stepping: false,
            breakpoints: BTreeMap::new(),
            next_handle: 1,
            attaches: 0,
            last_heard: Duration::ZERO,
            #[cfg(feature = "kdnet")]
            rejected: VecDeque::new(),
        }
    }

    /// Why a KDNET datagram was refused (wrong key, forged tag, replay, another address,
    /// the other direction), oldest first, for the transport to log. None of them reached
    /// the KD session.
    #[cfg(feature = "kdnet")]
    pub fn poll_rejected(&mut self) -> Option<crate::kdnet::KdnetError> {
        self.rejected.pop_front()
    }

    /// KDNET: whether the stub is poking for a new debugger (its debugger went silent
    /// while the target was stopped); the current one keeps its session by sending
    /// anything.
    #[cfg(feature = "kdnet")]
    pub fn is_soliciting(&self) -> bool {
        matches!(&self.link, Link::Kdnet(e) if e.is_soliciting())
    }

    /// The KDNET endpoint's counters (datagrams, bytes, refusals by reason); `None` over
    /// KDCOM.
    #[cfg(feature = "kdnet")]
    pub fn kdnet_stats(&self) -> Option<crate::kdnet::EndpointStats> {
        match &self.link {
            Link::Kdnet(e) => Some(e.stats()),
            Link::Kdcom(_) => None,
        }
    }

    /// A stub over a KDCOM byte stream (a serial line, or a TCP stream carrying one). Call
    /// [`attach`](Self::attach) when the debugger's end is connected.
    pub fn kdcom(config: StubConfig) -> Self {
        let session = Session::new(config.session(SessionConfig::kdcom(Role::Target)));
        Self::with_link(config, Link::Kdcom(session))
    }

    /// A stub over KDNET datagrams: it pokes the debugger `endpoint.peer` from `now` on and
    /// attaches when one answers. The endpoint's role and session retry settings are taken
    /// from this stub (`config`).
    #[cfg(feature = "kdnet")]
    pub fn kdnet(config: StubConfig, mut endpoint: EndpointConfig, now: Duration) -> Self {
        endpoint.role = Role::Target;
        endpoint.session = config.session(SessionConfig::kdnet(Role::Target));
        Self::with_link(config, Link::Kdnet(Endpoint::new(endpoint, now)))
    }

    /// How many times a debugger attached.
    pub fn attaches(&self) -> u64 {
        self.attaches
    }

    /// Whether the target runs (a state change is owed).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether the target is stopped in the debugger (a state change is outstanding).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a debugger is attached (KDCOM: since [`attach`](Self::attach)).
    pub fn is_attached(&self) -> bool {
        match &self.link {
            Link::Kdcom(_) => self.attaches > 0,
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.is_connected(),
        }
    }

    /// A debugger attached: stops a running target, removes an earlier debugger's
    /// breakpoints and run limit, prints the banner and reports the first state change of
    /// the attach sequence. KDNET stubs call it themselves when the handshake completes.
    pub fn attach<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration) {
        self.attaches = self.attaches.saturating_add(1);
        self.last_heard = now;
        self.forget_debugger(target);
        let regs = target.registers().unwrap_or_default();
        let libraries = target
            .support_libraries()
            .map(|ops| ops.libraries())
            .unwrap_or_default();
        for lib in libraries {
            let mut path = lib.name.into_bytes();
            path.push(0);
            let kind = StateChangeKind::LoadSymbols(LoadSymbols64 {
                path_name_length: u32::try_from(path.len()).unwrap_or(u32::MAX),
                base_of_dll: lib.address,
                process_id: 0,
                checksum: 0,
                size_of_image: u32::try_from(lib.size).unwrap_or(u32::MAX),
                unload_symbols: 0,
            });
            let mut sc = Self::state_change(target, &kind);
            sc.set_data(path);
            self.pending.push_back(sc);
        }
        let bp = Self::exception(target, status::BREAKPOINT, regs.rip);
        self.pending.push_back(bp);
        if !self.config.banner.is_empty() {
            let print = DebugIo::print_string(0, self.config.banner.as_bytes());
            self.send(now, PacketType::DebugIo, print.to_bytes());
        }
        self.next_state_change(now);
    }

    /// The debugger is gone (its connection closed): stops a running target and removes
    /// the breakpoints and run limit it set.
    pub fn disconnect<T: Target + ?Sized>(&mut self, target: &mut T) {
        self.forget_debugger(target);
    }

    fn forget_debugger<T: Target + ?Sized>(&mut self, target: &mut T) {
        if std::mem::take(&mut self.running) {
            target.interrupt();
        }
        self.stepping = false;
        self.stopped = false;
        self.pending.clear();
        let breakpoints = std::mem::take(&mut self.breakpoints);
        if let Some(ops) = target.support_breakpoints() {
            for addr in breakpoints.into_values() {
                let _ = ops.remove_breakpoint(addr, BreakpointKind::Software);
            }
        }
        if let Some(ops) = target.support_run_limit() {
            ops.set_run_limit(None);
        }
    }

    /// Feeds what the transport read: KDCOM bytes (any chunking), or one KDNET datagram.
    pub fn receive<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration, bytes: &[u8]) {
        self.last_heard = now;
        match &mut self.link {
            Link::Kdcom(s) => s.handle_bytes(now, bytes),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.handle_datagram(now, bytes),
        }
        self.process(target, now);
    }

    /// Feeds one KDNET datagram that came from `from`: besides what
    /// [`receive`](Self::receive) checks, a datagram from an address other than the
    /// debugger host's is refused and counted
    /// ([`Endpoint::handle_datagram_from`](crate::kdnet::Endpoint::handle_datagram_from)).
    /// Over KDCOM this is [`receive`](Self::receive).
    pub fn receive_from<T: Target + ?Sized>(
        &mut self,
        target: &mut T,
        now: Duration,
        from: std::net::SocketAddr,
        datagram: &[u8],
    ) {
        self.last_heard = now;
        match &mut self.link {
            Link::Kdcom(s) => s.handle_bytes(now, datagram),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.handle_datagram_from(now, from, datagram),
        }
        #[cfg(not(feature = "kdnet"))]
        let _ = from;
        self.process(target, now);
    }

    /// Fires the link's timers (retransmission, KDNET pokes and reconnection).
    pub fn handle_timeout<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration) {
        match &mut self.link {
            Link::Kdcom(s) => s.handle_timeout(now),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.handle_timeout(now),
        }
        self.process(target, now);
        if self.reconnect_deadline().is_some_and(|d| now >= d) {
            self.solicit(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due (on the transport's clock).
    pub fn poll_timeout(&self) -> Option<Duration> {
        let link = match &self.link {
            Link::Kdcom(s) => s.poll_timeout(),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.poll_timeout(),
        };
        [link, self.reconnect_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Lets a running target progress. `None` when the target is stopped (the transport
    /// may block on its input until [`poll_timeout`](Self::poll_timeout)); otherwise how
    /// long the transport may wait for input before calling again.
    pub fn poll_run<T: Target + ?Sized>(
        &mut self,
        target: &mut T,
        now: Duration,
    ) -> Option<Duration> {
        if !self.running {
            return None;
        }
        match target.poll_run() {
            RunState::Running(wait) => Some(wait),
            RunState::Stopped(reason) => {
                self.stop(target, now, reason);
                None
            }
        }
    }

    /// Bytes the stub holds for its debugger: the link's queues
    /// ([`Session::queued_bytes`], and the KDNET endpoint's sealed datagrams). Answers are
    /// queued behind the packet in flight up to `SessionConfig::max_queued` packets
    /// (more are dropped and counted), and the stream decoder holds at most one packet.
    pub fn buffered(&self) -> usize {
        match &self.link {
            Link::Kdcom(s) => s.queued_bytes(),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.queued_bytes(),
        }
    }

    /// The link's counters (for KDNET, those of the KD session inside the endpoint).
    pub fn session_stats(&self) -> crate::kd::SessionStats {
        match &self.link {
            Link::Kdcom(s) => s.stats(),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.session().stats(),
        }
    }

    /// The next unit to put on the wire: KDCOM bytes, or one KDNET datagram's payload.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match &mut self.link {
            Link::Kdcom(s) => s.poll_transmit(),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.poll_transmit(),
        }
    }

    fn reconnect_deadline(&self) -> Option<Duration> {
        match &self.link {
            Link::Kdcom(_) => None,
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => (e.is_connected() && self.stopped && !e.is_soliciting())
                .then(|| self.last_heard.saturating_add(self.config.reconnect_after)),
        }
    }

    /// KDNET: pokes for a new debugger (the current one is silent or gone).
    fn solicit(&mut self, _now: Duration) {
        #[cfg(feature = "kdnet")]
        if let Link::Kdnet(e) = &mut self.link {
            e.solicit(_now);
        }
    }

    fn send(&mut self, now: Duration, ty: PacketType, payload: Vec<u8>) {
        match &mut self.link {
            Link::Kdcom(s) => s.send(now, ty, payload),
            #[cfg(feature = "kdnet")]
            Link::Kdnet(e) => e.send(now, ty, payload),
        }
    }

    /// The next KD session event; a completed KDNET handshake attaches on the way.
    #[cfg(feature = "kdnet")]
    fn next_event<T: Target + ?Sized>(
        &mut self,
        target: &mut T,
        now: Duration,
    ) -> Option<SessionEvent> {
        loop {
            let event = match &mut self.link {
                Link::Kdcom(s) => return s.poll_event(),
                Link::Kdnet(e) => e.poll_event()?,
            };
            match event {
                EndpointEvent::Kd(ev) => return Some(ev),
                EndpointEvent::Connected { .. } => self.attach(target, now),
                EndpointEvent::Rejected(e) => {
                    if self.rejected.len() >= MAX_REJECTIONS_KEPT {
                        self.rejected.pop_front();
                    }
                    self.rejected.push_back(e);
                }
            }
        }
    }

    /// The next KD session event.
    #[cfg(not(feature = "kdnet"))]
    fn next_event<T: Target + ?Sized>(&mut self, _: &mut T, _: Duration) -> Option<SessionEvent> {
        let Link::Kdcom(s) = &mut self.link;
        s.poll_event()
    }

    fn process<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration) {
        while let Some(event) = self.next_event(target, now) {
            match event {
                SessionEvent::Packet {
                    packet_type: PacketType::StateManipulate,
                    payload,
                    ..
                } => {
                    if let Ok(req) = Manipulate::parse(&payload) {
                        self.manipulate(target, now, &req);
                    }
                }
                SessionEvent::BreakIn if self.running => {
                    target.interrupt();
                    self.stop(target, now, StopReason::Interrupted);
                }
                SessionEvent::SendFailed { .. } => self.solicit(now),
                _ => {}
            }
        }
    }

    fn next_state_change(&mut self, now: Duration) -> bool {
        let Some(sc) = self.pending.pop_front() else {
            return false;
        };
        self.stopped = true;
        self.send(now, PacketType::StateChange64, sc.to_bytes());
        true
    }

    fn state_change<T: Target + ?Sized>(target: &mut T, kind: &StateChangeKind) -> StateChange {
        let regs = target.registers().unwrap_or_default();
        let thread = Self::kernel(target).thread;
        let mut sc = StateChange::new(kind, 0, 1, thread, regs.rip);
        sc.set_processor_level(6);
        let mut stream = [0u8; 16];
        let count = target.read_memory(regs.rip, &mut stream).unwrap_or(0);
        sc.set_control_report(&ControlReport {
            dr6: 0,
            dr7: 0,
            eflags: (regs.rflags & 0xFFFF_FFFF) as u32,
            instruction_count: u16::try_from(count.min(stream.len())).unwrap_or(0),
            report_flags: 3,
            instruction_stream: stream,
            seg_cs: regs.cs,
            seg_ds: regs.ds,
            seg_es: regs.es,
            seg_fs: regs.fs,
        });
        sc
    }

    fn exception<T: Target + ?Sized>(target: &mut T, code: u32, address: u64) -> StateChange {
        let kind = StateChangeKind::Exception(Exception64 {
            code,
            flags: 0,
            record: 0,
            address,
            number_parameters: 1,
            information: [0; 15],
            first_chance: 1,
        });
        Self::state_change(target, &kind)
    }

    fn kernel<T: Target + ?Sized>(target: &mut T) -> KernelInfo {
        target
            .support_kernel()
            .map(|ops| ops.kernel())
            .unwrap_or_default()
    }

    fn stop<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration, reason: StopReason) {
        self.running = false;
        self.stopped = true;
        let (code, address) = match reason {
            StopReason::Breakpoint(addr) | StopReason::BreakInstruction(addr) => {
                (status::BREAKPOINT, addr)
            }
            StopReason::Trap if std::mem::take(&mut self.stepping) => (
                status::SINGLE_STEP,
                target.registers().unwrap_or_default().rip,
            ),
            _ => (
                status::BREAKPOINT,
                target.registers().unwrap_or_default().rip,
            ),
        };
        self.stepping = false;
        let sc = Self::exception(target, code, address);
        self.send(now, PacketType::StateChange64, sc.to_bytes());
    }

    fn resume<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration, step: bool) {
        if !self.stopped {
            return;
        }
        self.stopped = false;
        if self.next_state_change(now) {
            return;
        }
        let how = if step { Resume::Step } else { Resume::Continue };
        match target.resume(how) {
            Ok(()) => {
                self.running = true;
                self.stepping = step;
            }
            // It cannot run (or refuses): it stops where it is.
            Err(_) => self.stop(target, now, StopReason::Trap),
        }
    }

    fn manipulate<T: Target + ?Sized>(&mut self, target: &mut T, now: Duration, req: &Manipulate) {
        use ManipulateApi as M;
        let api = req.api();
        let reply = match api {
            M::Continue { .. } => return self.resume(target, now, false),
            M::Continue2 { trace_flag, .. } => return self.resume(target, now, trace_flag != 0),
            M::GetVersion(_) => {
                let k = Self::kernel(target);
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
                    kern_base: k.kern_base,
                    ps_loaded_module_list: k.ps_loaded_module_list,
                    debugger_data_list: k.debugger_data_list,
                };
                req.reply(status::SUCCESS, &M::GetVersion(v), Vec::new())
            }
            M::ReadVirtualMemory(t) => {
                let want = usize::try_from(t.count)
                    .unwrap_or(MAX_TRANSFER)
                    .min(MAX_TRANSFER);
                let mut buf = vec![0u8; want];
                let got = if want == 0 {
                    0
                } else {
                    target
                        .read_memory(t.address, &mut buf)
                        .unwrap_or(0)
                        .min(want)
                };
                buf.truncate(got);
                transfer_reply(req, t, want, got, M::ReadVirtualMemory, buf)
            }
            M::WriteVirtualMemory(t) => {
                let n = usize::try_from(t.count).unwrap_or(0).min(req.data().len());
                let data = req.data().get(..n).unwrap_or_default();
                let done = match target.write_memory(t.address, data) {
                    Ok(()) => n,
                    Err(_) => 0,
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
                let pattern = req.data().get(..n).unwrap_or_default();
                let end = address.saturating_add(length);
                match target.support_search() {
                    Some(ops) if !pattern.is_empty() => match ops.search(address, end, pattern) {
                        Ok(Some(hit)) => {
                            let found = M::SearchMemory {
                                address: hit,
                                length,
                                pattern_length,
                            };
                            req.reply(status::SUCCESS, &found, Vec::new())
                        }
                        Ok(None) => req.reply(status::NO_MORE_ENTRIES, &api, Vec::new()),
                        Err(_) => fail(req, &api),
                    },
                    Some(_) => req.reply(status::NO_MORE_ENTRIES, &api, Vec::new()),
                    None => fail(req, &api),
                }
            }
            M::GetContext { .. } => match target.registers() {
                Ok(regs) => req.reply(status::SUCCESS, &api, context::from_registers(&regs)),
                Err(_) => fail(req, &api),
            },
            M::SetContext { .. } => {
                let mut regs = target.registers().unwrap_or_default();
                let ok = context::to_registers(&mut regs, req.data()).is_some()
                    && target.write_registers(&regs).is_ok();
                if ok {
                    req.reply(status::SUCCESS, &api, Vec::new())
                } else {
                    fail(req, &api)
                }
            }
            M::WriteBreakPoint { address, .. } => {
                let inserted = target.support_breakpoints().is_some_and(|ops| {
                    ops.insert_breakpoint(address, BreakpointKind::Software)
                        .is_ok()
                });
                if inserted {
                    let handle = self.next_handle;
                    self.next_handle = self.next_handle.wrapping_add(1).max(1);
                    self.breakpoints.insert(handle, address);
                    req.reply(
                        status::SUCCESS,
                        &M::WriteBreakPoint { address, handle },
                        Vec::new(),
                    )
                } else {
                    fail(req, &api)
                }
            }
            M::RestoreBreakPoint { handle } => match self.breakpoints.remove(&handle) {
                Some(addr) => {
                    let still_used = self.breakpoints.values().any(|&a| a == addr);
                    if let Some(ops) = target.support_breakpoints().filter(|_| !still_used) {
                        let _ = ops.remove_breakpoint(addr, BreakpointKind::Software);
                    }
                    req.reply(status::SUCCESS, &api, Vec::new())
                }
                None => fail(req, &api),
            },
            M::ReadControlSpace(t) => {
                let k = Self::kernel(target);
                let pointer = |a: u64| (a != 0).then(|| a.to_le_bytes().to_vec());
                let data = match t.address {
                    0 => pointer(k.kpcr),
                    1 => pointer(k.kprcb),
                    2 => Some(vec![0u8; SPECIAL_REGISTERS_LEN]),
                    3 => pointer(k.thread),
                    ext::DEFAULT_RUN_SELECTOR => target
                        .support_run_limit()
                        .and_then(|ops| ops.default_run())
                        .map(|t| t.to_le_bytes().to_vec()),
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
                    match target.support_run_limit() {
                        Some(ops) => {
                            ops.set_run_limit(Some(le::u64_at(req.data(), 0)));
                            transfer_reply(req, t, 8, 8, M::WriteControlSpace, Vec::new())
                        }
                        None => fail(req, &api),
                    }
                }
                _ => fail(req, &api),
            },
            other => fail(req, &other),
        };
        self.send(now, PacketType::StateManipulate, reply.to_bytes());
    }
}

/// `STATUS_UNSUCCESSFUL`: what Windows answers a request it does not do.
fn fail(req: &Manipulate, api: &ManipulateApi) -> Manipulate {
    req.reply(status::UNSUCCESSFUL, api, Vec::new())
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
