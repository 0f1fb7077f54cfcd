#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Captures with absurd lengths: a pcapng block that claims 0xFFFFFFF0 bytes, pcap
//! records that claim more than any tool writes or more than the file holds. The
//! decoder refuses each with a message naming the record, before copying anything (the
//! length is checked against `MAX_RECORD_BYTES` first), and `tagsplit decode` exits
//! with that message.

mod common;

use common::{tagsplit, temp_dir};
use tagsplit::decode::capture::MAX_RECORD_BYTES;
use tagsplit::decode::{DecodeError, decode_bytes};

/// A little-endian pcap file header (Ethernet) with `snaplen`.
fn pcap_header(snaplen: u32) -> Vec<u8> {
    let mut h = vec![0xD4, 0xC3, 0xB2, 0xA1, 2, 0, 4, 0];
    h.extend([0u8; 8]);
    h.extend(snaplen.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    h
}

/// A pcap record header claiming `caplen` bytes.
fn pcap_record(caplen: u32) -> Vec<u8> {
    let mut r = vec![0u8; 8];
    r.extend(caplen.to_le_bytes());
    r.extend(caplen.to_le_bytes());
    r
}

/// A pcapng section header block (little-endian), then a block claiming `len` bytes.
fn pcapng_with_block(len: u32) -> Vec<u8> {
    let mut f = vec![0x0A, 0x0D, 0x0D, 0x0A];
    f.extend(28u32.to_le_bytes());
    f.extend(0x1A2B_3C4Du32.to_le_bytes());
    f.extend(1u16.to_le_bytes());
    f.extend(0u16.to_le_bytes());
    f.extend(u64::MAX.to_le_bytes());
    f.extend(28u32.to_le_bytes());
    // An enhanced packet block that claims `len` bytes and holds 64.
    f.extend(6u32.to_le_bytes());
    f.extend(len.to_le_bytes());
    f.extend([0u8; 56]);
    f
}

fn err(bytes: Vec<u8>) -> DecodeError {
    decode_bytes("hostile", bytes, None).unwrap_err()
}

#[test]
fn absurd_lengths_are_refused_before_anything_is_copied() {
    // pcapng: a block that claims 0xFFFFFFF0 bytes.
    let e = err(pcapng_with_block(0xFFFF_FFF0));
    assert!(
        matches!(e, DecodeError::RecordTooLong { record: 2, claimed: 0xFFFF_FFF0, max, .. } if max == MAX_RECORD_BYTES),
        "{e:?}"
    );
    assert!(e.to_string().contains("claims 4294967280 bytes"), "{e}");
    // pcapng: a plausible length, more than the file holds.
    let e = err(pcapng_with_block(1000));
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                record: 2,
                claimed: 1000,
                available: 64,
                offset: 28
            }
        ),
        "{e:?}"
    );
    // pcap: a huge snaplen is harmless; a huge caplen is refused.
    let mut f = pcap_header(u32::MAX);
    f.extend(pcap_record(0xFFFF_FFF0));
    f.extend([0u8; 100]);
    let e = err(f);
    assert!(
        matches!(
            e,
            DecodeError::RecordTooLong {
                record: 1,
                offset: 24,
                ..
            }
        ),
        "{e:?}"
    );
    // pcap: a record cut short, and a record header cut short.
    let mut f = pcap_header(65535);
    f.extend(pcap_record(60));
    f.extend([0u8; 60]);
    f.extend(pcap_record(1500));
    f.extend([0u8; 10]);
    let e = err(f.clone());
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                record: 2,
                claimed: 1516,
                available: 26,
                ..
            }
        ),
        "{e:?}"
    );
    f.truncate(24 + 16 + 60 + 7);
    let e = err(f);
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                record: 2,
                available: 7,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn tagsplit_decode_reports_an_absurd_length_and_fails() {
    let dir = temp_dir("capture-bounds");
    let path = dir.join("huge.pcapng");
    std::fs::write(&path, pcapng_with_block(0xFFFF_FFF0)).unwrap();
    let out = tagsplit(&["decode", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("record 2 at byte 28 claims 4294967280"),
        "{stderr}"
    );
}
