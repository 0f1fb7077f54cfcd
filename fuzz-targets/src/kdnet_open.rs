//! KDNET datagram open with a fixed key: no panic; whatever opens seals again (seal and
//! open share their checks) and the re-sealed datagram opens to the same message.

use tagsplit_protocol::kdnet::{ControlMessage, Key, Keys};

/// One fuzz input.
pub fn run(data: &[u8]) {
    // The key of the real capture the seeds come from (`fuzz/seed.py`).
    let Ok(key) = "8.8.8.8".parse::<Key>() else {
        return;
    };
    let mut keys = Keys::new(key);
    keys.set_data_key([0x6b; 32]);
    let mut d = data.to_vec();
    if let Some(magic) = d.get_mut(..4) {
        magic.copy_from_slice(b"MDBG");
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
}
