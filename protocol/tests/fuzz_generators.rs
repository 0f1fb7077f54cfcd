#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The `arbitrary` generators and the mutator (feature `arbitrary`): generated values
//! encode to packets our own parsers frame and read back, KDNET datagrams open under the
//! key they were sealed with, every kind of command, reply, payload and mutation shows up,
//! and mutations of the recorded gdb transcripts and the real KD capture frame when they
//! are meant to and never make a parser panic.

use std::collections::HashSet;
use std::mem::discriminant;
use std::path::PathBuf;

use proptest::prelude::*;
use tagsplit_protocol::fuzz::arbitrary::{Arbitrary, Unstructured};
use tagsplit_protocol::fuzz::mutate::{self, Field, MAX_GROWTH};
use tagsplit_protocol::fuzz::{GdbCommand, GdbReply, KdnetDatagram};
use tagsplit_protocol::gdb::transcript::parse_log;
use tagsplit_protocol::gdb::{
    ClientSession, Command, Reply, ReplyKind, ServerSession, frame::Decoder, frame::Event,
};
use tagsplit_protocol::kd::{
    Leader, Manipulate, ManipulateApi, PacketType, Payload, Repr, StreamDecoder, StreamEvent,
};
use tagsplit_protocol::kdnet::{Channel, Keys};

/// Deterministic seed bytes (xorshift), so the coverage tests need no proptest runner.
fn seeds(count: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..count).map(move |_| {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    })
}

fn frames_as(wire: &[u8], payload: &[u8]) {
    let events = Decoder::new(64 * 1024).decode(wire);
    assert_eq!(events, [Event::Packet(payload.to_vec())], "{wire:?}");
}

fn check_command(seed: &[u8]) -> Option<GdbCommand> {
    let command = GdbCommand::arbitrary(&mut Unstructured::new(seed)).unwrap();
    let parsed = command.command();
    assert!(
        !matches!(parsed, Command::Malformed(_)),
        "{:?}",
        String::from_utf8_lossy(command.payload())
    );
    assert_eq!(parsed.encode(), command.payload(), "{parsed:?}");
    frames_as(&command.frame(false), command.payload());
    frames_as(&command.frame(true), command.payload());
    Some(command)
}

fn check_reply(seed: &[u8]) -> Option<GdbReply> {
    let r = GdbReply::arbitrary(&mut Unstructured::new(seed)).unwrap();
    let payload = r.payload();
    assert_eq!(Reply::parse(r.kind, &payload), Ok(r.reply.clone()), "{r:?}");
    frames_as(&r.frame(true), &payload);
    Some(r)
}

fn check_kd(seed: &[u8]) -> Option<Repr> {
    let repr = Repr::arbitrary(&mut Unstructured::new(seed)).unwrap();
    assert_eq!(Repr::parse_bytes(&repr.to_bytes()), Ok(repr.clone()));
    let mut decoder = StreamDecoder::new();
    decoder.push(&repr.to_kdcom_bytes());
    assert_eq!(
        decoder.next_event(),
        Some(StreamEvent::Packet(repr.clone()))
    );
    assert_eq!(decoder.next_event(), None);
    if repr.leader == Leader::Data {
        let payload = Payload::parse(repr.packet_type, &repr.payload).unwrap();
        assert_eq!(payload.to_bytes(), repr.payload);
        assert_eq!(payload.packet_type(), repr.packet_type);
    }
    Some(repr)
}

fn keys(with_data_key: bool) -> Keys {
    let mut keys = Keys::new("8.8.8.8".parse().unwrap());
    if with_data_key {
        keys.set_data_key([0x5a; 32]);
    }
    keys
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_commands_read_back_and_frame(
        seed in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        check_command(&seed);
    }

    #[test]
    fn generated_replies_read_back_and_frame(
        seed in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        check_reply(&seed);
    }

    #[test]
    fn generated_kd_packets_read_back_and_frame(
        seed in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        check_kd(&seed);
    }

    #[test]
    fn generated_datagrams_open_under_their_key(
        seed in proptest::collection::vec(any::<u8>(), 0..2048),
        with_data_key in any::<bool>(),
    ) {
        let keys = keys(with_data_key);
        // Generating never fails for want of input (nor for any other reason).
        {
            let d = KdnetDatagram::generate(&mut Unstructured::new(&seed), &keys).unwrap();
            let opened = keys.open(&d.bytes).unwrap();
            prop_assert_eq!(&opened, &d.message);
            if !with_data_key {
                prop_assert_eq!(opened.channel, Channel::Control);
            }
            if opened.channel == Channel::Data && opened.payload.len() > 1 {
                prop_assert!(Repr::parse_bytes(&opened.payload).is_ok());
            }
            // Another key refuses it.
            let other = Keys::new("1.2.3.4".parse().unwrap());
            prop_assert!(other.open(&d.bytes).is_err());
        }
    }
}

