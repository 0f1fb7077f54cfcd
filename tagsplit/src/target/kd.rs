//! The KD backend: a Windows kernel debugger client over KDNET (UDP) or KDCOM framing on
//! a TCP stream, implementing [`DebugTarget`].
//!
//! * `kdnet:port=N,key=K[,host=ADDR][,timeout=SECS]` listens on UDP port `N` as WinDbg
//!   does (`windbg -k net:port=N,key=K`) until the target pokes, answers the handshake
//!   and derives the data key. `host` picks the local address to bind (default
//!   `0.0.0.0`; `127.0.0.1` for loopback tests).
//! * `kdcom:HOST:PORT` connects to a serial port a VM exposes over TCP.
//!
//! On attach the target reports its modules (load-symbols state changes, each answered
//! with Continue) and then a breakpoint: from there the target is stopped and answers
//! manipulate-state requests. Memory reads and writes are chunked to the packet limit
//! ([`MAX_TRANSFER`] bytes); search uses `SearchMemory` with a read-and-scan fallback;
//! modules are read by walking `PsLoadedModuleList`; pool usage goes through
//! `DebuggerDataList` to the `KDBG` block. Runs of an exact number of ticks use the
//! simulator's [`ext::RUN_LIMIT_SELECTOR`]; a real target (which refuses it) is run for
//! wall-clock time and broken into.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use tagsplit_protocol::kd::{
    DebugIo, GetVersion64, MAX_TRANSFER, Manipulate, ManipulateApi, MemoryTransfer, PacketType,
    Payload, Role, Session, SessionConfig, SessionEvent, StateChangeKind, ext, status,
};
use tagsplit_protocol::kdnet::{Endpoint, EndpointConfig, EndpointEvent, Key};
use tagsplit_protocol::nt::layout::kdbg;
#[cfg(feature = "sim")]
use tagsplit_target_sim::machine::Machine;
#[cfg(feature = "sim")]
use tagsplit_target_sim::server::kd::{KdStub, KdStubHandle, KdStubOptions};

use super::X64Registers;
use super::record::{PcapRecorder, TargetKind, TcpFlow, Way, record_or_warn};
use super::{
    BlockCache, BoxedTarget, DebugTarget, Interrupt, KernelInfo, ModuleInfo, OpenError,
    OpenOptions, RunFor, StopReason, TargetError, WireStats, read_u64, search_by_reading,
    walk_module_list,
};
use crate::VirtAddr;

/// How long to wait for the target to attach, by default.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a reply to a request while nothing is heard from the target: a
/// wait ends this long after the last packet, acknowledgement or duplicate the target
/// sent (a slow but live link keeps the wait going; a dead one ends it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request ends after this many [`REQUEST_TIMEOUT`]s in all, however much the target
/// keeps sending meanwhile (a target that answers every request with damaged frames, or
/// with anything but the answer, must not hold the debugger forever).
pub const MAX_LIVE: u32 = 6;
/// The longest the target may be silent, a reply to an idempotent request outstanding,
/// before the request is sent again. The wait starts at [`REPLY_RESEND_FACTOR`] times
/// the link's retransmission timer for a maximal packet (at least [`MIN_REPLY_RESEND`])
/// and doubles for each time the same request is sent again, up to this.
pub const REPLY_RESEND: Duration = Duration::from_secs(1);
/// The shortest wait before an idempotent request is sent again.
pub const MIN_REPLY_RESEND: Duration = Duration::from_millis(20);
/// The first wait before an idempotent request is sent again, in retransmission timers:
/// a reading or writing target answers within its time to copy the bytes, so silence
/// this long means the reply was lost after the target thought it delivered (a reply
/// whose header was damaged without KDCOM's payload checksum noticing).
pub const REPLY_RESEND_FACTOR: u32 = 8;
/// The smallest memory transfer a KDCOM read shrinks to while packets keep failing.
pub const MIN_KDCOM_TRANSFER: usize = 256;
/// How many more times a read is made when its copies disagree, before it fails.
pub const MAX_VERIFY_READS: u32 = 6;
/// Reads in a row without a damaged packet after which a KDCOM link counts as clean again
/// ([`VerifyReads::WhileDamaged`]).
pub const CLEAN_READS: u32 = 64;

/// When reads are checked end to end by reading them twice ([`KdTarget::set_verify_reads`]).
///
/// KDCOM's checksum is a sum of the payload's bytes: two flips of the same bit in
/// opposite directions in one packet pass it (about one 4 KB packet in 250 at 1e-4 flips
/// per byte), and the data is silently wrong. A read made twice that gives the same bytes
/// both times is right unless both copies were damaged the same way. KDNET's datagrams are
/// authenticated (HMAC-SHA256): nothing to check there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyReads {
    /// While the link is damaging packets (a damaged packet came during one of the last
    /// [`CLEAN_READS`] reads): a clean link costs nothing. The default for KDCOM.
    #[default]
    WhileDamaged,
    /// Every read, however clean the link looks.
    Always,
    /// Never (the default for KDNET).
    Never,
}

enum Link {
    Kdcom {
        stream: TcpStream,
        session: Box<Session>,
        /// `--pcap`: the stream recorded as TCP segments (the waker records its break-in
        /// byte through a clone).
        flow: Option<TcpFlow>,
        /// A recording error was reported.
        warned: bool,
    },
    Kdnet {
        sock: UdpSocket,
        peer: Option<SocketAddr>,
        endpoint: Box<Endpoint>,
        /// Where wake-up datagrams come from ([`Link::waker`]): never KD traffic.
        waker_from: Option<SocketAddr>,
        /// `--pcap`: every datagram recorded as UDP.
        capture: Option<KdnetCapture>,
    },
}

/// KDNET datagrams recorded as UDP frames between the real addresses.
struct KdnetCapture {
    recorder: PcapRecorder,
    /// Our socket's address; an unspecified IP (bound to `0.0.0.0`) is replaced by the
    /// source address the system routes to the peer with.
    local: SocketAddr,
    /// The peer `local` was resolved for, and the result.
    resolved: Option<(SocketAddr, SocketAddr)>,
    warned: bool,
}

impl KdnetCapture {
    fn record(&mut self, way: Way, peer: SocketAddr, datagram: &[u8]) {
        let local = match self.resolved {
            Some((p, local)) if p == peer => local,
            _ => {
                let local = route_source(self.local, peer);
                self.resolved = Some((peer, local));
                local
            }
        };
        let result = self.recorder.udp_flow(local, peer).record(way, datagram);
        record_or_warn(result, &mut self.warned);
    }
}

