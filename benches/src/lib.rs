//! Criterion benchmarks for tagsplit; see `benches/`.
