//! Pool usage read from target memory, the way `!poolused` and `!poolfind` read it.
//!
//! The path is `KernelInfo::kdbg` → the `KDDEBUGGER_DATA64` block (checked for its `KDBG`
//! owner tag) → the `PoolTrackTable` pointer variable → the `POOL_TRACKER_TABLE` array,
//! whose entry count is in the `PoolTrackTableSize` variable (an extension field of the
//! block, see [`tagsplit_protocol::nt::layout::kdbg`]). Sizes read from the target are capped
//! ([`MAX_TRACKER_ENTRIES`], [`MAX_BIG_PAGE_ENTRIES`]) before anything is allocated.

use std::collections::BTreeMap;

use serde::Serialize;
use tagsplit_protocol::nt::layout::{PAGE_SIZE, big_page, kdbg, pool_header, tracker};

use crate::target::{DebugTarget, TargetError, read_exact, read_u32, read_u64};
use crate::{PoolTag, VirtAddr};

/// Most tracker-table entries read (larger sizes are capped to this).
pub const MAX_TRACKER_ENTRIES: u64 = 1 << 16;
/// Most big-page-table entries read.
pub const MAX_BIG_PAGE_ENTRIES: u64 = 1 << 18;

/// Counters of one tag, as the tracker table holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TagUsage {
    /// Nonpaged allocations (cumulative).
    pub np_allocs: u32,
    /// Nonpaged frees (cumulative).
    pub np_frees: u32,
    /// Nonpaged bytes outstanding.
    pub np_bytes: u64,
    /// Paged allocations (cumulative).
    pub paged_allocs: u32,
    /// Paged frees (cumulative).
    pub paged_frees: u32,
    /// Paged bytes outstanding.
    pub paged_bytes: u64,
}

impl TagUsage {
    /// Nonpaged allocations outstanding (allocs − frees, never negative).
    pub fn np_outstanding(&self) -> u64 {
        u64::from(self.np_allocs.saturating_sub(self.np_frees))
    }

    /// Paged allocations outstanding.
    pub fn paged_outstanding(&self) -> u64 {
        u64::from(self.paged_allocs.saturating_sub(self.paged_frees))
    }

    /// Outstanding allocations in both pools.
    pub fn outstanding(&self) -> u64 {
        self.np_outstanding() + self.paged_outstanding()
    }

    /// Outstanding bytes in both pools.
    pub fn bytes(&self) -> u64 {
        self.np_bytes.saturating_add(self.paged_bytes)
    }

    /// Allocations ever made in both pools.
    pub fn allocs(&self) -> u64 {
        u64::from(self.np_allocs) + u64::from(self.paged_allocs)
    }

    /// Adds `other`'s counters to these (counts wrap like the kernel's ULONGs; bytes
    /// saturate).
    pub fn accumulate(&mut self, other: &TagUsage) {
        self.np_allocs = self.np_allocs.wrapping_add(other.np_allocs);
        self.np_frees = self.np_frees.wrapping_add(other.np_frees);
        self.np_bytes = self.np_bytes.saturating_add(other.np_bytes);
        self.paged_allocs = self.paged_allocs.wrapping_add(other.paged_allocs);
        self.paged_frees = self.paged_frees.wrapping_add(other.paged_frees);
        self.paged_bytes = self.paged_bytes.saturating_add(other.paged_bytes);
    }

    fn parse(raw: &[u8]) -> Option<(u32, TagUsage)> {
        let u32_at = |o: u64| -> Option<u32> {
            let o = usize::try_from(o).ok()?;
            Some(u32::from_le_bytes(raw.get(o..o + 4)?.try_into().ok()?))
        };
        let u64_at = |o: u64| -> Option<u64> {
            let o = usize::try_from(o).ok()?;
            Some(u64::from_le_bytes(raw.get(o..o + 8)?.try_into().ok()?))
        };
        Some((
            u32_at(tracker::KEY)?,
            TagUsage {
                np_allocs: u32_at(tracker::NON_PAGED_ALLOCS)?,
                np_frees: u32_at(tracker::NON_PAGED_FREES)?,
                np_bytes: u64_at(tracker::NON_PAGED_BYTES)?,
                paged_allocs: u32_at(tracker::PAGED_ALLOCS)?,
                paged_frees: u32_at(tracker::PAGED_FREES)?,
                paged_bytes: u64_at(tracker::PAGED_BYTES)?,
            },
        ))
    }
}

