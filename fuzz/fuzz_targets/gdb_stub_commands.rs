#![no_main]
//! Structure-aware: arbitrary GDB command sequences (the protocol's `arbitrary`
//! generators, some mutated) into the protocol's GDB stub over a small target.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_stub_commands::run(data));
