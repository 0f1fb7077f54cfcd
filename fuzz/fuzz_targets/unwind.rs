#![no_main]
//! Arbitrary bytes as x64 unwind data and as the memory an unwinder walks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::unwind::run(data));
