#![no_main]
//! The capture decoder (pcap, pcapng, gzip, raw KDCOM) on arbitrary bytes: no panic.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::capture_decode::run(data));
