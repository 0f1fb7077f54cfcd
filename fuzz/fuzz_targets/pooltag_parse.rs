#![no_main]
//! Arbitrary text as pooltag.txt: parsing and lookups never panic.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::pooltag_parse::run(data));