/// The whole tracker table at one moment, by tag (protected bit cleared).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolSnapshot {
    /// Per-tag counters; tags with the same key after masking bit 31 are summed.
    pub tags: BTreeMap<PoolTag, TagUsage>,
}

impl PoolSnapshot {
    /// The counters of `tag` (zero when absent).
    pub fn usage(&self, tag: PoolTag) -> TagUsage {
        self.tags
            .get(&tag.unprotected())
            .copied()
            .unwrap_or_default()
    }

    /// Whether the tracker has ever seen `tag`.
    pub fn contains(&self, tag: PoolTag) -> bool {
        self.tags.contains_key(&tag.unprotected())
    }

    /// Sum over every tag.
    pub fn total(&self) -> TagUsage {
        let mut t = TagUsage::default();
        for u in self.tags.values() {
            t.accumulate(u);
        }
        t
    }

    /// Growth from `earlier` to `self` of every tag present in either, in outstanding bytes
    /// (positive = grew).
    pub fn growth_since(&self, earlier: &PoolSnapshot) -> BTreeMap<PoolTag, i128> {
        let mut out = BTreeMap::new();
        for tag in self.tags.keys().chain(earlier.tags.keys()) {
            let now = i128::from(self.usage(*tag).bytes());
            let then = i128::from(earlier.usage(*tag).bytes());
            out.insert(*tag, now - then);
        }
        out
    }
}

/// Where the pool bookkeeping lives, found through the `KDBG` block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolTables {
    /// The `KDDEBUGGER_DATA64` block.
    pub kdbg: VirtAddr,
    /// The tracker table itself (the value of `nt!PoolTrackTable`).
    pub track_table: VirtAddr,
    /// Entries in the tracker table (capped).
    pub track_entries: u64,
    /// The big-page table, when the block records it.
    pub big_table: Option<VirtAddr>,
    /// Entries in the big-page table (capped).
    pub big_entries: u64,
}

fn field(kdbg_block: VirtAddr, off: u64) -> Result<VirtAddr, TargetError> {
    crate::target::offset(kdbg_block, off, "KDDEBUGGER_DATA64")
}

/// Locates the tracker and big-page tables through the `KDBG` block.
pub fn locate<T: DebugTarget + ?Sized>(target: &mut T) -> Result<PoolTables, TargetError> {
    let info = target.kernel_info()?;
    let block = info.kdbg.ok_or_else(|| {
        TargetError::BadKernelData("the target reports no KDDEBUGGER_DATA64 block".into())
    })?;
    let mut owner = [0u8; 4];
    read_exact(target, field(block, kdbg::OWNER_TAG_OFFSET)?, &mut owner)?;
    if owner != kdbg::OWNER_TAG {
        return Err(TargetError::BadKernelData(format!(
            "no KDBG owner tag at {block}"
        )));
    }
    let size = u64::from(read_u32(target, field(block, kdbg::SIZE_OFFSET)?)?);
    let ptr_var = read_u64(target, field(block, kdbg::POOL_TRACK_TABLE)?)?;
    if ptr_var == 0 {
        return Err(TargetError::BadKernelData(
            "KDBG block has no PoolTrackTable".into(),
        ));
    }
    let track_table = VirtAddr(read_u64(target, VirtAddr(ptr_var))?);
    let track_entries = if size >= kdbg::POOL_TRACK_TABLE_SIZE + 8 {
        let var = read_u64(target, field(block, kdbg::POOL_TRACK_TABLE_SIZE)?)?;
        if var == 0 {
            0
        } else {
            read_u64(target, VirtAddr(var))?
        }
    } else {
        0
    };
    if track_entries == 0 {
        return Err(TargetError::BadKernelData(
            "PoolTrackTableSize is unknown or zero".into(),
        ));
    }
    let (mut big_table, mut big_entries) = (None, 0);
    if size >= kdbg::POOL_BIG_PAGE_TABLE_SIZE + 8 {
        let tvar = read_u64(target, field(block, kdbg::POOL_BIG_PAGE_TABLE)?)?;
        let svar = read_u64(target, field(block, kdbg::POOL_BIG_PAGE_TABLE_SIZE)?)?;
        if tvar != 0 && svar != 0 {
            let t = read_u64(target, VirtAddr(tvar))?;
            big_entries = read_u64(target, VirtAddr(svar))?.min(MAX_BIG_PAGE_ENTRIES);
            big_table = (t != 0).then_some(VirtAddr(t));
        }
    }
    Ok(PoolTables {
        kdbg: block,
        track_table,
        track_entries: track_entries.min(MAX_TRACKER_ENTRIES),
        big_table,
        big_entries,
    })
}

