//! Sans-IO kernel-debugger wire protocols.
//!
//! This crate turns bytes into typed packets and typed packets into bytes. It owns no
//! sockets, no clocks and no threads: inputs come in as byte slices (and a `now` where a
//! protocol has timeouts), outputs are polled. The same code therefore runs under tokio,
//! in a blocking loop, in a fuzzer or in a unit test.
//!
//! * [`stub`] — the [`Target`](stub::Target) trait a debuggee implements (memory,
//!   registers, run control; search, libraries, memory map, monitor, breakpoints and exact
//!   runs as opt-in capabilities), named for the target so every protocol's stub drives it.
//! * [`gdb`] — the GDB remote serial protocol (framing, typed commands and replies,
//!   target-description and library-list XML, server and client sessions) and
//!   [`gdb::stub::Stub`], a complete GDB stub over any `Target`.
//! * [`kd`] — the Windows kernel-debugger protocol: KDCOM serial framing and the x64
//!   `DBGKD_*` payloads, with a session state machine for both roles.
//! * [`kdnet`] — KD over UDP: key strings, AES-256-CBC + HMAC-SHA256 datagrams, the
//!   control-channel handshake and data-key derivation.
//! * `codec` (feature `tokio`) — `tokio_util::codec` adapters over the state machines.
//!
//! # A GDB stub over your own target
//!
//! Implement [`stub::Target`] for what you debug, feed the stub what the socket reads and
//! write back what it returns. This is all it takes to let gdb read a buffer at 0x1000
//! (`protocol/examples/file_gdb_stub.rs` is the same over TCP, tested with real gdb):
//!
//! ```
//! use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
//! use tagsplit_protocol::stub::{Resume, RunState, StopReason, Target, TargetError, X64Registers};
//!
//! struct Buffer(Vec<u8>);
//!
//! impl Target for Buffer {
//!     fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
//!         let at = addr.checked_sub(0x1000).and_then(|a| usize::try_from(a).ok());
//!         let src = at.and_then(|a| self.0.get(a..)).filter(|s| !s.is_empty());
//!         let src = src.ok_or(TargetError::Fault)?;
//!         let n = src.len().min(buf.len());
//!         buf[..n].copy_from_slice(&src[..n]);
//!         Ok(n)
//!     }
//!     fn write_memory(&mut self, _: u64, _: &[u8]) -> Result<(), TargetError> {
//!         Err(TargetError::Fault)
//!     }
//!     fn registers(&mut self) -> Result<X64Registers, TargetError> {
//!         Ok(X64Registers::default())
//!     }
//!     fn write_registers(&mut self, _: &X64Registers) -> Result<(), TargetError> {
//!         Err(TargetError::Unsupported)
//!     }
//!     fn resume(&mut self, _: Resume) -> Result<(), TargetError> {
//!         Err(TargetError::CannotRun) // a buffer does not run
//!     }
//!     fn poll_run(&mut self) -> RunState {
//!         RunState::Stopped(StopReason::Trap)
//!     }
//!     fn interrupt(&mut self) {}
//! }
//!
//! let mut target = Buffer(b"Leak".to_vec());
//! let mut stub = Stub::new(StubConfig::default());
//! // In a real stub these bytes come from a socket, and the reply goes back to it.
//! stub.receive(&mut target, b"$m1000,4#8e");
//! assert_eq!(stub.poll_transmit().unwrap(), b"+$4c65616b#01");
//! // Not opted in: no search, so the stub answers "unsupported" and gdb reads instead.
//! stub.receive(&mut target, b"$qSearch:memory:1000;4;Leak#bc");
//! assert_eq!(stub.poll_transmit().unwrap(), b"+$#00");
//! ```

pub mod gdb;
pub mod kd;
pub mod kdnet;
pub mod stub;

#[cfg(feature = "tokio")]
pub mod codec;
