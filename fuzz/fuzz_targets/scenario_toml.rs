#![no_main]
//! Fuzzes the scenario TOML parser and validator; small valid scenarios are also booted
//! and run a few ticks, and every valid scenario must round-trip through `to_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tagsplit_fuzz_targets::scenario_toml::run(data));
