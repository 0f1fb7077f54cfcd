//! The streaming RSP decoder: any bytes, any chunking, same events, no panic.

use tagsplit_protocol::gdb::frame::{Decoder, Event};

/// One fuzz input.
pub fn run(data: &[u8]) {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = Decoder::new(256);
    let mut all = whole.decode(bytes);
    all.extend(whole.finish());
    let mut chunked = Decoder::new(256);
    let split = usize::from(cut).min(bytes.len());
    let (a, b) = bytes.split_at(split);
    let mut parts = chunked.decode(a);
    parts.extend(chunked.decode(b));
    parts.extend(chunked.finish());
    assert_eq!(all, parts);
    for ev in &all {
        if let Event::Packet(p) | Event::Notification(p) = ev {
            assert!(p.len() <= 256);
        }
    }
}
