//! `nt!` names without symbol files: the addresses the kernel's `KDDEBUGGER_DATA64`
//! (`KDBG`) block holds.
//!
//! A debugger with symbols looks `nt!PoolHitTag` up in the kernel's PDB. We have no PDB,
//! but the `KDBG` block, which every Windows kernel gives its debugger, holds the
//! addresses of some kernel variables ([`KernelSymbols::read`] takes these):
//!
//! | name | `KDBG` field | where |
//! |---|---|---|
//! | `nt!PsLoadedModuleList` | `PsLoadedModuleList` (0x48) | Windows |
//! | `nt!MmPageSize` | `MmPageSize` (0x138) | Windows |
//! | `nt!PoolTrackTable` | `PoolTrackTable` (0x1b8) | Windows |
//! | `nt!NonPagedPoolDescriptor` | `NonPagedPoolDescriptor` (0x1c0) | Windows |
//! | `nt!PoolTrackTableSize` | 0x340 | simulator extension |
//! | `nt!PoolHitTag` | 0x348 | simulator extension |
//! | `nt!PoolBigPageTable` | 0x350 | simulator extension |
//! | `nt!PoolBigPageTableSize` | 0x358 | simulator extension |
//! | `nt!ExAllocatePoolWithTag` | 0x360 | simulator extension |
//! | `nt!ExFreePoolWithTag` | 0x368 | simulator extension |
//!
//! The extension fields ([`tagsplit_protocol::nt::layout::kdbg`]) lie beyond the fields
//! Windows defines; they are taken only when the block's `Size` covers them and they are
//! not zero. Against a real kernel they are absent, and [`KernelSymbols::resolve`] says
//! which name cannot be resolved and why, so the user gives a raw address instead.

use std::fmt;

use tagsplit_protocol::nt::layout::kdbg;

use crate::VirtAddr;
use crate::target::{DebugTarget, TargetError, read_exact, read_u32, read_u64};

/// Where each name is, as an offset into the `KDBG` block, and whether Windows defines
/// the field (`false`: one of the simulator's documented extensions).
const FIELDS: &[(&str, u64, bool)] = &[
    ("PsLoadedModuleList", kdbg::PS_LOADED_MODULE_LIST, true),
    ("MmPageSize", kdbg::MM_PAGE_SIZE, true),
    ("PoolTrackTable", kdbg::POOL_TRACK_TABLE, true),
    (
        "NonPagedPoolDescriptor",
        kdbg::NON_PAGED_POOL_DESCRIPTOR,
        true,
    ),
    ("PoolTrackTableSize", kdbg::POOL_TRACK_TABLE_SIZE, false),
    ("PoolHitTag", kdbg::POOL_HIT_TAG, false),
    ("PoolBigPageTable", kdbg::POOL_BIG_PAGE_TABLE, false),
    (
        "PoolBigPageTableSize",
        kdbg::POOL_BIG_PAGE_TABLE_SIZE,
        false,
    ),
    (
        "ExAllocatePoolWithTag",
        kdbg::EX_ALLOCATE_POOL_WITH_TAG,
        false,
    ),
    ("ExFreePoolWithTag", kdbg::EX_FREE_POOL_WITH_TAG, false),
];

/// Why an `nt!` name has no address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// The name asked for (`PoolHitTag`, without `nt!`).
    pub name: String,
    /// Why: no `KDBG` block, a field it does not have, or a name it never holds.
    pub reason: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot resolve nt!{}: {} (no symbols; give the address instead)",
            self.name, self.reason
        )
    }
}

/// The `nt!` names of one kernel, read once from its `KDBG` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelSymbols {
    /// The block, when the target has one.
    kdbg: Option<VirtAddr>,
    /// `Header.Size` of the block.
    size: u64,
    /// Each name of [`FIELDS`] and its address, when the block holds it.
    resolved: Vec<(&'static str, Option<VirtAddr>)>,
}

