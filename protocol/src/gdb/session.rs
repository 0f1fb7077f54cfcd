//! Session state machines for both ends of an RSP connection.
//!
//! Both are sans-IO: feed received bytes with `receive`, take decoded events with
//! `poll_event`, queue outgoing packets with `send`, and take the bytes to write with
//! [`poll_transmit`](ServerSession::poll_transmit). Acknowledgements are queued in the same
//! output buffer as replies, so a stub that handles a packet and then transmits once sends
//! the `+` and the reply in one write.

use std::collections::VecDeque;

use super::command::Command;
use super::frame::{
    ACK, DEFAULT_MAX_PACKET, Decoder, Event, INTERRUPT, NAK, encode_hex_packet_into,
    encode_packet_into,
};
use super::hex::encode_hex_into;
use super::reply::{Reply, ReplyError, ReplyKind, StopReply};

/// The default [`SessionConfig::max_events`].
pub const DEFAULT_MAX_EVENTS: usize = 64;
/// The default [`SessionConfig::max_transmit`]: 64 KiB, four maximal replies.
pub const DEFAULT_MAX_TRANSMIT: usize = 0x1_0000;

/// Settings shared by both session kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Frames longer than this (raw or decoded) are dropped as they arrive.
    pub max_packet: usize,
    /// How many times one packet is retransmitted on `-` before giving up.
    pub resend_limit: u32,
    /// Whether outgoing packets are run-length encoded.
    pub run_length: bool,
    /// Decoded events a session holds before [`receive_some`](ServerSession::receive_some)
    /// stops consuming input (backpressure): the consumer polls them first.
    pub max_events: usize,
    /// Bytes the transmit queue holds before
    /// [`receive_some`](ServerSession::receive_some) stops consuming input (the queue can
    /// pass it by what one call to `send` adds: the bound is checked before each packet).
    pub max_transmit: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_packet: DEFAULT_MAX_PACKET,
            resend_limit: 5,
            run_length: true,
            max_events: DEFAULT_MAX_EVENTS,
            max_transmit: DEFAULT_MAX_TRANSMIT,
        }
    }
}

/// Traffic counters of a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Packets sent (retransmissions not included).
    pub packets_sent: u64,
    /// Good packets and notifications received.
    pub packets_received: u64,
    /// Bytes queued for sending (frames, acks, interrupts).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Packets retransmitted after a `-`.
    pub retransmissions: u64,
    /// Frames received with a bad checksum.
    pub bad_checksums: u64,
    /// Frames dropped for being too long.
    pub oversize: u64,
    /// Bytes of line noise received.
    pub garbage_bytes: u64,
}

/// The ack and retransmit logic both ends share.
#[derive(Clone, Debug)]
struct Link {
    config: SessionConfig,
    decoder: Decoder,
    ack_mode: bool,
    out: Vec<u8>,
    /// The last frame sent, kept for retransmission until acknowledged (ack mode only).
    /// Empty when nothing awaits an ack.
    last_frame: Vec<u8>,
    /// Reused to encode reply payloads before framing.
    scratch: Vec<u8>,
    resends: u32,
    stats: SessionStats,
}

/// What the link made of one decoder event.
enum LinkEvent {
    Payload(Vec<u8>),
    /// A frame that failed its checksum or overran the packet limit (in ack mode it is
    /// NAKed and comes again).
    Damaged,
    Notification(Vec<u8>),
    Interrupt,
    GaveUp,
}

impl Link {
    fn new(config: SessionConfig) -> Self {
        Self {
            config,
            decoder: Decoder::new(config.max_packet),
            ack_mode: true,
            out: Vec::new(),
            last_frame: Vec::new(),
            scratch: Vec::new(),
            resends: 0,
            stats: SessionStats::default(),
        }
    }

    fn push_byte(&mut self, b: u8) {
        self.out.push(b);
        self.stats.bytes_sent += 1;
    }

