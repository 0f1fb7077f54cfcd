//! Sans-IO kernel-debugger wire protocols.
//!
//! This crate turns bytes into typed packets and typed packets into bytes. It owns no
//! sockets, no clocks and no threads: inputs come in as byte slices (and a `now` where a
//! protocol has timeouts), outputs are polled. The same code therefore runs under tokio,
//! in a blocking loop, in a fuzzer or in a unit test.
//!
//! * [`gdb`] — the GDB remote serial protocol (framing, typed commands and replies,
//!   target-description and library-list XML, server and client sessions).
//! * [`kd`] — the Windows kernel-debugger protocol: KDCOM serial framing and the x64
//!   `DBGKD_*` payloads, with a session state machine for both roles.
//! * [`kdnet`] — KD over UDP: key strings, AES-256-CBC + HMAC-SHA256 datagrams, the
//!   control-channel handshake and data-key derivation.
//! * `codec` (feature `tokio`) — `tokio_util::codec` adapters over the state machines.

pub mod gdb;
pub mod kd;
pub mod kdnet;
pub mod stub;

#[cfg(feature = "tokio")]
pub mod codec;