/// `local` with an unspecified IP replaced by the address the system sends to `peer`
/// from (a connected UDP socket's local address: nothing is sent).
fn route_source(local: SocketAddr, peer: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let any = SocketAddr::new(local.ip(), 0);
    let ip = UdpSocket::bind(any)
        .and_then(|s| s.connect(peer).and_then(|()| s.local_addr()))
        .map_or(peer.ip(), |a| a.ip());
    SocketAddr::new(ip, local.port())
}

/// Writes a KDCOM unit to the stream, then records it when a capture is kept.
fn send_recorded(
    stream: &mut TcpStream,
    flow: Option<&TcpFlow>,
    warned: &mut bool,
    unit: &[u8],
) -> std::io::Result<()> {
    stream.write_all(unit)?;
    if let Some(flow) = flow {
        record_or_warn(flow.record(Way::Sent, unit), warned);
    }
    Ok(())
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Link::Kdcom {
            flow: Some(flow), ..
        } = self
        {
            let _ = flow.close();
        }
    }
}

impl Link {
    fn send(&mut self, now: Duration, ty: PacketType, payload: Vec<u8>) {
        match self {
            Link::Kdcom { session, .. } => session.send(now, ty, payload),
            Link::Kdnet { endpoint, .. } => endpoint.send(now, ty, payload),
        }
    }

    fn break_in(&mut self) {
        match self {
            Link::Kdcom { session, .. } => session.send_break_in(),
            Link::Kdnet { endpoint, .. } => endpoint.send_break_in(),
        }
    }

    /// The retransmission timer for a maximal packet now.
    fn retry_timer(&self) -> Duration {
        let len = tagsplit_protocol::kd::stream::MAX_BUFFERED;
        match self {
            Link::Kdcom { session, .. } => session.retry_timer(len),
            Link::Kdnet { endpoint, .. } => endpoint.session().retry_timer(len),
        }
    }

    /// When the session's next retransmission (or poke) is due, on its clock.
    fn next_timeout(&self) -> Option<Duration> {
        match self {
            Link::Kdcom { session, .. } => session.poll_timeout(),
            Link::Kdnet { endpoint, .. } => endpoint.poll_timeout(),
        }
    }

