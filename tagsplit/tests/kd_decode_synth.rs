#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The decoder on captures made here: KDCOM in TCP over Ethernet/IPv4 (pcap), KDNET over
//! IPv6 (pcapng, gzipped), produced by this crate's own sessions.

use std::io::Write;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
use tagsplit::decode::{self, Detail, Direction};
use tagsplit_protocol::kd::{
    DebugIo, Manipulate, ManipulateApi, MemoryTransfer, PacketType, Role, Session, SessionConfig,
    SessionEvent,
};
use tagsplit_protocol::kdnet::{Endpoint, EndpointConfig, EndpointEvent};

fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend([0x08, 0x00]);
    let total = (20 + 20 + payload.len()) as u16;
    f.extend([
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend(src);
    f.extend(dst);
    f.extend(sport.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0u8; 8]);
    f.extend([0x50, 0x18, 0, 0, 0, 0, 0, 0]);
    f.extend(payload);
    f
}

fn ipv6_udp(src: u8, dst: u8, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend([0x86, 0xDD]);
    let len = (8 + payload.len()) as u16;
    f.extend([0x60, 0, 0, 0]);
    f.extend(len.to_be_bytes());
    f.extend([17, 64]);
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = src;
    f.extend(a);
    a[15] = dst;
    f.extend(a);
    f.extend(port.to_be_bytes());
    f.extend(port.to_be_bytes());
    f.extend(len.to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

#[test]
fn kdcom_in_tcp_pcap() {
    // A debugger and a target exchange a print, a read request and its reply.
    let now = Duration::ZERO;
    let mut dbg = Session::new(SessionConfig::kdcom(Role::Debugger));
    let mut tgt = Session::new(SessionConfig::kdcom(Role::Target));
    tgt.send(
        now,
        PacketType::DebugIo,
        DebugIo::print_string(0, b"hello\n").to_bytes(),
    );
    let req = Manipulate::request(
        &ManipulateApi::ReadVirtualMemory(MemoryTransfer {
            address: 0xfffff800_00001000,
            count: 4,
            actual: 0,
        }),
        vec![],
    );
    dbg.send(now, PacketType::StateManipulate, req.to_bytes());
    let mut frames = Vec::new();
    for _ in 0..4 {
        while let Some(u) = tgt.poll_transmit() {
            // Split target output across two segments to exercise reassembly.
            let (a, b) = u.split_at(u.len() / 2);
            frames.push(ipv4_tcp([10, 0, 0, 2], [10, 0, 0, 1], 50001, 40000, a));
            frames.push(ipv4_tcp([10, 0, 0, 2], [10, 0, 0, 1], 50001, 40000, b));
            dbg.handle_bytes(now, &u);
        }
        while let Some(u) = dbg.poll_transmit() {
            frames.push(ipv4_tcp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 50001, &u));
            tgt.handle_bytes(now, &u);
        }
        while let Some(ev) = tgt.poll_event() {
            if let SessionEvent::Packet { payload, .. } = ev {
                let m = Manipulate::parse(&payload).unwrap();
                let reply = m.reply(
                    0,
                    &ManipulateApi::ReadVirtualMemory(MemoryTransfer {
                        address: 0xfffff800_00001000,
                        count: 4,
                        actual: 4,
                    }),
                    vec![1, 2, 3, 4],
                );
                tgt.send(now, PacketType::StateManipulate, reply.to_bytes());
            }
        }
    }
    // Unrelated TCP traffic is ignored.
    frames.push(ipv4_tcp(
        [10, 0, 0, 9],
        [10, 0, 0, 1],
        80,
        1234,
        b"GET / HTTP/1.1\r\n\r\n",
    ));
    let mut bytes = Vec::new();
    {
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(&mut bytes, header).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.write_packet(&PcapPacket::new(
                Duration::from_millis(i as u64),
                f.len() as u32,
                f,
            ))
            .unwrap();
        }
    }
    let r = decode::decode_bytes("synthetic.pcap", bytes, None).unwrap();
    assert_eq!(r.format, decode::FileFormat::Pcap);
    assert_eq!(r.totals.bad_checksums, 0);
    assert_eq!(r.totals.of_type(PacketType::DebugIo), 1);
    assert_eq!(r.totals.of_type(PacketType::StateManipulate), 2);
    assert_eq!(r.totals.of_type(PacketType::Acknowledge), 3);
    assert!(r.packets.iter().all(|p| p.transport.starts_with("tcp ")));
    assert!(
        r.packets
            .iter()
            .any(|p| matches!(&p.detail, Detail::DebugIo { text, .. } if text == "hello\n"))
    );
    assert!(decode::render_text(&r).contains("ReadVirtualMemory(0x3130) status=0x0 address=0xfffff80000001000 count=0x4 actual=0x4 data=4"));
}

