//! The GDB remote-protocol stub over TCP.
