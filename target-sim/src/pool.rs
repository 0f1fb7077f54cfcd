//! The tagged pool allocator, with all its bookkeeping in simulated memory.
//!
//! * Small requests (under [`pool_header::BIG_THRESHOLD`] bytes) get a block of
//!   `(n + 0x1f) >> 4` 16-byte units, the 16-byte `POOL_HEADER` included, carved from 4 KiB
//!   pages of their pool. Blocks never cross a page. The header holds `PreviousSize` (units
//!   of the block before it in the page, 0 for the first), `PoolIndex` (0 nonpaged, 1
//!   paged), `BlockSize` (units), `PoolType` and the tag. Freed blocks get `PoolType` 0 and
//!   are reused (exact size first, else split from a larger free block).
//! * `PoolType` in a header is `(POOL_TYPE & 7) + 1` for an allocated block (so 1 for
//!   `NonPagedPool`, 2 for `PagedPool`; even values are paged) and 0 for a free block.
//! * Big requests are page-rounded, page-aligned, have no inline header, and are recorded
//!   in the big-page table (`POOL_TRACKER_BIG_PAGES` entries; `Va` with the low bit set
//!   marks a free slot; `NumberOfBytes` is the requested size).
//! * The tracker table (`POOL_TRACKER_TABLE` entries, open addressing keyed by tag, `Key` 0
//!   empty) is updated in memory on every allocation and free: `Allocs += 1`,
//!   `Bytes += BlockSize << 4` (or the page-rounded size); a free is charged to the tag in
//!   the block's header (or big-page entry) with bit 31 masked.
//! * Nonpaged and paged pools live in separate address ranges. Mapping them costs nothing;
//!   a page is materialised when a header is first written to it, so big allocations cost
//!   no host memory at all.

use std::collections::{BTreeMap, HashMap};

use crate::layout::{PAGE_SIZE, big_page, pool_header, tracker};
use crate::memory::{FastHash, MemError, Memory, Prot};
use crate::types::{PoolTag, VirtAddr};

/// Pool errors (what would be a `BAD_POOL_CALLER` bug check on Windows).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The tag is zero, `BIG `, or has no letter or digit.
    #[error("invalid pool tag {0:?}")]
    InvalidTag(PoolTag),
    /// The address is not the start of a live allocation.
    #[error("{0} is not an allocated pool block")]
    NotAllocated(VirtAddr),
    /// The pool's address range is used up.
    #[error("pool exhausted")]
    Exhausted,
    /// The tracker table has no free slot for a new tag.
    #[error("pool tracker table full")]
    TrackerFull,
    /// The big-page table has no free slot.
    #[error("big-page table full")]
    BigTableFull,
    /// The request is larger than the simulator supports.
    #[error("allocation of {0} bytes too large")]
    TooLarge(u64),
    /// Simulated memory refused an access.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// A Windows `POOL_TYPE` value (`0` = `NonPagedPool`, `1` = `PagedPool`, `512` =
/// `NonPagedPoolNx`, ...). Odd base types are paged.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct PoolType(pub u32);

impl PoolType {
    /// `NonPagedPool`.
    pub const NON_PAGED: PoolType = PoolType(0);
    /// `PagedPool`.
    pub const PAGED: PoolType = PoolType(1);
    /// `NonPagedPoolNx`.
    pub const NON_PAGED_NX: PoolType = PoolType(512);

    /// Which pool the type allocates from.
    pub const fn kind(self) -> PoolKind {
        if self.0 & 1 == 1 {
            PoolKind::Paged
        } else {
            PoolKind::NonPaged
        }
    }

    /// The value stored in a `POOL_HEADER` for an allocated block: `(type & 7) + 1`.
    pub const fn header_value(self) -> u8 {
        ((self.0 & 7) + 1) as u8
    }
}

/// Nonpaged or paged pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PoolKind {
    /// Nonpaged pool.
    NonPaged,
    /// Paged pool.
    Paged,
}

