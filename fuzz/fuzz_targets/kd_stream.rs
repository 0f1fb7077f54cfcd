#![no_main]
//! The KDCOM stream decoder on arbitrary bytes, fed in two chunks: no panic, bounded
//! buffer, and the same events as one push.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::kd_stream::run(data));
