#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Every payload type round-trips byte for byte; typed views write back what they read.

use proptest::prelude::*;
use tagsplit_protocol::kd::payload::{
    CONTROL_REQUEST_LEN, DEBUG_IO_LEN, FILE_IO_LEN, GET_VERSION_LEN, MANIPULATE_LEN,
    STATE_CHANGE_LEN, TRACE_IO_LEN,
};
use tagsplit_protocol::kd::{
    ApiNumber, ControlRequest, DebugIo, FileIo, GetVersion64, KdError, Manipulate, ManipulateApi,
    PacketType, Payload, StateChange, TraceIo,
};

fn block(head: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), head),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(mut h, d)| {
            h.extend(d);
            h
        })
}

fn api_number() -> impl Strategy<Value = u32> {
    prop_oneof![
        proptest::sample::select(ApiNumber::ALL.to_vec()).prop_map(|a| a.0),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn manipulate_round_trips(mut bytes in block(MANIPULATE_LEN), api in api_number()) {
        bytes[..4].copy_from_slice(&api.to_le_bytes());
        let m = Manipulate::parse(&bytes).unwrap();
        prop_assert_eq!(m.to_bytes(), bytes.clone());
        prop_assert_eq!(m.buffer_len(), bytes.len());
        // The typed view writes back exactly the bytes it read.
        let typed = m.api();
        prop_assert_eq!(typed.number().0, api);
        let mut copy = m.clone();
        copy.set_api(&typed);
        prop_assert_eq!(&copy, &m);
        // And a typed value survives emit + parse on a fresh header.
        let fresh = Manipulate::request(&typed, vec![]);
        prop_assert_eq!(fresh.api(), typed);
        prop_assert_eq!(fresh.return_status(), 0x103);
        // Via the packet-type dispatcher too.
        let p = Payload::parse(PacketType::StateManipulate, &bytes).unwrap();
        prop_assert_eq!(p.to_bytes(), bytes);
    }

    #[test]
    fn state_change_round_trips(mut bytes in block(STATE_CHANGE_LEN), state in prop_oneof![Just(0x3030u32), Just(0x3031), Just(0x3032), any::<u32>()]) {
        bytes[..4].copy_from_slice(&state.to_le_bytes());
        let s = StateChange::parse(&bytes).unwrap();
        prop_assert_eq!(s.to_bytes(), bytes.clone());
        let mut copy = s.clone();
        copy.set_kind(&s.kind());
        copy.set_control_report(&s.control_report());
        prop_assert_eq!(&copy, &s);
        let p = Payload::parse(PacketType::StateChange64, &bytes).unwrap();
        prop_assert_eq!(p.to_bytes(), bytes);
    }

    #[test]
    fn io_blocks_round_trip(d in block(DEBUG_IO_LEN), f in block(FILE_IO_LEN), t in block(TRACE_IO_LEN), c in block(CONTROL_REQUEST_LEN)) {
        prop_assert_eq!(DebugIo::parse(&d).unwrap().to_bytes(), d.clone());
        prop_assert_eq!(FileIo::parse(&f).unwrap().to_bytes(), f.clone());
        prop_assert_eq!(TraceIo::parse(&t).unwrap().to_bytes(), t.clone());
        prop_assert_eq!(ControlRequest::parse(&c).unwrap().to_bytes(), c.clone());
        for (ty, b) in [(PacketType::DebugIo, &d), (PacketType::FileIo, &f), (PacketType::TraceIo, &t), (PacketType::ControlRequest, &c), (PacketType::Unknown(99), &d)] {
            let p = Payload::parse(ty, b).unwrap();
            prop_assert_eq!(&p.to_bytes(), b);
            let mut buf = vec![0u8; b.len()];
            match &p {
                Payload::DebugIo(x) => x.emit(&mut buf).unwrap(),
                Payload::FileIo(x) => x.emit(&mut buf).unwrap(),
                Payload::TraceIo(x) => x.emit(&mut buf).unwrap(),
                Payload::ControlRequest(x) => x.emit(&mut buf).unwrap(),
                Payload::Other(x) => buf.copy_from_slice(x),
                _ => unreachable!(),
            }
            prop_assert_eq!(&buf, b);
        }
    }

    #[test]
    fn get_version_round_trips(bytes in proptest::collection::vec(any::<u8>(), GET_VERSION_LEN)) {
        let v = GetVersion64::parse(&bytes).unwrap();
        let mut out = [0u8; GET_VERSION_LEN];
        v.emit(&mut out);
        prop_assert_eq!(out.to_vec(), bytes);
    }

    #[test]
    fn short_payloads_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..STATE_CHANGE_LEN)) {
        let r = StateChange::parse(&bytes);
        prop_assert!(matches!(r, Err(KdError::Truncated { .. })), "240 bytes needed");
        if bytes.len() < MANIPULATE_LEN {
            prop_assert!(Manipulate::parse(&bytes).is_err());
        }
    }
}

#[test]
fn every_reference_api_number_is_named() {
    assert_eq!(
        ApiNumber::ALL.len(),
        0x3149 - 0x3130 + 1 + (0x3160 - 0x3150 + 1)
    );
    for a in ApiNumber::ALL {
        assert_ne!(a.name(), "Unknown", "{a:?}");
    }
    assert_eq!(ApiNumber(0x3161).name(), "Unknown");
    assert_eq!(ApiNumber::MAXIMUM.0, 0x3161);
}

#[test]
fn typed_requests_have_reference_layout() {
    let m = Manipulate::request(
        &ManipulateApi::ReadVirtualMemory(tagsplit_protocol::kd::MemoryTransfer {
            address: 0xFFFF_F800_1234_5678,
            count: 0x10,
            actual: 0,
        }),
        vec![],
    );
    let b = m.to_bytes();
    assert_eq!(&b[0..4], &0x3130u32.to_le_bytes());
    assert_eq!(&b[8..12], &0x103u32.to_le_bytes());
    assert_eq!(&b[16..24], &0xFFFF_F800_1234_5678u64.to_le_bytes());
    assert_eq!(&b[24..28], &0x10u32.to_le_bytes());
    let reply = m.reply(
        0,
        &ManipulateApi::ReadVirtualMemory(tagsplit_protocol::kd::MemoryTransfer {
            address: 0xFFFF_F800_1234_5678,
            count: 0x10,
            actual: 4,
        }),
        vec![1, 2, 3, 4],
    );
    assert_eq!(reply.return_status(), 0);
    assert_eq!(reply.data(), &[1, 2, 3, 4]);
    let s = Manipulate::request(
        &ManipulateApi::SearchMemory {
            address: 0x1000,
            length: 0x2000,
            pattern_length: 4,
        },
        b"Leak".to_vec(),
    );
    assert_eq!(
        &s.to_bytes()[16..36],
        &[
            0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0
        ]
    );
    let c2 = Manipulate::request(
        &ManipulateApi::Continue2 {
            status: 0x10002,
            trace_flag: 0,
            dr7: 0x400,
            symbol_start: 1,
            symbol_end: 2,
        },
        vec![],
    );
    assert_eq!(
        &c2.to_bytes()[16..28],
        &[2, 0, 1, 0, 0, 0, 0, 0, 0, 4, 0, 0]
    );
}