/// Reads the whole tracker table.
pub fn snapshot<T: DebugTarget + ?Sized>(target: &mut T) -> Result<PoolSnapshot, TargetError> {
    let tables = locate(target)?;
    snapshot_at(target, &tables)
}

/// Reads the tracker table at an already located place.
pub fn snapshot_at<T: DebugTarget + ?Sized>(
    target: &mut T,
    tables: &PoolTables,
) -> Result<PoolSnapshot, TargetError> {
    let len = usize::try_from(tables.track_entries * tracker::SIZE)
        .map_err(|_| TargetError::BadKernelData("tracker table too large".into()))?;
    let mut raw = vec![0u8; len];
    read_exact(target, tables.track_table, &mut raw)?;
    let mut snap = PoolSnapshot::default();
    for chunk in raw.chunks_exact(tracker::SIZE as usize) {
        let Some((key, usage)) = TagUsage::parse(chunk) else {
            continue;
        };
        if key == 0 {
            continue;
        }
        let tag = PoolTag::from_u32(key).unprotected();
        snap.tags.entry(tag).or_default().accumulate(&usage);
    }
    Ok(snap)
}

/// One entry of the big-page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BigPage {
    /// The allocation's address (low bit cleared).
    pub va: VirtAddr,
    /// Whether the slot is free (low bit of `Va` set).
    pub free: bool,
    /// The tag.
    pub tag: PoolTag,
    /// The raw pool type.
    pub pool_type: u32,
    /// Size in bytes.
    pub bytes: u64,
}

