//! tagsplit: find which code site leaks a shared Windows pool tag.
//!
//! The debugger side of the project: a [`target::DebugTarget`] abstraction over the
//! in-process simulator, a GDB stub and a KD/KDNET target; a WinDbg-style console; and the
//! automated tag split.

pub mod console;
pub mod decode;
pub mod demo;
pub mod disasm;
pub mod pe;
pub mod pool;
pub mod pooltag;
pub mod split;
pub mod target;

#[cfg(test)]
mod testkit;

pub use tagsplit_target_sim::{PoolTag, VirtAddr};
