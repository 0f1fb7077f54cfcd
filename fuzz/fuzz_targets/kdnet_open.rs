#![no_main]
//! KDNET datagram open with a fixed key: no panic; whatever opens seals again (seal and
//! open share their checks) and the re-sealed datagram opens to the same message.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::kdnet_open::run(data));
