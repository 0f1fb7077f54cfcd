//! The fuzzer's debugger end of a KD link: KDCOM over TCP or KDNET over UDP, the
//! protocol crate's [`Session`] doing the reliability layer (ids, ACKs, RESEND, RESET,
//! duplicate suppression) for the well-formed requests, and raw packets (mutated or
//! generated, whose bytes and ids the fuzzer chooses) sent beside it.
//!
//! KDNET: the control handshake is the protocol crate's [`Endpoint`]; once it has
//! derived the data key, the data channel is sealed here (the endpoint has no way to
//! seal a packet its session did not frame), with our own sequence numbers, so a raw
//! packet and a session packet share one increasing sequence.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use tagsplit_protocol::gdb::remotelog::LogDirection;
use tagsplit_protocol::kd::{
    IdScheme, PacketType, Repr, Role, Session, SessionConfig, SessionEvent,
};
use tagsplit_protocol::kdnet::{
    Channel, Endpoint, EndpointConfig, EndpointEvent, Key, Keys, MAX_SEQ, Message,
};

use super::Transcript;

/// Largest read from the link (a KDCOM chunk or one datagram).
const READ_MAX: usize = 65536;

/// What the link delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Got {
    /// A new data packet (acknowledged).
    Packet {
        /// Its type.
        packet_type: PacketType,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A framed packet that was damaged (bad checksum, trailer, length).
    Corrupt(String),
    /// The target answered a RESET.
    Reset,
}

/// The link closed or failed.
#[derive(Debug)]
pub(super) struct Closed(pub String);

enum Io {
    Com {
        stream: TcpStream,
    },
    Net {
        sock: UdpSocket,
        peer: SocketAddr,
        keys: Box<Keys>,
        version: u8,
        seq_out: u64,
        seq_in: u64,
    },
}

/// Our debugger end.
pub(super) struct Wire {
    io: Io,
    session: Session,
    start: Instant,
    /// Raw packets sent (their ids differ from one to the next).
    raw_count: u32,
    /// The last data packet the session framed (retransmissions are not logged again).
    last_logged: Vec<u8>,
    /// What crossed the wire this iteration.
    pub(super) log: Transcript,
    /// The target's packets held back from the log (see [`hold`](Self::hold)).
    held: Option<Vec<Vec<u8>>>,
    buf: Vec<u8>,
}

fn session_config(scheme: IdScheme) -> SessionConfig {
    let base = match scheme {
        IdScheme::Kdcom => SessionConfig::kdcom(Role::Debugger),
        IdScheme::Kdnet => SessionConfig::kdnet(Role::Debugger),
    };
    SessionConfig {
        retry_timeout: Duration::from_millis(250),
        max_retries: 8,
        // Every packet the target frames is taken (and acknowledged), whatever it holds:
        // refusing one the target answered to a malformed request would have it sent
        // again and again, holding up the fence's answer behind it.
        check_payloads: false,
        implicit_acks: false,
        ..base
    }
}