    fn send_payload(&mut self, payload: &[u8]) {
        let start = self.out.len();
        encode_packet_into(payload, self.config.run_length, &mut self.out);
        self.sent_frame(start);
    }

    /// Queues a reply, encoded straight into the transmit queue: hex data through the
    /// SIMD hex framer, anything else through a reused scratch buffer (no allocation once
    /// warm).
    fn send_reply(&mut self, reply: &Reply) {
        match reply {
            Reply::Hex(data) => self.send_hex(data),
            _ => self.send_encoded(|payload| reply.encode_into(payload)),
        }
    }

    /// Queues the payload `encode` writes (into a reused scratch buffer), framed.
    fn send_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode(&mut scratch);
        self.send_payload(&scratch);
        self.scratch = scratch;
    }

    /// Queues `data` as a hex reply (what [`Reply::Hex`] sends) without owning it.
    fn send_hex(&mut self, data: &[u8]) {
        let start = self.out.len();
        encode_hex_packet_into(data, self.config.run_length, &mut self.out);
        self.sent_frame(start);
    }

    /// Counts the frame that now ends the transmit queue, from `start`, and keeps a copy
    /// for retransmission in ack mode.
    fn sent_frame(&mut self, start: usize) {
        let frame = self.out.get(start..).unwrap_or_default();
        self.stats.bytes_sent += frame.len() as u64;
        self.stats.packets_sent += 1;
        self.resends = 0;
        self.last_frame.clear();
        if self.ack_mode {
            self.last_frame.extend_from_slice(frame);
        }
    }

    /// Decodes `bytes` up to the end of the first event, handling acks, naks and
    /// checksums; returns how many bytes were consumed and what matters upstream.
    fn push(&mut self, bytes: &[u8]) -> (usize, Option<LinkEvent>) {
        let (used, ev) = self.decoder.push(bytes);
        self.stats.bytes_received += used as u64;
        (used, ev.and_then(|ev| self.on_event(ev)))
    }

    /// Whether the transmit queue is under its bound.
    fn can_transmit(&self) -> bool {
        self.out.len() < self.config.max_transmit
    }

    /// Bytes held: the transmit queue, the frame kept for retransmission and the
    /// partial frame being decoded.
    fn buffered(&self) -> usize {
        self.out.len() + self.last_frame.len() + self.decoder.buffered()
    }

    fn on_event(&mut self, ev: Event) -> Option<LinkEvent> {
        {
            match ev {
                Event::Packet(p) => {
                    self.stats.packets_received += 1;
                    if self.ack_mode {
                        self.push_byte(ACK);
                    }
                    return Some(LinkEvent::Payload(p));
                }
                Event::Notification(p) => {
                    self.stats.packets_received += 1;
                    return Some(LinkEvent::Notification(p));
                }
                Event::Ack => {
                    self.last_frame.clear();
                    self.resends = 0;
                }
                Event::Nak => {
                    if !self.last_frame.is_empty() {
                        if self.resends < self.config.resend_limit {
                            self.resends += 1;
                            self.stats.retransmissions += 1;
                            self.stats.bytes_sent += self.last_frame.len() as u64;
                            self.out.extend_from_slice(&self.last_frame);
                        } else {
                            self.last_frame.clear();
                            return Some(LinkEvent::GaveUp);
                        }
                    }
                }
                Event::Interrupt => return Some(LinkEvent::Interrupt),
                Event::BadChecksum { .. } => {
                    self.stats.bad_checksums += 1;
                    if self.ack_mode {
                        self.push_byte(NAK);
                    }
                    return Some(LinkEvent::Damaged);
                }
                Event::Oversize { .. } => {
                    self.stats.oversize += 1;
                    if self.ack_mode {
                        self.push_byte(NAK);
                    }
                    return Some(LinkEvent::Damaged);
                }
                Event::Garbage { len } => self.stats.garbage_bytes += len as u64,
            }
        }
        None
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// Moves the transmit queue into `out` (appended; an empty `out` just trades buffers,
    /// so both keep their capacity). Returns how many bytes were moved.
    fn transmit_into(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        if out.is_empty() {
            std::mem::swap(&mut self.out, out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
        n
    }
}

/// One command packet as received: its payload, parsed on demand (without allocating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandPacket(Vec<u8>);

impl CommandPacket {
    /// The command, borrowing from the payload.
    pub fn command(&self) -> Command<'_> {
        Command::parse(&self.0)
    }

    /// The payload (unescaped).
    pub fn payload(&self) -> &[u8] {
        &self.0
    }
}

/// What a [`ServerSession`] hands to the stub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A command to handle ([`CommandPacket::command`]); answer it with
    /// [`ServerSession::send`].
    Command(CommandPacket),
    /// The client sent the interrupt byte (stop the target if it runs).
    Interrupt,
    /// A reply was NAKed more often than the resend limit allows; the link is unreliable.
    GaveUp,
}

