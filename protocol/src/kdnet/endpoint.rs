//! One end of a KDNET connection, sans-IO: the control handshake, sequence numbers and
//! direction bits, sealing/opening, and a KD [`Session`] in the KDNET id scheme.
//!
//! The target pokes on the control channel every `poke_interval` until a debugger
//! answers; both sides then derive the data key, and KD packets flow on the data
//! channel, one per datagram. Feed datagrams with [`Endpoint::handle_datagram`], drive
//! timers with [`Endpoint::handle_timeout`], drain [`Endpoint::poll_transmit`] and
//! [`Endpoint::poll_event`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::control::{ControlMessage, Poke, Response};
use super::{Channel, DEFAULT_VERSION, KdnetError, Key, Keys, Message};
use crate::kd::{PacketType, Role, Session, SessionConfig, SessionEvent};

/// Endpoint parameters.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Target or debugger.
    pub role: Role,
    /// The key string's bytes.
    pub key: Key,
    /// KDNET version byte to send (the debugger echoes the target's).
    pub version: u8,
    /// How often the target pokes until answered.
    pub poke_interval: Duration,
    /// Retry settings of the KD session.
    pub session: SessionConfig,
    /// Target: the nonce of the first poke (byte 0 increments per poke).
    /// Debugger: the 32 random bytes of the response.
    pub random: [u8; 32],
    /// Target: its own address, reported in pokes.
    pub local: SocketAddr,
    /// Target: the debugger host address it was configured with.
    pub peer: SocketAddr,
}

impl EndpointConfig {
    /// Defaults for `role` with `key`; `random` should be unpredictable on a real network.
    pub fn new(role: Role, key: Key, random: [u8; 32]) -> EndpointConfig {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        EndpointConfig {
            role,
            key,
            version: DEFAULT_VERSION,
            poke_interval: Duration::from_millis(500),
            session: SessionConfig::kdnet(role),
            random,
            local: unspecified,
            peer: unspecified,
        }
    }
}

/// What an endpoint reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointEvent {
    /// The handshake completed; the data channel is up.
    Connected {
        /// The derived data key.
        data_key: [u8; 32],
    },
    /// A KD session event (packets, break-in, resets …).
    Kd(SessionEvent),
    /// A datagram was dropped (bad tag, wrong channel, no key yet …).
    Rejected(KdnetError),
}

/// Datagram counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received (authenticated or not).
    pub datagrams_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Datagrams rejected, for any reason (the fields below break some reasons out).
    pub rejected: u64,
    /// Rejected because they did not authenticate (wrong key, forged or damaged tag,
    /// bad length or padding).
    pub rejected_auth: u64,
    /// Rejected as replays: a data sequence number not above the highest accepted.
    pub rejected_replay: u64,
    /// Rejected because they came from an address other than the peer's.
    pub rejected_peer: u64,
    /// Rejected because they were marked as going the other way.
    pub rejected_direction: u64,
}

/// One end of a KDNET connection.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    keys: Keys,
    connected: bool,
    /// Target: poking for a (new) debugger while still connected to the old one.
    soliciting: bool,
    /// Debugger: an authenticated data datagram arrived since connecting (the target
    /// has our response), so further pokes come from another session and are ignored.
    data_seen: bool,
    next_poke: Duration,
    pokes: u64,
    control_seq: u64,
    data_seq: u64,
    nonce: Option<[u8; 32]>,
    /// The highest data sequence number accepted from the peer on this connection.
    data_seq_in: u64,
    /// Debugger: the address of the target that poked (learned from its poke).
    peer: Option<SocketAddr>,
    session: Session,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<EndpointEvent>,
    stats: EndpointStats,
}