/// Where the pool keeps its tables and arenas.
#[derive(Clone, Copy, Debug)]
pub struct PoolLayout {
    /// The tracker table (`nt!PoolTrackTable`'s value).
    pub track_table: VirtAddr,
    /// Entries in the tracker table (a power of two).
    pub track_entries: u64,
    /// The big-page table.
    pub big_table: VirtAddr,
    /// Entries in the big-page table.
    pub big_entries: u64,
    /// Nonpaged small-block pages start here (range of `arena_size` bytes).
    pub nonpaged_small: VirtAddr,
    /// Nonpaged big allocations start here.
    pub nonpaged_big: VirtAddr,
    /// Paged small-block pages start here.
    pub paged_small: VirtAddr,
    /// Paged big allocations start here.
    pub paged_big: VirtAddr,
    /// Size of each small-block arena.
    pub small_size: u64,
    /// Size of each big-allocation arena.
    pub big_size: u64,
}

impl PoolLayout {
    /// The layout the simulator uses (Windows 7 x64-like addresses).
    pub const fn standard() -> PoolLayout {
        PoolLayout {
            track_table: VirtAddr(0xfffffa80_00c00000),
            track_entries: 4096,
            big_table: VirtAddr(0xfffffa80_00e00000),
            big_entries: 32768,
            nonpaged_small: VirtAddr(0xfffffa80_01000000),
            nonpaged_big: VirtAddr(0xfffffa81_00000000),
            paged_small: VirtAddr(0xfffff8a0_00000000),
            paged_big: VirtAddr(0xfffff8a1_00000000),
            small_size: 0x8000_0000,
            big_size: 0x40_0000_0000,
        }
    }
}

/// One live allocation, from the allocator's own bookkeeping (not from memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAllocation {
    /// The address returned to the caller (after the header for small blocks).
    pub addr: VirtAddr,
    /// The tag it was allocated with (as passed, protected bit included).
    pub tag: PoolTag,
    /// Which pool.
    pub kind: PoolKind,
    /// The `POOL_TYPE` passed.
    pub pool_type: PoolType,
    /// Bytes requested.
    pub requested: u64,
    /// Bytes charged to the tracker (`BlockSize << 4`, or page-rounded for big blocks).
    pub charged: u64,
    /// Whether it is a big-page allocation.
    pub big: bool,
}

/// One tracker-table entry as read from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerEntry {
    /// `Key`.
    pub tag: PoolTag,
    /// `NonPagedAllocs` (cumulative).
    pub nonpaged_allocs: u32,
    /// `NonPagedFrees` (cumulative).
    pub nonpaged_frees: u32,
    /// `NonPagedBytes` (outstanding).
    pub nonpaged_bytes: u64,
    /// `PagedAllocs` (cumulative).
    pub paged_allocs: u32,
    /// `PagedFrees` (cumulative).
    pub paged_frees: u32,
    /// `PagedBytes` (outstanding).
    pub paged_bytes: u64,
}

impl TrackerEntry {
    /// Parses an entry from its 0x28 bytes.
    pub fn parse(b: &[u8]) -> Option<TrackerEntry> {
        let u32_at = |o: u64| -> Option<u32> {
            let s = b.get(o as usize..o as usize + 4)?;
            Some(u32::from_le_bytes(s.try_into().ok()?))
        };
        let u64_at = |o: u64| -> Option<u64> {
            let s = b.get(o as usize..o as usize + 8)?;
            Some(u64::from_le_bytes(s.try_into().ok()?))
        };
        Some(TrackerEntry {
            tag: PoolTag::from_u32(u32_at(tracker::KEY)?),
            nonpaged_allocs: u32_at(tracker::NON_PAGED_ALLOCS)?,
            nonpaged_frees: u32_at(tracker::NON_PAGED_FREES)?,
            nonpaged_bytes: u64_at(tracker::NON_PAGED_BYTES)?,
            paged_allocs: u32_at(tracker::PAGED_ALLOCS)?,
            paged_frees: u32_at(tracker::PAGED_FREES)?,
            paged_bytes: u64_at(tracker::PAGED_BYTES)?,
        })
    }
}

