//! The fuzz-client campaign (being written).
