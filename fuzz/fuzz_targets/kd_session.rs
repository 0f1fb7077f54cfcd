#![no_main]
//! A KD session (both schemes, both roles) fed arbitrary input and timer ticks: no panic,
//! bounded queues.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::kd_session::run(data));