impl KernelSymbols {
    /// Reads the `KDBG` block of `target` (a target without one, or with a block that
    /// lacks the `KDBG` owner tag, gets a table that resolves nothing and says why).
    /// Link failures are errors; unreadable fields resolve to nothing.
    pub fn read<T: DebugTarget + ?Sized>(target: &mut T) -> Result<KernelSymbols, TargetError> {
        let block = match target.kernel_info() {
            Ok(info) => info.kdbg,
            Err(e) if e.is_link_failure() => return Err(e),
            Err(_) => None,
        };
        let Some(block) = block else {
            return Ok(KernelSymbols::default());
        };
        let at = |off: u64| crate::target::offset(block, off, "KDDEBUGGER_DATA64");
        let mut owner = [0u8; 4];
        match read_exact(target, at(kdbg::OWNER_TAG_OFFSET)?, &mut owner) {
            Ok(()) if owner == kdbg::OWNER_TAG => {}
            Ok(()) | Err(TargetError::Unreadable(_)) => return Ok(KernelSymbols::default()),
            Err(e) => return Err(e),
        }
        let size = u64::from(read_u32(target, at(kdbg::SIZE_OFFSET)?)?);
        let mut resolved = Vec::with_capacity(FIELDS.len());
        for &(name, off, _) in FIELDS {
            let value = if off + 8 <= size {
                match read_u64(target, at(off)?) {
                    Ok(v) => (v != 0).then_some(VirtAddr(v)),
                    Err(TargetError::Unreadable(_)) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            resolved.push((name, value));
        }
        Ok(KernelSymbols {
            kdbg: Some(block),
            size,
            resolved,
        })
    }

    /// The address of `nt!name` (`name` without the `nt!`, any case).
    pub fn resolve(&self, name: &str) -> Result<VirtAddr, Unresolved> {
        let unresolved = |reason: String| Unresolved {
            name: name.to_string(),
            reason,
        };
        let Some(&(canonical, off, windows)) =
            FIELDS.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(unresolved(
                "the KDDEBUGGER_DATA64 block holds no such name".into(),
            ));
        };
        let Some(block) = self.kdbg else {
            return Err(unresolved(
                "the target has no KDDEBUGGER_DATA64 block".into(),
            ));
        };
        match self.resolved.iter().find(|(n, _)| *n == canonical) {
            Some((_, Some(addr))) => Ok(*addr),
            _ if !windows && off + 8 > self.size => Err(unresolved(format!(
                "the KDDEBUGGER_DATA64 block at {block} is {:#x} bytes, without the simulator's extension field at {off:#x}",
                self.size
            ))),
            _ => Err(unresolved(format!(
                "field {off:#x} of the KDDEBUGGER_DATA64 block at {block} is zero or unreadable"
            ))),
        }
    }

    /// The name whose address is exactly `addr`, if one is.
    pub fn name_at(&self, addr: VirtAddr) -> Option<&'static str> {
        self.resolved
            .iter()
            .find(|(_, a)| *a == Some(addr))
            .map(|(n, _)| *n)
    }

    /// The names this kernel resolves, with their addresses.
    pub fn known(&self) -> impl Iterator<Item = (&'static str, VirtAddr)> + '_ {
        self.resolved.iter().filter_map(|(n, a)| a.map(|a| (*n, a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::flat::FlatTarget;
    use crate::testkit::*;

    #[test]
    fn windows_fields_resolve_and_missing_extensions_are_named() {
        let mut t = fake_kernel();
        // A block the size of Windows 7's: no extension fields.
        t.write_memory(VirtAddr(KDBG + kdbg::SIZE_OFFSET), &0x340u32.to_le_bytes())
            .unwrap();
        let s = KernelSymbols::read(&mut t).unwrap();
        assert_eq!(s.resolve("psloadedmodulelist"), Ok(VirtAddr(LIST_HEAD)));
        let e = s.resolve("PoolHitTag").unwrap_err();
        assert!(
            e.to_string().contains("cannot resolve nt!PoolHitTag")
                && e.to_string().contains("0x340 bytes"),
            "{e}"
        );
        let e = s.resolve("KiSystemCall64").unwrap_err();
        assert!(e.to_string().contains("holds no such name"), "{e}");
        // No block at all.
        let s = KernelSymbols::read(&mut FlatTarget::new()).unwrap();
        let e = s.resolve("PoolHitTag").unwrap_err();
        assert!(e.to_string().contains("no KDDEBUGGER_DATA64"), "{e}");
    }
}
