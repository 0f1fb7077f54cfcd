#![no_main]
//! Manipulate and state-change payloads: parse, typed view, emit — byte for byte.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::kd_payload::run(data));