/// Reads every used entry of a tracker table of `entries` entries at `table`.
pub fn read_tracker(
    mem: &Memory,
    table: VirtAddr,
    entries: u64,
) -> Result<Vec<TrackerEntry>, MemError> {
    let mut buf = vec![0u8; (entries.min(1 << 20) * tracker::SIZE) as usize];
    mem.read(table, &mut buf)?;
    Ok(buf
        .chunks_exact(tracker::SIZE as usize)
        .filter_map(TrackerEntry::parse)
        .filter(|e| e.tag.to_u32() != 0)
        .collect())
}

/// Per-pool allocation state.
#[derive(Clone, Debug)]
struct Arena {
    index: u8,
    small_next: u64,
    small_end: u64,
    big_next: u64,
    big_end: u64,
    /// The page being carved: (page address, next free offset, units of the last block).
    open: Option<(u64, u64, u8)>,
    /// Free small blocks (header addresses), indexed by size in units (256 lists).
    free: Vec<Vec<u64>>,
    /// Free big ranges by page count.
    big_free: BTreeMap<u64, Vec<u64>>,
}

impl Arena {
    /// Puts a free block of `units` on its list.
    fn push_free(&mut self, units: u8, hdr: u64) {
        if let Some(list) = self.free.get_mut(usize::from(units)) {
            list.push(hdr);
        }
    }

    fn new(kind: PoolKind, l: &PoolLayout) -> Arena {
        let (small, big) = match kind {
            PoolKind::NonPaged => (l.nonpaged_small, l.nonpaged_big),
            PoolKind::Paged => (l.paged_small, l.paged_big),
        };
        Arena {
            index: match kind {
                PoolKind::NonPaged => 0,
                PoolKind::Paged => 1,
            },
            small_next: small.0,
            small_end: small.0.saturating_add(l.small_size),
            big_next: big.0,
            big_end: big.0.saturating_add(l.big_size),
            open: None,
            free: vec![Vec::new(); 256],
            big_free: BTreeMap::new(),
        }
    }
}

/// The allocator. Its tables live in [`Memory`]; it keeps only free lists and a ground-truth
/// list of live allocations on the host side.
#[derive(Clone, Debug)]
pub struct Pool {
    layout: PoolLayout,
    arenas: [Arena; 2],
    /// Tracker slot of each tag seen (a cache; memory is authoritative).
    slots: HashMap<u32, u64, FastHash>,
    big_slots_free: Vec<u64>,
    big_slot_next: u64,
    /// Big allocations: address -> big-table slot.
    big_live: BTreeMap<u64, u64>,
    live: HashMap<u64, LiveAllocation, FastHash>,
}

/// Reads `N` bytes of the pool's own memory (in place when the page was written).
fn read_n<const N: usize>(mem: &Memory, addr: u64) -> Result<[u8; N], MemError> {
    let mut b = [0u8; N];
    match mem.written(addr, N) {
        Some(s) => b.copy_from_slice(s),
        None => mem.read(VirtAddr(addr), &mut b)?,
    }
    Ok(b)
}

/// Rewrites `N` bytes of the pool's own memory with `f` of their value (in place, one
/// look-up, when the page was written).
fn update<const N: usize>(
    mem: &mut Memory,
    addr: u64,
    f: impl FnOnce([u8; N]) -> [u8; N],
) -> Result<(), MemError> {
    if let Some(s) = mem.written_mut(addr, N) {
        modify(s, 0, f);
        return Ok(());
    }
    let v = read_n::<N>(mem, addr)?;
    mem.write(VirtAddr(addr), &f(v))
}

/// Rewrites the `N` bytes of `s` at `at` with `f` of their value (nothing if out of range).
fn modify<const N: usize>(s: &mut [u8], at: usize, f: impl FnOnce([u8; N]) -> [u8; N]) {
    if let Some(d) = s.get_mut(at..at.saturating_add(N))
        && let Ok(v) = <[u8; N]>::try_from(&*d)
    {
        d.copy_from_slice(&f(v));
    }
}

