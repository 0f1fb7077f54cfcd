//! `tokio_util::codec` adapters for GDB RSP.
//!
//! * [`GdbServerCodec`] (stub side) and [`GdbClientCodec`] (debugger side) wrap the session
//!   state machines, so acknowledgements, retransmission on `-` and the switch to no-ack
//!   mode happen inside the codec. A damaged frame is a [`LinkTrouble`] item (the codec
//!   has already answered it with `-`), never an `Err` that ends the stream.
//! * [`GdbCodec`] is bare framing: it decodes framing [`Event`]s and encodes [`Frame`]s,
//!   for tools that do their own acknowledging (a proxy, a sniffer).
//!
//! A `Decoder` cannot write, so when the session has bytes of its own to send (an ack
//! for a command the stub answers later, a `-`, a retransmission) the codec yields a
//! `Transmit` item: answer it by sending the `Pending` item, which writes them. Every
//! other item sent writes them too, ahead of itself.
//!
//! ```no_run
//! # async fn stub(socket: tokio::net::TcpStream) -> std::io::Result<()> {
//! use futures::{SinkExt, StreamExt};
//! use tagsplit_protocol::codec::gdb::{GdbServerCodec, ServerItem, ServerSend};
//! use tagsplit_protocol::gdb::{Command, Reply, ServerEvent};
//! use tokio_util::codec::Framed;
//!
//! let mut framed = Framed::new(socket, GdbServerCodec::default());
//! while let Some(item) = framed.next().await {
//!     match item? {
//!         ServerItem::Event(ServerEvent::Command(packet)) => {
//!             let reply = match packet.command() {
//!                 Command::Attached(_) => Reply::Attached(true),
//!                 _ => Reply::Empty,
//!             };
//!             framed.send(ServerSend::Reply(reply)).await?
//!         }
//!         ServerItem::Transmit => framed.send(ServerSend::Pending).await?,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder as CodecDecoder, Encoder};

use super::Outbox;
use crate::gdb::frame::{ACK, INTERRUPT, NAK, encode_notification_into, encode_packet_into};
use crate::gdb::{
    ClientEvent, ClientSession, Command, Decoder, Event, Reply, ServerEvent, ServerSession,
    SessionConfig, SessionStats,
};

/// Recoverable trouble on the link, reported as an item (ack mode has already asked for
/// the frame again with `-`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkTrouble {
    /// Frames whose checksum did not match.
    BadChecksum {
        /// How many since the last item.
        count: u64,
    },
    /// Frames dropped for being longer than the packet limit.
    Oversize {
        /// How many since the last item.
        count: u64,
    },
    /// Bytes of line noise outside any frame.
    Garbage {
        /// How many since the last item.
        bytes: u64,
    },
}

/// The trouble counters that grew between two stats snapshots.
fn trouble_since(before: &SessionStats, now: &SessionStats, out: &mut VecDeque<LinkTrouble>) {
    let grew = |a: u64, b: u64| b.checked_sub(a).filter(|&d| d > 0);
    if let Some(count) = grew(before.bad_checksums, now.bad_checksums) {
        out.push_back(LinkTrouble::BadChecksum { count });
    }
    if let Some(count) = grew(before.oversize, now.oversize) {
        out.push_back(LinkTrouble::Oversize { count });
    }
    if let Some(bytes) = grew(before.garbage_bytes, now.garbage_bytes) {
        out.push_back(LinkTrouble::Garbage { bytes });
    }
}

/// What the session codecs decode: `E` is [`ServerEvent`] or [`ClientEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item<E> {
    /// What the session hands upward (a command, a reply, an interrupt, …).
    Event(E),
    /// Damaged input (already NAKed in ack mode).
    Trouble(LinkTrouble),
    /// The session has bytes to write (an ack, a `-`, a retransmission): send the
    /// `Pending` item (or any other item).
    Transmit,
}

/// What [`GdbServerCodec`] decodes.
pub type ServerItem = Item<ServerEvent>;
/// What [`GdbClientCodec`] decodes.
pub type ClientItem = Item<ClientEvent>;

/// The sans-IO session surface both codecs drive.
trait Side {
    type Event;
    fn receive_some(&mut self, bytes: &[u8]) -> usize;
    fn poll_event(&mut self) -> Option<Self::Event>;
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    fn stats(&self) -> SessionStats;
}

