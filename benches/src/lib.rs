//! Criterion benchmarks for tagsplit (see `benches/`), and the scale measurement
//! ([`scale`], run by `cargo run --release -p tagsplit-benches --bin scale`).

pub mod scale;