#[test]
fn every_kind_of_command_and_reply_is_generated() {
    let mut commands = HashSet::new();
    let mut replies = HashSet::new();
    let mut unknown = 0;
    for seed in seeds(4000, 600) {
        if let Some(c) = check_command(&seed) {
            if matches!(c.command(), Command::Unknown(_)) {
                unknown += 1;
            }
            // The variant's name, and a host I/O request's own.
            let text = format!("{:?}", c.command());
            let name: Vec<&str> = text.split(['(', ' ', '{']).take(2).collect();
            commands.insert(if name[0] == "HostIo" {
                name.join("")
            } else {
                name[0].to_owned()
            });
        }
        if let Some(r) = check_reply(&seed) {
            replies.insert(discriminant(&r.reply));
        }
    }
    // 32 typed variants besides host I/O, 8 host I/O requests, and the unknown ones.
    assert_eq!(commands.len(), 41, "{commands:?}");
    assert!(commands.len() >= 41, "{} kinds of command", commands.len());
    assert!(unknown > 0);
    // Every reply variant.
    assert_eq!(replies.len(), 19, "{} kinds of reply", replies.len());
}

#[test]
fn every_manipulate_api_payload_and_control_packet_is_generated() {
    let mut apis = HashSet::new();
    let mut types = HashSet::new();
    let mut unknown_api = 0;
    for seed in seeds(6000, 1200) {
        let Some(repr) = check_kd(&seed) else {
            continue;
        };
        types.insert(repr.packet_type);
        if repr.packet_type == PacketType::StateManipulate {
            let m = Manipulate::parse(&repr.payload).unwrap();
            match m.api() {
                ManipulateApi::Unknown { .. } => unknown_api += 1,
                api => {
                    apis.insert(api.number());
                }
            }
        }
    }
    assert_eq!(apis.len(), 20, "typed manipulate APIs: {apis:?}");
    assert!(unknown_api > 0);
    for ty in [
        PacketType::StateManipulate,
        PacketType::StateChange64,
        PacketType::DebugIo,
        PacketType::FileIo,
        PacketType::TraceIo,
        PacketType::ControlRequest,
        PacketType::Acknowledge,
        PacketType::Resend,
        PacketType::Reset,
    ] {
        assert!(types.contains(&ty), "{ty:?} never generated");
    }
}

#[test]
fn generators_are_deterministic() {
    for seed in seeds(200, 400) {
        let a = GdbCommand::arbitrary(&mut Unstructured::new(&seed)).ok();
        let b = GdbCommand::arbitrary(&mut Unstructured::new(&seed)).ok();
        assert_eq!(a, b);
        let k = keys(true);
        let a = KdnetDatagram::generate(&mut Unstructured::new(&seed), &k).unwrap();
        let b = KdnetDatagram::generate(&mut Unstructured::new(&seed), &k).unwrap();
        assert_eq!(a, b);
        // And the mutator: the same packet and seed, the same mutation.
        let packet = Repr::arbitrary(&mut Unstructured::new(&seed))
            .unwrap()
            .to_kdcom_bytes();
        let tail = &seed[seed.len() / 2..];
        assert_eq!(
            mutate::kd_packet(&packet, &mut Unstructured::new(tail)).unwrap(),
            mutate::kd_packet(&packet, &mut Unstructured::new(tail)).unwrap()
        );
        assert_eq!(
            mutate::kdnet_datagram(&a.bytes, &k, &mut Unstructured::new(tail)).unwrap(),
            mutate::kdnet_datagram(&a.bytes, &k, &mut Unstructured::new(tail)).unwrap()
        );
    }
}

fn shared(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/")).join(path)
}

/// Every command and every logged reply of the recorded gdb 13.1 transcripts, framed,
/// with the reply kind of its command.
fn recorded_packets() -> Vec<(Vec<u8>, ReplyKind, bool)> {
    let dir = shared("reference/gdb-transcripts");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".server.log"))
        .collect();
    names.sort();
    assert!(names.len() >= 12, "{names:?}");
    for path in names {
        for ex in parse_log(&std::fs::read(&path).unwrap()) {
            let kind = Command::parse(&ex.command).reply_kind();
            out.push((
                tagsplit_protocol::gdb::frame::encode_packet(&ex.command, false),
                kind,
                true,
            ));
            if let Some(reply) = ex.reply {
                out.push((
                    tagsplit_protocol::gdb::frame::encode_packet(&reply, true),
                    kind,
                    false,
                ));
            }
        }
    }
    out
}

