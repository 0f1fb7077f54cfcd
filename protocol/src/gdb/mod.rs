//! The GDB remote serial protocol.