/// Writes the pool's own memory (in place when the page was written).
fn write_at(mem: &mut Memory, addr: u64, data: &[u8]) -> Result<(), MemError> {
    match mem.written_mut(addr, data.len()) {
        Some(s) => {
            s.copy_from_slice(data);
            Ok(())
        }
        None => mem.write(VirtAddr(addr), data),
    }
}

/// Units of a small block for a request of `n` bytes.
fn units_for(n: u64) -> u8 {
    ((n + 0x1f) >> 4).min(255) as u8
}

impl Pool {
    /// Creates the pool: maps its arenas and tables and initialises the big-page table.
    pub fn new(mem: &mut Memory, layout: PoolLayout) -> Result<Pool, PoolError> {
        let table_bytes = (layout.track_entries * tracker::SIZE).next_multiple_of(PAGE_SIZE);
        mem.map(layout.track_table, table_bytes, Prot::RW)?;
        let big_bytes = (layout.big_entries * big_page::SIZE).next_multiple_of(PAGE_SIZE);
        mem.map(layout.big_table, big_bytes, Prot::RW)?;
        let mut free_marks = vec![0u8; (layout.big_entries * big_page::SIZE) as usize];
        for e in free_marks.chunks_exact_mut(big_page::SIZE as usize) {
            if let Some(b) = e.first_mut() {
                *b = 1;
            }
        }
        mem.write(layout.big_table, &free_marks)?;
        for a in [layout.nonpaged_small, layout.paged_small] {
            mem.map(a, layout.small_size, Prot::RW)?;
        }
        for a in [layout.nonpaged_big, layout.paged_big] {
            mem.map(a, layout.big_size, Prot::RW)?;
        }
        Ok(Pool {
            layout,
            arenas: [
                Arena::new(PoolKind::NonPaged, &layout),
                Arena::new(PoolKind::Paged, &layout),
            ],
            slots: HashMap::default(),
            big_slots_free: Vec::new(),
            big_slot_next: 0,
            big_live: BTreeMap::new(),
            live: HashMap::default(),
        })
    }

    /// The layout in use.
    pub fn layout(&self) -> &PoolLayout {
        &self.layout
    }

