#![no_main]
//! The streaming RSP decoder: any bytes, any chunking, same events, no panic.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_decoder::run(data));