impl Wire {
    /// Connects to a KDCOM target over TCP and resets the link.
    pub(super) fn kdcom(addr: SocketAddr, timeout: Duration) -> std::io::Result<Wire> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let mut w = Wire::new(Io::Com { stream }, IdScheme::Kdcom);
        w.session.reset(w.now());
        w.flush().map_err(|Closed(e)| std::io::Error::other(e))?;
        Ok(w)
    }

    /// Waits on `sock` (the debugger's port) for a KDNET target to poke with `key`, and
    /// answers it; `random` is the host's 32 bytes of the response.
    pub(super) fn kdnet(
        sock: UdpSocket,
        key: Key,
        random: [u8; 32],
        timeout: Duration,
    ) -> std::io::Result<Wire> {
        let start = Instant::now();
        let mut endpoint = Endpoint::new(
            EndpointConfig::new(Role::Debugger, key, random),
            Duration::ZERO,
        );
        let keys = Keys::new(key);
        let mut buf = vec![0u8; READ_MAX];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            sock.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e),
            };
            let datagram = buf.get(..n).unwrap_or_default();
            let Ok(msg) = keys.open(datagram) else {
                continue;
            };
            if msg.channel != Channel::Control {
                continue;
            }
            endpoint.handle_datagram_from(start.elapsed(), from, datagram);
            while let Some(d) = endpoint.poll_transmit() {
                sock.send_to(&d, from)?;
            }
            while let Some(ev) = endpoint.poll_event() {
                if let EndpointEvent::Connected { data_key } = ev {
                    let mut keys = Keys::new(key);
                    keys.set_data_key(data_key);
                    let io = Io::Net {
                        sock,
                        peer: from,
                        keys: Box::new(keys),
                        version: msg.version,
                        seq_out: 0,
                        seq_in: 0,
                    };
                    return Ok(Wire::new(io, IdScheme::Kdnet));
                }
            }
        }
    }

    fn new(io: Io, scheme: IdScheme) -> Wire {
        Wire {
            io,
            session: Session::new(session_config(scheme)),
            start: Instant::now(),
            raw_count: 0,
            last_logged: Vec::new(),
            log: Transcript::default(),
            held: None,
            buf: vec![0u8; READ_MAX],
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether this is a KDNET link.
    pub(super) fn is_kdnet(&self) -> bool {
        matches!(self.io, Io::Net { .. })
    }

    /// The KDNET session keys (to seal generated or mutated datagrams).
    pub(super) fn keys(&self) -> Option<&Keys> {
        match &self.io {
            Io::Net { keys, .. } => Some(keys),
            Io::Com { .. } => None,
        }
    }

    /// The KDNET sequence number our next datagram gets.
    pub(super) fn next_seq(&self) -> u64 {
        match &self.io {
            Io::Net { seq_out, .. } => seq_out.saturating_add(1),
            Io::Com { .. } => 0,
        }
    }

    /// A packet id for a raw packet, never the same twice in a row (a target drops a
    /// packet whose id is the last one it took, and a raw packet may not have been
    /// taken): KDCOM, the sync bit (the target takes it as new whatever it expected)
    /// and a count in the low bits; KDNET, odd where the session's are even.
    pub(super) fn raw_id(&mut self) -> u32 {
        self.raw_count = self.raw_count.wrapping_add(1);
        if self.is_kdnet() {
            0x8000_0001 | (self.raw_count << 1)
        } else {
            tagsplit_protocol::kd::INITIAL_PACKET_ID
                | tagsplit_protocol::kd::SYNC_PACKET_ID
                | (self.raw_count & 0x7FF)
        }
    }

    /// Frames a raw packet as this link carries it (KDCOM: with the trailer).
    pub(super) fn frame(&self, repr: &Repr) -> Vec<u8> {
        if self.is_kdnet() {
            repr.to_bytes()
        } else {
            repr.to_kdcom_bytes()
        }
    }

    /// Holds the target's packets back from the log until [`release`](Self::release):
    /// while a raw packet's answer (if any) and our RESET and fence cross, the order in
    /// which they meet depends on timing; the log puts the target's packets after ours.
    pub(super) fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Logs the packets held back.
    pub(super) fn release(&mut self) {
        for p in self.held.take().unwrap_or_default() {
            self.log.packet(LogDirection::Read, &p);
        }
    }

    /// Sends a data packet through the session (it picks the id and retransmits).
    pub(super) fn send(&mut self, packet_type: PacketType, payload: Vec<u8>) -> Result<(), Closed> {
        self.flush()?;
        let now = self.now();
        self.session.send(now, packet_type, payload);
        self.flush()
    }

    /// Sends a KD RESET through the session.
    pub(super) fn reset(&mut self) -> Result<(), Closed> {
        let now = self.now();
        self.session.reset(now);
        self.flush()
    }

    /// Sends the break-in byte.
    pub(super) fn break_in(&mut self) -> Result<(), Closed> {
        self.session.send_break_in();
        self.flush()
    }

    /// Sends `bytes` as they are: KDCOM bytes, or one KDNET data payload sealed under the
    /// session keys.
    /// A raw RESET goes out as it is too: the session answers the target's answer to it
    /// once, and takes the answer to that silently (no RESET ping-pong).
    pub(super) fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        self.flush()?;
        self.log.packet(LogDirection::Write, bytes);
        self.put(bytes)
    }

    /// Sends a sealed KDNET datagram as it is; its sequence number, if it opens under the
    /// session keys and is higher, becomes ours (the target now expects higher ones).
    /// Refused (not sent: false) when it would leave no sequence numbers for the session.
    pub(super) fn send_datagram(&mut self, datagram: &[u8], note: &str) -> Result<bool, Closed> {
        self.flush()?;
        let Io::Net {
            sock,
            peer,
            keys,
            seq_out,
            ..
        } = &mut self.io
        else {
            return Ok(false);
        };
        if let Ok(msg) = keys.open(datagram)
            && msg.channel == Channel::Data
            && msg.from_debugger
        {
            if msg.seq > MAX_SEQ / 2 {
                return Ok(false);
            }
            *seq_out = (*seq_out).max(msg.seq);
        }
        self.log.note(note);
        sock.send_to(datagram, *peer)
            .map_err(|e| Closed(format!("send: {e}")))?;
        Ok(true)
    }

    fn put(&mut self, unit: &[u8]) -> Result<(), Closed> {
        match &mut self.io {
            Io::Com { stream } => stream
                .write_all(unit)
                .map_err(|e| Closed(format!("write: {e}"))),
            Io::Net {
                sock,
                peer,
                keys,
                version,
                seq_out,
                ..
            } => {
                *seq_out = seq_out.saturating_add(1);
                let msg = Message::new(Channel::Data, *version, *seq_out, true, unit.to_vec());
                // A payload too large to seal is not sent (the target would never see it).
                let Ok(d) = keys.seal(&msg) else {
                    return Ok(());
                };
                sock.send_to(&d, *peer)
                    .map(|_| ())
                    .map_err(|e| Closed(format!("send: {e}")))
            }
        }
    }

    /// Puts what the session queued on the wire; logs its data packets (once each), its
    /// RESETs and break-ins (ACKs and RESENDs answer the target and are not logged).
    fn flush(&mut self) -> Result<(), Closed> {
        while let Some(unit) = self.session.poll_transmit() {
            let log = match Repr::parse_bytes(&unit) {
                Ok(r) if r.leader == tagsplit_protocol::kd::Leader::Data => {
                    let fresh = unit != self.last_logged;
                    if fresh {
                        self.last_logged.clone_from(&unit);
                    }
                    fresh
                }
                Ok(r) => r.packet_type == PacketType::Reset,
                Err(_) => unit == [tagsplit_protocol::kd::BREAKIN_PACKET_BYTE],
            };
            if log {
                self.log.packet(LogDirection::Write, &unit);
            }
            self.put(&unit)?;
        }
        Ok(())
    }

    /// Waits up to `wait` for input, handles timers; returns what arrived.
    pub(super) fn pump(&mut self, wait: Duration) -> Result<Vec<Got>, Closed> {
        self.flush()?;
        let wait = wait.max(Duration::from_millis(1));
        let wait = match self.session.poll_timeout() {
            Some(at) => wait.min(at.saturating_sub(self.now()).max(Duration::from_millis(1))),
            None => wait,
        };
        let now = self.start.elapsed();
        match &mut self.io {
            Io::Com { stream } => {
                stream
                    .set_read_timeout(Some(wait))
                    .map_err(|e| Closed(e.to_string()))?;
                match stream.read(&mut self.buf) {
                    Ok(0) => return Err(Closed("the target closed the connection".into())),
                    Ok(n) => {
                        let bytes = self.buf.get(..n).unwrap_or_default();
                        self.session.handle_bytes(now, bytes);
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(Closed(format!("read: {e}"))),
                }
            }
            Io::Net {
                sock,
                peer,
                keys,
                seq_in,
                ..
            } => {
                sock.set_read_timeout(Some(wait))
                    .map_err(|e| Closed(e.to_string()))?;
                match sock.recv_from(&mut self.buf) {
                    Ok((n, from)) if from == *peer => {
                        let datagram = self.buf.get(..n).unwrap_or_default();
                        if let Ok(msg) = keys.open(datagram)
                            && msg.channel == Channel::Data
                            && !msg.from_debugger
                            && msg.seq > *seq_in
                        {
                            *seq_in = msg.seq;
                            self.session.handle_packet(now, &msg.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => {}
                    Err(e) => return Err(Closed(format!("receive: {e}"))),
                }
            }
        }
        let now = self.now();
        self.session.handle_timeout(now);
        let mut got = Vec::new();
        while let Some(ev) = self.session.poll_event() {
            match ev {
                SessionEvent::Packet {
                    packet_type,
                    id,
                    payload,
                } => {
                    let repr = Repr::data(packet_type, id, payload);
                    let framed = self.frame(&repr);
                    match &mut self.held {
                        Some(h) => h.push(framed),
                        None => self.log.packet(LogDirection::Read, &framed),
                    }
                    got.push(Got::Packet {
                        packet_type,
                        payload: repr.payload,
                    });
                }
                SessionEvent::Reset => got.push(Got::Reset),
                SessionEvent::Corrupt(what) => got.push(Got::Corrupt(what)),
                _ => {}
            }
        }
        self.flush()?;
        Ok(got)
    }
}

/// Whether a read ended by its time-out (or a signal), not by an error.
pub(super) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}