macro_rules! side {
    ($session:ty, $event:ty) => {
        impl Side for $session {
            type Event = $event;
            fn receive_some(&mut self, bytes: &[u8]) -> usize {
                <$session>::receive_some(self, bytes)
            }
            fn poll_event(&mut self) -> Option<$event> {
                <$session>::poll_event(self)
            }
            fn poll_transmit(&mut self) -> Option<Vec<u8>> {
                <$session>::poll_transmit(self)
            }
            fn stats(&self) -> SessionStats {
                <$session>::stats(self)
            }
        }
    };
}
side!(ServerSession, ServerEvent);
side!(ClientSession, ClientEvent);

/// A session plus what the codec holds for it: trouble not yet reported and the
/// session's own bytes not yet written.
#[derive(Clone, Debug, Default)]
struct Link<S> {
    session: S,
    trouble: VecDeque<LinkTrouble>,
    outbox: Outbox,
}

impl<S: Side> Link<S> {
    fn decode(&mut self, src: &mut BytesMut) -> Option<Item<S::Event>> {
        if !src.is_empty() {
            let before = self.session.stats();
            // At most `max_events` events are decoded ahead; the rest of `src` waits
            // for the next call (made as long as items come out).
            let used = self.session.receive_some(src);
            src.advance(used.min(src.len()));
            trouble_since(&before, &self.session.stats(), &mut self.trouble);
        }
        if let Some(t) = self.trouble.pop_front() {
            return Some(Item::Trouble(t));
        }
        if let Some(ev) = self.session.poll_event() {
            return Some(Item::Event(ev));
        }
        let session = &mut self.session;
        let due = self.outbox.stash(|| session.poll_transmit());
        due.then_some(Item::Transmit)
    }

    fn write(&mut self, dst: &mut BytesMut) {
        let session = &mut self.session;
        self.outbox.write(dst, || session.poll_transmit());
    }
}

/// What [`GdbServerCodec`] encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerSend {
    /// A reply to the oldest unanswered command.
    Reply(Reply),
    /// `O` console output (before the reply).
    Output(Vec<u8>),
    /// Only the bytes the session queued itself.
    Pending,
}

/// The stub side of RSP as a codec: a [`ServerSession`] behind `Framed`.
#[derive(Clone, Debug, Default)]
pub struct GdbServerCodec {
    link: Link<ServerSession>,
}

impl GdbServerCodec {
    /// A codec over a session with `config`.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            link: Link {
                session: ServerSession::new(config),
                ..Link::default()
            },
        }
    }

    /// The session (ack mode, running state, counters).
    pub fn session(&self) -> &ServerSession {
        &self.link.session
    }
}

impl CodecDecoder for GdbServerCodec {
    type Item = ServerItem;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ServerItem>, Self::Error> {
        Ok(self.link.decode(src))
    }
}

impl Encoder<ServerSend> for GdbServerCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: ServerSend, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match item {
            ServerSend::Reply(r) => self.link.session.send(&r),
            ServerSend::Output(text) => self.link.session.send_output(&text),
            ServerSend::Pending => {}
        }
        self.link.write(dst);
        Ok(())
    }
}

/// What [`GdbClientCodec`] encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientSend<'a> {
    /// A command; its reply is parsed as the kind the command gets.
    Command(Command<'a>),
    /// The interrupt byte (while the target runs).
    Interrupt,
    /// Only the bytes the session queued itself.
    Pending,
}

/// The debugger side of RSP as a codec: a [`ClientSession`] behind `Framed`.
#[derive(Clone, Debug, Default)]
pub struct GdbClientCodec {
    link: Link<ClientSession>,
}

impl GdbClientCodec {
    /// A codec over a session with `config`.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            link: Link {
                session: ClientSession::new(config),
                ..Link::default()
            },
        }
    }

    /// The session (ack mode, outstanding command, counters).
    pub fn session(&self) -> &ClientSession {
        &self.link.session
    }
}

impl CodecDecoder for GdbClientCodec {
    type Item = ClientItem;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ClientItem>, Self::Error> {
        Ok(self.link.decode(src))
    }
}

