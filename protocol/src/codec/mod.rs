//! `tokio_util::codec` adapters over the sans-IO state machines.

pub mod gdb;
pub mod kd;
