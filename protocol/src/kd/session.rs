//! The KD reliability layer for both roles: packet ids, ACK/RESEND/RESET, duplicate
//! suppression and retries, sans-IO.
//!
//! Feed input with [`Session::handle_bytes`] (a KDCOM byte stream) or
//! [`Session::handle_packet`] (one KDNET datagram's payload), drive timers with
//! [`Session::handle_timeout`] at [`Session::poll_timeout`], and drain
//! [`Session::poll_transmit`] and [`Session::poll_event`]. Time is a `Duration` since any
//! fixed origin the caller picks.
//!
//! Two id schemes:
//! * [`IdScheme::Kdcom`]: the target's first packet carries `INITIAL|SYNC` (0x80800800);
//!   ACKs carry the id without SYNC; ids then alternate bit 0. Receivers deliver a packet
//!   whose id equals the expected id (or that carries SYNC, which resynchronises) and ACK
//!   but drop duplicates. On the debugger, a data packet whose id is none of INITIAL,
//!   INITIAL|1 (with or without SYNC) is damaged (KDCOM does not checksum the header) and
//!   asked for again.
//!   A debugger that keeps dropping new packets as duplicates
//!   ([`MAX_STRAY_DUPLICATES`] in a row) is out of step with its target and RESETs the
//!   link.
//! * [`IdScheme::Kdnet`]: target ids 0, 2, 4…, debugger ids 0x80000000 + 2k, ACKs echo
//!   the id; a packet with the id of the last delivered one is a duplicate.
//!   Packets travel one per datagram, without the `0xAA` trailer.

use std::collections::VecDeque;
use std::time::Duration;

use super::packet::{Leader, PacketType, Repr};
use super::stream::{StreamDecoder, StreamEvent};
use super::{BREAKIN_PACKET_BYTE, INITIAL_PACKET_ID, KdError, SYNC_PACKET_ID, le};
use crate::rto::{RtoBounds, RttEstimator};

/// The default floor of the adaptive retransmission timer.
pub const MIN_RETRY_TIMEOUT: Duration = Duration::from_millis(1);
/// The shortest time a KDCOM stream may stop in the middle of a packet before the
/// partial packet is given up (see [`Session::poll_timeout`]).
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_micros(500);
/// The default ceiling of the adaptive retransmission timer.
pub const MAX_RETRY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many data packets in a row a KDCOM debugger drops as duplicates although they
/// differ from the packet it delivered last (so they are not copies of it sent again
/// because its ACK was lost) before it takes the link to be out of step and RESETs it.
/// In step, the alternating ids put a debugger that missed one packet back in step with
/// the next; only ids gone wrong on both ends, or a target that will not follow them,
/// drop packet after packet.
pub const MAX_STRAY_DUPLICATES: u32 = 3;

/// Which end of the wire this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The debuggee (kernel side).
    Target,
    /// The debugger (host side).
    Debugger,
}

/// How packet ids are assigned and acknowledged (and how packets are framed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdScheme {
    /// KDCOM: INITIAL/SYNC, alternating bit 0; byte stream with `0xAA` trailers.
    Kdcom,
    /// KDNET: ids step by 2, debugger ids have bit 31 set; one packet per datagram.
    Kdnet,
}

