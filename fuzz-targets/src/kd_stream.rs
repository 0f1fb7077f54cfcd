//! The KDCOM stream decoder on arbitrary bytes, fed in two chunks: no panic, bounded
//! buffer, and the same events as one push.

use tagsplit_protocol::kd::{PACKET_MAX_SIZE, StreamDecoder};

fn events(chunks: &[&[u8]]) -> Vec<tagsplit_protocol::kd::StreamEvent> {
    let mut d = StreamDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
        assert!(d.buffered() <= 16 + PACKET_MAX_SIZE + 1);
        while let Some(e) = d.next_event() {
            out.push(e);
        }
    }
    d.finish();
    while let Some(e) = d.next_event() {
        out.push(e);
    }
    out
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (a, b) = data.split_at(split);
    assert_eq!(events(&[a, b]), events(&[data]));
}
