#![no_main]
//! Stub bytes into a ClientSession waiting for replies of every kind; no panic.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::gdb_client_session::run(data));
