//! A `tokio_util::codec` adapter for GDB RSP.
