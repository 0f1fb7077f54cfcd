//! The capture decoder (pcap, pcapng, gzip, raw KDCOM) on arbitrary bytes: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = tagsplit::decode::decode_bytes("fuzz", data.to_vec(), Some("8.8.8.8")) {
        let _ = tagsplit::decode::render_text(&report);
    }
});