    /// What unblocks a [`pump`](Self::pump) from another thread: over KDCOM the break-in
    /// byte itself, written on a clone of the stream; over KDNET an empty datagram to our
    /// own socket (the break-in needs the session, so the woken pump sends it).
    fn waker(&mut self) -> Option<Box<dyn Fn() + Send + Sync>> {
        match self {
            Link::Kdcom { stream, flow, .. } => {
                let clone = stream.try_clone().ok()?;
                let flow = flow.clone();
                Some(Box::new(move || {
                    if (&clone).write_all(&[BREAKIN_PACKET_BYTE]).is_ok()
                        && let Some(flow) = &flow
                    {
                        let _ = flow.record(Way::Sent, &[BREAKIN_PACKET_BYTE]);
                    }
                }))
            }
            Link::Kdnet {
                sock, waker_from, ..
            } => {
                let mut to = sock.local_addr().ok()?;
                if to.ip().is_unspecified() {
                    to.set_ip(if to.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                let from = SocketAddr::new(to.ip(), 0);
                let waker = UdpSocket::bind(from).ok()?;
                *waker_from = Some(waker.local_addr().ok()?);
                Some(Box::new(move || {
                    let _ = waker.send_to(&[], to);
                }))
            }
        }
    }

    /// Flushes output, waits up to `wait` for input (precisely: see [`super::wait`]),
    /// handles timers; returns KD events.
    fn pump(
        &mut self,
        now: impl Fn() -> Duration,
        wait: Duration,
    ) -> Result<Vec<SessionEvent>, TargetError> {
        let wait = wait.max(Duration::from_millis(1));
        let mut events = Vec::new();
        match self {
            Link::Kdcom {
                stream,
                session,
                flow,
                warned,
            } => {
                while let Some(unit) = session.poll_transmit() {
                    send_recorded(stream, flow.as_ref(), warned, &unit)?;
                }
                stream.set_read_timeout(Some(wait))?;
                let mut buf = [0u8; 8192];
                let read = if super::wait::readable_within(super::wait::as_fd(stream), wait)? {
                    stream.read(&mut buf)
                } else {
                    Err(std::io::ErrorKind::WouldBlock.into())
                };
                match read {
                    Ok(0) => return Err(TargetError::Disconnected),
                    Ok(n) => {
                        let bytes = buf.get(..n).unwrap_or(&[]);
                        if let Some(flow) = flow {
                            record_or_warn(flow.record(Way::Received, bytes), warned);
                        }
                        session.handle_bytes(now(), bytes)
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                session.handle_timeout(now());
                while let Some(unit) = session.poll_transmit() {
                    send_recorded(stream, flow.as_ref(), warned, &unit)?;
                }
                events.extend(std::iter::from_fn(|| session.poll_event()));
            }
            Link::Kdnet {
                sock,
                peer,
                endpoint,
                waker_from,
                capture,
            } => {
                if let Some(p) = *peer {
                    while let Some(d) = endpoint.poll_transmit() {
                        sock.send_to(&d, p)?;
                        if let Some(c) = capture {
                            c.record(Way::Sent, p, &d);
                        }
                    }
                }
                sock.set_read_timeout(Some(wait))?;
                let mut buf = vec![0u8; 65536];
                let received = if super::wait::readable_within(super::wait::as_fd(sock), wait)? {
                    sock.recv_from(&mut buf)
                } else {
                    Err(std::io::ErrorKind::WouldBlock.into())
                };
                match received {
                    // Our own wake-up (an interrupt): not for the endpoint.
                    Ok((_, from)) if Some(from) == *waker_from => {}
                    Ok((n, from)) => {
                        let datagram = buf.get(..n).unwrap_or(&[]);
                        if let Some(c) = capture {
                            c.record(Way::Received, from, datagram);
                        }
                        endpoint.handle_datagram_from(now(), from, datagram);
                        let mut rejected = false;
                        while let Some(ev) = endpoint.poll_event() {
                            match ev {
                                EndpointEvent::Kd(k) => events.push(k),
                                EndpointEvent::Rejected(e) => {
                                    rejected = true;
                                    tracing::debug!("kdnet: dropped a datagram from {from}: {e}");
                                }
                                EndpointEvent::Connected { .. } => {
                                    tracing::info!("kdnet: target {from} connected");
                                }
                                _ => {}
                            }
                        }
                        if !rejected {
                            *peer = Some(from);
                        }
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                endpoint.handle_timeout(now());
                while let Some(ev) = endpoint.poll_event() {
                    if let EndpointEvent::Kd(k) = ev {
                        events.push(k);
                    }
                }
                if let Some(p) = *peer {
                    while let Some(d) = endpoint.poll_transmit() {
                        sock.send_to(&d, p)?;
                        if let Some(c) = capture {
                            c.record(Way::Sent, p, &d);
                        }
                    }
                }
            }
        }
        Ok(events)
    }

    fn stats(&self) -> WireStats {
        match self {
            Link::Kdcom { session, .. } => {
                let s = session.stats();
                WireStats {
                    packets_sent: s.packets_sent,
                    packets_received: s.packets_received,
                    bytes_sent: s.bytes_sent,
                    bytes_received: s.bytes_received,
                    round_trips: 0,
                    retransmissions: s.retransmissions,
                }
            }
            Link::Kdnet { endpoint, .. } => {
                let e = endpoint.stats();
                WireStats {
                    packets_sent: e.datagrams_sent,
                    packets_received: e.datagrams_received,
                    bytes_sent: e.bytes_sent,
                    bytes_received: e.bytes_received,
                    round_trips: 0,
                    retransmissions: endpoint.session().stats().retransmissions,
                }
            }
        }
    }
}

/// Requests that may be sent twice: they read, or write the same bytes again, and their
/// answers name the address they are for (so an answer to one cannot pass for another).
fn idempotent(api: &ManipulateApi) -> bool {
    matches!(
        api,
        ManipulateApi::ReadVirtualMemory(_) | ManipulateApi::WriteVirtualMemory(_)
    )
}

/// Whether `reply` answers the request `api`: the same API, and for a memory transfer
/// the same address.
fn answers(api: &ManipulateApi, reply: &Manipulate) -> bool {
    match (api, reply.api()) {
        (ManipulateApi::ReadVirtualMemory(a), ManipulateApi::ReadVirtualMemory(b))
        | (ManipulateApi::WriteVirtualMemory(a), ManipulateApi::WriteVirtualMemory(b)) => {
            a.address == b.address
        }
        // A hit lies in the searched range; a miss echoes the search (or, from a
        // target that clears the field, zero). A stale answer to an earlier search
        // would end this one early.
        (
            ManipulateApi::SearchMemory {
                address: from,
                length,
                ..
            },
            ManipulateApi::SearchMemory { address, .. },
        ) => {
            if reply.return_status() == status::SUCCESS {
                address >= *from && address - from < *length
            } else {
                address == *from || address == 0
            }
        }
        (a, b) => a.number() == b.number(),
    }
}

/// A read that timed out, or that a signal interrupted (EINTR): no data this time, try
/// again; never an error.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// The KD break-in byte (`b`), as the target polls for it while running.
const BREAKIN_PACKET_BYTE: u8 = 0x62;

/// A KD debugger connection to a stopped (or running) Windows kernel.
pub struct KdTarget {
    link: Link,
    start: Instant,
    spec: String,
    inbox: VecDeque<(PacketType, Vec<u8>)>,
    version: Option<GetVersion64>,
    kernel: Option<KernelInfo>,
    stopped: bool,
    last_stop: Option<u64>,
    /// The last stop was exception `0x80000003` at an `int 3` (the state change's
    /// instruction stream starts with `0xcc`).
    stopped_at_int3: bool,
    /// A break-in was sent since the last resume.
    sent_break_in: bool,
    breakpoints: BTreeMap<u64, u32>,
    run_limit: Option<bool>,
    default_run: RunFor,
    native_search: bool,
    round_trips: u64,
    prints: Vec<String>,
    /// Memory read while stopped; dropped on every write, breakpoint change and continue.
    /// Embedded rather than a [`CachedTarget`](super::CachedTarget) around this target:
    /// the KDBG lookup and the module walk read through `self` and must hit it too.
    cache: BlockCache,
    /// The module list, until a load-symbols state change says it changed.
    modules: Option<Vec<ModuleInfo>>,
    /// A loopback stub, stopped after the link is dropped (fields drop in order).
    #[cfg(feature = "sim")]
    stub: Option<KdStubHandle>,
    /// Set by the caller to break into a run ([`DebugTarget::set_interrupt`]).
    interrupt: Option<Interrupt>,
    /// When the target was last heard from (a packet, an ACK, a duplicate or a damaged
    /// packet).
    last_heard: Instant,
    /// Damaged or repeated packets seen and packets of ours sent again, so far.
    troubles: u64,
    /// The size of a read request: KDCOM halves it while packets keep failing (a large
    /// packet is more likely hit by a bit error) and doubles it back on success.
    transfer: usize,
    /// When reads are made twice.
    verify: VerifyReads,
    /// Reads whose copies disagreed (the link damaged data its checksum passed).
    read_mismatches: u64,
    /// KDCOM reads in a row during which no damaged packet came (capped at
    /// [`CLEAN_READS`]); a packet sent again because a timer fired early (a busy machine)
    /// is not damage.
    clean_reads: u32,
    /// Damaged packets received so far.
    damaged: u64,
}

impl std::fmt::Debug for KdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdTarget")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// A KDNET debugger socket waiting for a target to poke.
#[derive(Debug)]
pub struct KdnetListener {
    sock: UdpSocket,
    key: Key,
    spec: String,
}

impl KdnetListener {
    /// Binds the debugger's UDP socket (as `windbg -k net:port=…` does).
    pub fn bind(addr: SocketAddr, key: Key) -> Result<KdnetListener, TargetError> {
        let sock = UdpSocket::bind(addr)?;
        let local = sock.local_addr()?;
        Ok(KdnetListener {
            sock,
            key,
            spec: format!("kdnet:port={},key={}", local.port(), key),
        })
    }

    /// A listener on a socket the caller bound (and may keep a clone of, so that a later
    /// debugger can take over the very same port without a window in which another
    /// process could bind it).
    pub fn from_socket(sock: UdpSocket, key: Key) -> Result<KdnetListener, TargetError> {
        let local = sock.local_addr()?;
        Ok(KdnetListener {
            sock,
            key,
            spec: format!("kdnet:port={},key={}", local.port(), key),
        })
    }

    /// The bound address (the target pokes this).
    pub fn local_addr(&self) -> Result<SocketAddr, TargetError> {
        Ok(self.sock.local_addr()?)
    }

    /// Waits for a target to poke and attach; returns it stopped at its breakpoint.
    pub fn accept(self, timeout: Duration) -> Result<KdTarget, TargetError> {
        self.accept_recorded(timeout, None)
    }

    /// [`accept`](Self::accept), recording every datagram of the session into `pcap`
    /// (from the target's first poke on) as UDP between the real addresses and ports.
    pub fn accept_recorded(
        self,
        timeout: Duration,
        pcap: Option<PcapRecorder>,
    ) -> Result<KdTarget, TargetError> {
        let mut random = [0u8; 32];
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in random.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(0x9D);
        }
        let mut cfg = EndpointConfig::new(Role::Debugger, self.key, random);
        cfg.session = SessionConfig {
            retry_timeout: Duration::from_millis(200),
            max_retries: 50,
            check_payloads: true,
            implicit_acks: true,
            ..SessionConfig::kdnet(Role::Debugger)
        };
        let endpoint = Endpoint::new(cfg, Duration::ZERO);
        let local = self.sock.local_addr()?;
        let link = Link::Kdnet {
            sock: self.sock,
            peer: None,
            endpoint: Box::new(endpoint),
            waker_from: None,
            capture: pcap.map(|recorder| KdnetCapture {
                recorder,
                local,
                resolved: None,
                warned: false,
            }),
        };
        KdTarget::attach(link, self.spec, timeout)
    }
}

impl KdTarget {
    /// Connects to a KDCOM serial port exposed over TCP and attaches.
    pub fn connect_kdcom(addr: SocketAddr, timeout: Duration) -> Result<KdTarget, TargetError> {
        Self::connect_kdcom_recorded(addr, timeout, None)
    }

    /// [`connect_kdcom`](Self::connect_kdcom), recording the stream into `pcap` as TCP
    /// segments between the connection's real addresses (a handshake first, a FIN each
    /// way when the target is dropped).
    pub fn connect_kdcom_recorded(
        addr: SocketAddr,
        timeout: Duration,
        pcap: Option<PcapRecorder>,
    ) -> Result<KdTarget, TargetError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let flow = match pcap {
            Some(rec) => Some(rec.tcp_flow(stream.local_addr()?, stream.peer_addr()?, true)),
            None => None,
        };
        let session = Session::new(SessionConfig {
            retry_timeout: Duration::from_millis(500),
            max_retries: 20,
            check_payloads: true,
            // KDCOM does not checksum the header: one flipped id bit makes a stale packet
            // look new, so nothing is acknowledged implicitly.
            implicit_acks: false,
            ..SessionConfig::kdcom(Role::Debugger)
        });
        KdTarget::attach(
            Link::Kdcom {
                stream,
                session: Box::new(session),
                flow,
                warned: false,
            },
            format!("kdcom:{addr}"),
            timeout,
        )
    }

    fn attach(link: Link, spec: String, timeout: Duration) -> Result<KdTarget, TargetError> {
        // KDNET is authenticated: nothing to read twice.
        let verify = match link {
            Link::Kdcom { .. } => VerifyReads::WhileDamaged,
            Link::Kdnet { .. } => VerifyReads::Never,
        };
        let mut t = KdTarget {
            link,
            start: Instant::now(),
            spec,
            inbox: VecDeque::new(),
            version: None,
            kernel: None,
            stopped: false,
            last_stop: None,
            stopped_at_int3: false,
            sent_break_in: false,
            breakpoints: BTreeMap::new(),
            run_limit: None,
            default_run: RunFor::Time(Duration::from_secs(1)),
            native_search: true,
            round_trips: 0,
            prints: Vec::new(),
            modules: None,
            cache: BlockCache::new(),
            #[cfg(feature = "sim")]
            stub: None,
            interrupt: None,
            last_heard: Instant::now(),
            troubles: 0,
            transfer: MAX_TRANSFER,
            verify,
            read_mismatches: 0,
            clean_reads: CLEAN_READS,
            damaged: 0,
        };
        t.wait_stop(Instant::now() + timeout, false)?;
        // What the target is, and whether it understands tagsplit's run limit.
        let v = t.request(
            &ManipulateApi::GetVersion(GetVersion64::default()),
            Vec::new(),
        )?;
        if let ManipulateApi::GetVersion(v) = v.api() {
            t.version = Some(v);
        }
        let d = t.request(
            &ManipulateApi::ReadControlSpace(MemoryTransfer {
                address: ext::DEFAULT_RUN_SELECTOR,
                count: 8,
                actual: 0,
            }),
            Vec::new(),
        )?;
        if d.return_status() == status::SUCCESS && d.data().len() == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(d.data());
            t.default_run = RunFor::Ticks(u64::from_le_bytes(b));
            t.run_limit = Some(true);
        }
        Ok(t)
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Debug-I/O text the target printed so far.
    pub fn prints(&self) -> &[String] {
        &self.prints
    }

    /// The target's `DBGKD_GET_VERSION64`.
    pub fn version(&self) -> Option<&GetVersion64> {
        self.version.as_ref()
    }

    /// Pumps the link once; queues data packets in the inbox (prints are recorded).
    fn pump(&mut self, wait: Duration) -> Result<(), TargetError> {
        let start = self.start;
        let events = self.link.pump(move || start.elapsed(), wait)?;
        for ev in &events {
            if let SessionEvent::Packet {
                packet_type,
                id,
                payload,
            } = ev
            {
                tracing::trace!(
                    "kd: packet {} id {id:#x}, {} bytes",
                    packet_type.name(),
                    payload.len()
                );
            }
            match ev {
                SessionEvent::Packet { .. } | SessionEvent::Acknowledged { .. } => {
                    self.last_heard = Instant::now();
                }
                SessionEvent::Duplicate { .. } => {
                    self.last_heard = Instant::now();
                    self.troubles += 1;
                }
                SessionEvent::Corrupt(_) => {
                    // Damaged, but the target is alive and sending.
                    self.last_heard = Instant::now();
                    self.troubles += 1;
                    self.damaged += 1;
                }
                _ => {}
            }
        }
        for ev in events {
            match ev {
                SessionEvent::Packet {
                    packet_type: PacketType::DebugIo,
                    payload,
                    ..
                } => {
                    if let Ok(d) = DebugIo::parse(&payload) {
                        tracing::info!("target: {}", d.text().trim_end());
                        self.prints.push(d.text());
                    }
                }
                SessionEvent::Packet {
                    packet_type,
                    payload,
                    ..
                } => self.inbox.push_back((packet_type, payload)),
                SessionEvent::SendFailed { .. } => return Err(TargetError::Timeout),
                other => tracing::debug!("kd: {other:?}"),
            }
        }
        Ok(())
    }

    /// Waits for a data packet matching `pick`, until `deadline`. The link is read with
    /// a time-out of whichever comes first, the deadline or the session's next
    /// retransmission. With `interruptible`, a triggered [`Interrupt`] (whose waker
    /// unblocks the read) ends the wait with [`TargetError::Interrupted`].
    fn wait_for(
        &mut self,
        deadline: Instant,
        interruptible: bool,
        mut pick: impl FnMut(PacketType, &[u8]) -> bool,
    ) -> Result<(PacketType, Vec<u8>), TargetError> {
        loop {
            if let Some(found) = self
                .inbox
                .iter()
                .position(|(t, p)| pick(*t, p))
                .and_then(|i| self.inbox.remove(i))
            {
                return Ok(found);
            }
            if interruptible && super::interrupted(self.interrupt.as_ref()) {
                return Err(TargetError::Interrupted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TargetError::Timeout);
            }
            let timer = self
                .link
                .next_timeout()
                .map_or(left, |at| at.saturating_sub(self.now()));
            self.pump(left.min(timer))?;
        }
    }

    /// Waits until the target reports a stop (an exception); load-symbols changes on the
    /// way are acknowledged with Continue. Returns the exception address.
    fn wait_stop(&mut self, deadline: Instant, interruptible: bool) -> Result<u64, TargetError> {
        loop {
            let (_, payload) = self.wait_for(deadline, interruptible, |t, _| {
                t == PacketType::StateChange64
            })?;
            let Ok(Payload::StateChange(sc)) = Payload::parse(PacketType::StateChange64, &payload)
            else {
                continue;
            };
            match sc.kind() {
                StateChangeKind::Exception(e) => {
                    self.stopped = true;
                    self.last_stop = Some(e.address);
                    let report = sc.control_report();
                    self.stopped_at_int3 = e.code == status::BREAKPOINT
                        && report.instruction_count >= 1
                        && report.instruction_stream.first() == Some(&0xcc);
                    return Ok(e.address);
                }
                StateChangeKind::LoadSymbols(l) => {
                    tracing::debug!("target loaded {} at {:#x}", sc.path(), l.base_of_dll);
                    self.modules = None;
                    self.send_continue();
                }
                _ => self.send_continue(),
            }
        }
    }

    fn send_continue(&mut self) {
        // Memory changes while the target runs.
        self.cache.clear();
        let c = Manipulate::request(
            &ManipulateApi::Continue2 {
                status: status::DBG_CONTINUE,
                trace_flag: 0,
                dr7: 0x400,
                symbol_start: 0,
                symbol_end: 0,
            },
            Vec::new(),
        );
        let now = self.now();
        self.link
            .send(now, PacketType::StateManipulate, c.to_bytes());
        self.stopped = false;
    }

    /// Waits for a resumed target to stop: on its own within `exact` (plus a minute of
    /// slack) when the target bounds the run, else break in after `wall`; and break in
    /// as soon as the [`Interrupt`] is triggered ([`TargetError::Interrupted`] once the
    /// target has stopped). The interrupt's waker unblocks the read: nothing polls.
    fn wait_run(&mut self, exact: Option<Duration>, wall: Duration) -> Result<u64, TargetError> {
        let waker = match self.interrupt.clone() {
            Some(interrupt) => self.link.waker().map(|w| interrupt.on_trigger(w)),
            None => None,
        };
        let start = Instant::now();
        let mut deadline = match exact {
            Some(d) => start + Duration::from_secs(60).saturating_add(d),
            None => start + wall,
        };
        let mut broke_in = false;
        let result = loop {
            if !broke_in && exact.is_none() && Instant::now() >= start + wall {
                self.link.break_in();
                self.sent_break_in = true;
                broke_in = true;
                deadline = Instant::now() + REQUEST_TIMEOUT;
            }
            match self.wait_stop(deadline, !broke_in) {
                Err(TargetError::Interrupted) => {
                    // Over KDCOM the waker already sent the byte; once more does no harm.
                    self.link.break_in();
                    self.sent_break_in = true;
                    self.sent_break_in = true;
                    broke_in = true;
                    deadline = Instant::now() + REQUEST_TIMEOUT;
                }
                Err(TargetError::Timeout) if !broke_in && exact.is_none() => {}
                other => break other,
            }
        };
        drop(waker);
        match result {
            Ok(_) if super::interrupted(self.interrupt.as_ref()) => Err(TargetError::Interrupted),
            other => other,
        }
    }

    /// Sends a manipulate request and waits for its reply.
    pub fn request(
        &mut self,
        api: &ManipulateApi,
        data: Vec<u8>,
    ) -> Result<Manipulate, TargetError> {
        if !self.stopped {
            return Err(TargetError::Protocol("the target is running".into()));
        }
        tracing::trace!("kd: -> {api:?} ({} bytes)", data.len());
        let req = Manipulate::request(api, data);
        let bytes = req.to_bytes();
        // Replies to earlier requests (a re-sent one answered twice) are stale now.
        self.inbox
            .retain(|(t, _)| *t != PacketType::StateManipulate);
        let retry = idempotent(api);
        let started = Instant::now();
        let mut sent = started;
        let mut send = true;
        let mut resends = 0u32;
        loop {
            if send {
                sent = Instant::now();
                let now = self.now();
                self.link
                    .send(now, PacketType::StateManipulate, bytes.clone());
                self.round_trips += 1;
            }
            // Give up after REQUEST_TIMEOUT without a word from the target (a live but
            // lossy link keeps the request going). An idempotent request is sent again
            // after REPLY_RESEND of silence: its reply may have been lost after the
            // target thought it delivered (a flipped type bit, which KDCOM does not
            // checksum, turns a reply into debug output).
            // However much the target says meanwhile (damaged frames, duplicates, debug
            // output), a request ends by MAX_LIVE request time-outs.
            let hard = started + REQUEST_TIMEOUT.saturating_mul(MAX_LIVE);
            let give_up = (started.max(self.last_heard) + REQUEST_TIMEOUT).min(hard);
            let quiet = (self.link.retry_timer() * REPLY_RESEND_FACTOR)
                .max(MIN_REPLY_RESEND)
                .saturating_mul(1 << resends.min(8))
                .min(REPLY_RESEND);
            let quiet_until = sent.max(self.last_heard) + quiet;
            let wait_until = if retry {
                give_up.min(quiet_until)
            } else {
                give_up
            };
            match self.wait_for(wait_until, false, |t, p| {
                t == PacketType::StateManipulate
                    && Manipulate::parse(p).is_ok_and(|m| answers(api, &m))
            }) {
                Ok((_, payload)) => {
                    // A second answer to a copy sent again arrives before the answer to
                    // the next request (the target answers in order), and the next
                    // request drops it from the inbox before it is sent.
                    return Manipulate::parse(&payload)
                        .map_err(|e| TargetError::Protocol(e.to_string()));
                }
                Err(TargetError::Timeout)
                    if Instant::now()
                        < (started.max(self.last_heard) + REQUEST_TIMEOUT).min(hard) =>
                {
                    send = retry && Instant::now() >= sent.max(self.last_heard) + quiet;
                    if send {
                        resends = resends.saturating_add(1);
                        tracing::debug!("kd: no reply to {:?}, sending it again", api.number());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// When reads are checked end to end by reading them twice (see [`VerifyReads`]).
    pub fn set_verify_reads(&mut self, verify: VerifyReads) {
        self.verify = verify;
    }

    /// Reads whose two copies disagreed so far (each was read again until two agreed).
    pub fn read_mismatches(&self) -> u64 {
        self.read_mismatches
    }

    /// Whether the next read is made twice.
    fn verifying(&self) -> bool {
        match self.verify {
            VerifyReads::Always => true,
            VerifyReads::WhileDamaged => self.clean_reads < CLEAN_READS,
            VerifyReads::Never => false,
        }
    }

    /// Reads with `ReadVirtualMemory` requests of at most [`MAX_TRANSFER`] bytes (fewer
    /// while KDCOM packets keep failing), each made twice while [`VerifyReads`] says so.
    fn read_uncached(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let mut done = 0usize;
        while done < buf.len() {
            let want = (buf.len() - done).min(self.transfer);
            let at = addr.get().wrapping_add(done as u64);
            let verify = self.verifying();
            let mut data = self.read_once(at, want)?;
            if verify {
                let mut agreed = false;
                for _ in 0..MAX_VERIFY_READS {
                    let again = self.read_once(at, want)?;
                    if again == data {
                        agreed = true;
                        break;
                    }
                    self.read_mismatches += 1;
                    tracing::debug!("kd: two reads of {at:#x} disagree; reading it again");
                    data = again;
                }
                if !agreed {
                    return Err(TargetError::Protocol(format!(
                        "{} reads of {want} bytes at {at:#x} disagree: the link damages data \
                         in ways its checksum does not catch",
                        MAX_VERIFY_READS + 1
                    )));
                }
            }
            let got = data.len();
            if let Some(dst) = buf.get_mut(done..done + got) {
                dst.copy_from_slice(&data);
            }
            done += got;
            if got < want {
                break;
            }
        }
        Ok(done)
    }

    /// One `ReadVirtualMemory` of up to `want` bytes at `at`: the bytes read. Over KDCOM
    /// the transfer size halves when the exchange needed a packet again, and doubles when
    /// it did not.
    fn read_once(&mut self, at: u64, want: usize) -> Result<Vec<u8>, TargetError> {
        let troubles = self.troubles + self.link.stats().retransmissions;
        let damaged = self.damaged;
        let r = self.request(
            &ManipulateApi::ReadVirtualMemory(MemoryTransfer {
                address: at,
                count: u32::try_from(want).unwrap_or(0),
                actual: 0,
            }),
            Vec::new(),
        )?;
        let actual = match r.api() {
            ManipulateApi::ReadVirtualMemory(t) => usize::try_from(t.actual).unwrap_or(0),
            _ => 0,
        };
        if matches!(self.link, Link::Kdcom { .. }) {
            let failed = self.troubles + self.link.stats().retransmissions > troubles;
            self.clean_reads = if self.damaged > damaged {
                0
            } else {
                self.clean_reads.saturating_add(1).min(CLEAN_READS)
            };
            self.transfer = if failed {
                (self.transfer / 2).max(MIN_KDCOM_TRANSFER)
            } else {
                self.transfer.saturating_mul(2).min(MAX_TRANSFER)
            };
        }
        let got = actual.min(r.data().len()).min(want);
        Ok(r.data().get(..got).map(<[u8]>::to_vec).unwrap_or_default())
    }

    fn resolve_kdbg(&mut self, list: u64) -> Option<VirtAddr> {
        if list == 0 {
            return None;
        }
        let has_tag = |t: &mut KdTarget, block: u64| -> bool {
            let mut tag = [0u8; 4];
            let at = VirtAddr(block.wrapping_add(kdbg::OWNER_TAG_OFFSET));
            t.read_memory(at, &mut tag).is_ok_and(|n| n == 4) && tag == kdbg::OWNER_TAG
        };
        // DebuggerDataList is the list head; its Flink is the first KDBG block.
        if let Ok(first) = read_u64(self, VirtAddr(list))
            && has_tag(self, first)
        {
            return Some(VirtAddr(first));
        }
        has_tag(self, list).then_some(VirtAddr(list))
    }
}

impl DebugTarget for KdTarget {
    fn describe(&self) -> String {
        self.spec.clone()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        // Small reads (structure fields, names) go through the block cache.
        let mut cache = std::mem::take(&mut self.cache);
        let r = cache.read(addr, buf, |at, dst| self.read_uncached(at, dst));
        self.cache = cache;
        r
    }

    fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.read_uncached(addr, buf)
    }

    fn max_read(&self) -> usize {
        self.transfer
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.cache.clear();
        let mut done = 0usize;
        for chunk in data.chunks(MAX_TRANSFER) {
            let at = addr.get().wrapping_add(done as u64);
            let r = self.request(
                &ManipulateApi::WriteVirtualMemory(MemoryTransfer {
                    address: at,
                    count: u32::try_from(chunk.len()).unwrap_or(0),
                    actual: 0,
                }),
                chunk.to_vec(),
            )?;
            let actual = match r.api() {
                ManipulateApi::WriteVirtualMemory(t) => usize::try_from(t.actual).unwrap_or(0),
                _ => 0,
            };
            done += actual.min(chunk.len());
            if actual < chunk.len() {
                break;
            }
        }
        Ok(done)
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        if let Some(k) = self.kernel {
            return Ok(k);
        }
        let r = self.request(
            &ManipulateApi::GetVersion(GetVersion64::default()),
            Vec::new(),
        )?;
        let ManipulateApi::GetVersion(v) = r.api() else {
            return Err(TargetError::Protocol(
                "GetVersion reply without version".into(),
            ));
        };
        self.version = Some(v);
        let kdbg = self.resolve_kdbg(v.debugger_data_list);
        let k = KernelInfo {
            kern_base: VirtAddr(v.kern_base),
            ps_loaded_module_list: VirtAddr(v.ps_loaded_module_list),
            kdbg,
        };
        self.kernel = Some(k);
        Ok(k)
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        // KD announces every module load and unload with a load-symbols state change,
        // which drops this cache; in between, the list cannot change.
        if let Some(m) = &self.modules {
            return Ok(m.clone());
        }
        let k = self.kernel_info()?;
        if k.ps_loaded_module_list == VirtAddr(0) {
            return Err(TargetError::Unsupported(
                "a kernel module list (GetVersion reports no PsLoadedModuleList)",
            ));
        }
        let mods = walk_module_list(self, k.ps_loaded_module_list)?;
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
        let mut hits = Vec::new();
        if pattern.is_empty() || end <= start || max_hits == 0 {
            return Ok(hits);
        }
        if self.native_search && pattern.len() <= MAX_TRANSFER {
            let mut cursor = start.get();
            while cursor < end.get() && hits.len() < max_hits {
                let r = self.request(
                    &ManipulateApi::SearchMemory {
                        address: cursor,
                        length: end.get() - cursor,
                        pattern_length: u32::try_from(pattern.len()).unwrap_or(0),
                    },
                    pattern.to_vec(),
                )?;
                match (r.return_status(), r.api()) {
                    (status::SUCCESS, ManipulateApi::SearchMemory { address, .. })
                        if (cursor..end.get()).contains(&address) =>
                    {
                        hits.push(VirtAddr(address));
                        cursor = address.saturating_add(1);
                    }
                    (status::NO_MORE_ENTRIES, _) => return Ok(hits),
                    _ if hits.is_empty() => {
                        // The target has no SearchMemory: scan by reading.
                        self.native_search = false;
                        break;
                    }
                    _ => return Ok(hits),
                }
            }
            if self.native_search {
                return Ok(hits);
            }
        }
        search_by_reading(self, start, end, pattern, max_hits, MAX_TRANSFER)
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        if !self.stopped {
            return Err(TargetError::Protocol(
                "the target is already running".into(),
            ));
        }
        let exact = match how_long {
            RunFor::Ticks(n) if self.run_limit == Some(true) => {
                let r = self.request(
                    &ManipulateApi::WriteControlSpace(MemoryTransfer {
                        address: ext::RUN_LIMIT_SELECTOR,
                        count: 8,
                        actual: 0,
                    }),
                    n.to_le_bytes().to_vec(),
                )?;
                (r.return_status() == status::SUCCESS).then_some(n)
            }
            _ => None,
        };
        let wall = match how_long {
            RunFor::Time(d) => d,
            RunFor::Ticks(n) => Duration::from_millis(n),
        };
        self.send_continue();
        self.sent_break_in = false;
        let address = self.wait_run(exact.map(Duration::from_millis), wall)?;
        Ok(if self.breakpoints.contains_key(&address) {
            StopReason::Breakpoint(VirtAddr(address))
        } else if self.stopped_at_int3 && !self.sent_break_in {
            // The target's own `int 3` (a `PoolHitTag` check), not our break-in.
            StopReason::BreakInstruction(VirtAddr(address))
        } else {
            StopReason::BreakIn
        })
    }

    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    /// One `DbgKdGetContextApi` (0x3132) for the current processor: the reply's data is
    /// the AMD64 `CONTEXT` ([`tagsplit_protocol::kd::context`]), of which the integer,
    /// flag and segment registers are taken. A failed status or a `CONTEXT` shorter than
    /// its 0x4d0 bytes is a protocol error.
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        let r = self.request(&ManipulateApi::GetContext { unused: 0 }, Vec::new())?;
        if r.return_status() != status::SUCCESS {
            return Err(TargetError::Protocol(format!(
                "GetContext failed with {:#x}",
                r.return_status()
            )));
        }
        let mut regs = X64Registers::default();
        tagsplit_protocol::kd::context::to_registers(&mut regs, r.data()).ok_or_else(|| {
            TargetError::Protocol(format!(
                "GetContext returned {} bytes, not a {:#x}-byte CONTEXT",
                r.data().len(),
                tagsplit_protocol::kd::context::SIZE
            ))
        })?;
        Ok(regs)
    }

    /// `WriteBreakPoint`; the target returns a handle kept to restore it.
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        // A real target writes 0xCC there: forget what was read.
        self.cache.clear();
        let r = self.request(
            &ManipulateApi::WriteBreakPoint {
                address: addr.get(),
                handle: 0,
            },
            Vec::new(),
        )?;
        match (r.return_status(), r.api()) {
            (status::SUCCESS, ManipulateApi::WriteBreakPoint { handle, .. }) => {
                self.breakpoints.insert(addr.get(), handle);
                Ok(())
            }
            (st, _) => Err(TargetError::Protocol(format!(
                "WriteBreakPoint at {addr} failed with {st:#x}"
            ))),
        }
    }

    /// `RestoreBreakPoint` with the handle `WriteBreakPoint` returned.
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.cache.clear();
        let Some(handle) = self.breakpoints.remove(&addr.get()) else {
            return Ok(());
        };
        let r = self.request(&ManipulateApi::RestoreBreakPoint { handle }, Vec::new())?;
        if r.return_status() != status::SUCCESS {
            return Err(TargetError::Protocol(format!(
                "RestoreBreakPoint {handle} failed with {:#x}",
                r.return_status()
            )));
        }
        Ok(())
    }

    fn stats(&self) -> Option<WireStats> {
        let mut s = self.link.stats();
        s.round_trips = self.round_trips;
        Some(s)
    }

    fn default_run(&self) -> RunFor {
        self.default_run
    }
}

/// Which KD transport a loopback uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdTransport {
    /// KD over UDP with this key.
    Kdnet(Key),
    /// KDCOM framing over TCP.
    Kdcom,
}

#[cfg(feature = "sim")]
impl KdTarget {
    /// Serves `machine` with a KD stub on 127.0.0.1 and attaches to it: what
    /// `tagsplit demo --via kdnet|kdcom` and the same-answers tests use. The stub lives
    /// as long as the target (see [`stub`](Self::stub)).
    pub fn loopback(
        machine: Machine,
        transport: KdTransport,
        options: KdStubOptions,
    ) -> Result<KdTarget, TargetError> {
        Self::loopback_recorded(machine, transport, options, None)
    }

    /// [`loopback`](Self::loopback), recording the debugger's side of the traffic into
    /// `pcap` (as [`connect_kdcom_recorded`](Self::connect_kdcom_recorded) and
    /// [`KdnetListener::accept_recorded`] do).
    pub fn loopback_recorded(
        machine: Machine,
        transport: KdTransport,
        options: KdStubOptions,
        pcap: Option<PcapRecorder>,
    ) -> Result<KdTarget, TargetError> {
        let (mut target, stub) = match transport {
            KdTransport::Kdnet(key) => {
                let listener = KdnetListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), key)?;
                let host = listener.local_addr()?;
                let stub = KdStub::spawn_kdnet(machine, host, key, options)?;
                (
                    listener.accept_recorded(DEFAULT_ATTACH_TIMEOUT, pcap)?,
                    stub,
                )
            }
            KdTransport::Kdcom => {
                let stub = KdStub::spawn_kdcom(machine, options)?;
                (
                    KdTarget::connect_kdcom_recorded(stub.addr(), DEFAULT_ATTACH_TIMEOUT, pcap)?,
                    stub,
                )
            }
        };
        target.stub = Some(stub);
        Ok(target)
    }

    /// Boots `scenario` and serves it over loopback (the stub offers the scenario's
    /// default run length), then attaches.
    pub fn serve_scenario(
        scenario: &tagsplit_target_sim::scenario::Scenario,
        transport: KdTransport,
    ) -> Result<KdTarget, TargetError> {
        Self::serve_scenario_recorded(scenario, transport, None)
    }

    /// [`serve_scenario`](Self::serve_scenario), recording the debugger's side of the
    /// traffic into `pcap`.
    pub fn serve_scenario_recorded(
        scenario: &tagsplit_target_sim::scenario::Scenario,
        transport: KdTransport,
        pcap: Option<PcapRecorder>,
    ) -> Result<KdTarget, TargetError> {
        let machine = Machine::boot(scenario)
            .map_err(|e| TargetError::BadKernelData(format!("simulator failed to boot: {e}")))?;
        let options = KdStubOptions {
            default_run_ticks: Some(scenario.default_run_ticks()),
            ..KdStubOptions::default()
        };
        KdTarget::loopback_recorded(machine, transport, options, pcap)
    }

    /// The in-process stub of a [`loopback`](Self::loopback) target (and through it,
    /// the machine: ground truth for tests).
    pub fn stub(&self) -> Option<&KdStubHandle> {
        self.stub.as_ref()
    }
}

/// A parsed `kdnet:port=N,key=K[,host=ADDR][,timeout=SECS]` spec (the part after `kdnet:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KdnetSpec {
    /// The debugger's UDP port (0: any free port, printed when bound).
    pub port: u16,
    /// The key.
    pub key: Key,
    /// The address to bind (default 0.0.0.0).
    pub host: std::net::IpAddr,
    /// How long to wait for the target to attach.
    pub timeout: Duration,
}

impl KdnetSpec {
    /// Parses the part after `kdnet:`.
    pub fn parse(rest: &str) -> Result<KdnetSpec, OpenError> {
        let bad = |reason: String| OpenError::Bad {
            spec: format!("kdnet:{rest}"),
            reason,
        };
        let mut port = None;
        let mut key = None;
        let mut host = std::net::IpAddr::from([0, 0, 0, 0]);
        let mut timeout = DEFAULT_ATTACH_TIMEOUT;
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not name=value")))?;
            match k.trim() {
                "port" => port = Some(v.parse::<u16>().map_err(|e| bad(format!("port: {e}")))?),
                "key" => key = Some(v.parse::<Key>().map_err(|e| bad(format!("key: {e}")))?),
                "host" => host = v.parse().map_err(|e| bad(format!("host: {e}")))?,
                "timeout" => {
                    timeout = Duration::from_secs(
                        v.parse::<u64>().map_err(|e| bad(format!("timeout: {e}")))?,
                    )
                }
                other => return Err(bad(format!("unknown option {other:?}"))),
            }
        }
        Ok(KdnetSpec {
            port: port.ok_or_else(|| bad("port=N is required".into()))?,
            key: key.ok_or_else(|| bad("key=K is required".into()))?,
            host,
            timeout,
        })
    }
}

