//! The fuzz-stub campaign (being written).