/// The stub side of a connection.
///
/// ```
/// use tagsplit_protocol::gdb::{Command, Reply, ServerEvent, ServerSession};
///
/// let mut session = ServerSession::default();
/// session.receive(b"$qAttached#8f");
/// let Some(ServerEvent::Command(packet)) = session.poll_event() else { panic!() };
/// assert_eq!(packet.command(), Command::Attached(None));
/// session.send(&Reply::Attached(true));
/// // The ack and the reply leave in one write.
/// assert_eq!(session.poll_transmit().unwrap(), b"+$1#31");
/// ```
#[derive(Clone, Debug)]
pub struct ServerSession {
    link: Link,
    events: VecDeque<ServerEvent>,
    running: bool,
    /// Commands handed out and replies sent, to match the `OK` to `QStartNoAckMode` even
    /// when commands arrive pipelined.
    commands_received: u64,
    replies_sent: u64,
    no_ack_command: Option<u64>,
    /// Payload bytes held in `events`.
    event_bytes: usize,
}

impl Default for ServerSession {
    fn default() -> Self {
        Self::new(SessionConfig::default())
    }
}

impl ServerSession {
    /// A session in ack mode with `config`.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            link: Link::new(config),
            events: VecDeque::new(),
            running: false,
            commands_received: 0,
            replies_sent: 0,
            no_ack_command: None,
            event_bytes: 0,
        }
    }

    /// Feeds bytes received from the client, all of them: the event queue grows with
    /// `bytes` (use [`receive_some`](Self::receive_some) to bound it).
    pub fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (used, ev) = self.link.push(bytes);
            self.on_link_event(ev);
            bytes = bytes.get(used..).unwrap_or_default();
        }
    }

    /// Feeds bytes received from the client while the session is under its bounds
    /// ([`wants_input`](Self::wants_input)); returns how many were consumed. The caller
    /// keeps the rest, polls events and transmits, and offers the rest again.
    #[must_use = "the bytes not consumed must be offered again"]
    pub fn receive_some(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while self.wants_input() {
            let Some(rest) = bytes.get(used..).filter(|r| !r.is_empty()) else {
                break;
            };
            let (n, ev) = self.link.push(rest);
            used += n;
            self.on_link_event(ev);
        }
        used
    }

    /// Whether fewer than [`SessionConfig::max_events`] events wait and the transmit
    /// queue is under [`SessionConfig::max_transmit`].
    pub fn wants_input(&self) -> bool {
        self.events.len() < self.link.config.max_events && self.link.can_transmit()
    }

    /// Bytes the session holds: the transmit queue, the frame kept for retransmission,
    /// the partial frame being decoded and the payloads of queued events.
    pub fn queued_bytes(&self) -> usize {
        self.link.buffered().saturating_add(self.event_bytes)
    }

    /// Decoded events not yet polled.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Bytes waiting in the transmit queue.
    pub fn queued_transmit(&self) -> usize {
        self.link.out.len()
    }

    fn on_link_event(&mut self, ev: Option<LinkEvent>) {
        match ev {
            Some(LinkEvent::Payload(p)) => {
                let cmd = Command::parse(&p);
                if cmd == Command::StartNoAckMode {
                    self.no_ack_command = Some(self.commands_received);
                }
                self.commands_received += 1;
                if cmd.resumes() {
                    self.running = true;
                }
                self.event_bytes += p.len();
                self.events
                    .push_back(ServerEvent::Command(CommandPacket(p)));
            }
            Some(LinkEvent::Interrupt) => self.events.push_back(ServerEvent::Interrupt),
            Some(LinkEvent::GaveUp) => self.events.push_back(ServerEvent::GaveUp),
            Some(LinkEvent::Notification(_) | LinkEvent::Damaged) | None => {}
        }
    }

    /// The next decoded event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        let ev = self.events.pop_front();
        if let Some(ServerEvent::Command(p)) = &ev {
            self.event_bytes = self.event_bytes.saturating_sub(p.0.len());
        }
        ev
    }

    /// Queues a reply (replies go out in command order). A stop reply ends the running
    /// state; the `OK` to `QStartNoAckMode` switches the session to no-ack mode once it is
    /// queued. `O` output is not a reply; it may precede one.
    pub fn send(&mut self, reply: &Reply) {
        self.link.send_reply(reply);
        if matches!(reply, Reply::Output(_)) {
            return;
        }
        if matches!(reply, Reply::Stop(_)) {
            self.running = false;
        }
        self.replied(*reply == Reply::Ok);
    }

    /// Queues a hex reply of `data` (what `send(&Reply::Hex(data.to_vec()))` sends,
    /// without the copy): the answer to `m`, `g` and `p`.
    pub fn send_hex(&mut self, data: &[u8]) {
        self.link.send_hex(data);
        self.replied(false);
    }

    /// Book-keeping after a reply: the `OK` to `QStartNoAckMode` ends ack mode.
    fn replied(&mut self, ok: bool) {
        if self.no_ack_command == Some(self.replies_sent) {
            self.no_ack_command = None;
            if ok {
                self.link.ack_mode = false;
                self.link.last_frame.clear();
            }
        }
        self.replies_sent += 1;
    }

    /// Queues `O` console output.
    pub fn send_output(&mut self, text: &[u8]) {
        self.link.send_encoded(|payload| {
            payload.push(b'O');
            encode_hex_into(text, payload);
        });
    }

    /// Hands a handled command's buffer back, so the next command is decoded into it
    /// rather than into a new allocation.
    pub fn recycle(&mut self, packet: CommandPacket) {
        self.link.decoder.recycle(packet.0);
    }

    /// Takes the bytes to write to the client, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.link.poll_transmit()
    }

    /// Moves the bytes to write to the client into `out` (appended), returning how many.
    /// With an empty `out` the session and the caller just trade buffers: a transport
    /// that reuses its `out` allocates nothing per reply.
    pub fn poll_transmit_into(&mut self, out: &mut Vec<u8>) -> usize {
        self.link.transmit_into(out)
    }

    /// Whether the target was resumed and no stop reply has been sent since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether packets are still acknowledged.
    pub fn ack_mode(&self) -> bool {
        self.link.ack_mode
    }

    /// Traffic counters.
    pub fn stats(&self) -> SessionStats {
        self.link.stats
    }
}