/// Opens `kdnet:port=N,key=K[,host=ADDR][,timeout=SECS]`, recording it as `record` says.
pub(crate) fn open_kdnet(rest: &str, record: &OpenOptions) -> Result<BoxedTarget, OpenError> {
    record.check(&format!("kdnet:{rest}"), TargetKind::Kd)?;
    let s = KdnetSpec::parse(rest)?;
    let pcap = record.open_pcap()?;
    let listener = KdnetListener::bind(SocketAddr::new(s.host, s.port), s.key)?;
    if s.port == 0
        && let Ok(addr) = listener.local_addr()
    {
        eprintln!("waiting for a KDNET target on {addr}");
    }
    Ok(Box::new(listener.accept_recorded(s.timeout, pcap)?))
}

/// Opens `kdcom:HOST:PORT`, recording it as `record` says.
pub(crate) fn open_kdcom(rest: &str, record: &OpenOptions) -> Result<BoxedTarget, OpenError> {
    use std::net::ToSocketAddrs;
    record.check(&format!("kdcom:{rest}"), TargetKind::Kd)?;
    let addr = rest
        .to_socket_addrs()
        .map_err(|e| OpenError::Bad {
            spec: format!("kdcom:{rest}"),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| OpenError::Bad {
            spec: format!("kdcom:{rest}"),
            reason: "no address".into(),
        })?;
    let pcap = record.open_pcap()?;
    Ok(Box::new(KdTarget::connect_kdcom_recorded(
        addr,
        DEFAULT_ATTACH_TIMEOUT,
        pcap,
    )?))
}
