//! Byte layouts of the Windows x64 kernel structures a simulator writes into memory and
//! a debugger reads back. Offsets are those of 64-bit Windows (Windows 7 through 10); the
//! simulator and the debugger side both use these constants, so there is one truth.
//!
//! Where the real kernel publishes something only through symbols (the tracker table's
//! size, `PoolHitTag`, `ExAllocatePoolWithTag`), the simulator also records it at a
//! documented extension offset of the `KDDEBUGGER_DATA64` block
//! ([`kdbg::POOL_TRACK_TABLE_SIZE`], [`kdbg::POOL_HIT_TAG`],
//! [`kdbg::EX_ALLOCATE_POOL_WITH_TAG`], ...), beyond the fields Windows defines, and
//! covered by the block's `Size`.

/// `LIST_ENTRY64`: `Flink` at 0, `Blink` at 8.
pub mod list_entry {
    /// Forward link.
    pub const FLINK: u64 = 0x0;
    /// Backward link.
    pub const BLINK: u64 = 0x8;
    /// Size of the structure.
    pub const SIZE: u64 = 0x10;
}

/// `UNICODE_STRING` (x64): `Length` (bytes, u16), `MaximumLength` (u16), `Buffer` (u64 at 8).
pub mod unicode_string {
    /// Length in bytes of the UTF-16 text, without a terminator.
    pub const LENGTH: u64 = 0x0;
    /// Capacity of the buffer in bytes.
    pub const MAXIMUM_LENGTH: u64 = 0x2;
    /// Pointer to the UTF-16LE text.
    pub const BUFFER: u64 = 0x8;
    /// Size of the structure.
    pub const SIZE: u64 = 0x10;
}

/// `KLDR_DATA_TABLE_ENTRY` (x64), linked through `InLoadOrderLinks` from `PsLoadedModuleList`.
pub mod ldr_entry {
    /// `InLoadOrderLinks` (`LIST_ENTRY64`).
    pub const IN_LOAD_ORDER_LINKS: u64 = 0x00;
    /// `DllBase`: the image base.
    pub const DLL_BASE: u64 = 0x30;
    /// `EntryPoint`.
    pub const ENTRY_POINT: u64 = 0x38;
    /// `SizeOfImage` (u32).
    pub const SIZE_OF_IMAGE: u64 = 0x40;
    /// `FullDllName` (`UNICODE_STRING`), e.g. `\SystemRoot\system32\drivers\myfault.sys`.
    pub const FULL_DLL_NAME: u64 = 0x48;
    /// `BaseDllName` (`UNICODE_STRING`), e.g. `myfault.sys`.
    pub const BASE_DLL_NAME: u64 = 0x58;
    /// `Flags` (u32).
    pub const FLAGS: u64 = 0x68;
    /// `LoadCount` (u16).
    pub const LOAD_COUNT: u64 = 0x6c;
    /// `CheckSum` (u32).
    pub const CHECKSUM: u64 = 0x78;
    /// `TimeDateStamp` (u32).
    pub const TIME_DATE_STAMP: u64 = 0x9c;
    /// Size the simulator reserves per entry.
    pub const SIZE: u64 = 0xa0;
}