/// Session parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// This end's role.
    pub role: Role,
    /// The id scheme (and framing).
    pub scheme: IdScheme,
    /// How long to wait for an ACK before sending again, until a round trip has been
    /// measured; from then on the timer adapts (see [`Session::retry_timer`]).
    pub retry_timeout: Duration,
    /// How many times a packet is re-sent before it is given up.
    pub max_retries: u32,
    /// Data packets queued behind the one in flight; a packet sent beyond this is
    /// dropped and counted ([`SessionStats::send_dropped`]). A peer that asks and never
    /// acknowledges the answers cannot grow the queue; a well-behaved one waits for each
    /// answer, so the queue holds a few packets at most.
    pub max_queued: usize,
    /// The adaptive timer's floor.
    pub min_retry_timeout: Duration,
    /// The adaptive timer's ceiling (also caps the back-off after time-outs).
    pub max_retry_timeout: Duration,
    /// Refuse (RESEND, no ACK) a data packet whose payload does not start with an API
    /// number of its packet type (state change, manipulate, debug I/O, file I/O), a
    /// packet of any other type whose payload starts with an API number of one of those,
    /// and one that carries a control type. KDCOM's checksum covers the payload only, so
    /// one flipped bit in the header can turn a reply into debug output, or a Continue
    /// into a packet of an unknown type; this catches both.
    pub check_payloads: bool,
    /// Take a new data packet from the peer that can only answer our packet in flight as
    /// its acknowledgement (KD is lock-step, and the peer's ACK may have been lost): on
    /// the debugger, a manipulate reply or a state change while a manipulate request (or
    /// Continue) is in flight; on the target, a manipulate request while a manipulate
    /// reply or a state change is in flight. Saves a retransmission timer per lost ACK.
    /// For KDNET, whose datagrams are authenticated: KDCOM does not checksum the header,
    /// and one flipped id bit makes a stale packet look new.
    pub implicit_acks: bool,
    /// The link's speed in bytes per second assumed until the time bytes need on it has
    /// been measured ([`RttEstimator::assume_rate`]). KDCOM: a 115,200-baud line
    /// ([`SERIAL_115200`](crate::rto::SERIAL_115200)), so the first large packet on a real
    /// serial line is not sent again while its bytes are still crossing it (3,944 bytes
    /// take 0.34 s); a faster link measures itself within the first exchanges. KDNET:
    /// none.
    pub assumed_rate: Option<u64>,
}

/// The default [`SessionConfig::max_queued`].
pub const DEFAULT_MAX_QUEUED: usize = 32;

impl SessionConfig {
    /// KDCOM defaults for `role`.
    pub fn kdcom(role: Role) -> SessionConfig {
        SessionConfig {
            role,
            scheme: IdScheme::Kdcom,
            retry_timeout: Duration::from_millis(500),
            max_retries: 20,
            max_queued: DEFAULT_MAX_QUEUED,
            min_retry_timeout: MIN_RETRY_TIMEOUT,
            max_retry_timeout: MAX_RETRY_TIMEOUT,
            check_payloads: false,
            implicit_acks: false,
            assumed_rate: Some(crate::rto::SERIAL_115200),
        }
    }

    /// KDNET defaults for `role`.
    pub fn kdnet(role: Role) -> SessionConfig {
        SessionConfig {
            scheme: IdScheme::Kdnet,
            assumed_rate: None,
            ..SessionConfig::kdcom(role)
        }
    }
}

/// What the session tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A new data packet from the peer (already acknowledged).
    Packet {
        /// `PacketType`.
        packet_type: PacketType,
        /// `PacketId`.
        id: u32,
        /// The payload.
        payload: Vec<u8>,
    },
    /// The debugger asked the target to stop.
    BreakIn,
    /// The peer reset the session; ids are back to their initial values.
    Reset,
    /// The peer acknowledged our packet with this id.
    Acknowledged {
        /// The id of our packet.
        id: u32,
    },
    /// A packet we already delivered arrived again; it was ACKed and dropped.
    Duplicate {
        /// Its id.
        id: u32,
    },
    /// A damaged packet arrived; a RESEND was sent.
    Corrupt(String),
    /// Bytes outside any packet were skipped.
    Noise {
        /// How many.
        bytes: usize,
    },
    /// KDNET's first data packet (type 0, 12 bytes): the target's hello.
    Hello {
        /// The raw bytes.
        bytes: Vec<u8>,
    },
    /// Our packet was given up after too many retries.
    SendFailed {
        /// Its type.
        packet_type: PacketType,
        /// Its id.
        id: u32,
    },
}

/// Traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Transmit units handed out (packets, control packets, break-ins).
    pub packets_sent: u64,
    /// Bytes handed out.
    pub bytes_sent: u64,
    /// Packets received (good ones, control included).
    pub packets_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Our data packets sent again (timeout, RESEND or RESET).
    pub retransmissions: u64,
    /// Duplicate packets dropped.
    pub duplicates: u64,
    /// Damaged packets seen.
    pub corrupt: u64,
    /// Data packets dropped because [`SessionConfig::max_queued`] were waiting.
    pub send_dropped: u64,
}

#[derive(Clone, Debug)]
struct InFlight {
    repr: Repr,
    deadline: Duration,
    retries: u32,
    /// When it was first sent (a round-trip sample is taken only for a packet that was
    /// never sent again, as Karn's algorithm says).
    sent_at: Duration,
    /// Its size on the wire.
    len: usize,
}