/// Reads the big-page table's non-empty entries.
pub fn big_pages<T: DebugTarget + ?Sized>(
    target: &mut T,
    tables: &PoolTables,
) -> Result<Vec<BigPage>, TargetError> {
    let Some(table) = tables.big_table else {
        return Ok(Vec::new());
    };
    let len = usize::try_from(tables.big_entries * big_page::SIZE)
        .map_err(|_| TargetError::BadKernelData("big page table too large".into()))?;
    let mut raw = vec![0u8; len];
    let got = target.read_memory(table, &mut raw)?;
    raw.truncate(got);
    let mut out = Vec::new();
    for e in raw.chunks_exact(big_page::SIZE as usize) {
        let u64_at = |o: u64| {
            e.get(o as usize..o as usize + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let u32_at = |o: u64| {
            e.get(o as usize..o as usize + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let (Some(va), Some(key), Some(pt), Some(n)) = (
            u64_at(big_page::VA),
            u32_at(big_page::KEY),
            u32_at(big_page::POOL_TYPE),
            u64_at(big_page::NUMBER_OF_BYTES),
        ) else {
            continue;
        };
        if va == 0 && key == 0 {
            continue;
        }
        out.push(BigPage {
            va: VirtAddr(va & !1),
            free: va & 1 == 1,
            tag: PoolTag::from_u32(key),
            pool_type: pt,
            bytes: n,
        });
    }
    Ok(out)
}

/// A decoded `POOL_HEADER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolHeader {
    /// Where the header is.
    pub addr: VirtAddr,
    /// `PreviousSize` in bytes.
    pub previous_size: u64,
    /// `BlockSize` in bytes (header included).
    pub block_size: u64,
    /// `PoolType` byte (0 = free).
    pub pool_type: u8,
    /// The tag (protected bit as stored).
    pub tag: PoolTag,
}

impl PoolHeader {
    /// Decodes 16 header bytes.
    pub fn parse(addr: VirtAddr, raw: &[u8; 16]) -> PoolHeader {
        let [prev, _idx, size, ty, t0, t1, t2, t3, ..] = *raw;
        PoolHeader {
            addr,
            previous_size: u64::from(prev) * pool_header::SIZE,
            block_size: u64::from(size) * pool_header::SIZE,
            pool_type: ty,
            tag: PoolTag::new([t0, t1, t2, t3]),
        }
    }

    /// Whether the block is allocated (pool type non-zero).
    pub fn allocated(&self) -> bool {
        self.pool_type != 0
    }

    /// Whether the block is paged (`(POOL_TYPE & 7) + 1` is even).
    pub fn paged(&self) -> bool {
        self.pool_type != 0 && (self.pool_type & 7).wrapping_sub(1) & 1 == 1
    }

    /// Whether the header is plausible for a block within one page.
    pub fn plausible(&self) -> bool {
        let in_page = self.addr.get() % PAGE_SIZE;
        self.addr.get().is_multiple_of(pool_header::SIZE)
            && self.block_size != 0
            && in_page + self.block_size <= PAGE_SIZE
            && self.previous_size <= in_page
    }
}

/// Reads the chain of block headers in the page containing `addr`, from the page start,
/// following `BlockSize`, stopping at a zero or implausible size.
pub fn page_headers<T: DebugTarget + ?Sized>(
    target: &mut T,
    addr: VirtAddr,
) -> Result<Vec<PoolHeader>, TargetError> {
    let page = VirtAddr(addr.get() & !(PAGE_SIZE - 1));
    let mut raw = vec![0u8; PAGE_SIZE as usize];
    read_exact(target, page, &mut raw)?;
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < PAGE_SIZE {
        let Some(bytes) = raw
            .get(off as usize..off as usize + 16)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
        else {
            break;
        };
        let h = PoolHeader::parse(page.saturating_add(off), &bytes);
        if !h.plausible() {
            break;
        }
        off += h.block_size;
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn snapshot_reads_the_tracker_and_growth_is_per_tag() {
        let mut t = fake_kernel();
        let before = snapshot(&mut t).unwrap();
        assert_eq!(before.usage(PoolTag::new(*b"EtwB")).np_outstanding(), 94);
        assert_eq!(before.total().np_bytes, 945_136 + 0x1000);
        t.run(crate::target::RunFor::Ticks(20)).unwrap();
        let after = snapshot(&mut t).unwrap();
        let g = after.growth_since(&before);
        assert_eq!(g[&PoolTag::new(*b"Leak")], 2 * 1_024_000);
        assert_eq!(g[&PoolTag::new(*b"EtwB")], 0);
    }

    #[test]
    fn bad_kdbg_is_reported() {
        let mut t = fake_kernel();
        t.write_memory(VirtAddr(KDBG + kdbg::OWNER_TAG_OFFSET), b"XXXX")
            .unwrap();
        assert!(matches!(
            snapshot(&mut t),
            Err(TargetError::BadKernelData(_))
        ));
        t.kernel.kdbg = None;
        assert!(snapshot(&mut t).is_err());
    }
}