    /// The live allocations in address order (the allocator's ground truth).
    pub fn live_allocations(&self) -> impl Iterator<Item = &LiveAllocation> + '_ {
        let mut all: Vec<&LiveAllocation> = self.live.values().collect();
        all.sort_unstable_by_key(|a| a.addr);
        all.into_iter()
    }

    /// The live allocation starting at `addr`, if any.
    pub fn live_allocation(&self, addr: VirtAddr) -> Option<&LiveAllocation> {
        self.live.get(&addr.0)
    }

    /// Allocates `size` bytes of `pool_type` with `tag`, like `ExAllocatePoolWithTag`.
    pub fn allocate(
        &mut self,
        mem: &mut Memory,
        pool_type: PoolType,
        size: u64,
        tag: PoolTag,
    ) -> Result<VirtAddr, PoolError> {
        if !tag.is_valid_for_alloc() {
            return Err(PoolError::InvalidTag(tag));
        }
        if size > 1 << 34 {
            return Err(PoolError::TooLarge(size));
        }
        let kind = pool_type.kind();
        let slot = self.tracker_slot(mem, tag.unprotected())?;
        let (addr, charged, big) = if size >= pool_header::BIG_THRESHOLD {
            let pages = size.div_ceil(PAGE_SIZE).max(1);
            let bslot = self.big_slot()?;
            let arena = self.arena(kind);
            let va = match arena.big_free.get_mut(&pages).and_then(Vec::pop) {
                Some(va) => va,
                None => {
                    let va = arena.big_next;
                    let end = va
                        .checked_add(pages * PAGE_SIZE)
                        .ok_or(PoolError::Exhausted)?;
                    if end > arena.big_end {
                        self.big_slots_free.push(bslot);
                        return Err(PoolError::Exhausted);
                    }
                    arena.big_next = end;
                    va
                }
            };
            let entry = self.layout.big_table.0 + bslot * big_page::SIZE;
            let mut e = [0u8; big_page::SIZE as usize];
            put(&mut e, big_page::VA, &va.to_le_bytes());
            put(&mut e, big_page::KEY, &tag.to_u32().to_le_bytes());
            put(&mut e, big_page::POOL_TYPE, &pool_type.0.to_le_bytes());
            put(&mut e, big_page::NUMBER_OF_BYTES, &size.to_le_bytes());
            mem.write(VirtAddr(entry), &e)?;
            self.big_live.insert(va, bslot);
            (va, pages * PAGE_SIZE, true)
        } else {
            let units = units_for(size);
            let hdr = self.carve(mem, kind, units)?;
            let index = self.arena(kind).index;
            let fill = |h: &mut [u8], prev: u8| {
                // The header (keeping `PreviousSize`), then `ProcessBilled` = 0.
                put(
                    h,
                    0,
                    &header(prev, index, units, pool_type.header_value(), tag),
                );
                put(h, pool_header::PROCESS_BILLED, &[0u8; 8]);
            };
            match mem.written_mut(hdr, pool_header::SIZE as usize) {
                Some(h) => fill(h, h.first().copied().unwrap_or(0)),
                None => {
                    let [prev] = read_n::<1>(mem, hdr + pool_header::PREVIOUS_SIZE)?;
                    let mut h = [0u8; pool_header::SIZE as usize];
                    fill(&mut h, prev);
                    mem.write(VirtAddr(hdr), &h)?;
                }
            }
            (hdr + pool_header::SIZE, u64::from(units) << 4, false)
        };
        self.charge(mem, slot, kind, charged, true)?;
        self.live.insert(
            addr,
            LiveAllocation {
                addr: VirtAddr(addr),
                tag,
                kind,
                pool_type,
                requested: size,
                charged,
                big,
            },
        );
        Ok(VirtAddr(addr))
    }

    /// Frees the block at `addr`, like `ExFreePool`: the tracker is charged using the tag
    /// in the block's header (or big-page entry) as it is in memory now, bit 31 masked.
    /// Returns that tag.
    pub fn free(&mut self, mem: &mut Memory, addr: VirtAddr) -> Result<PoolTag, PoolError> {
        // One probe of the live map: the record comes out now and goes back in if the
        // free fails (the block then stays allocated, as before the call).
        let Some(live) = self.live.remove(&addr.0) else {
            return Err(PoolError::NotAllocated(addr));
        };
        let freed = self.release(mem, addr, live);
        if freed.is_err() {
            self.live.insert(addr.0, live);
        }
        freed
    }

    /// The body of [`free`](Self::free) once the live record `live` is taken out.
    fn release(
        &mut self,
        mem: &mut Memory,
        addr: VirtAddr,
        live: LiveAllocation,
    ) -> Result<PoolTag, PoolError> {
        let kind = live.kind;
        let (tag, charged) = if live.big {
            let bslot = self
                .big_live
                .get(&addr.0)
                .copied()
                .ok_or(PoolError::NotAllocated(addr))?;
            let entry = VirtAddr(self.layout.big_table.0 + bslot * big_page::SIZE);
            let tag = PoolTag::from_u32(mem.read_u32(VirtAddr(entry.0 + big_page::KEY))?);
            let bytes = mem.read_u64(VirtAddr(entry.0 + big_page::NUMBER_OF_BYTES))?;
            let pages = bytes.div_ceil(PAGE_SIZE).max(1);
            mem.write_u64(VirtAddr(entry.0 + big_page::VA), addr.0 | 1)?;
            self.big_live.remove(&addr.0);
            self.big_slots_free.push(bslot);
            let lpages = live.charged / PAGE_SIZE;
            self.arena(kind)
                .big_free
                .entry(lpages)
                .or_default()
                .push(addr.0);
            (tag, pages * PAGE_SIZE)
        } else {
            let hdr = addr.0 - pool_header::SIZE;
            let [_, _, units, _, t0, t1, t2, t3] = match mem.written_mut(hdr, 8) {
                // Read the header and mark the block free (`PoolType` 0) in one look-up.
                Some(h) => {
                    let raw = <[u8; 8]>::try_from(&*h).unwrap_or_default();
                    put(h, pool_header::POOL_TYPE, &[0]);
                    raw
                }
                None => {
                    let raw = read_n::<8>(mem, hdr)?;
                    mem.write(VirtAddr(hdr + pool_header::POOL_TYPE), &[0])?;
                    raw
                }
            };
            let tag = PoolTag::new([t0, t1, t2, t3]);
            let lunits = (live.charged >> 4) as u8;
            self.arena(kind).push_free(lunits, hdr);
            (tag, u64::from(units) << 4)
        };
        let key = tag.unprotected();
        if key.to_u32() != 0 {
            let slot = self.tracker_slot(mem, key)?;
            self.charge(mem, slot, kind, charged, false)?;
        }
        Ok(tag)
    }

    fn arena(&mut self, kind: PoolKind) -> &mut Arena {
        match kind {
            PoolKind::NonPaged => &mut self.arenas[0],
            PoolKind::Paged => &mut self.arenas[1],
        }
    }

    fn big_slot(&mut self) -> Result<u64, PoolError> {
        if let Some(s) = self.big_slots_free.pop() {
            return Ok(s);
        }
        if self.big_slot_next >= self.layout.big_entries {
            return Err(PoolError::BigTableFull);
        }
        self.big_slot_next += 1;
        Ok(self.big_slot_next - 1)
    }

    /// Finds a header address for a block of `units`, writing `PreviousSize` for it and
    /// keeping the next block's `PreviousSize` right when a free block is split.
    fn carve(&mut self, mem: &mut Memory, kind: PoolKind, units: u8) -> Result<u64, PoolError> {
        let arena = self.arena(kind);
        // exact fit
        if let Some(hdr) = arena.free.get_mut(usize::from(units)).and_then(Vec::pop) {
            return Ok(hdr);
        }
        // split the smallest larger free block
        let larger = arena
            .free
            .iter()
            .enumerate()
            .skip(usize::from(units) + 1)
            .find(|(_, v)| !v.is_empty())
            .and_then(|(k, _)| u8::try_from(k).ok());
        if let Some(big_units) = larger
            && let Some(hdr) = arena
                .free
                .get_mut(usize::from(big_units))
                .and_then(Vec::pop)
        {
            let rest = big_units - units;
            let rest_hdr = hdr + (u64::from(units) << 4);
            let open = arena.open;
            let tagb = read_n::<4>(mem, hdr + pool_header::POOL_TAG)?;
            let h = header(units, arena.index, rest, 0, PoolTag::new(tagb));
            arena.push_free(rest, rest_hdr);
            write_at(mem, rest_hdr, &h)?;
            let next = hdr + (u64::from(big_units) << 4);
            let page = hdr & !(PAGE_SIZE - 1);
            if next & (PAGE_SIZE - 1) != 0 {
                match open {
                    Some((p, off, _)) if p == page && next == p + off => {
                        if let Some(o) = self.arena(kind).open.as_mut() {
                            o.2 = rest;
                        }
                    }
                    _ => write_at(mem, next + pool_header::PREVIOUS_SIZE, &[rest])?,
                }
            }
            write_at(mem, hdr + pool_header::BLOCK_SIZE, &[units])?;
            return Ok(hdr);
        }
        // carve from the open page, or open a new one
        let need = u64::from(units) << 4;
        let arena = self.arena(kind);
        if let Some((page, off, last)) = arena.open {
            if off + need <= PAGE_SIZE {
                let hdr = page + off;
                arena.open = Some((page, off + need, units));
                write_at(mem, hdr, &[last])?;
                return Ok(hdr);
            }
            // close the page: its tail becomes a free block
            let rest = (PAGE_SIZE - off) >> 4;
            if rest > 0 {
                let hdr = page + off;
                let h = [last, arena.index, rest as u8, 0];
                arena.push_free(rest as u8, hdr);
                write_at(mem, hdr, &h)?;
            }
            arena.open = None;
        }
        let arena = self.arena(kind);
        let page = arena.small_next;
        if page.saturating_add(PAGE_SIZE) > arena.small_end {
            return Err(PoolError::Exhausted);
        }
        arena.small_next = page + PAGE_SIZE;
        arena.open = Some((page, need, units));
        write_at(mem, page, &[0])?;
        Ok(page)
    }

    /// The tracker slot of `key`, inserting it if new.
    fn tracker_slot(&mut self, mem: &mut Memory, key: PoolTag) -> Result<u64, PoolError> {
        let k = key.to_u32();
        if let Some(s) = self.slots.get(&k) {
            return Ok(*s);
        }
        let n = self.layout.track_entries;
        let start = tracker::hash(k, n);
        for i in 0..n {
            let slot = (start + i) % n;
            let at = VirtAddr(self.layout.track_table.0 + slot * tracker::SIZE);
            let cur = mem.read_u32(at)?;
            if cur == k {
                self.slots.insert(k, slot);
                return Ok(slot);
            }
            if cur == 0 {
                mem.write_u32(at, k)?;
                self.slots.insert(k, slot);
                return Ok(slot);
            }
        }
        Err(PoolError::TrackerFull)
    }

    fn charge(
        &mut self,
        mem: &mut Memory,
        slot: u64,
        kind: PoolKind,
        bytes: u64,
        alloc: bool,
    ) -> Result<(), PoolError> {
        let e = self.layout.track_table.0 + slot * tracker::SIZE;
        let (count_off, bytes_off) = match (kind, alloc) {
            (PoolKind::NonPaged, true) => (tracker::NON_PAGED_ALLOCS, tracker::NON_PAGED_BYTES),
            (PoolKind::NonPaged, false) => (tracker::NON_PAGED_FREES, tracker::NON_PAGED_BYTES),
            (PoolKind::Paged, true) => (tracker::PAGED_ALLOCS, tracker::PAGED_BYTES),
            (PoolKind::Paged, false) => (tracker::PAGED_FREES, tracker::PAGED_BYTES),
        };
        let count = |v: [u8; 4]| u32::from_le_bytes(v).wrapping_add(1).to_le_bytes();
        let total = |v: [u8; 8]| {
            let b = u64::from_le_bytes(v);
            if alloc {
                b.wrapping_add(bytes)
            } else {
                b.wrapping_sub(bytes)
            }
            .to_le_bytes()
        };
        // Both fields in place with one look-up when they lie in one page (an entry may
        // cross a page; an aligned field never does).
        let gap = (bytes_off - count_off) as usize;
        match mem.written_mut(e + count_off, gap + 8) {
            Some(s) => {
                modify(s, 0, count);
                modify(s, gap, total);
            }
            None => {
                update(mem, e + count_off, count)?;
                update(mem, e + bytes_off, total)?;
            }
        }
        Ok(())
    }
}

// `header` relies on the x64 field order of `layout::pool_header`.
const _: () = assert!(
    pool_header::PREVIOUS_SIZE == 0
        && pool_header::POOL_INDEX == 1
        && pool_header::BLOCK_SIZE == 2
        && pool_header::POOL_TYPE == 3
        && pool_header::POOL_TAG == 4
);

/// The first eight bytes of a `POOL_HEADER`.
fn header(prev: u8, index: u8, units: u8, pool_type: u8, tag: PoolTag) -> [u8; 8] {
    let t = tag.bytes();
    [prev, index, units, pool_type, t[0], t[1], t[2], t[3]]
}

/// Copies `bytes` into `buf` at `off` (ignored if out of range).
fn put(buf: &mut [u8], off: u64, bytes: &[u8]) {
    if let Some(d) = buf.get_mut(off as usize..off as usize + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}