#[test]
fn kdnet_over_ipv6_gzipped_pcapng() {
    let key = "k3y.2.3.4".parse().unwrap();
    let mut t = Endpoint::new(
        EndpointConfig::new(Role::Target, key, [9; 32]),
        Duration::ZERO,
    );
    let mut d = Endpoint::new(
        EndpointConfig::new(Role::Debugger, key, [7; 32]),
        Duration::ZERO,
    );
    t.handle_timeout(Duration::ZERO);
    d.send(
        Duration::ZERO,
        PacketType::StateManipulate,
        Manipulate::request(&ManipulateApi::GetContext { unused: 0 }, vec![]).to_bytes(),
    );
    let mut frames = Vec::new();
    for round in 0..6 {
        while let Some(x) = t.poll_transmit() {
            frames.push(ipv6_udp(2, 1, 50000, &x));
            d.handle_datagram(Duration::ZERO, &x);
        }
        if round == 3 {
            d.send_break_in();
        }
        while let Some(x) = d.poll_transmit() {
            frames.push(ipv6_udp(1, 2, 50000, &x));
            t.handle_datagram(Duration::ZERO, &x);
        }
        while let Some(ev) = t.poll_event() {
            if let EndpointEvent::Kd(SessionEvent::Packet { payload, .. }) = ev {
                let m = Manipulate::parse(&payload).unwrap();
                t.send(
                    Duration::ZERO,
                    PacketType::StateManipulate,
                    m.reply(0, &m.api(), vec![0; 0x4D0]).to_bytes(),
                );
            }
        }
    }
    let r =
        decode::decode_bytes("synthetic.pcapng.gz", pcapng_gz(&frames), Some("k3y.2.3.4")).unwrap();
    assert_eq!(r.format, decode::FileFormat::Pcapng);
    assert_eq!(r.totals.datagrams, frames.len());
    assert_eq!(r.totals.authenticated, frames.len());
    assert_eq!(r.totals.pokes, 1);
    assert_eq!(r.totals.responses, 1);
    assert_eq!(r.totals.hellos, 1);
    assert_eq!(r.totals.break_ins, 1);
    assert_eq!(r.data_key.as_deref().map(str::len), Some(64));
    assert!(r.packets.iter().any(|p| p.direction == Some(Direction::TargetToDebugger)
        && matches!(&p.detail, Detail::Manipulate { api, data_len: 0x4D0, .. } if api == "GetContext")));
    assert!(r.datagrams.iter().all(|d| d.src.is_ipv6()));

    // Without the debugger's response the data channel cannot be decrypted: nothing is
    // shown as data, and the report says why.
    let response = r
        .datagrams
        .iter()
        .position(|d| matches!(d.content, decode::Content::Response { .. }))
        .unwrap();
    let mut cut = frames.clone();
    cut.remove(response);
    let r = decode::decode_bytes("cut.pcapng.gz", pcapng_gz(&cut), Some("k3y.2.3.4")).unwrap();
    assert_eq!(r.totals.kd_packets, 0);
    assert_eq!(r.data_key, None);
    assert_eq!(r.totals.authenticated, r.totals.control_datagrams);
    assert!(
        r.datagrams
            .iter()
            .filter(|d| d.channel == Some(tagsplit_protocol::kdnet::Channel::Data))
            .all(|d| d.content == decode::Content::NoDataKey)
    );
    assert!(decode::render_text(&r).contains("not decrypted: no data key"));
}

fn pcapng_gz(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut raw = Vec::new();
    {
        let mut w = PcapNgWriter::new(&mut raw).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0xFFFF))
            .unwrap();
        for (i, f) in frames.iter().enumerate() {
            let epb = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_micros(i as u64),
                original_len: f.len() as u32,
                data: f.clone().into(),
                options: vec![],
            };
            w.write_pcapng_block(epb).unwrap();
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}
