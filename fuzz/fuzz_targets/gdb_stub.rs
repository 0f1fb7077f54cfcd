#![no_main]
//! Bytes into the protocol's GDB stub over a small target with every capability; no
//! panic, bounded output, and a run always ends.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_stub::run(data));
