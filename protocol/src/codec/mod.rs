//! `tokio_util::codec` adapters over the sans-IO state machines.

#[cfg(feature = "gdb")]
pub mod gdb;
#[cfg(feature = "kd")]
pub mod kd;
