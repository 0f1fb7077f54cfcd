//! KD and KDNET benchmarks.
//!
//! * KDNET datagram open and seal (HMAC-SHA256 + AES-256-CBC + prefix) of 64-byte and
//!   1,400-byte datagrams against the floor: the same RustCrypto calls made directly, with
//!   no framing, checks or allocation.
//! * The KDCOM stream decoder on real packets (the syzkaller state-change fixture), fed in
//!   one buffer, in 16-byte reads (what a serial port hands over) and byte by byte (its
//!   result is the same either way; this is the cost).
//! * Decoding the whole real KDNET capture (955 datagrams) when `../shared` is present.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tagsplit_protocol::kd::{StreamDecoder, StreamEvent};
use tagsplit_protocol::kdnet::{Channel, Key, Keys, Message};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/captures/");

/// The floor for one datagram: the same RustCrypto calls our KDNET code makes, with no
/// framing, no checks and no allocation: a pre-keyed HMAC-SHA256 and a pre-keyed AES-256
/// (cloned, as a keyed state is reused) over header and plaintext, CBC in place.
struct Floor {
    aes: aes::Aes256,
    mac: Hmac<Sha256>,
}

impl Floor {
    fn new(key: [u8; 32]) -> Floor {
        let hmac_key: Vec<u8> = key.iter().map(|b| !b).collect();
        Floor {
            aes: <aes::Aes256 as aes::cipher::KeyInit>::new(&key.into()),
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).unwrap(),
        }
    }

    /// Decrypts `body` in place and returns whether the tag matched.
    fn open(&self, header: &[u8], body: &mut [u8], tag: &[u8]) -> bool {
        cbc::Decryptor::<aes::Aes256>::inner_iv_init(self.aes.clone(), tag.into())
            .decrypt_padded_mut::<NoPadding>(body)
            .unwrap();
        let mut mac = self.mac.clone();
        mac.update(header);
        mac.update(body);
        mac.verify_truncated_left(tag).is_ok()
    }

    /// Tags and encrypts `body` in place; returns the tag.
    fn seal(&self, header: &[u8], body: &mut [u8]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(header);
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        let len = body.len();
        cbc::Encryptor::<aes::Aes256>::inner_iv_init(self.aes.clone(), (&tag).into())
            .encrypt_padded_mut::<NoPadding>(body, len)
            .unwrap();
        tag
    }
}

fn bench_kdnet(c: &mut Criterion) {
    let keys = Keys::new("8.8.8.8".parse::<Key>().unwrap());
    let floor = Floor::new(*keys.initial());
    // A 64-byte datagram (a small KD packet) and a 1,400-byte one (larger than the
    // largest in the real capture, 1,334 bytes).
    for (name, payload) in [
        ("64-byte", 64 - 6 - 8 - 16),
        ("1400-byte", 1400 - 6 - 8 - 16),
    ] {
        let msg = Message::new(Channel::Control, 4, 7, true, vec![0x5a; payload]);
        let sealed = keys.seal(&msg).unwrap();
        assert_eq!(sealed.len(), msg.buffer_len());
        assert_eq!(keys.open(&sealed).unwrap(), msg);
        let (header, rest) = sealed.split_at(6);
        let (body, tag) = rest.split_at(rest.len() - 16);
        let mut scratch = body.to_vec();
        assert!(floor.open(header, &mut scratch, tag));
        let plain = scratch.clone();
        let mut g = c.benchmark_group(format!("kdnet {name} datagram"));
        g.throughput(Throughput::Bytes(sealed.len() as u64));
        g.bench_function("tagsplit Keys::open", |b| {
            b.iter(|| black_box(keys.open(black_box(&sealed)).unwrap().payload.len()))
        });
        g.bench_function("floor: open (HMAC-SHA256 + AES-256-CBC)", |b| {
            b.iter(|| {
                scratch.copy_from_slice(body);
                black_box(floor.open(header, black_box(&mut scratch), tag))
            })
        });
        g.bench_function("tagsplit Keys::seal", |b| {
            b.iter(|| black_box(keys.seal(black_box(&msg)).unwrap().len()))
        });
        // What a sender that keeps one datagram buffer pays (the floor keeps one too).
        let mut out = Vec::new();
        keys.seal_into(&msg, &mut out).unwrap();
        assert_eq!(out, sealed);
        g.bench_function("tagsplit Keys::seal_into", |b| {
            b.iter(|| {
                keys.seal_into(black_box(&msg), &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_function("floor: seal (HMAC-SHA256 + AES-256-CBC)", |b| {
            b.iter(|| {
                scratch.copy_from_slice(&plain);
                black_box(floor.seal(header, black_box(&mut scratch)))
            })
        });
        g.finish();
    }
}

fn bench_kdcom(c: &mut Criterion) {
    let path = format!("{SHARED}kdcom-state-change-exception.bin");
    let Ok(mut packet) = std::fs::read(&path) else {
        eprintln!("skipping KDCOM benchmark: {path} is missing");
        return;
    };
    packet.push(0xaa);
    let stream: Vec<u8> = packet
        .iter()
        .copied()
        .cycle()
        .take(packet.len() * 64)
        .collect();
    let count = |chunk: usize| {
        let mut d = StreamDecoder::new();
        let mut n = 0;
        for part in stream.chunks(chunk) {
            d.push(part);
            while let Some(ev) = d.next_event() {
                if matches!(ev, StreamEvent::Packet(_)) {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(count(stream.len()), 64);
    let mut g = c.benchmark_group("kdcom decode 64 packets");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("one buffer", |b| b.iter(|| black_box(count(stream.len()))));
    g.bench_function("16-byte reads (a serial port)", |b| {
        b.iter(|| black_box(count(16)))
    });
    g.bench_function("byte by byte", |b| b.iter(|| black_box(count(1))));
    g.finish();
}

fn bench_capture(c: &mut Criterion) {
    let path = format!("{SHARED}kdnet-win10-10586-key-8.8.8.8.pcapng.gz");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("skipping capture benchmark: {path} is missing");
        return;
    };
    let mut g = c.benchmark_group("decode real KDNET capture");
    g.sample_size(10);
    g.bench_function("955 datagrams, key 8.8.8.8", |b| {
        b.iter(|| {
            let r =
                tagsplit::decode::decode_bytes("capture", bytes.clone(), Some("8.8.8.8")).unwrap();
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_kdnet, bench_kdcom, bench_capture);
criterion_main!(benches);