/// A KD session (one end).
#[derive(Clone, Debug)]
pub struct Session {
    config: SessionConfig,
    decoder: StreamDecoder,
    next_id: u32,
    expected_remote: u32,
    last_delivered: Option<u32>,
    queue: VecDeque<(PacketType, Vec<u8>)>,
    in_flight: Option<InFlight>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
    /// The debugger sent a RESET (its own or an answer) whose answer has not come.
    reset_sent: bool,
    stats: SessionStats,
    rtt: RttEstimator,
    /// When the last bytes came in (a KDCOM stream that stops mid-packet is resynced).
    last_rx: Duration,
    /// New data packets delivered so far.
    delivered: u64,
    /// A digest of the type and payload of the data packet delivered last.
    last_digest: Option<u64>,
    /// Data packets dropped as duplicates in a row that differ from the one delivered
    /// last (see [`MAX_STRAY_DUPLICATES`]).
    strays: u32,
}

impl Session {
    /// A fresh session.
    pub fn new(config: SessionConfig) -> Session {
        let mut rtt = RttEstimator::default();
        if let Some(rate) = config.assumed_rate {
            rtt.assume_rate(rate);
        }
        Session {
            config,
            decoder: StreamDecoder::new(),
            next_id: initial_send_id(config),
            expected_remote: INITIAL_PACKET_ID,
            last_delivered: None,
            queue: VecDeque::new(),
            in_flight: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            reset_sent: false,
            stats: SessionStats::default(),
            rtt,
            last_rx: Duration::ZERO,
            delivered: 0,
            last_digest: None,
            strays: 0,
        }
    }

    /// The retransmission timer for a packet of `len` bytes now: the configured
    /// `retry_timeout` until a round trip is measured, then the smoothed round trip plus
    /// four times its variation plus the time `len` bytes take on the link as measured,
    /// doubled for each time-out in a row, within `min_retry_timeout` and
    /// `max_retry_timeout`.
    pub fn retry_timer(&self, len: usize) -> Duration {
        let c = &self.config;
        self.rtt.timeout(
            &RtoBounds::new(c.retry_timeout, c.min_retry_timeout, c.max_retry_timeout),
            len,
        )
    }

