#![no_main]
//! gdb's remote session log: any bytes read without panic, within the input's size.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_remotelog::run(data));