/// Feeds a mutated GDB packet to every parser: the framer, the command or reply parser,
/// and both sessions.
fn gdb_parsers_survive(bytes: &[u8], kind: ReplyKind) {
    for event in Decoder::default().decode(bytes) {
        if let Event::Packet(p) = event {
            let _ = Command::parse(&p).reply_kind();
            let _ = Reply::parse(kind, &p);
        }
    }
    let mut server = ServerSession::default();
    server.receive(bytes);
    while server.poll_event().is_some() {}
    let mut client = ClientSession::default();
    client.receive(bytes);
    while client.poll_event().is_some() {}
}

fn check_gdb_mutation(packet: &[u8], kind: ReplyKind, seed: &[u8]) -> Option<Field> {
    let m = mutate::gdb_frame(packet, &mut Unstructured::new(seed)).unwrap();
    // Bounded: the input, a re-encoding, and the growth.
    assert!(m.bytes.len() <= 2 * packet.len() + MAX_GROWTH + 8, "{m:?}");
    let events = Decoder::new(64 * 1024).decode(&m.bytes);
    if m.frames {
        assert!(
            matches!(events.as_slice(), [Event::Packet(_)]),
            "{:?} meant to frame: {:?} -> {events:?}",
            m.field,
            String::from_utf8_lossy(&m.bytes)
        );
    } else {
        assert!(
            !matches!(events.as_slice(), [Event::Packet(_)]),
            "{:?} not meant to frame: {:?}",
            m.field,
            String::from_utf8_lossy(&m.bytes)
        );
    }
    gdb_parsers_survive(&m.bytes, kind);
    // The same seed, the same mutation.
    assert_eq!(
        mutate::gdb_frame(packet, &mut Unstructured::new(seed)).ok(),
        Some(m.clone())
    );
    Some(m.field)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn mutated_transcript_packets_frame_as_documented(
        pick in any::<prop::sample::Index>(),
        seed in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let packets = recorded_packets();
        let (packet, kind, _) = pick.get(&packets);
        check_gdb_mutation(packet, *kind, &seed);
    }
}

#[test]
fn every_gdb_field_is_mutated() {
    let packets = recorded_packets();
    let xml = packets
        .iter()
        .filter(|(p, _, command)| !command && p.contains(&b'<'))
        .count();
    assert!(xml > 0, "the transcripts carry qXfer documents");
    let mut fields = HashSet::new();
    for (i, seed) in seeds(6000, 48).enumerate() {
        let (packet, kind, _) = &packets[i % packets.len()];
        fields.extend(check_gdb_mutation(packet, *kind, &seed));
    }
    for f in [
        Field::Number("number"),
        Field::Length,
        Field::Escape,
        Field::RunLength,
        Field::Checksum,
        Field::Xml,
    ] {
        assert!(fields.contains(&f), "{f:?} never mutated: {fields:?}");
    }
}

/// The real KDCOM packet from a Windows kernel (with its trailer) and generated ones.
fn kd_packets() -> Vec<Vec<u8>> {
    let path = shared("captures/kdcom-state-change-exception.bin");
    let mut real = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    real.push(0xAA);
    assert!(Repr::parse_bytes(&real).is_ok());
    let mut out = vec![real];
    out.extend(seeds(64, 1500).filter_map(|s| check_kd(&s).map(|r| r.to_kdcom_bytes())));
    out
}

fn check_kd_mutation(packet: &[u8], seed: &[u8]) -> Option<Field> {
    let m = mutate::kd_packet(packet, &mut Unstructured::new(seed)).unwrap();
    assert!(m.bytes.len() <= packet.len() + MAX_GROWTH);
    let mut decoder = StreamDecoder::new();
    decoder.push(&m.bytes);
    let mut events = Vec::new();
    while let Some(e) = decoder.next_event() {
        events.push(e);
    }
    if m.frames {
        match events.as_slice() {
            [StreamEvent::Packet(repr)] => {
                assert_eq!(repr.to_kdcom_bytes(), m.bytes, "{:?}", m.field);
                let _ = Payload::parse(repr.packet_type, &repr.payload);
            }
            other => panic!("{:?} meant to frame: {other:?}", m.field),
        }
    } else {
        assert!(
            !events.iter().any(|e| matches!(e, StreamEvent::Packet(_))),
            "{:?} not meant to frame: {events:?}",
            m.field
        );
    }
    Some(m.field)
}

