//! Structure-aware: arbitrary GDB command sequences into the protocol's GDB stub over the
//! small target, the way a consumer fuzzes their own stub with the protocol's generators
//! (feature `arbitrary`): each command a well-formed [`GdbCommand`], framed (sometimes
//! run-length encoded), and one in eight perturbed by the mutator
//! ([`mutate::gdb_frame`]: a number, a length, an escape, a run length, the checksum).
//! The libFuzzer input only steers the choices, so nearly every input reaches the stub's
//! command handlers instead of dying in the framer or the parser.
//!
//! No panic, bounded output (as `gdb_stub`), and every well-formed command that does not
//! resume the target is answered before the next one is sent.

use tagsplit_protocol::fuzz::arbitrary::{Arbitrary, Unstructured};
use tagsplit_protocol::fuzz::{GdbCommand, mutate};
use tagsplit_protocol::gdb::Command;

use crate::gdb_stub::{feed, new_stub};
use crate::tiny::Tiny;

/// Most commands one input sends.
pub const MAX_COMMANDS: usize = 64;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut target = Tiny::new();
    let mut stub = new_stub();
    for _ in 0..MAX_COMMANDS {
        let Ok(command) = GdbCommand::arbitrary(&mut u) else {
            break;
        };
        let mut wire = command.frame(u.arbitrary().unwrap_or(false));
        if u.ratio(1u8, 8).unwrap_or(false)
            && let Ok(m) = mutate::gdb_frame(&wire, &mut u)
        {
            wire = m.bytes;
        }
        if feed(&mut stub, &mut target, &wire) || u.is_empty() {
            break;
        }
        // Whatever it was, the stub is ready for the next command: nothing it was sent
        // is left waiting unless the target runs.
        if !matches!(
            command.command(),
            Command::Continue(_) | Command::Step(_) | Command::VCont(_)
        ) {
            assert_eq!(stub.pending_commands(), 0, "{command:?}");
        }
    }
    stub.disconnect(&mut target);
}
