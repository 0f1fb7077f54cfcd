//! KD and KDNET benchmarks.
//!
//! * KDNET datagram open (HMAC verify + AES-256-CBC decrypt + prefix parse) against the
//!   floor: the same two RustCrypto primitives called directly with no framing at all.
//! * The KDCOM stream decoder on real packets (the syzkaller state-change fixture), fed in
//!   one buffer and byte by byte (its result is the same either way; this is the cost).
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
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tagsplit_protocol::kd::{StreamDecoder, StreamEvent};
use tagsplit_protocol::kdnet::{Channel, Key, Keys, Message};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/captures/");

fn bench_kdnet(c: &mut Criterion) {
    let keys = Keys::new("8.8.8.8".parse::<Key>().unwrap());
    // The largest datagram seen in the real capture is 1334 bytes.
    let msg = Message::new(Channel::Control, 4, 7, true, vec![0x5a; 1296]);
    let sealed = keys.seal(&msg).unwrap();
    assert_eq!(keys.open(&sealed).unwrap(), msg);
    let mut g = c.benchmark_group("kdnet open 1328-byte datagram");
    g.throughput(Throughput::Bytes(sealed.len() as u64));
    g.bench_function("tagsplit Keys::open", |b| {
        b.iter(|| black_box(keys.open(black_box(&sealed)).unwrap().payload.len()))
    });
    let initial = *keys.initial();
    let hmac_key: Vec<u8> = initial.iter().map(|b| !b).collect();
    g.bench_function("floor: raw HMAC-SHA256 + AES-256-CBC", |b| {
        b.iter(|| {
            let body = &sealed[6..sealed.len() - 16];
            let tag = &sealed[sealed.len() - 16..];
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).unwrap();
            mac.update(&sealed[..6]);
            let mut plain = body.to_vec();
            cbc::Decryptor::<aes::Aes256>::new(&initial.into(), tag.into())
                .decrypt_padded_mut::<NoPadding>(&mut plain)
                .unwrap();
            mac.update(&plain);
            black_box(mac.verify_truncated_left(tag).is_ok())
        })
    });
    g.finish();
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
