//! Recording KD traffic as pcapng, for `tagsplit decode` and Wireshark (feature `pcap`).
//!
//! A [`PcapRecorder`] writes one pcapng section to any [`Write`]: a section header, one
//! interface (link type Ethernet, snapshot length [`SNAPLEN`], timestamps in
//! nanoseconds) and an enhanced packet block per frame. Frames are built with
//! `etherparse` from what a socket saw: a KDNET datagram becomes Ethernet/IP/UDP between
//! the real addresses and ports ([`UdpFlow`]); bytes on a KDCOM-over-TCP stream become
//! Ethernet/IP/TCP segments ([`TcpFlow`]) with a three-way handshake first, sequence and
//! acknowledgement numbers that count the bytes each way, segments of at most
//! [`TCP_SEGMENT`] bytes, and a FIN each way when the flow is closed. IPv4 and IPv6
//! addresses are both kept as they are. The MAC addresses are made up (locally
//! administered, one per address), as a socket does not know them.
//!
//! The recorder is cheap to clone and to share between threads (a flow's break-in byte is
//! written from another thread than its packets): clones write to the same file. The
//! first write error is kept and returned by every later call ([`PcapRecorder::error`]);
//! recording never panics.

use std::borrow::Cow;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etherparse::PacketBuilder;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};

/// The snapshot length of the recorded interface: every frame is kept whole (a KDNET
/// datagram is far below it).
pub const SNAPLEN: u32 = 0x4_0000;
/// The largest TCP payload per recorded segment (an Ethernet MSS).
pub const TCP_SEGMENT: usize = 1460;
/// The largest UDP payload recorded whole; a larger datagram (none is sent by KDNET) is
/// cut to this in the frame, its original length kept.
pub const MAX_UDP_PAYLOAD: usize = 0xFFFF - 48 - 8;
/// The TCP window the recorded segments advertise.
const TCP_WINDOW: u16 = 0xFFFF;

/// The recorder's shared state.
struct Inner {
    writer: PcapNgWriter<Box<dyn Write + Send>>,
    /// The first write error (later records are dropped).
    error: Option<io::ErrorKind>,
    /// Scratch for building frames.
    frame: Vec<u8>,
}

/// A pcapng file being written (see the [module docs](self)).
#[derive(Clone)]
pub struct PcapRecorder {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for PcapRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapRecorder").finish_non_exhaustive()
    }
}

/// Which way a recorded payload went, from the flow's local end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Sent from the local address to the peer.
    Sent,
    /// Received from the peer.
    Received,
}

/// A made-up, locally administered MAC address for `ip`.
fn mac_of(ip: IpAddr) -> [u8; 6] {
    let tail = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x00, tail[0], tail[1], tail[2], tail[3]]
}

