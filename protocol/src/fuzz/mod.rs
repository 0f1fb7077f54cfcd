//! Structure-aware fuzzing of the protocols (feature `arbitrary`): generators a fuzz
//! target builds typed, well-formed traffic from, and a mutator that perturbs real packets
//! in the fields that matter.
//!
//! Everything here draws its choices from an [`arbitrary::Unstructured`] (re-exported as
//! [`arbitrary`], so a consumer uses the same version), so a fuzzer's input bytes steer
//! it and the same bytes always give the same values.
//!
//! | protocol | generator | what it yields |
//! |---|---|---|
//! | GDB (`gdb`) | [`GdbCommand`] | an owned command payload that [`Command::parse`](crate::gdb::Command::parse) reads back as the command it was built from ([`GdbCommand::command`]) |
//! | GDB | [`GdbReply`], `Arbitrary for` [`Reply`](crate::gdb::Reply) | a reply and the [`ReplyKind`](crate::gdb::ReplyKind) it answers; parsing its payload as that kind gives it back |
//! | KD (`kd`) | `Arbitrary for` [`Repr`](crate::kd::Repr), [`Payload`](crate::kd::Payload), [`ManipulateApi`](crate::kd::ManipulateApi) and the `DBGKD_*` structures | data packets carrying every manipulate API (request or reply, counts matching the data), state changes (exception, load symbols, command string), debug, file, trace I/O and control requests; and ACK, RESEND and RESET control packets |
//! | KDNET (`kdnet`) | [`KdnetDatagram::generate`] | a datagram sealed under the [`Keys`](crate::kdnet::Keys) given: a KD packet or a break-in on the data channel, a poke or a response on the control channel |
//! | all | [`mutate`] | a real packet with one field perturbed, and whether it still frames |
//!
//! # Caps
//!
//! Nothing here grows with its input without bound: a fuzz input of any length gives
//! values of bounded size.
//!
//! | what | cap |
//! |---|---|
//! | bytes a GDB command or reply carries (memory, registers, patterns, host I/O data, console output) | [`MAX_DATA`] |
//! | `qSupported` features, `vCont` actions, thread ids in a list, XML elements | [`MAX_ITEMS`] |
//! | a `qXfer` XML document | [`MAX_ITEMS`] elements of at most three [`MAX_NAME`]-byte names or numbers each (under 4 KiB) |
//! | names and text (feature names, annexes, error text, paths) | [`MAX_NAME`] |
//! | data after a KD payload's header (memory, a `CONTEXT`, a pattern, a path, a string) | [`MAX_DATA`] (always inside [`kd::MAX_TRANSFER`](crate::kd::MAX_TRANSFER)) |
//! | a mutated packet | its input plus [`mutate::MAX_GROWTH`] bytes |
//!
//! # Fuzzing your own stub with the generators
//!
//! A consumer's cargo-fuzz target takes a command sequence straight from libFuzzer
//! (`libfuzzer-sys` hands `fuzz_target!` any `Arbitrary` type), frames each command and
//! feeds the stub under test. This repository's `gdb_stub_commands` target does the same
//! against our own stub core (`fuzz/fuzz_targets/gdb_stub_commands.rs`, body in
//! `fuzz-targets/src/gdb_stub_commands.rs`), drawing the commands from an `Unstructured`
//! over the input so that its corpus also replays on stable, and passing one command in
//! eight through [`mutate::gdb_frame`]. A consumer's target:
//!
//! ```text
//! #![no_main]
//! use tagsplit_protocol::fuzz::GdbCommand;
//!
//! libfuzzer_sys::fuzz_target!(|commands: Vec<GdbCommand>| {
//!     let mut stub = my_stub::Stub::new();
//!     for command in &commands {
//!         stub.receive(&command.frame(false)); // `$payload#cs`, escaped
//!         let _ = stub.take_output();
//!     }
//! });
//! ```
//!
//! And without libFuzzer, over any bytes:
//!
//! ```
//! # #[cfg(feature = "gdb")] {
//! use tagsplit_protocol::fuzz::{GdbCommand, arbitrary::{Arbitrary, Unstructured}};
//! use tagsplit_protocol::gdb::{Command, frame};
//!
//! let seed = [7u8; 64];
//! let mut u = Unstructured::new(&seed);
//! let command = GdbCommand::arbitrary(&mut u).unwrap();
//! // Well-formed: the parser reads it back as the command it was built as.
//! assert!(!matches!(command.command(), Command::Malformed(_)));
//! let wire = command.frame(true);
//! let events = frame::Decoder::default().decode(&wire);
//! assert_eq!(events, [frame::Event::Packet(command.payload().to_vec())]);
//! # }
//! ```

// With no protocol enabled there is nothing to generate; the shared helpers stay unused.
#![cfg_attr(not(any(feature = "gdb", feature = "kd")), allow(dead_code))]

pub use arbitrary;

#[cfg(feature = "gdb")]
mod gdb;
#[cfg(feature = "kd")]
mod kd;
#[cfg(feature = "kdnet")]
mod kdnet;
pub mod mutate;

#[cfg(feature = "gdb")]
pub use gdb::{GdbCommand, GdbReply};
#[cfg(feature = "kdnet")]
pub use kdnet::KdnetDatagram;

use arbitrary::{Result, Unstructured};

/// Most bytes of data one generated command, reply or KD payload carries.
pub const MAX_DATA: usize = 512;
/// Most items in one generated list (features, actions, thread ids, XML elements).
pub const MAX_ITEMS: usize = 16;
/// Most bytes in one generated name or text.
pub const MAX_NAME: usize = 48;

/// Numbers protocol code gets wrong: zero, one, the edges of each width, and kernel
/// addresses.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_f800_0000_0000,
    0xffff_ffff_ffff_fffe,
    u64::MAX,
];

/// A number biased towards [`INTERESTING`] values and small ones, else any `u64`.
pub(crate) fn number(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => *u.choose(INTERESTING)?,
        1 => u64::from(u.int_in_range(0u16..=0x1000)?),
        2 => 0xffff_f800_0000_0000 | u64::from(u.arbitrary::<u32>()?),
        _ => u.arbitrary()?,
    })
}

/// [`number`], cut to 32 bits.
pub(crate) fn number32(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(number(u)? as u32)
}

/// Up to `max` bytes, any values (fewer when the input runs out: generating never fails
/// for want of input).
pub(crate) fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=max)?.min(u.len());
    Ok(u.bytes(len)?.to_vec())
}

/// 1 to `max` bytes from `alphabet`.
pub(crate) fn text(u: &mut Unstructured<'_>, alphabet: &[u8], max: usize) -> Result<Vec<u8>> {
    let len = u.int_in_range(1..=max.max(1))?;
    (0..len).map(|_| u.choose(alphabet).copied()).collect()
}

/// Letters, digits and the punctuation names use.
pub(crate) const NAME_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