impl Endpoint {
    /// A new endpoint; a target sends its first poke at `now`.
    pub fn new(config: EndpointConfig, now: Duration) -> Endpoint {
        let keys = Keys::new(config.key);
        let session = Session::new(config.session);
        Endpoint {
            config,
            keys,
            connected: false,
            soliciting: false,
            data_seen: false,
            next_poke: now,
            pokes: 0,
            control_seq: 0,
            data_seq: 0,
            nonce: None,
            data_seq_in: 0,
            peer: None,
            session,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// Whether the data channel is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The KD session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Datagram counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// The data key, once connected.
    pub fn data_key(&self) -> Option<&[u8; 32]> {
        self.keys.data_key()
    }

    /// Queues a KD data packet (sent once connected).
    pub fn send(&mut self, now: Duration, packet_type: PacketType, payload: Vec<u8>) {
        self.session.send(now, packet_type, payload);
        self.flush_session();
    }

    /// Sends the break-in datagram (debugger).
    pub fn send_break_in(&mut self) {
        self.session.send_break_in();
        self.flush_session();
    }

    /// Sends a KD RESET (a debugger does this after connecting).
    pub fn reset(&mut self, now: Duration) {
        self.session.reset(now);
        self.flush_session();
    }

    /// Target: starts poking again while staying connected, so a new debugger can take
    /// over (the current one stops it by sending anything on the data channel).
    pub fn solicit(&mut self, now: Duration) {
        if self.config.role == Role::Target && !self.soliciting {
            self.soliciting = true;
            self.next_poke = now;
        }
    }

    /// Whether the target is poking for a new debugger while connected.
    pub fn is_soliciting(&self) -> bool {
        self.soliciting
    }

    /// Whether the KD session has nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.session.is_idle()
    }

    /// Handles one received UDP payload whose source address is unknown (a capture, a
    /// test): everything but the source check of
    /// [`handle_datagram_from`](Self::handle_datagram_from).
    pub fn handle_datagram(&mut self, now: Duration, bytes: &[u8]) {
        self.receive(now, None, bytes);
    }

    /// Handles one UDP payload received from `from`. Dropped, counted in
    /// [`stats`](Self::stats) and reported as [`EndpointEvent::Rejected`] (never passed
    /// to the KD session): a datagram that does not authenticate under the key; one marked
    /// as going the other way; one from an address other than the peer's (the target
    /// knows its debugger host; a debugger learns its target from the poke it answers,
    /// and a new poke starts a new connection); and a data datagram whose sequence
    /// number is not above the highest one accepted on this connection (a replay).
    pub fn handle_datagram_from(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.receive(now, Some(from), bytes);
    }

    fn receive(&mut self, now: Duration, from: Option<SocketAddr>, bytes: &[u8]) {
        self.stats.datagrams_received = self.stats.datagrams_received.saturating_add(1);
        self.stats.bytes_received = self.stats.bytes_received.saturating_add(bytes.len() as u64);
        let msg = match self.keys.open(bytes) {
            Ok(m) => m,
            Err(e) => return self.reject(e),
        };
        let from_debugger = self.config.role == Role::Target;
        if msg.from_debugger != from_debugger {
            // Our own direction reflected back, or forged: ignore.
            return self.reject(KdnetError::WrongDirection);
        }
        let expected = match self.config.role {
            Role::Target => Some(self.config.peer).filter(|p| p.port() != 0),
            Role::Debugger if msg.channel == Channel::Data => self.peer,
            // A poke may come from a new target: it starts a new connection.
            Role::Debugger => None,
        };
        if let (Some(from), Some(peer)) = (from, expected)
            && from != peer
        {
            return self.reject(KdnetError::WrongPeer { from, peer });
        }
        match msg.channel {
            Channel::Control => self.handle_control(&msg, from),
            Channel::Data => {
                if msg.seq <= self.data_seq_in {
                    return self.reject(KdnetError::Replayed {
                        seq: msg.seq,
                        highest: self.data_seq_in,
                    });
                }
                self.data_seq_in = msg.seq;
                // The current debugger is alive: stop soliciting a new one.
                self.soliciting = false;
                self.data_seen = true;
                self.session.handle_packet(now, &msg.payload);
                while let Some(ev) = self.session.poll_event() {
                    self.events.push_back(EndpointEvent::Kd(ev));
                }
                self.flush_session();
            }
        }
    }

    fn handle_control(&mut self, msg: &Message, from: Option<SocketAddr>) {
        match (self.config.role, ControlMessage::parse(&msg.payload)) {
            (Role::Debugger, ControlMessage::Poke(_)) if self.connected && self.data_seen => {
                // Our target already talks to us on the data channel.
            }
            (Role::Debugger, ControlMessage::Poke(poke)) => {
                self.config.version = msg.version;
                let resp = Response::new(poke.nonce, self.config.random);
                let body = resp.to_bytes();
                self.seal_push(Message::new(
                    Channel::Control,
                    msg.version,
                    msg.seq,
                    true,
                    body,
                ));
                let fresh = self.nonce != Some(poke.nonce);
                self.nonce = Some(poke.nonce);
                let key = resp.data_key(self.keys.initial());
                self.keys.set_data_key(key);
                if fresh {
                    self.data_seq = 0;
                    self.data_seq_in = 0;
                    self.peer = from;
                    self.connected = true;
                    self.events
                        .push_back(EndpointEvent::Connected { data_key: key });
                }
                self.flush_session();
            }
            (Role::Target, ControlMessage::Response(resp)) => {
                if (self.connected && !self.soliciting) || self.nonce != Some(resp.nonce) {
                    return;
                }
                let key = resp.data_key(self.keys.initial());
                self.keys.set_data_key(key);
                if self.connected {
                    // A new debugger answered: a fresh KD session for it.
                    self.session = Session::new(self.config.session);
                }
                self.connected = true;
                self.soliciting = false;
                self.data_seq = 0;
                self.data_seq_in = 0;
                self.events
                    .push_back(EndpointEvent::Connected { data_key: key });
                // The hello: a 12-byte pseudo header carrying the host's IPv4 address.
                let mut hello = vec![0u8; 8];
                if let std::net::IpAddr::V4(v4) = self.config.peer.ip() {
                    let mut o = v4.octets();
                    o.reverse();
                    hello.extend_from_slice(&o);
                } else {
                    hello.extend_from_slice(&[0; 4]);
                }
                self.seal_data(hello);
                self.flush_session();
            }
            _ => self.reject(KdnetError::BadControl),
        }
    }

    /// Fires the poke timer and the KD retry timer.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.config.role == Role::Target
            && (!self.connected || self.soliciting)
            && now >= self.next_poke
        {
            self.poke(now);
        }
        self.session.handle_timeout(now);
        while let Some(ev) = self.session.poll_event() {
            self.events.push_back(EndpointEvent::Kd(ev));
        }
        self.flush_session();
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let poke = (self.config.role == Role::Target && (!self.connected || self.soliciting))
            .then_some(self.next_poke);
        let kd = if self.connected {
            self.session.poll_timeout()
        } else {
            None
        };
        [poke, kd].into_iter().flatten().min()
    }