/// The time now, since the Unix epoch.
fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn io_error(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl PcapRecorder {
    /// Starts a pcapng section in `out` (section header and interface description).
    pub fn new(out: impl Write + Send + 'static) -> io::Result<PcapRecorder> {
        let boxed: Box<dyn Write + Send> = Box::new(out);
        let mut writer = PcapNgWriter::new(boxed).map_err(io_error)?;
        let interface = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: SNAPLEN,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        };
        writer.write_pcapng_block(interface).map_err(io_error)?;
        writer.get_mut().flush()?;
        Ok(PcapRecorder {
            inner: Arc::new(Mutex::new(Inner {
                writer,
                error: None,
                frame: Vec::new(),
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first write error so far, if any.
    pub fn error(&self) -> Option<io::Error> {
        self.lock().error.map(io::Error::from)
    }

    /// A UDP flow between `local` and `peer` (KDNET).
    pub fn udp_flow(&self, local: SocketAddr, peer: SocketAddr) -> UdpFlow {
        UdpFlow {
            recorder: self.clone(),
            local,
            peer,
        }
    }

    /// A TCP flow between `local` and `peer` (KDCOM over TCP): the handshake is recorded
    /// now, with `local` as the end that connected when `local_connected`.
    pub fn tcp_flow(&self, local: SocketAddr, peer: SocketAddr, local_connected: bool) -> TcpFlow {
        let flow = TcpFlow {
            recorder: self.clone(),
            state: Arc::new(Mutex::new(TcpState {
                local,
                peer,
                // Arbitrary initial sequence numbers, different each way.
                local_seq: 0x1000_0000,
                peer_seq: 0x2000_0000,
                closed: false,
            })),
        };
        flow.handshake(local_connected);
        flow
    }

    /// Writes one frame built by `build` (which appends it to the scratch buffer).
    fn record(
        &self,
        build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        original_extra: usize,
    ) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(kind) = inner.error {
            return Err(kind.into());
        }
        let mut frame = std::mem::take(&mut inner.frame);
        frame.clear();
        let built = build(&mut frame);
        let result = match built {
            Ok(()) => {
                let original_len =
                    u32::try_from(frame.len().saturating_add(original_extra)).unwrap_or(u32::MAX);
                let block = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: now(),
                    original_len,
                    data: Cow::Borrowed(&frame),
                    options: vec![],
                };
                inner
                    .writer
                    .write_pcapng_block(block)
                    .map_err(io_error)
                    .and_then(|_| inner.writer.get_mut().flush())
            }
            Err(e) => Err(io::Error::other(e)),
        };
        inner.frame = frame;
        if let Err(e) = &result {
            inner.error = Some(e.kind());
        }
        result
    }
}

/// The IP layer of a frame between `src` and `dst` (same family; a mixed pair is
/// written as IPv6 with the IPv4 address mapped).
fn ip_layer(
    src: SocketAddr,
    dst: SocketAddr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(mac_of(src.ip()), mac_of(dst.ip()));
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            eth.ipv6(v6(s), v6(d), 64)
        }
    }
}

/// KDNET datagrams between two addresses.
#[derive(Clone, Debug)]
pub struct UdpFlow {
    recorder: PcapRecorder,
    local: SocketAddr,
    peer: SocketAddr,
}

impl UdpFlow {
    /// Records a datagram that went `way`.
    pub fn record(&self, way: Way, payload: &[u8]) -> io::Result<()> {
        let (src, dst) = match way {
            Way::Sent => (self.local, self.peer),
            Way::Received => (self.peer, self.local),
        };
        let kept = payload.get(..MAX_UDP_PAYLOAD).unwrap_or(payload);
        self.recorder.record(
            |frame| {
                let b = ip_layer(src, dst).udp(src.port(), dst.port());
                b.write(frame, kept).map_err(|e| e.to_string())
            },
            payload.len() - kept.len(),
        )
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// The sequence numbers of a [`TcpFlow`].
#[derive(Debug)]
struct TcpState {
    local: SocketAddr,
    peer: SocketAddr,
    /// The next sequence number of the local end (what the peer acknowledges).
    local_seq: u32,
    /// The next sequence number of the peer.
    peer_seq: u32,
    closed: bool,
}

/// Flags of one recorded TCP segment.
#[derive(Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    psh: bool,
    fin: bool,
}

impl Flags {
    const SYN: Flags = Flags::new(true, false, false, false);
    const SYN_ACK: Flags = Flags::new(true, true, false, false);
    const ACK: Flags = Flags::new(false, true, false, false);
    const DATA: Flags = Flags::new(false, true, true, false);
    const FIN: Flags = Flags::new(false, true, false, true);

    const fn new(syn: bool, ack: bool, psh: bool, fin: bool) -> Flags {
        Flags { syn, ack, psh, fin }
    }
}

/// A KDCOM stream over TCP between two addresses. Clones record into the same flow
/// (the same sequence numbers).
#[derive(Clone, Debug)]
pub struct TcpFlow {
    recorder: PcapRecorder,
    state: Arc<Mutex<TcpState>>,
}

impl TcpFlow {
    fn state(&self) -> MutexGuard<'_, TcpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one segment from `way`'s sender, advancing its sequence number by the
    /// payload (and by one for SYN and FIN).
    fn segment(&self, st: &mut TcpState, way: Way, flags: Flags, payload: &[u8]) -> io::Result<()> {
        let (src, dst, seq, ack) = match way {
            Way::Sent => (st.local, st.peer, st.local_seq, st.peer_seq),
            Way::Received => (st.peer, st.local, st.peer_seq, st.local_seq),
        };
        let advance = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .wrapping_add(u32::from(flags.syn) + u32::from(flags.fin));
        match way {
            Way::Sent => st.local_seq = st.local_seq.wrapping_add(advance),
            Way::Received => st.peer_seq = st.peer_seq.wrapping_add(advance),
        }
        self.recorder.record(
            |frame| {
                let mut b = ip_layer(src, dst).tcp(src.port(), dst.port(), seq, TCP_WINDOW);
                if flags.syn {
                    b = b.syn();
                }
                if flags.ack {
                    b = b.ack(ack);
                }
                if flags.psh {
                    b = b.psh();
                }
                if flags.fin {
                    b = b.fin();
                }
                b.write(frame, payload).map_err(|e| e.to_string())
            },
            0,
        )
    }

    fn handshake(&self, local_connected: bool) {
        let mut st = self.state();
        let (first, second) = if local_connected {
            (Way::Sent, Way::Received)
        } else {
            (Way::Received, Way::Sent)
        };
        // Errors are kept by the recorder and returned by the next record.
        let _ = self.segment(&mut st, first, Flags::SYN, &[]);
        let _ = self.segment(&mut st, second, Flags::SYN_ACK, &[]);
        let _ = self.segment(&mut st, first, Flags::ACK, &[]);
    }

    /// Records stream bytes that went `way`, in segments of at most [`TCP_SEGMENT`].
    pub fn record(&self, way: Way, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        if st.closed {
            return Ok(());
        }
        for chunk in bytes.chunks(TCP_SEGMENT) {
            self.segment(&mut st, way, Flags::DATA, chunk)?;
        }
        Ok(())
    }

    /// Records the end of the stream: a FIN each way (the local end's first), each
    /// acknowledged. Later records are dropped.
    pub fn close(&self) -> io::Result<()> {
        let mut st = self.state();
        if std::mem::replace(&mut st.closed, true) {
            return Ok(());
        }
        self.segment(&mut st, Way::Sent, Flags::FIN, &[])?;
        self.segment(&mut st, Way::Received, Flags::FIN, &[])?;
        self.segment(&mut st, Way::Sent, Flags::ACK, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes the test can read after the recorder has them.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (mut rest, mut parser) = pcap_file::pcapng::PcapNgParser::new(bytes).unwrap();
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (r, block) = parser.next_block(rest).unwrap();
            rest = r;
            if let pcap_file::pcapng::Block::EnhancedPacket(p) = block {
                assert_eq!(
                    parser.packet_interface(&p).unwrap().linktype,
                    DataLink::ETHERNET
                );
                out.push(p.data.into_owned());
            }
        }
        out
    }

    #[test]
    fn udp_datagrams_keep_addresses_ports_and_payload() {
        let out = Shared::default();
        let rec = PcapRecorder::new(out.clone()).unwrap();
        let flow = rec.udp_flow(
            "127.0.0.1:50000".parse().unwrap(),
            "127.0.0.2:50005".parse().unwrap(),
        );
        flow.record(Way::Sent, b"MDBG-out").unwrap();
        flow.record(Way::Received, b"MDBG-in").unwrap();
        let bytes = out.0.lock().unwrap().clone();
        let frames = frames(&bytes);
        assert_eq!(frames.len(), 2);
        let p = etherparse::SlicedPacket::from_ethernet(&frames[1]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("{p:?}")
        };
        assert_eq!(ip.header().source(), [127, 0, 0, 2]);
        let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
            panic!()
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (50005, 50000));
        assert_eq!(udp.payload(), b"MDBG-in");
    }

    #[test]
    fn tcp_segments_count_bytes_each_way() {
        let out = Shared::default();
        let rec = PcapRecorder::new(out.clone()).unwrap();
        let flow = rec.tcp_flow(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:50001".parse().unwrap(),
            true,
        );
        flow.record(Way::Sent, &[0x30; 3000]).unwrap();
        flow.record(Way::Received, b"ab").unwrap();
        flow.clone().record(Way::Sent, b"b").unwrap();
        flow.close().unwrap();
        flow.record(Way::Sent, b"late").unwrap();
        let bytes = out.0.lock().unwrap().clone();
        let segs: Vec<(u16, u32, u32, bool, bool, usize)> = frames(&bytes)
            .iter()
            .map(|f| {
                let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
                let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport else {
                    panic!()
                };
                (
                    t.source_port(),
                    t.sequence_number(),
                    t.acknowledgment_number(),
                    t.syn(),
                    t.fin(),
                    t.payload().len(),
                )
            })
            .collect();
        let (l, p) = (0x1000_0000u32, 0x2000_0000u32);
        assert_eq!(
            segs,
            vec![
                (40000, l, 0, true, false, 0),
                (50001, p, l + 1, true, false, 0),
                (40000, l + 1, p + 1, false, false, 0),
                (40000, l + 1, p + 1, false, false, 1460),
                (40000, l + 1461, p + 1, false, false, 1460),
                (40000, l + 2921, p + 1, false, false, 80),
                (50001, p + 1, l + 3001, false, false, 2),
                (40000, l + 3001, p + 3, false, false, 1),
                (40000, l + 3002, p + 3, false, true, 0),
                (50001, p + 3, l + 3003, false, true, 0),
                (40000, l + 3003, p + 4, false, false, 0),
            ]
        );
    }

    #[test]
    fn a_failing_output_is_reported_not_panicked() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::ErrorKind::StorageFull.into());
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let rec = PcapRecorder::new(Full(200)).unwrap();
        let flow = rec.udp_flow(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert!(flow.record(Way::Sent, &[0; 500]).is_err());
        assert!(flow.record(Way::Sent, b"x").is_err());
        assert_eq!(
            rec.error().map(|e| e.kind()),
            Some(io::ErrorKind::StorageFull)
        );
    }
}
