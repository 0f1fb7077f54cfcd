#![no_main]
//! The typed command parser: never panics, and what it recognises re-encodes to a packet
//! that parses to the same command.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_command::run(data));