/// Whether `payload` starts like an `S`/`T` stop reply: the letter and two hex digits.
fn looks_like_stop(payload: &[u8]) -> bool {
    matches!(payload, [b'S' | b'T', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
}

/// What a [`ClientSession`] hands to the debugger.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The reply to the outstanding command.
    Reply(Reply),
    /// `O` console output (the command is still outstanding).
    Output(Vec<u8>),
    /// An asynchronous notification (`%Stop:…`).
    Notification(Vec<u8>),
    /// The reply did not parse as the kind the command gets.
    BadReply(ReplyError),
    /// A command was NAKed more often than the resend limit allows.
    GaveUp,
    /// The reply to a pipelined command (see [`ClientSession::send_pipelined`]) arrived
    /// damaged: a bad checksum or an oversize frame, in no-ack mode.
    Damaged,
    /// A stop reply while a command waits for a reply that cannot be one (`T02thread:01;`
    /// while `qSupported` waits): the stub says unasked that the target stopped, as QEMU
    /// does when a debugger connects. The command is still waiting.
    UnsolicitedStop(StopReply),
}

/// The debugger side of a connection.
#[derive(Clone, Debug)]
pub struct ClientSession {
    link: Link,
    events: VecDeque<ClientEvent>,
    /// The reply kinds of the commands still waiting for a reply, oldest first (more
    /// than one only while pipelining).
    pending: VecDeque<ReplyKind>,
    /// Whether the outstanding commands were sent with
    /// [`send_pipelined`](ClientSession::send_pipelined).
    pipelined: bool,
    no_ack_requested: bool,
    round_trips: u64,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new(SessionConfig {
            run_length: false,
            ..SessionConfig::default()
        })
    }
}

