//! KDNET datagram open with a fixed key: no panic; whatever opens seals again (seal and
//! open share their checks) and the re-sealed datagram opens to the same message.
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
        let again = keys.seal(&m);
        assert!(again.is_ok(), "open accepted what seal refuses: {again:?}");
        if let Ok(again) = again {
            assert!(again.len() <= d.len());
            assert_eq!(keys.open(&again).ok(), Some(m));
        }
    }
});
