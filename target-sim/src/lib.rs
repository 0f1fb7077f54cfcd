//! A deterministic simulated x64 Windows kernel for testing kernel-debugger tools.
//!
//! Same scenario and same seed give byte-identical memory, always.
//!
//! The layers: [`memory`] (sparse pages with protections), [`image`] (PE modules with real
//! x64 code), [`kernel`] (the loader list, `KDDEBUGGER_DATA64`, the pool variables),
//! [`pool`] (the tagged allocator and its tracker table, all in memory), [`workload`]
//! (sites on a virtual clock), [`scenario`] (TOML and built-ins) and [`machine`] (ties it
//! together). Drivers reach their allocation sites through real call chains (a thread
//! routine, a worker, the site's helper) with unwind data in every image's exception
//! directory; [`machine::Machine::context_at_allocation`] lays out a worker thread's
//! kernel stack as that code would at a call of `ExAllocatePoolWithTag`. The wire servers live in [`server`]: transport only. The simulator is a
//! [`tagsplit_protocol::stub::Target`] ([`server::gdb::SimTarget`]), and the protocol crate's
//! GDB and KD stubs do all the speaking; the servers move bytes over blocking sockets.
//!
//! ```
//! use tagsplit_target_sim::machine::Machine;
//! use tagsplit_target_sim::scenario::Scenario;
//!
//! let scenario = Scenario::builtin("part4").expect("built-in");
//! let mut m = Machine::boot(&scenario).expect("boots");
//! let myfault = m.modules().into_iter().find(|m| m.name == "myfault.sys").expect("loaded");
//! let hits = m.search(myfault.base, myfault.base.saturating_add(myfault.size), b"Leak", 10);
//! assert_eq!(hits.len(), 2);
//! m.run(scenario.default_run_ticks());
//! ```

pub mod builtins;
pub mod image;
pub mod kernel;
pub mod machine;
pub mod memory;
pub mod pool;
pub mod scenario;
pub mod server;
pub mod workload;

// The Windows structure layouts and value types live in `tagsplit_protocol::nt`, shared with
// the debugger side; re-exported here under their old paths.
pub use tagsplit_protocol::nt::{PoolTag, VirtAddr, layout, types};

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario is malformed or inconsistent.
    #[error("scenario: {0}")]
    Scenario(String),
    /// An image could not be laid out.
    #[error("image: {0}")]
    Image(String),
    /// A memory access or mapping failed.
    #[error(transparent)]
    Memory(#[from] memory::MemError),
    /// The pool refused a request.
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
}