/// `KDDEBUGGER_DATA64`, the block `DBGKD_GET_VERSION64.DebuggerDataList` leads to.
pub mod kdbg {
    /// `Header.List` (`LIST_ENTRY64`); the list head `DebuggerDataList` points at.
    pub const HEADER_LIST: u64 = 0x00;
    /// `Header.OwnerTag` (u32): [`OWNER_TAG`].
    pub const OWNER_TAG_OFFSET: u64 = 0x10;
    /// `Header.Size` (u32): size of the whole block.
    pub const SIZE_OFFSET: u64 = 0x14;
    /// The owner tag `KDBG` as stored (bytes `4b 44 42 47`).
    pub const OWNER_TAG: [u8; 4] = *b"KDBG";
    /// `KernBase` (u64).
    pub const KERN_BASE: u64 = 0x18;
    /// `PsLoadedModuleList` (u64): address of the list head.
    pub const PS_LOADED_MODULE_LIST: u64 = 0x48;
    /// `MmPageSize` (u64 address of a variable holding the page size).
    pub const MM_PAGE_SIZE: u64 = 0x138;
    /// `PoolTrackTable` (u64): address of a pointer variable (`nt!PoolTrackTable`) whose
    /// value is the table itself, as on Windows.
    pub const POOL_TRACK_TABLE: u64 = 0x1b8;
    /// `NonPagedPoolDescriptor` (u64).
    pub const NON_PAGED_POOL_DESCRIPTOR: u64 = 0x1c0;
    /// Extension: address of the `nt!PoolTrackTableSize` variable (u64 entry count).
    pub const POOL_TRACK_TABLE_SIZE: u64 = 0x340;
    /// Extension: address of the `nt!PoolHitTag` variable (u32 tag).
    pub const POOL_HIT_TAG: u64 = 0x348;
    /// Extension: address of the `nt!PoolBigPageTable` pointer variable.
    pub const POOL_BIG_PAGE_TABLE: u64 = 0x350;
    /// Extension: address of the `nt!PoolBigPageTableSize` variable (u64 entry count).
    pub const POOL_BIG_PAGE_TABLE_SIZE: u64 = 0x358;
    /// Extension: address of `nt!ExAllocatePoolWithTag` (the function's first byte):
    /// where the allocator's `PoolHitTag` break is, for a debugger without symbols.
    pub const EX_ALLOCATE_POOL_WITH_TAG: u64 = 0x360;
    /// Extension: address of `nt!ExFreePoolWithTag` (the function's first byte).
    pub const EX_FREE_POOL_WITH_TAG: u64 = 0x368;
    /// Size of the block the simulator writes (`Header.Size`).
    pub const SIZE: u64 = 0x370;
}

/// `POOL_TRACKER_TABLE` (x64), one entry per tag; `Key == 0` is an empty slot.
pub mod tracker {
    /// `Key` (u32): the tag.
    pub const KEY: u64 = 0x00;
    /// `NonPagedAllocs` (u32, cumulative).
    pub const NON_PAGED_ALLOCS: u64 = 0x04;
    /// `NonPagedFrees` (u32, cumulative).
    pub const NON_PAGED_FREES: u64 = 0x08;
    /// `NonPagedBytes` (u64, outstanding).
    pub const NON_PAGED_BYTES: u64 = 0x10;
    /// `PagedAllocs` (u32, cumulative).
    pub const PAGED_ALLOCS: u64 = 0x18;
    /// `PagedFrees` (u32, cumulative).
    pub const PAGED_FREES: u64 = 0x1c;
    /// `PagedBytes` (u64, outstanding).
    pub const PAGED_BYTES: u64 = 0x20;
    /// Size of one entry.
    pub const SIZE: u64 = 0x28;

    /// Multiplier of the kernel's tag hash (`POOLTAG_HASH`).
    pub const HASH_MULTIPLIER: u32 = 40543;

    /// The slot where the kernel starts probing for `key` in a table of `entries` entries
    /// (linear probing onwards, wrapping), as the WRK's `POOLTAG_HASH` computes it: the
    /// tag's four bytes in memory order (`key`'s least significant byte first) are mixed,
    /// each shifted left by 2 and xor-ed with the next (`((b0<<2 ^ b1)<<2 ^ b2)<<2 ^ b3`,
    /// at most 14 bits), multiplied by 40543, shifted right by 2, and masked with the
    /// table size less one (the kernel's tables are powers of two; another size is taken
    /// modulo, which is the same for a power of two). `entries == 0` gives slot 0.
    pub const fn hash(key: u32, entries: u64) -> u64 {
        let [b0, b1, b2, b3] = key.to_le_bytes();
        let (b0, b1, b2, b3) = (b0 as u32, b1 as u32, b2 as u32, b3 as u32);
        let mixed = (((((b0 << 2) ^ b1) << 2) ^ b2) << 2) ^ b3;
        let h = (mixed.wrapping_mul(HASH_MULTIPLIER) >> 2) as u64;
        match h.checked_rem(entries) {
            Some(slot) => slot,
            None => 0,
        }
    }
}