impl<'a> Encoder<ClientSend<'a>> for GdbClientCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: ClientSend<'a>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match item {
            ClientSend::Command(c) => self.link.session.send(&c),
            ClientSend::Interrupt => self.link.session.send_interrupt(),
            ClientSend::Pending => {}
        }
        self.link.write(dst);
        Ok(())
    }
}

/// Something to put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// A `$…#cs` packet with this (unescaped) payload.
    Packet(Vec<u8>),
    /// A `%…#cs` notification.
    Notification(Vec<u8>),
    /// `+`.
    Ack,
    /// `-`.
    Nak,
    /// The 0x03 interrupt byte.
    Interrupt,
}

impl From<&Reply> for Frame {
    fn from(reply: &Reply) -> Self {
        Frame::Packet(reply.encode())
    }
}

impl From<&Command<'_>> for Frame {
    fn from(cmd: &Command<'_>) -> Self {
        Frame::Packet(cmd.encode())
    }
}

/// RSP framing as a tokio codec.
#[derive(Clone, Debug, Default)]
pub struct GdbCodec {
    decoder: Decoder,
    run_length: bool,
}

impl GdbCodec {
    /// A codec that drops frames longer than `max_packet`; `run_length` selects `*`
    /// compression for outgoing packets (stubs use it, clients usually do not).
    pub fn new(max_packet: usize, run_length: bool) -> Self {
        Self {
            decoder: Decoder::new(max_packet),
            run_length,
        }
    }
}

impl CodecDecoder for GdbCodec {
    type Item = Event;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Self::Error> {
        let (used, event) = self.decoder.push(src);
        src.advance(used);
        Ok(event)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Self::Error> {
        match self.decode(src)? {
            Some(ev) => Ok(Some(ev)),
            None => Ok(self.decoder.finish()),
        }
    }
}

impl Encoder<Frame> for GdbCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let mut out = Vec::new();
        match frame {
            Frame::Packet(p) => encode_packet_into(&p, self.run_length, &mut out),
            Frame::Notification(p) => encode_notification_into(&p, &mut out),
            Frame::Ack => out.push(ACK),
            Frame::Nak => out.push(NAK),
            Frame::Interrupt => out.push(INTERRUPT),
        }
        dst.put_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_one_event_at_a_time_and_keeps_the_rest() {
        let mut codec = GdbCodec::default();
        let mut buf = BytesMut::from(&b"+$OK#9a$g#6"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Event::Ack));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Event::Packet(b"OK".to_vec()))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.put_slice(b"7");
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Event::Packet(b"g".to_vec()))
        );
        buf.put_slice(b"$trunc");
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Event::Garbage { len: 6 })
        );
    }

    #[test]
    fn server_codec_reports_noise_and_naks_only_in_ack_mode() {
        let mut codec = GdbServerCodec::default();
        let mut out = BytesMut::new();
        let mut src = BytesMut::from(&b"xyz$g#00"[..]);
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Item::Trouble(LinkTrouble::BadChecksum { count: 1 }))
        );
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Item::Trouble(LinkTrouble::Garbage { bytes: 3 }))
        );
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Item::Transmit));
        assert_eq!(codec.decode(&mut src).unwrap(), None, "announced once");
        codec.encode(ServerSend::Pending, &mut out).unwrap();
        assert_eq!(&out[..], b"-");
        src.put_slice(b"$QStartNoAckMode#b0");
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Item::Event(ServerEvent::Command(p))) if p.command() == Command::StartNoAckMode
        ));
        out.clear();
        codec
            .encode(ServerSend::Reply(Reply::Ok), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"+$OK#9a");
        assert!(!codec.session().ack_mode());
        src.put_slice(b"$g#00");
        assert_eq!(
            codec.decode(&mut src).unwrap(),
            Some(Item::Trouble(LinkTrouble::BadChecksum { count: 1 }))
        );
        assert_eq!(codec.decode(&mut src).unwrap(), None, "no `-` without acks");
    }

    #[test]
    fn encodes_frames() {
        let mut codec = GdbCodec::new(0x4000, true);
        let mut buf = BytesMut::new();
        codec.encode(Frame::Ack, &mut buf).unwrap();
        codec.encode(Frame::from(&Reply::Ok), &mut buf).unwrap();
        codec.encode(Frame::Interrupt, &mut buf).unwrap();
        codec
            .encode(Frame::from(&Command::ReadRegisters), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"+$OK#9a\x03$g#67");
    }
}
