#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The KDCOM stream decoder: the same events however the bytes are chunked; resync after
//! noise; limits.

use proptest::prelude::*;
use tagsplit_protocol::kd::{PACKET_MAX_SIZE, PacketType, Repr, StreamDecoder, StreamEvent};

#[derive(Clone, Debug)]
enum Piece {
    Data(u16, u32, Vec<u8>),
    Control(u16, u32),
    Noise(Vec<u8>),
    BreakIn,
    Corrupt(u32, Vec<u8>, usize),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        (
            0u16..13,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(t, i, p)| Piece::Data(t, i, p)),
        (4u16..7, any::<u32>()).prop_map(|(t, i)| Piece::Control(t, i)),
        proptest::collection::vec(any::<u8>(), 1..20).prop_map(Piece::Noise),
        Just(Piece::BreakIn),
        (
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 1..100),
            any::<usize>()
        )
            .prop_map(|(i, p, at)| Piece::Corrupt(i, p, at)),
    ]
}

fn bytes_of(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Data(t, i, pl) => {
                out.extend(Repr::data(PacketType::from_value(*t), *i, pl.clone()).to_kdcom_bytes())
            }
            Piece::Control(t, i) => {
                out.extend(Repr::control(PacketType::from_value(*t), *i).to_kdcom_bytes())
            }
            Piece::Noise(n) => out.extend(n),
            Piece::BreakIn => out.push(0x62),
            Piece::Corrupt(i, pl, at) => {
                let mut b = Repr::data(PacketType::DebugIo, *i, pl.clone()).to_kdcom_bytes();
                let idx = 16 + at % pl.len();
                b[idx] = b[idx].wrapping_add(1);
                out.extend(b);
            }
        }
    }
    out
}

fn decode(chunks: &[&[u8]]) -> Vec<StreamEvent> {
    let mut d = StreamDecoder::new();
    let mut events = Vec::new();
    for c in chunks {
        d.push(c);
        while let Some(e) = d.next_event() {
            events.push(e);
        }
        assert!(d.buffered() <= 16 + PACKET_MAX_SIZE + 1);
    }
    d.finish();
    while let Some(e) = d.next_event() {
        events.push(e);
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn chunking_does_not_change_events(pieces in proptest::collection::vec(piece(), 0..12), cuts in proptest::collection::vec(any::<usize>(), 0..20)) {
        let bytes = bytes_of(&pieces);
        let whole = decode(&[&bytes]);
        let mut positions: Vec<usize> = cuts.iter().map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() }).collect();
        positions.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in positions {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        prop_assert_eq!(&decode(&chunks), &whole);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&decode(&singles), &whole);
    }

    #[test]
    fn clean_packets_all_come_through(pieces in proptest::collection::vec(piece(), 0..12)) {
        // Without noise or corruption, every packet and break-in is decoded in order.
        let clean: Vec<Piece> = pieces.into_iter().filter(|p| matches!(p, Piece::Data(..) | Piece::Control(..) | Piece::BreakIn)).collect();
        let events = decode(&[&bytes_of(&clean)]);
        prop_assert_eq!(events.len(), clean.len());
        for (p, e) in clean.iter().zip(&events) {
            match (p, e) {
                (Piece::Data(t, i, pl), StreamEvent::Packet(r)) => {
                    prop_assert_eq!(r, &Repr::data(PacketType::from_value(*t), *i, pl.clone()));
                }
                (Piece::Control(t, i), StreamEvent::Packet(r)) => {
                    prop_assert_eq!(r, &Repr::control(PacketType::from_value(*t), *i));
                }
                (Piece::BreakIn, StreamEvent::BreakIn) => {}
                other => prop_assert!(false, "mismatch {:?}", other),
            }
        }
    }
}

#[test]
fn resyncs_after_noise_and_reports_bad_packets() {
    let good = Repr::data(PacketType::DebugIo, 0x8080_0800, b"hello".to_vec());
    let mut bytes = b"xx000zz".to_vec();
    bytes.extend(good.to_kdcom_bytes());
    let mut bad = good.to_kdcom_bytes();
    bad[17] ^= 0xFF;
    bytes.extend(&bad);
    let mut bad_trailer = good.to_kdcom_bytes();
    *bad_trailer.last_mut().unwrap() = 0x00;
    bytes.extend(&bad_trailer);
    bytes.push(0x62);
    let events = decode(&[&bytes]);
    assert_eq!(events[0], StreamEvent::Noise { bytes: 7 });
    assert_eq!(events[1], StreamEvent::Packet(good.clone()));
    assert!(matches!(
        events[2],
        StreamEvent::BadChecksum {
            id: 0x8080_0800,
            ..
        }
    ));
    assert!(matches!(
        events[3],
        StreamEvent::BadTrailer { found: 0, .. }
    ));
    // The byte where the trailer belonged is hunted again (it could start a packet).
    assert_eq!(events[4], StreamEvent::Noise { bytes: 1 });
    assert_eq!(events[5], StreamEvent::BreakIn);
    assert_eq!(events.len(), 6);
}

/// A packet that lost a byte takes the first byte of the next one as its trailer; that
/// next packet (the sender's next copy) still comes through whole.
#[test]
fn a_packet_that_lost_a_byte_does_not_take_the_next_one_with_it() {
    let good = Repr::data(PacketType::StateManipulate, 0x8080_0001, vec![0x11; 1000]);
    let mut short = good.to_kdcom_bytes();
    short.remove(500);
    let whole = good.to_kdcom_bytes();
    let events = decode(&[&short, &whole]);
    assert!(
        matches!(
            events.first(),
            Some(StreamEvent::BadTrailer { found: 0x30, .. })
        ),
        "{events:?}"
    );
    assert_eq!(events.get(1), Some(&StreamEvent::Packet(good)));
    assert_eq!(events.len(), 2);
}

#[test]
fn oversized_byte_count_is_dropped_before_buffering() {
    let mut h = Repr::data(PacketType::StateManipulate, 1, vec![]).to_bytes();
    h[6..8].copy_from_slice(&4001u16.to_le_bytes());
    let mut d = StreamDecoder::new();
    d.push(&h);
    assert_eq!(
        d.next_event(),
        Some(StreamEvent::TooLong { byte_count: 4001 })
    );
    assert_eq!(d.buffered(), 0);
    // A maximal packet is fine.
    let max = Repr::data(PacketType::StateManipulate, 1, vec![7; PACKET_MAX_SIZE]);
    d.push(&max.to_kdcom_bytes());
    assert_eq!(d.next_event(), Some(StreamEvent::Packet(max)));
}
