#![no_main]
//! Random command lines against the console on a small flat target: never a panic, hang
//! or unbounded allocation.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::console_command::run(data));
