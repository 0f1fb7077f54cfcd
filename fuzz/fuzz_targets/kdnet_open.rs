//! KDNET datagram open with a fixed key: no panic; whatever opens re-seals identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagsplit_protocol::kdnet::{ControlMessage, Key, Keys};

fuzz_target!(|data: &[u8]| {
    let mut keys = Keys::new(Key([8; 32]));
    keys.set_data_key([0x6b; 32]);
    let mut d = data.to_vec();
    if d.len() >= 4 {
        d[..4].copy_from_slice(b"MDBG");
    }
    if let Ok(m) = keys.open(&d) {
        let _ = ControlMessage::parse(&m.payload);
        // Only a datagram whose pad byte matches the canonical pad re-seals identically.
        if let Ok(again) = keys.seal(&m) {
            if again.len() == d.len() {
                assert_eq!(keys.open(&again).ok(), Some(m));
            }
        }
    }
});