impl ClientSession {
    /// A session in ack mode with `config`.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            link: Link::new(config),
            events: VecDeque::new(),
            pending: VecDeque::new(),
            pipelined: false,
            no_ack_requested: false,
            round_trips: 0,
        }
    }

    /// Queues a command; its reply will be parsed as [`Command::reply_kind`]. It
    /// replaces any command still waiting for its reply (a command sent again after a
    /// lost reply, a barrier after stale ones): replies that come from now on are taken
    /// for this command's.
    pub fn send(&mut self, cmd: &Command) {
        self.link.send_payload(&cmd.encode());
        self.pending.clear();
        self.pending.push_back(cmd.reply_kind());
        self.pipelined = false;
        self.no_ack_requested = *cmd == Command::StartNoAckMode;
        self.round_trips += 1;
    }

    /// Queues a command behind those still waiting for their replies (pipelining, in
    /// no-ack mode: RSP stubs answer in order, one reply per command they received
    /// intact). Replies are matched to commands by position, so a frame that arrives
    /// damaged takes its command's place as [`ClientEvent::Damaged`]; a command the stub
    /// never received shifts every later reply, which only a count can show: the caller
    /// must see as many events as it sent commands, or drop them all. A burst of
    /// commands sent before any reply counts as one round trip.
    pub fn send_pipelined(&mut self, cmd: &Command) {
        self.link.send_payload(&cmd.encode());
        if self.pending.is_empty() || !self.pipelined {
            self.round_trips += 1;
            self.pending.clear();
        }
        self.pending.push_back(cmd.reply_kind());
        self.pipelined = true;
        self.no_ack_requested = false;
    }

    /// Queues the interrupt byte (while the target runs).
    pub fn send_interrupt(&mut self) {
        self.link.push_byte(INTERRUPT);
    }

    /// Feeds bytes received from the stub, all of them: the event queue grows with
    /// `bytes` (use [`receive_some`](Self::receive_some) to bound it).
    pub fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (used, ev) = self.link.push(bytes);
            self.on_link_event(ev);
            bytes = bytes.get(used..).unwrap_or_default();
        }
    }

    /// Feeds bytes received from the stub while fewer than
    /// [`SessionConfig::max_events`] events wait and the transmit queue is under
    /// [`SessionConfig::max_transmit`]; returns how many were consumed (offer the rest
    /// again after polling events).
    #[must_use = "the bytes not consumed must be offered again"]
    pub fn receive_some(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while self.events.len() < self.link.config.max_events && self.link.can_transmit() {
            let Some(rest) = bytes.get(used..).filter(|r| !r.is_empty()) else {
                break;
            };
            let (n, ev) = self.link.push(rest);
            used += n;
            self.on_link_event(ev);
        }
        used
    }

    /// Bytes the session holds: the transmit queue, the command kept for
    /// retransmission, the partial frame being decoded (events hold at most
    /// [`SessionConfig::max_events`] payloads of at most `max_packet` bytes each).
    pub fn queued_bytes(&self) -> usize {
        self.link.buffered()
    }

    /// Decoded events not yet polled.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Bytes waiting in the transmit queue.
    pub fn queued_transmit(&self) -> usize {
        self.link.out.len()
    }

    fn on_link_event(&mut self, ev: Option<LinkEvent>) {
        match ev {
            Some(LinkEvent::Payload(p)) => self.on_payload(&p),
            Some(LinkEvent::Notification(p)) => {
                self.events.push_back(ClientEvent::Notification(p));
            }
            Some(LinkEvent::GaveUp) => self.events.push_back(ClientEvent::GaveUp),
            // A damaged reply to a pipelined command takes its place; otherwise the
            // command is still waiting (ack mode NAKs it, no-ack mode's caller sees the
            // counters and sends the command again).
            Some(LinkEvent::Damaged) if self.pipelined && !self.link.ack_mode => {
                if self.pending.pop_front().is_some() {
                    self.events.push_back(ClientEvent::Damaged);
                }
            }
            Some(LinkEvent::Damaged | LinkEvent::Interrupt) | None => {}
        }
    }

    fn on_payload(&mut self, payload: &[u8]) {
        let kind = self.pending.front().copied().unwrap_or(ReplyKind::Raw);
        // A stop reply while no command waits, or where no reply of the kind waited for
        // can start with `T`/`S` and two hex digits: the stub says unasked that the target
        // stopped (QEMU does on connect, when it pauses the guest). Not the reply the
        // command waits for.
        let unasked = match self.pending.front() {
            None => true,
            Some(k) => !matches!(k, ReplyKind::Stop | ReplyKind::Raw),
        };
        if unasked
            && looks_like_stop(payload)
            && let Ok(Reply::Stop(stop)) = Reply::parse(ReplyKind::Stop, payload)
        {
            self.events.push_back(ClientEvent::UnsolicitedStop(stop));
            return;
        }
        match Reply::parse(kind, payload) {
            Ok(Reply::Output(text)) => self.events.push_back(ClientEvent::Output(text)),
            Ok(reply) => {
                self.pending.pop_front();
                // A reply also acknowledges the command.
                self.link.last_frame.clear();
                if std::mem::take(&mut self.no_ack_requested) && reply == Reply::Ok {
                    self.link.ack_mode = false;
                }
                self.events.push_back(ClientEvent::Reply(reply));
            }
            Err(e) => {
                self.pending.pop_front();
                self.events.push_back(ClientEvent::BadReply(e));
            }
        }
    }

    /// The next decoded event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Takes the bytes to write to the stub, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.link.poll_transmit()
    }

    /// Whether a command is waiting for its reply.
    pub fn awaiting_reply(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether packets are still acknowledged.
    pub fn ack_mode(&self) -> bool {
        self.link.ack_mode
    }

    /// Whether a frame is partly decoded: a reply is arriving (on a slow link, a long
    /// one takes a while).
    pub fn receiving(&self) -> bool {
        self.link.decoder.in_frame()
    }

    /// Round trips: commands sent with [`send`](Self::send), and bursts sent with
    /// [`send_pipelined`](Self::send_pipelined).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Traffic counters.
    pub fn stats(&self) -> SessionStats {
        self.link.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::frame::encode_packet;

    use crate::gdb::HexBytes;

    fn packet(cmd: Command<'_>) -> CommandPacket {
        CommandPacket(cmd.encode())
    }

    #[test]
    fn no_ack_switch_on_both_sides() {
        let mut client = ClientSession::default();
        let mut server = ServerSession::default();
        client.send(&Command::StartNoAckMode);
        server.receive(&client.poll_transmit().unwrap());
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Command(packet(Command::StartNoAckMode)))
        );
        assert!(server.ack_mode());
        server.send(&Reply::Ok);
        assert!(!server.ack_mode());
        let bytes = server.poll_transmit().unwrap();
        assert_eq!(bytes, b"+$OK#9a");
        client.receive(&bytes);
        assert_eq!(client.poll_event(), Some(ClientEvent::Reply(Reply::Ok)));
        assert!(!client.ack_mode());
        // The client still acks the OK itself, then never again.
        assert_eq!(client.poll_transmit().unwrap(), b"+");
        client.send(&Command::ReadRegisters);
        server.receive(&client.poll_transmit().unwrap());
        server.send(&Reply::Hex(vec![0; 4]));
        let bytes = server.poll_transmit().unwrap();
        assert_eq!(bytes.first(), Some(&b'$'), "no ack in no-ack mode");
        client.receive(&bytes);
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Reply(Reply::Hex(vec![0; 4])))
        );
        assert_eq!(client.poll_transmit(), None);
    }

    #[test]
    fn retransmits_on_nak_up_to_the_limit() {
        let mut server = ServerSession::new(SessionConfig {
            resend_limit: 2,
            ..SessionConfig::default()
        });
        server.receive(b"$g#67");
        server.send(&Reply::Ok);
        let first = server.poll_transmit().unwrap();
        assert_eq!(first, b"+$OK#9a");
        server.receive(b"-");
        assert_eq!(server.poll_transmit().unwrap(), b"$OK#9a");
        server.receive(b"-");
        assert_eq!(server.poll_transmit().unwrap(), b"$OK#9a");
        server.receive(b"-");
        assert_eq!(server.poll_transmit(), None);
        assert_eq!(
            server.poll_event(),
            Some(ServerEvent::Command(packet(Command::ReadRegisters)))
        );
        assert_eq!(server.poll_event(), Some(ServerEvent::GaveUp));
        assert_eq!(server.stats().retransmissions, 2);
        // After an ack nothing is retransmitted.
        server.send(&Reply::Ok);
        server.poll_transmit();
        server.receive(b"+-");
        assert_eq!(server.poll_transmit(), None);
    }

    #[test]
    fn bad_checksum_is_naked_and_interrupt_reported_while_running() {
        let mut server = ServerSession::default();
        server.receive(b"$g#00");
        assert_eq!(server.poll_transmit().unwrap(), b"-");
        assert_eq!(server.poll_event(), None);
        server.receive(&encode_packet(b"vCont;c", false));
        assert!(server.is_running());
        server.receive(&[INTERRUPT]);
        assert!(matches!(
            server.poll_event(),
            Some(ServerEvent::Command(p)) if matches!(p.command(), Command::VCont(_))
        ));
        assert_eq!(server.poll_event(), Some(ServerEvent::Interrupt));
        server.send(&Reply::Stop(crate::gdb::StopReply::thread(2, 1, None)));
        assert!(!server.is_running());
        assert_eq!(server.stats().bad_checksums, 1);
    }

    #[test]
    fn client_collects_monitor_output_then_ok() {
        let mut client = ClientSession::default();
        client.send(&Command::Monitor(HexBytes::raw(b"lm")));
        assert_eq!(
            client.poll_transmit().unwrap(),
            encode_packet(b"qRcmd,6c6d", false)
        );
        let mut bytes = b"+".to_vec();
        bytes.extend(encode_packet(b"O6869", true));
        bytes.extend(encode_packet(b"OK", true));
        client.receive(&bytes);
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Output(b"hi".to_vec()))
        );
        assert_eq!(client.poll_event(), Some(ClientEvent::Reply(Reply::Ok)));
        assert!(!client.awaiting_reply());
        assert_eq!(client.poll_transmit().unwrap(), b"++");
        assert_eq!(client.round_trips(), 1);
    }

    #[test]
    fn client_retransmits_its_command_on_nak() {
        let mut client = ClientSession::default();
        client.send(&Command::ReadMemory { addr: 0x10, len: 4 });
        let frame = client.poll_transmit().unwrap();
        client.receive(b"-");
        assert_eq!(client.poll_transmit().unwrap(), frame);
        assert_eq!(client.stats().retransmissions, 1);
    }

    /// A client in no-ack mode (the stub said `OK` to `QStartNoAckMode`).
    fn no_ack_client() -> ClientSession {
        let mut client = ClientSession::default();
        client.send(&Command::StartNoAckMode);
        client.poll_transmit();
        let mut bytes = b"+".to_vec();
        bytes.extend(encode_packet(b"OK", false));
        client.receive(&bytes);
        assert_eq!(client.poll_event(), Some(ClientEvent::Reply(Reply::Ok)));
        assert!(!client.ack_mode());
        client
    }

    #[test]
    fn pipelined_replies_are_taken_in_order_a_damaged_one_in_its_place() {
        let mut client = no_ack_client();
        let before = client.round_trips();
        client.send_pipelined(&Command::ReadMemory { addr: 0x10, len: 2 });
        client.send_pipelined(&Command::WriteMemory {
            addr: 0x20,
            data: HexBytes::raw(b"\x01"),
        });
        client.send_pipelined(&Command::ReadMemory { addr: 0x30, len: 1 });
        assert_eq!(
            client.round_trips(),
            before + 1,
            "one burst, one round trip"
        );
        assert!(client.awaiting_reply());
        let mut bytes = encode_packet(b"abcd", false);
        // The write's `OK`, damaged on the way (checksum of "OK" is 9a).
        bytes.extend_from_slice(b"$OK#00");
        bytes.extend(encode_packet(b"ff", false));
        client.receive(&bytes);
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Reply(Reply::Hex(vec![0xab, 0xcd])))
        );
        assert_eq!(client.poll_event(), Some(ClientEvent::Damaged));
        // Parsed as the third command's kind (hex), not as the write's.
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Reply(Reply::Hex(vec![0xff])))
        );
        assert!(!client.awaiting_reply());
        // A plain send after the burst is a round trip of its own, and replaces nothing
        // stale: a damaged frame then is not an event (the caller re-sends).
        client.send(&Command::ReadMemory { addr: 0x40, len: 1 });
        assert_eq!(client.round_trips(), before + 2);
        client.receive(b"$00#ff");
        assert_eq!(client.poll_event(), None);
        assert!(client.awaiting_reply());
    }

    #[test]
    fn an_unsolicited_stop_is_told_apart_from_the_reply() {
        let mut client = ClientSession::default();
        client.send(&Command::QSupported(crate::gdb::Features::new(b"swbreak+")));
        client.poll_transmit();
        let mut bytes = b"+".to_vec();
        bytes.extend(encode_packet(b"T02thread:01;", false));
        bytes.extend(encode_packet(b"PacketSize=1000", false));
        client.receive(&bytes);
        assert!(matches!(
            client.poll_event(),
            Some(ClientEvent::UnsolicitedStop(StopReply::Signal {
                signal: 2,
                ..
            }))
        ));
        assert!(matches!(
            client.poll_event(),
            Some(ClientEvent::Reply(Reply::Supported(_)))
        ));
        // To '?' a stop reply is the reply.
        client.send(&Command::HaltReason);
        client.receive(&encode_packet(b"T05thread:01;", false));
        assert!(matches!(
            client.poll_event(),
            Some(ClientEvent::Reply(Reply::Stop(_)))
        ));
    }
}
