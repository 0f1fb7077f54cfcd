#![no_main]
//! Bytes into a ServerSession that answers every command; no panic, bounded output.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_server_session::run(data));