/// `POOL_HEADER` (x64), 16 bytes before every small pool block.
pub mod pool_header {
    /// `PreviousSize` (u8, 16-byte units).
    pub const PREVIOUS_SIZE: u64 = 0x0;
    /// `PoolIndex` (u8).
    pub const POOL_INDEX: u64 = 0x1;
    /// `BlockSize` (u8, 16-byte units, header included).
    pub const BLOCK_SIZE: u64 = 0x2;
    /// `PoolType` (u8): 0 = free, otherwise `(POOL_TYPE & 7) + 1` with flag bits.
    pub const POOL_TYPE: u64 = 0x3;
    /// `PoolTag` (u32).
    pub const POOL_TAG: u64 = 0x4;
    /// `ProcessBilled` (u64).
    pub const PROCESS_BILLED: u64 = 0x8;
    /// Size of the header, and the pool's block granularity.
    pub const SIZE: u64 = 0x10;
    /// Requests of this many bytes or more go to the big-page table.
    pub const BIG_THRESHOLD: u64 = 4064;
}

/// `POOL_TRACKER_BIG_PAGES` (x64), one entry per big allocation.
pub mod big_page {
    /// `Va` (u64); the low bit set marks a free slot.
    pub const VA: u64 = 0x00;
    /// `Key` (u32): the tag.
    pub const KEY: u64 = 0x08;
    /// `PoolType` (u32).
    pub const POOL_TYPE: u64 = 0x0c;
    /// `NumberOfBytes` (u64).
    pub const NUMBER_OF_BYTES: u64 = 0x10;
    /// Size of one entry.
    pub const SIZE: u64 = 0x18;
}

/// The page size of x64 Windows.
pub const PAGE_SIZE: u64 = 0x1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_hash_is_the_kernels_and_never_divides_by_zero() {
        // `Leak` = 0x6b61654c, bytes 'L' 'e' 'a' 'k' in memory: mixed
        // ((0x4c<<2 ^ 0x65)<<2 ^ 0x61)<<2 ^ 0x6b = 0x14bf, times 40543, shifted right by 2.
        let key = 0x6b61_654c_u32;
        let mixed = (((((0x4c_u32 << 2) ^ 0x65) << 2) ^ 0x61) << 2) ^ 0x6b;
        assert_eq!(mixed, 0x14bf);
        let expected = u64::from((mixed * 40543) >> 2);
        assert_eq!(tracker::hash(key, 4096), expected & 4095);
        assert_eq!(tracker::hash(key, 4096), 1336);
        // The largest mixed value does not overflow 32 bits.
        assert!(tracker::hash(u32::MAX, u64::MAX) < (1 << 30));
        // Tags differing in their last byte have different homes (the whole tag is mixed).
        assert_ne!(
            tracker::hash(0x3161_654c, 4096),
            tracker::hash(0x3261_654c, 4096)
        );
        assert_eq!(tracker::hash(key, 0), 0);
    }

    #[test]
    fn kdbg_extensions_fit_in_the_block() {
        for off in [
            kdbg::POOL_TRACK_TABLE_SIZE,
            kdbg::POOL_HIT_TAG,
            kdbg::POOL_BIG_PAGE_TABLE,
            kdbg::POOL_BIG_PAGE_TABLE_SIZE,
            kdbg::EX_ALLOCATE_POOL_WITH_TAG,
            kdbg::EX_FREE_POOL_WITH_TAG,
        ] {
            assert!(off + 8 <= kdbg::SIZE);
        }
    }
}
