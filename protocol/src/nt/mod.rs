//! What a debugger reads in a Windows x64 kernel, owned by neither side of the wire: a
//! target (the simulator, an emulator) writes these layouts, a debugger reads them back.
//!
//! * [`VirtAddr`] and [`PoolTag`]: the value types both sides pass around.
//! * [`layout`]: `LIST_ENTRY64`, `UNICODE_STRING`, `KLDR_DATA_TABLE_ENTRY`,
//!   `KDDEBUGGER_DATA64` (with the simulator's documented extension fields),
//!   `POOL_TRACKER_TABLE` and the kernel's tag hash, `POOL_HEADER`, big pages, the page size.
//! * [`pe`]: PE32+ headers, sections, `RUNTIME_FUNCTION` and `UNWIND_INFO` offsets.
//! * [`unwind`]: the x64 unwind data itself, parsed and encoded: the function table,
//!   `UNWIND_INFO` and every `UNWIND_CODE` operation.
//! * [`status`]: NTSTATUS values.
//!
//! Everything is a byte offset (`u64`, to add to a [`VirtAddr`]) or a small pure function:
//! no I/O, nothing that needs a target.
//!
//! ```
//! use tagsplit_protocol::nt::{PoolTag, VirtAddr, layout::ldr_entry};
//!
//! let entry = VirtAddr(0xfffffa80_01234000);
//! assert_eq!(entry.saturating_add(ldr_entry::DLL_BASE).to_string(), "fffffa80`01234030");
//! assert_eq!(PoolTag::from_u32(0x6b61654c), PoolTag::new(*b"Leak"));
//! ```

pub mod layout;
pub mod pe;
pub mod status;
pub mod types;
pub mod unwind;

pub use types::{PROTECTED_POOL, PoolTag, VirtAddr};
