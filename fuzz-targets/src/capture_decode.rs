//! The capture decoder (pcap, pcapng, gzip, raw KDCOM) on arbitrary bytes: no panic.

/// One fuzz input.
pub fn run(data: &[u8]) {
    if let Ok(report) = tagsplit::decode::decode_bytes("fuzz", data.to_vec(), Some("8.8.8.8")) {
        let _ = tagsplit::decode::render_text(&report);
    }
}
