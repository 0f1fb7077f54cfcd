#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The real captures decode as the reference (section 4) says.

use std::path::PathBuf;

use tagsplit::decode::capture::{self, Transport};
use tagsplit::decode::{self, Content, DecodeError, Detail, Direction};
use tagsplit_protocol::kd::payload::CREATE_FILE_API;
use tagsplit_protocol::kd::{
    Leader, Manipulate, ManipulateApi, PacketType, Payload, Repr, StateChangeKind, status,
};
use tagsplit_protocol::kdnet::{Channel, ControlMessage, Datagram, Keys};

const KDNET: &str = "kdnet-win10-10586-key-8.8.8.8.pcapng.gz";
const KDCOM: &str = "kdcom-state-change-exception.bin";

fn capture_path(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/captures/"
    ))
    .join(name);
    assert!(p.exists(), "capture missing: {}", p.display());
    p
}

fn kdnet_report() -> decode::CaptureReport {
    decode::decode_file(&capture_path(KDNET), Some("8.8.8.8")).unwrap()
}

#[test]
fn kdnet_capture_totals_match_reference() {
    let r = kdnet_report();
    let t = &r.totals;
    assert_eq!(t.frames, 955);
    assert_eq!(t.datagrams, 955);
    assert_eq!(t.control_datagrams, 428);
    assert_eq!(t.data_datagrams, 527);
    assert_eq!(t.authenticated, 955, "every integrity tag verifies");
    assert_eq!(t.unauthenticated, 0);
    assert_eq!(t.pokes, 427);
    assert_eq!(t.responses, 1);
    assert!(
        matches!(r.datagrams[1].content, Content::Response { .. }),
        "the response is the 2nd datagram"
    );
    assert_eq!(r.datagrams[1].direction, Some(Direction::DebuggerToTarget));
    assert_eq!(
        r.data_key.as_deref(),
        Some("6bd91c57bd6a551ad30b509c05c0c95b32cc5e47a0866907eaf0b1583384f660")
    );
    assert_eq!(t.kd_packets, 526);
    assert_eq!(t.bad_checksums, 0);
    assert!(r.packets.iter().all(|p| p.checksum_ok));
    assert_eq!(t.of_type(PacketType::Acknowledge), 259);
    assert_eq!(t.of_type(PacketType::Resend), 2);
    assert_eq!(t.of_type(PacketType::Reset), 2);
    assert_eq!(t.of_type(PacketType::StateManipulate), 187);
    assert_eq!(t.of_type(PacketType::FileIo), 66);
    assert_eq!(t.of_type(PacketType::DebugIo), 7);
    assert_eq!(t.of_type(PacketType::StateChange64), 3);
    assert_eq!(t.hellos, 1);
    assert_eq!(t.break_ins, 0);
    let hello = r
        .datagrams
        .iter()
        .find_map(|d| match &d.content {
            Content::Hello { bytes } => Some(bytes.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(hello.len(), 24, "12-byte hello");
    assert!(hello.ends_with("0102a8c0"), "host IPv4 as the id: {hello}");
    // Pokes every ~3 s (pcapng timestamps rescaled by if_tsresol).
    let pokes: Vec<f64> = r
        .datagrams
        .iter()
        .filter(|d| matches!(d.content, Content::Poke { .. }))
        .map(|d| d.time)
        .collect();
    let gap = pokes[pokes.len() - 1] - pokes[pokes.len() - 2];
    assert!((2.0..4.0).contains(&gap), "poke interval {gap}");
}

#[test]
fn kdnet_capture_key_packets() {
    let r = kdnet_report();
    let first = &r.packets[0];
    assert_eq!(first.byte_count, 46);
    match &first.detail {
        Detail::DebugIo {
            text, api_number, ..
        } => {
            assert_eq!(*api_number, 0x3230);
            assert_eq!(text, "BD: Boot Debugger Initialized\n");
        }
        other => panic!("first packet is {other:?}"),
    }
    // LoadSymbols winload.efi.
    let load = r
        .packets
        .iter()
        .find_map(|p| match &p.detail {
            Detail::StateChange {
                fields: StateChangeKind::LoadSymbols(l),
                path,
                ..
            } if l.unload_symbols == 0 => Some((*l, path.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(load.1.as_deref(), Some("winload.efi"));
    assert_eq!(load.0.base_of_dll, 0x96F000);
    assert_eq!(load.0.size_of_image, 0x17D000);
    assert_eq!(load.0.checksum, 0x149E3F);
    // GetVersion reply (from the target).
    let v = r
        .packets
        .iter()
        .find_map(|p| match &p.detail {
            Detail::Manipulate {
                fields: ManipulateApi::GetVersion(v),
                return_status: 0,
                ..
            } if p.direction == Some(Direction::TargetToDebugger) => Some(*v),
            _ => None,
        })
        .unwrap();
    assert_eq!(v.major_version, 0x040F);
    assert_eq!(v.minor_version, 10586);
    assert_eq!((v.protocol_version, v.kd_secondary_version), (6, 2));
    assert_eq!(v.flags, 0x0002);
    assert_eq!(v.machine_type, 0x8664);
    assert_eq!(v.max_packet_type, 12);
    assert_eq!(v.max_state_change, 0x32);
    assert_eq!(v.max_manipulate, 0x59);
    assert_eq!(v.kern_base, 0x96F000);
    assert_eq!(v.ps_loaded_module_list, 0xAD5E60);
    assert_eq!(v.debugger_data_list, 0);
    // The breakpoint exception.
    let (e, pc) = r
        .packets
        .iter()
        .find_map(|p| match &p.detail {
            Detail::StateChange {
                fields: StateChangeKind::Exception(e),
                program_counter,
                ..
            } => Some((*e, *program_counter)),
            _ => None,
        })
        .unwrap();
    assert_eq!(e.code, status::BREAKPOINT);
    assert_eq!(e.address, 0x9CF07D);
    assert_eq!(pc, 0x9CF07E);
    assert_eq!(e.first_chance, 1);
    // 33 CreateFile requests answered STATUS_NO_SUCH_FILE.
    let no_file = r
        .packets
        .iter()
        .filter(|p| {
            matches!(&p.detail, Detail::FileIo { api_number, status, .. }
                if *api_number == CREATE_FILE_API && *status == status::NO_SUCH_FILE)
        })
        .count();
    assert_eq!(no_file, 33);
    // GetContextEx is refused with STATUS_UNSUCCESSFUL by the boot debugger.
    assert!(r.packets.iter().any(|p| matches!(
        &p.detail,
        Detail::Manipulate {
            api_number: 0x315F,
            return_status: status::UNSUCCESSFUL,
            ..
        }
    )));
    // KDNET id scheme: target ids even from 0, debugger ids 0x80000000 + 2k.
    for p in r.packets.iter().filter(|p| p.leader == Leader::Data) {
        assert_eq!(p.id % 2, 0, "{}", p.summary);
        match p.direction {
            Some(Direction::DebuggerToTarget) => assert!(p.id >= 0x8000_0000),
            Some(Direction::TargetToDebugger) => assert!(p.id < 0x8000_0000),
            None => panic!("kdnet packets have a direction"),
        }
    }
}

#[test]
fn kdnet_capture_text_and_json() {
    let r = kdnet_report();
    let text = decode::render_text(&r);
    assert!(text.contains("PrintString \"BD: Boot Debugger Initialized\\n\""));
    assert!(
        text.contains("kdnet datagrams: 955 (428 control, 527 data); authenticated 955, not 0")
    );
    assert!(text.contains("KD_ACKNOWLEDGE: 259"));
    assert_eq!(text.lines().filter(|l| l.starts_with('#')).count(), 955);
    let json: serde_json::Value = serde_json::from_str(&decode::render_json(&r)).unwrap();
    assert_eq!(json["totals"]["kd_packets"], 526);
    assert_eq!(json["datagrams"].as_array().unwrap().len(), 955);
    assert_eq!(
        json["packets"][0]["detail"]["text"],
        "BD: Boot Debugger Initialized\n"
    );
}

#[test]
fn kdnet_capture_wrong_key_authenticates_nothing() {
    let err = decode::decode_file(&capture_path(KDNET), Some("8.8.8.9")).unwrap_err();
    match err {
        DecodeError::NotAuthenticated { datagrams, .. } => assert_eq!(datagrams, 955),
        other => panic!("{other}"),
    }
    // Without a key, nothing is shown as data.
    let r = decode::decode_file(&capture_path(KDNET), None).unwrap();
    assert_eq!(r.totals.kd_packets, 0);
    assert_eq!(r.totals.authenticated, 0);
    assert!(r.notes.iter().any(|n| n.contains("--key")));
    assert!(matches!(
        decode::decode_file(&capture_path(KDNET), Some("8.8.8")),
        Err(DecodeError::Key(_))
    ));
}

/// Every real payload re-emits byte for byte, and typed views write back identically.
#[test]
fn kdnet_capture_payloads_round_trip() {
    let bytes = capture::read_file(&capture_path(KDNET)).unwrap();
    let frames = capture::frames(&bytes, capture::detect(&bytes)).unwrap();
    let mut keys = Keys::new("8.8.8.8".parse().unwrap());
    let mut checked = 0;
    for f in &frames {
        let seg = capture::segment(f).unwrap();
        assert_eq!(seg.transport, Transport::Udp);
        assert!(Datagram::<&[u8]>::has_magic(&seg.payload));
        let msg = keys.open(&seg.payload).unwrap();
        // Re-sealing gives the same datagram: same plaintext, tag and IV.
        assert_eq!(keys.seal(&msg).unwrap(), seg.payload);
        if msg.channel == Channel::Control {
            if let ControlMessage::Response(resp) = ControlMessage::parse(&msg.payload) {
                keys.set_data_key(resp.data_key(keys.initial()));
            }
            continue;
        }
        let Ok(repr) = Repr::parse_bytes(&msg.payload) else {
            continue;
        };
        assert_eq!(repr.to_bytes(), msg.payload);
        let payload = Payload::parse(repr.packet_type, &repr.payload).unwrap();
        assert_eq!(payload.to_bytes(), repr.payload);
        if let Payload::Manipulate(m) = &payload {
            let mut copy = Manipulate::from_parts([0u8; 56], m.data().to_vec());
            copy.head_mut().copy_from_slice(m.head());
            copy.set_api(&m.api());
            assert_eq!(&copy, m, "typed view writes back identically");
        }
        if let Payload::StateChange(s) = &payload {
            let mut copy = s.clone();
            copy.set_kind(&s.kind());
            copy.set_control_report(&s.control_report());
            assert_eq!(&copy, s);
        }
        checked += 1;
    }
    assert_eq!(checked, 526);
}

#[test]
fn kdcom_fixture_decodes_as_reference() {
    let r = decode::decode_file(&capture_path(KDCOM), None).unwrap();
    assert_eq!(r.format, decode::FileFormat::Raw);
    assert_eq!(r.totals.kd_packets, 1);
    assert_eq!(r.totals.bad_checksums, 0);
    let p = &r.packets[0];
    assert_eq!(p.id, 0x8080_0800);
    assert_eq!(p.checksum, 0x1FE6);
    assert!(p.checksum_ok);
    assert_eq!(p.packet_type, "KD_STATE_CHANGE64");
    match &p.detail {
        Detail::StateChange {
            new_state,
            processor_level,
            processor,
            number_processors,
            fields: StateChangeKind::Exception(e),
            report,
            ..
        } => {
            assert_eq!(*new_state, 0x3030);
            assert_eq!(*processor_level, 6);
            assert_eq!((*processor, *number_processors), (1, 2));
            assert_eq!(e.code, 0x8000_0003);
            assert_eq!(e.address, 0xFFFF_F802_C55E_3380);
            assert_eq!(report.report_flags, 3);
            assert_eq!(
                (report.seg_cs, report.seg_ds, report.seg_es, report.seg_fs),
                (0x10, 0x2B, 0x2B, 0x53)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        r.notes.iter().any(|n| n.contains("trailer")),
        "the missing 0xAA is reported"
    );
    let text = decode::render_text(&r);
    assert!(
        text.contains("Exception code=0x80000003 address=0xfffff802c55e3380"),
        "{text}"
    );
}
