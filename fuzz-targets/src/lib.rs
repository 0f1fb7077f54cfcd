//! The bodies of tagsplit's fuzz targets, one module per target, each with a
//! `run(data: &[u8])` that panics on a finding and returns otherwise.
//!
//! Two drivers call them. `fuzz/` (cargo-fuzz, libFuzzer, nightly features through
//! `RUSTC_BOOTSTRAP=1`) has one binary per entry of [`TARGETS`], a one-line
//! `fuzz_target!` around `run`. This crate's own tests, on stable in `cargo test
//! --workspace`, replay every committed corpus file (`fuzz/corpus/<target>/`) and every past
//! finding (`fuzz/regressions/<target>/`) through the same functions, so a finding fixed once
//! stays fixed without a fuzzer.
//!
//! ```
//! // Any bytes: a finding panics, everything else returns.
//! for (name, run) in tagsplit_fuzz_targets::TARGETS {
//!     run(name.as_bytes());
//! }
//! ```

pub mod capture_decode;
pub mod console_command;
pub mod gdb_client_session;
pub mod gdb_command;
pub mod gdb_decoder;
pub mod gdb_remotelog;
pub mod gdb_server_session;
pub mod gdb_stub;
pub mod gdb_stub_commands;
pub mod kd_payload;
pub mod kd_session;
pub mod kd_stream;
pub mod kd_stub;
pub mod kdnet_open;
pub mod pooltag_parse;
pub mod scenario_toml;
pub mod tiny;
pub mod unwind;

/// A fuzz target's body: returns on any input it handles, panics on a finding.
pub type Body = fn(&[u8]);

/// Every fuzz target by its cargo-fuzz name (the binary in `fuzz/fuzz_targets/<name>.rs`
/// and the corpus directory `fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Body)] = &[
    ("capture_decode", capture_decode::run),
    ("console_command", console_command::run),
    ("gdb_client_session", gdb_client_session::run),
    ("gdb_command", gdb_command::run),
    ("gdb_decoder", gdb_decoder::run),
    ("gdb_remotelog", gdb_remotelog::run),
    ("gdb_server_session", gdb_server_session::run),
    ("gdb_stub", gdb_stub::run),
    ("gdb_stub_commands", gdb_stub_commands::run),
    ("kd_payload", kd_payload::run),
    ("kd_session", kd_session::run),
    ("kd_stream", kd_stream::run),
    ("kd_stub", kd_stub::run),
    ("kdnet_open", kdnet_open::run),
    ("pooltag_parse", pooltag_parse::run),
    ("scenario_toml", scenario_toml::run),
    ("unwind", unwind::run),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