    /// Bytes the endpoint holds: its KD session's ([`Session::queued_bytes`]) and the
    /// sealed datagrams not yet taken.
    pub fn queued_bytes(&self) -> usize {
        let transmit: usize = self.transmit.iter().map(Vec::len).sum();
        self.session.queued_bytes().saturating_add(transmit)
    }

    /// Events not yet polled.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let d = self.transmit.pop_front()?;
        self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(d.len() as u64);
        Some(d)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    fn poke(&mut self, now: Duration) {
        // Each poke gets its own nonce: the first byte counts (as Windows does) and
        // the last eight bytes carry the full poke count, so nonces never repeat.
        let mut nonce = self.config.random;
        if let Some(b) = nonce.first_mut() {
            *b = b.wrapping_add(u8::try_from(self.pokes & 0xFF).unwrap_or(0));
        }
        let tail = crate::kd::le::u64_at(&nonce, 24) ^ self.pokes;
        crate::kd::le::put_u64(&mut nonce, 24, tail);
        self.pokes = self.pokes.saturating_add(1);
        self.nonce = Some(nonce);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let poke = Poke::new(nonce, self.config.local, self.config.peer, unspecified);
        self.control_seq = self.control_seq.saturating_add(3);
        let msg = Message::new(
            Channel::Control,
            self.config.version,
            self.control_seq,
            false,
            poke.to_bytes(),
        );
        self.seal_push(msg);
        self.next_poke = now.saturating_add(self.config.poke_interval);
    }

    fn flush_session(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(unit) = self.session.poll_transmit() {
            self.seal_data(unit);
        }
    }

    fn seal_data(&mut self, payload: Vec<u8>) {
        self.data_seq = self.data_seq.saturating_add(1);
        let msg = Message::new(
            Channel::Data,
            self.config.version,
            self.data_seq,
            self.config.role == Role::Debugger,
            payload,
        );
        self.seal_push(msg);
    }

    fn seal_push(&mut self, msg: Message) {
        match self.keys.seal(&msg) {
            Ok(d) => self.transmit.push_back(d),
            Err(e) => self.reject(e),
        }
    }

    fn reject(&mut self, e: KdnetError) {
        self.stats.rejected = self.stats.rejected.saturating_add(1);
        let reason = match e {
            KdnetError::BadMagic
            | KdnetError::BadLength(_)
            | KdnetError::BadTag
            | KdnetError::BadPad(_)
            | KdnetError::BadChannel(_)
            | KdnetError::NoDataKey => Some(&mut self.stats.rejected_auth),
            KdnetError::Replayed { .. } => Some(&mut self.stats.rejected_replay),
            KdnetError::WrongPeer { .. } => Some(&mut self.stats.rejected_peer),
            KdnetError::WrongDirection => Some(&mut self.stats.rejected_direction),
            _ => None,
        };
        if let Some(n) = reason {
            *n = n.saturating_add(1);
        }
        self.events.push_back(EndpointEvent::Rejected(e));
    }
}
