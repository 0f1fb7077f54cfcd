//! A deterministic simulated x64 Windows kernel for testing kernel-debugger tools.
//!
//! Same scenario and same seed give byte-identical memory, always.

pub mod layout;
pub mod server;
pub mod types;

pub use types::{PoolTag, VirtAddr};
