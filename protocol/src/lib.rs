//! Sans-IO kernel-debugger wire protocols: GDB RSP, Windows KD (KDCOM) and KDNET.
//!
//! This crate turns bytes into typed packets and typed packets into bytes. It owns no
//! sockets, no clocks and no threads: inputs come in as byte slices (and a `now` where a
//! protocol has timeouts), outputs are polled. The same code therefore runs in a blocking
//! loop, under tokio, in a fuzzer or in a unit test.
//!
//! | feature | module | what it brings | extra dependencies |
//! |---|---|---|---|
//! | `gdb` | [`gdb`] | RSP framing, typed commands and replies, target XML, client and server sessions | — |
//! | `kd` | [`kd`] | KDCOM framing, the x64 `DBGKD_*` payloads, the session for both roles | — |
//! | `kdnet` | [`kdnet`] | KD over UDP: keys, AES-256-CBC + HMAC-SHA256 datagrams, the handshake (implies `kd`) | aes, cbc, hmac, sha2, subtle |
//! | (always) | [`stub`] | the [`Target`](stub::Target) trait a debuggee implements (memory, registers, run control; search, libraries, memory map, monitor, breakpoints, exact runs and Windows kernel addresses as opt-in capabilities), named for the target so every protocol's stub drives it; `gdb::stub::Stub` and `kd::stub::Stub` are the stubs over it | — |
//! | (always) | [`nt`] | what a debugger reads in a Windows x64 kernel: structure layouts, PE headers, NTSTATUS values, and the value types [`nt::VirtAddr`] and [`nt::PoolTag`], shared by targets that write them and debuggers that read them | — |
//! | (always) | [`rto`] | an adaptive retransmission / reply timer (smoothed round trip, its variation, and the time the bytes in flight need on the link) | — |
//! | `impair` | [`impair`] | a seeded, sans-IO model of a lossy, corrupting, slow link (streams and datagrams) for tests and relays; off by default | chacha20, rand_core |
//! | `pcap` | `pcap` | recording KDNET datagrams and KDCOM-over-TCP streams as pcapng (Ethernet/IP/UDP and Ethernet/IP/TCP frames with the real addresses), what `tagsplit --pcap` writes; off by default | pcap-file, etherparse |
//! | `arbitrary` | [`fuzz`] | structure-aware fuzzing: `arbitrary` generators for the enabled protocols' commands, replies, packets and KDNET datagrams (sealed under a key you give), and a seeded mutator for real packets; off by default | arbitrary |
//! | `tokio` | `codec` | `tokio_util::codec` adapters over the enabled protocols' sessions | tokio-util, bytes |
//!
//! All four are on by default. A GDB-only tool takes `default-features = false,
//! features = ["gdb"]` and compiles neither the KDNET crypto nor a runtime.
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
//! let _ = stub.receive(&mut target, b"$m1000,4#8e");
//! assert_eq!(stub.poll_transmit().unwrap(), b"+$4c65616b#01");
//! // Not opted in: no search, so the stub answers "unsupported" and gdb reads instead.
//! let _ = stub.receive(&mut target, b"$qSearch:memory:1000;4;Leak#bc");
//! assert_eq!(stub.poll_transmit().unwrap(), b"+$#00");
//! ```
//!
//! # A KD stub over your own target
//!
//! The same [`stub::Target`] behind a Windows kernel-debugger stub: `kd::stub::Stub`
//! speaks the target side of KD over a KDCOM byte stream (`Stub::kdcom`) or KDNET
//! datagrams (`Stub::kdnet`, feature `kdnet`) and answers from what the target supports;
//! Windows kernel addresses (`GetVersion`) come from the optional
//! [`KernelOps`](stub::KernelOps), zeros without it. Like the GDB stub it does no I/O:
//!
//! ```
//! # #[cfg(feature = "kd")] {
//! use std::time::Duration;
//! use tagsplit_protocol::kd::stub::{Stub, StubConfig};
//! use tagsplit_protocol::stub::{Resume, RunState, StopReason, Target, TargetError, X64Registers};
//! # struct Buffer;
//! # impl Target for Buffer {
//! #     fn read_memory(&mut self, _: u64, _: &mut [u8]) -> Result<usize, TargetError> { Err(TargetError::Fault) }
//! #     fn write_memory(&mut self, _: u64, _: &[u8]) -> Result<(), TargetError> { Err(TargetError::Fault) }
//! #     fn registers(&mut self) -> Result<X64Registers, TargetError> { Ok(X64Registers::default()) }
//! #     fn write_registers(&mut self, _: &X64Registers) -> Result<(), TargetError> { Err(TargetError::Unsupported) }
//! #     fn resume(&mut self, _: Resume) -> Result<(), TargetError> { Err(TargetError::CannotRun) }
//! #     fn poll_run(&mut self) -> RunState { RunState::Stopped(StopReason::Trap) }
//! #     fn interrupt(&mut self) {}
//! # }
//! let mut target = Buffer; // the `Target` above
//! let mut stub = Stub::kdcom(StubConfig::default());
//! let now = Duration::ZERO; // the transport's clock
//! stub.attach(&mut target, now); // the debugger's end of the serial line is connected
//! let wire = stub.poll_transmit().unwrap(); // the first state change, as KDCOM bytes
//! assert_eq!(&wire[..4], b"0000");
//! // Bytes read go to `receive(&mut target, now, bytes)`; `poll_timeout` says when
//! // `handle_timeout` is due (the first guess, plus the time the packet needs on a
//! // 115,200-baud line until the link is measured), and `poll_run` lets a running
//! // target progress.
//! assert!(stub.poll_timeout() > Some(now + StubConfig::default().retry_timeout));
//! # }
//! ```
//!
//! `protocol/examples/file_kd_stub.rs` is a KDNET target over a file's bytes that
//! `tagsplit console --target kdnet:...` attaches to.
//!
//! # A GDB client session
//!
//! ```
//! use tagsplit_protocol::gdb::{ClientEvent, ClientSession, Command, Reply};
//!
//! let mut client = ClientSession::default();
//! client.send(&Command::Attached(None));
//! assert_eq!(client.poll_transmit().unwrap(), b"$qAttached#8f"); // write this
//! client.receive(b"+$1#31"); // what the stub answered
//! assert_eq!(client.poll_event(), Some(ClientEvent::Reply(Reply::Attached(true))));
//! assert_eq!(client.poll_transmit().unwrap(), b"+"); // the ack for the reply
//! ```
//!
//! # A KD debugger session
//!
//! ```
//! use std::time::Duration;
//! use tagsplit_protocol::kd::{
//!     GetVersion64, Manipulate, ManipulateApi, PacketType, Role, Session, SessionConfig,
//! };
//!
//! let now = Duration::ZERO; // the caller's clock; only retransmission timers use it
//! let mut debugger = Session::new(SessionConfig::kdcom(Role::Debugger));
//! let request = Manipulate::request(&ManipulateApi::GetVersion(GetVersion64::default()), vec![]);
//! debugger.send(now, PacketType::StateManipulate, request.to_bytes());
//! let wire = debugger.poll_transmit().unwrap(); // KDCOM bytes for the serial line
//! assert_eq!(&wire[..4], b"0000");
//! // Bytes from the target go to `handle_bytes`; ACKs, RESENDs and replies come out of
//! // `poll_event`, and `poll_timeout` says when `handle_timeout` is due: the first
//! // guess, 500 ms, plus the packet's time at 115,200 baud until the link is measured.
//! let at = debugger.poll_timeout().unwrap();
//! assert!(at > now + Duration::from_millis(500) && at < now + Duration::from_millis(510));
//! ```
//!
//! # Decoding a capture
//!
//! A KDCOM byte stream (a serial-port log) through the stream decoder, and a KDNET
//! datagram (from a pcap) opened with the key the target was given:
//!
//! ```
//! use tagsplit_protocol::kd::{DebugIo, PacketType, Payload, Repr, StreamDecoder, StreamEvent};
//! use tagsplit_protocol::kdnet::{Channel, Keys, Message};
//!
//! # let print = DebugIo::print_string(0, b"hello\n").to_bytes();
//! # let serial_log = Repr::data(PacketType::DebugIo, 0x8080_0800, print).to_kdcom_bytes();
//! let mut decoder = StreamDecoder::new();
//! decoder.push(&serial_log);
//! while let Some(StreamEvent::Packet(repr)) = decoder.next_event() {
//!     if let Ok(Payload::DebugIo(d)) = Payload::parse(repr.packet_type, &repr.payload) {
//!         assert_eq!(d.text(), "hello\n");
//!     }
//! }
//!
//! let keys = Keys::new("1.2.3.4".parse()?);
//! # let datagram = keys.seal(&Message::new(Channel::Control, 4, 1, false, vec![1, 1]))?;
//! let message = keys.open(&datagram)?; // tag verified in constant time, then decrypted
//! assert_eq!(message.channel, Channel::Control);
//! # Ok::<(), tagsplit_protocol::kdnet::KdnetError>(())
//! ```
//!
//! Under tokio, `codec` puts the same sessions behind `tokio_util::codec::Framed`, with
//! acknowledgements and retransmission inside the codec.

#[cfg(feature = "arbitrary")]
pub mod fuzz;
#[cfg(feature = "gdb")]
pub mod gdb;
#[cfg(feature = "impair")]
pub mod impair;
#[cfg(feature = "kd")]
pub mod kd;
#[cfg(feature = "kdnet")]
pub mod kdnet;
pub mod nt;
#[cfg(feature = "pcap")]
pub mod pcap;
pub mod rto;
pub mod stub;

#[cfg(all(feature = "tokio", any(feature = "gdb", feature = "kd")))]
pub mod codec;