#[test]
fn mutated_kd_packets_frame_as_documented_and_cover_every_field() {
    let packets = kd_packets();
    let mut fields = HashSet::new();
    for (i, seed) in seeds(4000, 32).enumerate() {
        fields.extend(check_kd_mutation(&packets[i % packets.len()], &seed));
    }
    let numbers = fields
        .iter()
        .filter(|f| matches!(f, Field::Number(_)))
        .count();
    assert!(numbers >= 10, "named payload fields mutated: {fields:?}");
    for f in [
        Field::Number("count"),
        Field::Number("address"),
        Field::Length,
        Field::ByteCount,
        Field::Checksum,
        Field::Sequence,
        Field::PacketType,
        Field::Trailer,
    ] {
        assert!(fields.contains(&f), "{f:?} never mutated: {fields:?}");
    }
}

/// Mutates `datagram` and checks the result against the documented `frames`: it opens
/// under `keys` with a KD packet that still parses exactly when it is meant to.
fn check_kdnet_mutation(datagram: &[u8], keys: &Keys, seed: &[u8]) -> Option<Field> {
    let m = mutate::kdnet_datagram(datagram, keys, &mut Unstructured::new(seed)).unwrap();
    let frames = |bytes: &[u8]| {
        keys.open(bytes).map(|msg| {
            msg.channel == Channel::Control
                || msg.payload.len() <= 1
                || Repr::parse_bytes(&msg.payload).is_ok()
        })
    };
    match frames(&m.bytes) {
        // (A real datagram may carry something that is not a KD packet to begin with.)
        Ok(inner_ok) if frames(datagram) == Ok(true) => assert_eq!(m.frames, inner_ok, "{m:?}"),
        Ok(_) => {}
        Err(e) => assert!(!m.frames, "{:?}: {e}", m.field),
    }
    Some(m.field)
}

fn assert_kdnet_fields(fields: &HashSet<Field>) {
    for f in [
        Field::Sequence,
        Field::Direction,
        Field::Version,
        Field::Tag,
        Field::Length,
    ] {
        assert!(fields.contains(&f), "{f:?} never mutated: {fields:?}");
    }
    assert!(
        fields.iter().any(|f| matches!(f, Field::Number(_))),
        "the inner KD packet is mutated: {fields:?}"
    );
}

#[test]
fn mutated_kdnet_datagrams_open_as_documented() {
    let keys = keys(true);
    let datagrams: Vec<Vec<u8>> = seeds(64, 1500)
        .filter_map(|s| KdnetDatagram::generate(&mut Unstructured::new(&s), &keys).ok())
        .map(|d| d.bytes)
        .collect();
    let mut fields = HashSet::new();
    for (i, seed) in seeds(3000, 32).enumerate() {
        fields.extend(check_kdnet_mutation(
            &datagrams[i % datagrams.len()],
            &keys,
            &seed,
        ));
    }
    assert_kdnet_fields(&fields);
}

/// The KDNET datagrams of the real WinDbg / Windows 10 capture (key 8.8.8.8), with the
/// keys after its handshake (the data key derived from the debugger's response).
fn captured_datagrams() -> (Vec<Vec<u8>>, Keys) {
    use tagsplit_protocol::kdnet::ControlMessage;
    let path = shared("captures/kdnet-win10-10586-key-8.8.8.8.pcapng.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader =
        pcap_file::pcapng::PcapNgReader::new(flate2::read::GzDecoder::new(file)).unwrap();
    let mut keys = Keys::new("8.8.8.8".parse().unwrap());
    let mut datagrams = Vec::new();
    while let Some(block) = reader.next_block() {
        let pcap_file::pcapng::Block::EnhancedPacket(packet) = block.unwrap() else {
            continue;
        };
        // The UDP payload: from the KDNET magic on (after Ethernet, IPv4 and UDP).
        let Some(at) = packet.data.windows(4).position(|w| w == b"MDBG") else {
            continue;
        };
        let datagram = packet.data[at..].to_vec();
        if let Ok(msg) = keys.open(&datagram)
            && msg.channel == Channel::Control
            && let ControlMessage::Response(r) = ControlMessage::parse(&msg.payload)
        {
            keys.set_data_key(r.data_key(keys.initial()));
        }
        datagrams.push(datagram);
    }
    let opened = datagrams.iter().filter(|d| keys.open(d).is_ok()).count();
    assert!(
        opened >= 900,
        "{opened} of {} datagrams open",
        datagrams.len()
    );
    (datagrams, keys)
}

#[test]
fn mutated_captured_kdnet_datagrams_open_as_documented() {
    let (datagrams, keys) = captured_datagrams();
    let mut fields = HashSet::new();
    for (i, seed) in seeds(4 * datagrams.len(), 32).enumerate() {
        fields.extend(check_kdnet_mutation(
            &datagrams[i % datagrams.len()],
            &keys,
            &seed,
        ));
    }
    assert_kdnet_fields(&fields);
}
