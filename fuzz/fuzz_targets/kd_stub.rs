#![no_main]
//! KDCOM bytes into the protocol's KD stub over a small target with every capability, with
//! the clock moving so retransmissions fire: no panic, bounded output, and a run always
//! ends.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::kd_stub::run(data));