    /// The smoothed round trip, once one has been measured.
    pub fn smoothed_rtt(&self) -> Option<Duration> {
        self.rtt.smoothed()
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Queues a data packet; it is sent when the previous one is acknowledged (dropped
    /// and counted if [`SessionConfig::max_queued`] are waiting already).
    pub fn send(&mut self, now: Duration, packet_type: PacketType, payload: Vec<u8>) {
        if self.queue.len() >= self.config.max_queued {
            self.stats.send_dropped = self.stats.send_dropped.saturating_add(1);
        } else {
            self.queue.push_back((packet_type, payload));
        }
        self.pump(now);
    }

    /// Bytes the session holds: the partial packet being decoded, the queued packets'
    /// payloads, the packet in flight and the transmit units not yet taken.
    pub fn queued_bytes(&self) -> usize {
        let queued: usize = self.queue.iter().map(|(_, p)| p.len()).sum();
        let transmit: usize = self.transmit.iter().map(Vec::len).sum();
        let in_flight = self.in_flight.as_ref().map_or(0, |f| f.repr.payload.len());
        self.decoder.buffered() + queued + transmit + in_flight
    }

    /// Events not yet polled.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is waiting for an ACK and nothing is queued.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queue.is_empty()
    }

    /// Sends the break-in byte (debugger role).
    pub fn send_break_in(&mut self) {
        self.push_transmit(vec![BREAKIN_PACKET_BYTE]);
    }

    /// Sends a RESET and returns ids to their initial values (a debugger does this on
    /// connect).
    pub fn reset(&mut self, now: Duration) {
        if self.config.scheme == IdScheme::Kdcom {
            self.reset_ids();
        }
        self.reset_sent = true;
        self.send_control(PacketType::Reset, self.reset_id());
        self.resend_in_flight(now, true);
    }

    /// Handles bytes from a KDCOM stream.
    pub fn handle_bytes(&mut self, now: Duration, bytes: &[u8]) {
        self.stats.bytes_received = self.stats.bytes_received.saturating_add(bytes.len() as u64);
        self.last_rx = now;
        self.decoder.push(bytes);
        self.decoded(now);
    }

    /// How long a KDCOM stream may stop in the middle of a packet before the partial
    /// packet is given up. Once a round trip is measured: the retransmission timer for
    /// the bytes still missing (the round trip, its variation and the time those bytes
    /// need on the link) with [`MIN_STALL_TIMEOUT`] for its floor instead of the sender's
    /// `min_retry_timeout`: before the sender would send the packet again, the receiver,
    /// which knows it is waiting, asks.
    /// A slow link that delivers a packet a piece at a time never waits that long
    /// between pieces. Before a round trip is measured: four retransmission timers for a
    /// maximal packet, at least 20 ms.
    fn stall_timeout(&self) -> Duration {
        if self.rtt.smoothed().is_none() {
            return (self.retry_timer(super::stream::MAX_BUFFERED) * 4)
                .max(Duration::from_millis(20));
        }
        let missing = self
            .decoder
            .missing()
            .unwrap_or(super::stream::MAX_BUFFERED);
        let c = &self.config;
        let bounds = RtoBounds::new(c.retry_timeout, MIN_STALL_TIMEOUT, c.max_retry_timeout);
        self.rtt.timeout(&bounds, missing)
    }

    /// When a partial packet is given up, if one is held.
    fn stall_deadline(&self) -> Option<Duration> {
        (self.config.scheme == IdScheme::Kdcom && self.decoder.buffered() > 0)
            .then(|| self.last_rx.saturating_add(self.stall_timeout()))
    }

    /// Handles what the stream decoder made of the bytes. A damaged packet is answered
    /// with one RESEND, unless a new data packet came through after it in the same bytes
    /// (the peer's next copy, already here: asking again would only bring a duplicate).
    fn decoded(&mut self, now: Duration) {
        let mut resend = false;
        while let Some(ev) = self.decoder.next_event() {
            match ev {
                StreamEvent::Packet(repr) => {
                    let before = self.delivered;
                    self.handle_repr(now, repr);
                    if self.delivered != before {
                        resend = false;
                    }
                }
                StreamEvent::BreakIn => self.events.push_back(SessionEvent::BreakIn),
                StreamEvent::Noise { bytes } => {
                    self.events.push_back(SessionEvent::Noise { bytes })
                }
                StreamEvent::BadChecksum { .. }
                | StreamEvent::BadTrailer { .. }
                | StreamEvent::TooLong { .. }
                | StreamEvent::MissingTrailer { .. } => {
                    self.note_corrupt(format!("{ev:?}"));
                    resend = true;
                }
            }
        }
        if resend {
            self.send_control(PacketType::Resend, 0);
        }
    }

    /// Handles the payload of one KDNET data datagram (one packet without trailer, or
    /// the break-in byte, or the 12-byte hello).
    pub fn handle_packet(&mut self, now: Duration, bytes: &[u8]) {
        self.stats.bytes_received = self.stats.bytes_received.saturating_add(bytes.len() as u64);
        if bytes == [BREAKIN_PACKET_BYTE] {
            self.events.push_back(SessionEvent::BreakIn);
            return;
        }
        if bytes.len() >= 4 && le::u32_at(bytes, 0) == 0 {
            self.events.push_back(SessionEvent::Hello {
                bytes: bytes.to_vec(),
            });
            if self.config.role == Role::Debugger {
                // WinDbg answers the hello with a RESEND so the target sends its packet.
                self.send_control(PacketType::Resend, 0);
            }
            return;
        }
        match Repr::parse_bytes(bytes) {
            Ok(repr) => self.handle_repr(now, repr),
            Err(e @ KdError::BadChecksum { .. }) => self.corrupt(e.to_string()),
            Err(e) => self.corrupt(e.to_string()),
        }
    }

    /// Handles a parsed packet.
    pub fn handle_repr(&mut self, now: Duration, repr: Repr) {
        self.stats.packets_received = self.stats.packets_received.saturating_add(1);
        match repr.leader {
            Leader::Control => self.handle_control(now, repr.packet_type, repr.id),
            Leader::Data => self.handle_data(now, repr),
        }
    }

    /// Re-sends or gives up the packet in flight when its timer has expired; resyncs a
    /// KDCOM stream that stopped in the middle of a packet (and asks for it again).
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.stall_deadline().is_some_and(|at| now >= at) {
            self.decoder.resync();
            self.last_rx = now;
            self.corrupt("the stream stopped in the middle of a packet".into());
            self.decoded(now);
        }
        let Some(f) = &self.in_flight else { return };
        if now < f.deadline {
            return;
        }
        if f.retries >= self.config.max_retries {
            let (packet_type, id) = (f.repr.packet_type, f.repr.id);
            self.in_flight = None;
            self.events
                .push_back(SessionEvent::SendFailed { packet_type, id });
            if self.config.scheme == IdScheme::Kdcom {
                self.next_id = initial_send_id(self.config) | SYNC_PACKET_ID;
            }
            self.pump(now);
            return;
        }
        self.rtt.back_off();
        self.resend_in_flight(now, false);
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let in_flight = self.in_flight.as_ref().map(|f| f.deadline);
        [in_flight, self.stall_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next unit to put on the wire (KDCOM bytes, or one KDNET datagram payload).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn handle_control(&mut self, now: Duration, ty: PacketType, id: u32) {
        if self.config.check_payloads
            && self.config.scheme == IdScheme::Kdcom
            && matches!(ty, PacketType::Reset | PacketType::Resend)
            && id & INITIAL_PACKET_ID == INITIAL_PACKET_ID
        {
            // KDCOM RESETs and RESENDs carry id 0 (WinDbg's RESET another constant), but
            // every ACK carries a packet id, which has these bits: this is an ACK whose
            // type bit flipped (the header is not checksummed), and obeying it would
            // reset both ends mid-request. Drop it; a timer sends our packet again.
            self.note_corrupt(format!(
                "{} carrying packet id {id:#x}: an ACK whose type was damaged",
                ty.name()
            ));
            return;
        }
        match ty {
            PacketType::Acknowledge => {
                let Some(f) = &self.in_flight else { return };
                let sent = f.repr.id;
                let matches = match self.config.scheme {
                    IdScheme::Kdcom => id == sent & !SYNC_PACKET_ID || id == sent,
                    IdScheme::Kdnet => id == sent,
                };
                if !matches {
                    return;
                }
                self.acknowledged(now);
            }
            PacketType::Resend => self.resend_in_flight(now, false),
            PacketType::Reset => {
                self.events.push_back(SessionEvent::Reset);
                if self.answers_ours() {
                    return;
                }
                if self.config.scheme == IdScheme::Kdcom {
                    self.reset_ids();
                }
                self.send_control(PacketType::Reset, self.reset_id());
                self.resend_in_flight(now, true);
            }
            _ => self.corrupt(format!("unexpected control packet {}", ty.name())),
        }
    }

    fn handle_data(&mut self, now: Duration, repr: Repr) {
        if self.config.check_payloads && !plausible(repr.packet_type, &repr.payload) {
            self.corrupt(format!(
                "{} packet whose payload is of another type",
                repr.packet_type.name()
            ));
            return;
        }
        let id = repr.id;
        if self.config.scheme == IdScheme::Kdcom
            && self.config.role == Role::Debugger
            && id & !(SYNC_PACKET_ID | 1) != INITIAL_PACKET_ID
        {
            // Not a KDCOM packet id: the header (which the checksum does not cover) is
            // damaged, or the target is hostile. Acknowledging it would not match what
            // the target sent, and taking its SYNC bit (0x80800000 one back is
            // 0x807fffff, which has it) would make every later id look like a
            // duplicate. Ask again. (The target role keeps acknowledging such packets
            // as duplicates, or delivering them under SYNC, as before: the KD fuzzer's
            // client, which sends mutated ids to our stub, counts on that.)
            self.corrupt(format!(
                "{} packet with id {id:#x}, not a KDCOM packet id",
                repr.packet_type.name()
            ));
            return;
        }
        let ack = match self.config.scheme {
            IdScheme::Kdcom => id & !SYNC_PACKET_ID,
            IdScheme::Kdnet => id,
        };
        self.send_control(PacketType::Acknowledge, ack);
        let fresh = match self.config.scheme {
            IdScheme::Kdcom => {
                if self.last_delivered == Some(id) {
                    false
                } else if id & SYNC_PACKET_ID != 0 || id == self.expected_remote {
                    self.expected_remote = (id & !SYNC_PACKET_ID) ^ 1;
                    true
                } else {
                    false
                }
            }
            IdScheme::Kdnet => self.last_delivered != Some(id),
        };
        let digest = digest(repr.packet_type, &repr.payload);
        if !fresh {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            self.events.push_back(SessionEvent::Duplicate { id });
            self.stray(now, digest);
            return;
        }
        self.strays = 0;
        self.last_digest = Some(digest);
        self.last_delivered = Some(id);
        self.delivered = self.delivered.wrapping_add(1);
        if self.config.implicit_acks && self.answers_in_flight(repr.packet_type) {
            self.acknowledged(now);
        }
        self.events.push_back(SessionEvent::Packet {
            packet_type: repr.packet_type,
            id,
            payload: repr.payload,
        });
    }

    /// Whether a RESET just received answers ours, and is taken without a word. The
    /// target answers every RESET (as the kernel does: the answer tells the debugger
    /// that both ends are back at their initial ids), so on the target it never does.
    /// The debugger answers only a RESET it did not ask for (one from a target that
    /// reset itself, or a stray one), and that answer counts as asking: the target's
    /// answer to it ends the exchange. Before, both roles answered every RESET they had
    /// not asked for and their answers did not count as asking, so one RESET seen by
    /// both ends (injected on the link, say) had each answer the other's answer without
    /// end. The answer to ours changes nothing here: our ids went back to their initial
    /// values when we sent our RESET and the packet in flight went again behind it, so
    /// the target got both in that order; resetting again would undo what crossed since
    /// (and have the target's packets that crossed delivered twice).
    fn answers_ours(&mut self) -> bool {
        match self.config.role {
            Role::Target => false,
            Role::Debugger => {
                let asked = self.reset_sent;
                self.reset_sent = !asked;
                asked
            }
        }
    }

    /// Counts a duplicate with this digest; a KDCOM debugger that dropped
    /// [`MAX_STRAY_DUPLICATES`] new packets in a row as duplicates RESETs the link (as a
    /// debugger does on connect): both ends go back to their initial ids, our packet in
    /// flight goes again behind the RESET, and the target's next packet carries SYNC.
    fn stray(&mut self, now: Duration, digest: u64) {
        if self.config.scheme != IdScheme::Kdcom
            || self.config.role != Role::Debugger
            || self.last_digest == Some(digest)
        {
            return;
        }
        self.strays = self.strays.saturating_add(1);
        if self.strays >= MAX_STRAY_DUPLICATES {
            self.strays = 0;
            self.note_corrupt(format!(
                "{MAX_STRAY_DUPLICATES} new packets in a row dropped as duplicates: the ids \
                 are out of step, resetting the link"
            ));
            self.reset(now);
        }
    }

    /// Whether a new data packet of type `ty` from the peer answers our packet in flight
    /// (see [`SessionConfig::implicit_acks`]).
    fn answers_in_flight(&self, ty: PacketType) -> bool {
        let Some(f) = &self.in_flight else {
            return false;
        };
        match self.config.role {
            Role::Debugger => {
                f.repr.packet_type == PacketType::StateManipulate
                    && matches!(ty, PacketType::StateManipulate | PacketType::StateChange64)
            }
            Role::Target => {
                matches!(
                    f.repr.packet_type,
                    PacketType::StateManipulate | PacketType::StateChange64
                ) && ty == PacketType::StateManipulate
            }
        }
    }

    /// Our packet in flight got through: the next one may go.
    fn acknowledged(&mut self, now: Duration) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let sent = f.repr.id;
        // Karn's algorithm: a packet sent again gives no sample (which copy was
        // acknowledged?), and the backed-off timer stays until one that was not gives
        // one. So a large packet on a slow link, sent again because the timer did not
        // yet know the time its bytes need, is soon given it.
        if f.retries == 0 {
            self.rtt.sample(now.saturating_sub(f.sent_at), f.len);
        }
        self.next_id = match self.config.scheme {
            IdScheme::Kdcom => (sent & !SYNC_PACKET_ID) ^ 1,
            IdScheme::Kdnet => sent.wrapping_add(2),
        };
        self.events
            .push_back(SessionEvent::Acknowledged { id: sent });
        self.pump(now);
    }

    /// KDCOM resets carry id 0; KDNET resets carry the sender's next id.
    fn reset_id(&self) -> u32 {
        match self.config.scheme {
            IdScheme::Kdcom => 0,
            IdScheme::Kdnet => self.next_id,
        }
    }

    fn corrupt(&mut self, what: String) {
        self.note_corrupt(what);
        self.send_control(PacketType::Resend, 0);
    }

    /// Counts and reports a damaged packet (without asking for it again).
    fn note_corrupt(&mut self, what: String) {
        self.stats.corrupt = self.stats.corrupt.saturating_add(1);
        self.events.push_back(SessionEvent::Corrupt(what));
    }

    fn reset_ids(&mut self) {
        self.next_id = initial_send_id(self.config);
        self.expected_remote = INITIAL_PACKET_ID;
        self.last_delivered = None;
    }

    fn resend_in_flight(&mut self, now: Duration, renumber: bool) {
        let next_id = self.next_id;
        let Some(len) = self.in_flight.as_ref().map(|f| f.len) else {
            return;
        };
        let timeout = self.retry_timer(len);
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        if renumber {
            f.repr.id = next_id;
        }
        f.retries = f.retries.saturating_add(1);
        f.deadline = now.saturating_add(timeout);
        let bytes = frame(self.config.scheme, &f.repr);
        self.stats.retransmissions = self.stats.retransmissions.saturating_add(1);
        self.push_transmit(bytes);
    }

    fn pump(&mut self, now: Duration) {
        if self.in_flight.is_some() {
            return;
        }
        let Some((packet_type, payload)) = self.queue.pop_front() else {
            return;
        };
        let repr = Repr::data(packet_type, self.next_id, payload);
        let bytes = frame(self.config.scheme, &repr);
        let len = bytes.len();
        self.in_flight = Some(InFlight {
            repr,
            deadline: now.saturating_add(self.retry_timer(len)),
            retries: 0,
            sent_at: now,
            len,
        });
        self.push_transmit(bytes);
    }

    fn send_control(&mut self, ty: PacketType, id: u32) {
        let bytes = frame(self.config.scheme, &Repr::control(ty, id));
        self.push_transmit(bytes);
    }

    fn push_transmit(&mut self, bytes: Vec<u8>) {
        self.stats.packets_sent = self.stats.packets_sent.saturating_add(1);
        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(bytes.len() as u64);
        self.transmit.push_back(bytes);
    }
}

/// The API numbers a data packet of `ty` starts with; `None` for types without a known
/// API range.
fn api_range(ty: PacketType) -> Option<std::ops::RangeInclusive<u32>> {
    match ty {
        PacketType::StateChange64 => Some(0x3030..=0x30ff),
        PacketType::StateManipulate => Some(0x3130..=0x31ff),
        PacketType::DebugIo => Some(0x3230..=0x32ff),
        PacketType::FileIo => Some(0x3430..=0x34ff),
        _ => None,
    }
}

/// The packet types whose payloads carry an API number.
const API_TYPES: [PacketType; 4] = [
    PacketType::StateChange64,
    PacketType::StateManipulate,
    PacketType::DebugIo,
    PacketType::FileIo,
];

/// Whether a data packet's payload fits its type: a type with an API range must start
/// with an API number in it; any other type must not start with an API number of one of
/// those types (one flipped bit turns `KD_STATE_MANIPULATE`, 2, into 0x22, a type nobody
/// handles, which would be acknowledged and dropped); control types never carry data.
fn plausible(ty: PacketType, payload: &[u8]) -> bool {
    if matches!(
        ty,
        PacketType::Acknowledge | PacketType::Resend | PacketType::Reset
    ) {
        return false;
    }
    let api = (payload.len() >= 4).then(|| le::u32_at(payload, 0));
    match api_range(ty) {
        Some(range) => api.is_some_and(|a| range.contains(&a)),
        None => !api.is_some_and(|a| {
            API_TYPES
                .iter()
                .filter_map(|t| api_range(*t))
                .any(|r| r.contains(&a))
        }),
    }
}

/// A digest (64-bit FNV-1a) of a data packet's type and payload, to tell a packet sent
/// again from a new one.
fn digest(ty: PacketType, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ty.value().to_le_bytes().iter().chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn frame(scheme: IdScheme, repr: &Repr) -> Vec<u8> {
    match scheme {
        IdScheme::Kdcom => repr.to_kdcom_bytes(),
        IdScheme::Kdnet => repr.to_bytes(),
    }
}

fn initial_send_id(config: SessionConfig) -> u32 {
    match (config.scheme, config.role) {
        (IdScheme::Kdcom, Role::Target) => INITIAL_PACKET_ID | SYNC_PACKET_ID,
        (IdScheme::Kdcom, Role::Debugger) => INITIAL_PACKET_ID,
        (IdScheme::Kdnet, Role::Target) => 0,
        (IdScheme::Kdnet, Role::Debugger) => 0x8000_0000,
    }
}
