//! tagsplit: find which code site leaks a shared Windows pool tag.
//!
//! The debugger side of the project:
//!
//! - [`target`]: the [`target::DebugTarget`] trait (memory, modules, kernel data, optional
//!   run control and breakpoints) and its backends — `target::sim::SimTarget` (the
//!   in-process simulator, feature `sim`), [`target::gdb::GdbTarget`] (GDB RSP),
//!   [`target::kd::KdTarget`] (KDNET/KDCOM), [`target::flat::FlatTarget`] (flat memory,
//!   for tests) — the [`target::CachedTarget`] read cache any of them can wear, and
//!   [`target::open`] for specs like `gdb://127.0.0.1:1234`. Generic helpers
//!   ([`target::walk_module_list`], [`target::search_by_reading`]) need memory reads only.
//! - [`pool`]: the pool tracker table read through the `KDBG` block, snapshots, big pages
//!   and pool headers; [`pooltag`]: the `pooltag.txt` database.
//! - [`console`]: a WinDbg-style console (`lm`, `s`, `eb`, `dc`, `u`, `!for_each_module`,
//!   `!poolused`, `!poolfind`, `!pool`, `g`) over any target.
//! - [`stack`]: x64 call stacks unwound from `.pdata`/`.xdata` over any target, as `k`
//!   shows them.
//! - [`hittag`]: `nt!PoolHitTag` breaks examined (allocation or free, tag, size, block,
//!   stack); [`symbols`]: `nt!` names from the `KDBG` block, without symbol files;
//!   [`stacks`]: `PoolHitTag` breaks collected into call stacks, the leaking one first.
//! - [`split`]: the automated tag split — find and classify every hit, give each
//!   allocation site its own tag, run, measure, attribute, restore.
//!
//! Nothing above the trait depends on the simulator: the Windows structure layouts and the
//! value types ([`VirtAddr`], [`PoolTag`]) come from `tagsplit_protocol::nt`, which the
//! simulator shares, and a GDB or KD backend (or your own) plugs in as is.
//!
//! # Cargo features
//!
//! - `sim` (default): the simulator — the `sim:` backend, the GDB and KD loopback helpers
//!   (`serve_scenario`, `console_monitor`, `KdTarget::loopback`).
//! - `cli` (default, implies `sim`): the `tagsplit` binary and the crates only it needs
//!   (clap, indicatif, ctrlc, anyhow, tracing-subscriber); it implies `impair`.
//! - `impair` (with `cli`): `relay`, the relay that puts a seeded lossy, corrupting,
//!   slow link (`tagsplit_protocol::impair`) between two real peers.
//!
//! With `default-features = false` the crate builds without the simulator, the CLI crates
//! or an async runtime: a debugger tool over GDB, KD or a target of its own.
//!
//! ```
//! # #[cfg(feature = "sim")]
//! # fn main() -> Result<(), tagsplit::split::SplitError> {
//! use tagsplit::console::Console;
//! use tagsplit::split::{Split, SplitOptions};
//! use tagsplit::target::sim::SimTarget;
//! use tagsplit::PoolTag;
//!
//! // The seed's machine: myfault.sys with two sites sharing the tag `Leak`.
//! let mut target = SimTarget::builtin("part4").expect("built-in scenario");
//! let mut console = Console::new();
//! let lm = console.execute(&mut target, "lm m myfault");
//! assert!(lm.contains("fffff880`0496d000 fffff880`04974000   myfault    (deferred)"));
//!
//! // The automated split names the leaking site.
//! let report = Split::new(&mut target, PoolTag::new(*b"Leak"), SplitOptions::default()).run()?;
//! let leak = report.leaks().next().expect("a leak");
//! assert_eq!(leak.hit.location(), "myfault.sys+0x1621");
//! assert_eq!(leak.new_tag, PoolTag::new(*b"Lea2"));
//! assert!(report.restore.complete());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sim"))]
//! # fn main() {}
//! ```

pub mod console;
pub mod decode;
pub mod demo;
pub mod disasm;
pub mod hittag;
pub mod pe;
#[cfg(feature = "plot")]
pub mod plot;
pub mod pool;
pub mod pooltag;
#[cfg(feature = "impair")]
pub mod relay;
pub mod split;
pub mod stack;
pub mod stacks;
pub mod symbols;
pub mod target;
#[cfg(feature = "wirefuzz")]
pub mod wirefuzz;

#[cfg(test)]
mod testkit;

pub use tagsplit_protocol::nt::{PoolTag, VirtAddr};
