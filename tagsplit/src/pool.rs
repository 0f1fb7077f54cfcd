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

use crate::target::{DebugTarget, TargetError, read_exact, read_fresh_each, read_u32, read_u64};
use crate::{PoolTag, VirtAddr};
use tagsplit_protocol::nt::PROTECTED_POOL;

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
    Ok(parse_table(&read_table(target, tables)?))
}

/// Entries read at a time when probing for a tag not yet located.
pub const PROBE_CHUNK: u64 = 4;
/// Probe reads whose slots are at most this many entries apart are made as one read
/// (1.25 KiB between them at most: a round trip saved costs less on any network, and
/// the homes of a few tags in a large table are much further apart).
pub const MERGE_GAP: u64 = 32;

/// The fewest occupied entries a whole read must show, all where the kernel's hash puts
/// them, before [`TagProbe`] trusts the hash (a nearly empty table proves nothing).
pub const MIN_ENTRIES_FOR_HASH: usize = 4;

/// Reads the counters of a few tags without reading the whole tracker table.
///
/// The kernel files a tag in the slot its hash names ([`tracker::hash`]), or the first
/// free one after it, and never moves or removes an entry; a tag is looked up by probing
/// from its hash to the first free slot. [`TagProbe::new`] checks that this table follows
/// that rule by probing for a tag it should hold (the tag being split): found, the table is
/// trusted and nothing else is read. Otherwise it reads the whole table once and checks
/// that every occupied entry sits where probing finds it ([`TagProbe::from_whole`]). A
/// trusted table is then read per tag: a tag's known slot, or a probe from its hash (a
/// tag filed since); an untrusted one (another build's hash, a hand-made table,
/// duplicated keys) whole every time, so the counters are always those [`snapshot_at`]
/// gives. A known entry found elsewhere later makes the table untrusted from then on.
#[derive(Clone, Debug)]
pub struct TagProbe {
    tables: PoolTables,
    /// Slots of the keys located so far.
    slots: BTreeMap<u32, u64>,
    /// Whether the table follows the kernel's hash.
    hashed: bool,
    /// The whole table, when it was read (untrusted tables answer `contains` from it).
    whole: Option<PoolSnapshot>,
    /// Entries [`contains`](TagProbe::contains) read since the last
    /// [`usage`](TagProbe::usage) (the table does not change while the target is stopped).
    stopped: SlotCache,
}

impl TagProbe {
    /// Checks the table at `tables` by probing for `anchor` (a tag it holds, if any
    /// allocation was ever made under it); falls back to [`TagProbe::from_whole`] when
    /// probing does not find it.
    pub fn new<T: DebugTarget + ?Sized>(
        target: &mut T,
        tables: PoolTables,
        anchor: PoolTag,
    ) -> Result<TagProbe, TargetError> {
        let mut probe = TagProbe {
            tables,
            slots: BTreeMap::new(),
            hashed: true,
            whole: None,
            stopped: SlotCache::default(),
        };
        let mut read = SlotCache::default();
        let bare = anchor.unprotected().to_u32();
        let mut found = false;
        for key in [bare, bare | PROTECTED_POOL] {
            if let Some((slot, _)) = probe.probe(target, &mut read, key)? {
                probe.slots.insert(key, slot);
                found = true;
            }
        }
        if found {
            return Ok(probe);
        }
        TagProbe::from_whole(target, tables)
    }

    /// Reads the whole table at `tables` once, checks every entry against the kernel's
    /// hash (at least [`MIN_ENTRIES_FOR_HASH`] occupied, each where probing finds it, no
    /// key twice); the whole snapshot stays with the probe ([`whole`](TagProbe::whole)).
    pub fn from_whole<T: DebugTarget + ?Sized>(
        target: &mut T,
        tables: PoolTables,
    ) -> Result<TagProbe, TargetError> {
        let raw = read_table(target, &tables)?;
        let keys: Vec<u32> = raw
            .chunks_exact(tracker::SIZE as usize)
            .map(|e| TagUsage::parse(e).map_or(0, |(k, _)| k))
            .collect();
        let slots = hashed_slots(&keys);
        Ok(TagProbe {
            tables,
            hashed: slots.is_some(),
            slots: slots.unwrap_or_default(),
            whole: Some(parse_table(&raw)),
            stopped: SlotCache::default(),
        })
    }

    /// The whole table as [`from_whole`](TagProbe::from_whole) read it, when it did.
    pub fn whole(&self) -> Option<&PoolSnapshot> {
        self.whole.as_ref()
    }

    /// Whether the tracker holds `tag` (either `PROTECTED_POOL` variant): probed in a
    /// trusted table; from the whole read otherwise. Entries read here are kept until the
    /// next [`usage`](TagProbe::usage): ask while the target is stopped (as a split
    /// chooses its tags), and many questions cost one read per home slot.
    pub fn contains<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tag: PoolTag,
    ) -> Result<bool, TargetError> {
        if !self.hashed
            && let Some(whole) = &self.whole
        {
            return Ok(whole.contains(tag));
        }
        if self.hashed {
            let mut read = std::mem::take(&mut self.stopped);
            let found = self.holds(target, &mut read, tag);
            self.stopped = read;
            return found;
        }
        Ok(snapshot_at(target, &self.tables)?.contains(tag))
    }

    /// Reads where the probes for `tags` start (nearby slots in one read, see
    /// [`usage`](TagProbe::usage)) and keeps the entries for [`contains`](TagProbe::contains)
    /// until the next [`usage`](TagProbe::usage): a split choosing 125 new tags asks about
    /// each, and 250 probe reads become a few dozen. Nothing to do for a table read whole.
    pub fn prepare<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tags: &[PoolTag],
    ) -> Result<(), TargetError> {
        if !self.hashed {
            return Ok(());
        }
        let mut read = std::mem::take(&mut self.stopped);
        let r = self.prefetch(target, &mut read, &keys_of(tags));
        self.stopped = read;
        r
    }

    /// Whether the table follows the kernel's hash (so reads are per tag).
    pub fn is_hashed(&self) -> bool {
        self.hashed
    }

    /// The tables probed.
    pub fn tables(&self) -> &PoolTables {
        &self.tables
    }

    /// The counters of each of `tags` now, as [`PoolSnapshot::usage`] of a whole snapshot
    /// would give them (both `PROTECTED_POOL` variants summed). Probes that meet slots
    /// already read in this call share the reads.
    pub fn usage<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tags: &[PoolTag],
    ) -> Result<Vec<TagUsage>, TargetError> {
        self.stopped = SlotCache::default();
        if self.hashed && !self.cheaper_whole(tags) {
            let mut read = SlotCache::default();
            self.prefetch(target, &mut read, &keys_of(tags))?;
            let mut out = Vec::with_capacity(tags.len());
            'tags: for tag in tags {
                let bare = tag.unprotected().to_u32();
                let mut u = TagUsage::default();
                for key in [bare, bare | PROTECTED_POOL] {
                    match self.probe(target, &mut read, key)? {
                        Some((slot, e)) if self.slots.get(&key).is_none_or(|&s| s == slot) => {
                            self.slots.insert(key, slot);
                            u.accumulate(&e);
                        }
                        None if !self.slots.contains_key(&key) => {}
                        // A key is no longer where it was: not the table we checked.
                        // Read it whole from now on.
                        _ => {
                            self.hashed = false;
                            break 'tags;
                        }
                    }
                }
                out.push(u);
            }
            if self.hashed {
                return Ok(out);
            }
        }
        let snap = snapshot_at(target, &self.tables)?;
        Ok(tags.iter().map(|t| snap.usage(*t)).collect())
    }

    /// Whether reading the whole table costs less than probing for `tags`: each distinct
    /// home slot costs a read of up to [`PROBE_CHUNK`] entries, and many small reads cost
    /// more than a quarter of their bytes in one large one (a split of hundreds of sites).
    fn cheaper_whole(&self, tags: &[PoolTag]) -> bool {
        let n = self.tables.track_entries;
        let homes: std::collections::BTreeSet<u64> = keys_of(tags)
            .into_iter()
            .map(|k| tracker::hash(k, n))
            .collect();
        let probed = (homes.len() as u64).saturating_mul(PROBE_CHUNK * tracker::SIZE);
        probed.saturating_mul(4) > n.saturating_mul(tracker::SIZE)
    }

    /// Reads where the probes for `keys` start, nearby slots in one read: from each key's
    /// home to its known slot (at least [`PROBE_CHUNK`] entries), spans at most
    /// [`MERGE_GAP`] entries apart merged while the read stays within the target's
    /// [`max_read`](DebugTarget::max_read). A split of 125 sites probes 250 homes in a
    /// 4,096-entry table: 42 reads a sample over KD instead of 250.
    fn prefetch<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        read: &mut SlotCache,
        keys: &[u32],
    ) -> Result<(), TargetError> {
        let n = self.tables.track_entries;
        let per_read = (target.max_read() as u64 / tracker::SIZE).max(PROBE_CHUNK);
        let mut spans: Vec<(u64, u64)> = keys
            .iter()
            .map(|&k| {
                let home = tracker::hash(k, n);
                let end = match self.slots.get(&k) {
                    Some(&s) if s >= home => s + 1,
                    _ => home + PROBE_CHUNK,
                };
                (
                    home,
                    end.max(home + PROBE_CHUNK).min(home + per_read).min(n),
                )
            })
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (lo, hi) in spans {
            match merged.last_mut() {
                Some((mlo, mhi))
                    if lo <= mhi.saturating_add(MERGE_GAP) && hi.max(*mhi) - *mlo <= per_read =>
                {
                    *mhi = hi.max(*mhi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        read.fill_many(target, &self.tables, &merged)
    }

    /// Whether probing finds either `PROTECTED_POOL` variant of `tag`.
    fn holds<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        read: &mut SlotCache,
        tag: PoolTag,
    ) -> Result<bool, TargetError> {
        let bare = tag.unprotected().to_u32();
        for key in [bare, bare | PROTECTED_POOL] {
            if self.probe(target, read, key)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Probes for `key` from its hash to the first free slot, as the kernel looks it up:
    /// its slot and counters, or `None`.
    fn probe<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        read: &mut SlotCache,
        key: u32,
    ) -> Result<Option<(u64, TagUsage)>, TargetError> {
        let n = self.tables.track_entries;
        let mut slot = tracker::hash(key, n);
        for _ in 0..n {
            match read.entry(target, &self.tables, slot)? {
                (0, _) => return Ok(None),
                (k, u) if k == key => return Ok(Some((slot, u))),
                _ => slot = (slot + 1) % n,
            }
        }
        Ok(None)
    }
}

/// The keys a tag may be filed under: bare and with `PROTECTED_POOL`.
fn keys_of(tags: &[PoolTag]) -> Vec<u32> {
    tags.iter()
        .flat_map(|t| {
            let bare = t.unprotected().to_u32();
            [bare, bare | PROTECTED_POOL]
        })
        .collect()
}

/// Tracker entries read during one [`TagProbe::usage`], or between two, by slot.
#[derive(Clone, Debug, Default)]
struct SlotCache {
    entries: BTreeMap<u64, (u32, TagUsage)>,
}

impl SlotCache {
    /// The entry at `slot`; when not yet read, reads it and up to [`PROBE_CHUNK`] − 1
    /// entries after it (to the table's end or the next slot already read).
    fn entry<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tables: &PoolTables,
        slot: u64,
    ) -> Result<(u32, TagUsage), TargetError> {
        if let Some(e) = self.entries.get(&slot) {
            return Ok(*e);
        }
        let next_read = self
            .entries
            .range(slot..)
            .next()
            .map_or(u64::MAX, |(s, _)| *s);
        let count = PROBE_CHUNK
            .min(tables.track_entries.saturating_sub(slot))
            .min(next_read - slot)
            .max(1);
        self.fill(target, tables, slot, slot + count)?;
        self.entries
            .get(&slot)
            .copied()
            .ok_or_else(|| TargetError::BadKernelData("tracker probe".into()))
    }

    /// Reads entries `lo..hi` (fresh: not through a read cache) and keeps them.
    fn fill<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tables: &PoolTables,
        lo: u64,
        hi: u64,
    ) -> Result<(), TargetError> {
        self.fill_many(target, tables, &[(lo, hi)])
    }

    /// Reads the entries of every span `lo..hi` (together, where the target pipelines)
    /// and keeps them.
    fn fill_many<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        tables: &PoolTables,
        spans: &[(u64, u64)],
    ) -> Result<(), TargetError> {
        let size = tracker::SIZE as usize;
        let mut ranges = Vec::with_capacity(spans.len());
        for &(lo, hi) in spans {
            let count = usize::try_from(hi.saturating_sub(lo))
                .map_err(|_| TargetError::BadKernelData("tracker probe".into()))?;
            let at = crate::target::offset(
                tables.track_table,
                lo.saturating_mul(tracker::SIZE),
                "PoolTrackTable",
            )?;
            ranges.push((at, count.saturating_mul(size)));
        }
        let read = crate::target::read_fresh_each(target, &ranges)?;
        for ((&(lo, _), &(at, _)), (raw, n)) in spans.iter().zip(&ranges).zip(read) {
            if n < raw.len() {
                return Err(TargetError::Unreadable(at.saturating_add(n as u64)));
            }
            for (i, e) in raw.chunks_exact(size).enumerate() {
                let parsed = TagUsage::parse(e).unwrap_or_default();
                self.entries.insert(lo + i as u64, parsed);
            }
        }
        Ok(())
    }
}

/// The slot of every key, if every occupied slot is where the kernel's linear probing
/// from the key's hash puts it (no free slot between the hash and the entry), no key
/// appears twice, and at least [`MIN_ENTRIES_FOR_HASH`] are occupied. Linear in the
/// table's size.
fn hashed_slots(keys: &[u32]) -> Option<BTreeMap<u32, u64>> {
    let n = keys.len();
    let occupied = keys.iter().filter(|&&k| k != 0).count();
    if occupied < MIN_ENTRIES_FOR_HASH {
        return None;
    }
    // run[s]: occupied slots in a row ending at s (wrapping), capped at n.
    let mut run = vec![0usize; n];
    if occupied == n {
        run.fill(n);
    } else {
        // Start just after a free slot so each run is counted from its beginning.
        let free = keys.iter().position(|&k| k == 0)?;
        let mut len = 0usize;
        for i in 1..=n {
            let s = (free + i) % n;
            len = if keys.get(s).copied().unwrap_or(0) == 0 {
                0
            } else {
                len + 1
            };
            if let Some(r) = run.get_mut(s) {
                *r = len;
            }
        }
    }
    let mut slots = BTreeMap::new();
    for (s, (&k, &r)) in keys.iter().zip(&run).enumerate() {
        if k == 0 {
            continue;
        }
        let home = usize::try_from(tracker::hash(k, n as u64)).ok()?;
        // Slots home..=s, wrapping, must all be occupied.
        let distance = (s + n - home) % n;
        if distance >= r || slots.insert(k, s as u64).is_some() {
            return None;
        }
    }
    Some(slots)
}

fn read_table<T: DebugTarget + ?Sized>(
    target: &mut T,
    tables: &PoolTables,
) -> Result<Vec<u8>, TargetError> {
    let len = usize::try_from(tables.track_entries * tracker::SIZE)
        .map_err(|_| TargetError::BadKernelData("tracker table too large".into()))?;
    // In pieces of the peer's largest read, all sent together where it pipelines.
    let piece = target.max_read().max(tracker::SIZE as usize);
    let ranges: Vec<(VirtAddr, usize)> = (0..len)
        .step_by(piece)
        .map(|off| {
            (
                tables.track_table.saturating_add(off as u64),
                piece.min(len - off),
            )
        })
        .collect();
    let mut raw = Vec::with_capacity(len);
    for (&(at, want), (bytes, got)) in ranges.iter().zip(read_fresh_each(target, &ranges)?) {
        if got < want {
            return Err(TargetError::Unreadable(at.saturating_add(got as u64)));
        }
        raw.extend_from_slice(&bytes);
    }
    Ok(raw)
}

fn parse_table(raw: &[u8]) -> PoolSnapshot {
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
    snap
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

    /// Writes `key`'s entry where the kernel's linear probing puts it in the fake
    /// kernel's table, with `allocs` nonpaged allocations.
    fn file_hashed(t: &mut crate::target::flat::FlatTarget, key: u32, allocs: u32) {
        for i in 0..TRACK_ENTRIES {
            let slot = (tracker::hash(key, TRACK_ENTRIES) + i) % TRACK_ENTRIES;
            let at = VirtAddr(TRACK_TABLE + slot * tracker::SIZE);
            let k = read_u32(t, at).unwrap();
            if k == 0 || k == key {
                t.write_memory(at, &key.to_le_bytes()).unwrap();
                let counts = VirtAddr(at.get() + tracker::NON_PAGED_ALLOCS);
                t.write_memory(counts, &allocs.to_le_bytes()).unwrap();
                return;
            }
        }
    }

    /// Every tag's counters, read whole.
    fn whole(t: &mut crate::target::flat::FlatTarget, tags: &[PoolTag]) -> Vec<TagUsage> {
        let snap = snapshot(t).unwrap();
        tags.iter().map(|g| snap.usage(*g)).collect()
    }

    #[test]
    fn a_probe_reads_the_same_counters_as_a_whole_snapshot() {
        let mut t = fake_kernel();
        let table = vec![0u8; (TRACK_ENTRIES * tracker::SIZE) as usize];
        t.write_memory(VirtAddr(TRACK_TABLE), &table).unwrap();
        let keys = [*b"Leak", *b"Lea1", *b"EtwB", *b"Proc", *b"File"].map(u32::from_le_bytes);
        for (i, k) in keys.iter().enumerate() {
            file_hashed(&mut t, *k, 10 + i as u32);
        }
        let tables = locate(&mut t).unwrap();
        // Found by probing for the split's tag: trusted without a whole read.
        let mut anchored = TagProbe::new(&mut t, tables, PoolTag::new(*b"Leak")).unwrap();
        assert!(anchored.is_hashed());
        assert!(anchored.contains(&mut t, PoolTag::new(*b"Lea1")).unwrap());
        assert!(!anchored.contains(&mut t, PoolTag::new(*b"Lea2")).unwrap());
        // A tag the table never held: the whole table is read and checked instead.
        let checked = TagProbe::new(&mut t, tables, PoolTag::new(*b"Zzzz")).unwrap();
        assert!(checked.is_hashed());
        let mut probe = TagProbe::from_whole(&mut t, tables).unwrap();
        let snap = probe.whole().unwrap().clone();
        assert!(probe.is_hashed());
        let tags5 = [*b"Leak", *b"Lea1", *b"Lea2", *b"Proc", *b"Zzzz"].map(PoolTag::new);
        assert_eq!(
            anchored.usage(&mut t, &tags5).unwrap(),
            probe.usage(&mut t, &tags5).unwrap()
        );
        // Each tag has two home slots (bare and protected; the kernel's hash mixes all
        // four bytes): one tag is probed; in this 64-entry table three cost more probing
        // than one whole read.
        let tags = [*b"Leak", *b"Lea1", *b"Lea2"].map(PoolTag::new);
        let one = [PoolTag::new(*b"Leak")];
        assert!(!probe.cheaper_whole(&one));
        assert!(probe.cheaper_whole(&tags));
        assert!(probe.cheaper_whole(&tags5));
        let want: Vec<TagUsage> = tags.iter().map(|g| snap.usage(*g)).collect();
        assert_eq!(probe.usage(&mut t, &tags).unwrap(), want);
        assert_eq!(want[2], TagUsage::default());
        let want5: Vec<TagUsage> = tags5.iter().map(|g| snap.usage(*g)).collect();
        assert_eq!(probe.usage(&mut t, &tags5).unwrap(), want5);
        // A tag filed after the probe was made (the split's new tags) is found too.
        file_hashed(&mut t, u32::from_le_bytes(*b"Lea2"), 7);
        let now = probe.usage(&mut t, &tags).unwrap();
        assert_eq!(now, whole(&mut t, &tags));
        assert_eq!(now[2].np_allocs, 7);
        assert!(probe.is_hashed());
        assert_eq!(probe.usage(&mut t, &one).unwrap(), whole(&mut t, &one));
        assert!(probe.is_hashed());
        // A known entry that moved: not the table checked; read whole from then on.
        let table = vec![0u8; (TRACK_ENTRIES * tracker::SIZE) as usize];
        t.write_memory(VirtAddr(TRACK_TABLE), &table).unwrap();
        let leak = u32::from_le_bytes(*b"Leak");
        let home = VirtAddr(TRACK_TABLE + tracker::hash(leak, TRACK_ENTRIES) * tracker::SIZE);
        t.write_memory(home, &0x1234_5678u32.to_le_bytes()).unwrap();
        for k in keys.iter().rev() {
            file_hashed(&mut t, *k, 3);
        }
        let after = probe.usage(&mut t, &one).unwrap();
        assert!(!probe.is_hashed());
        assert_eq!(after, whole(&mut t, &one));
    }

    #[test]
    fn a_table_that_breaks_the_hash_is_read_whole() {
        // The fake kernel files tags from slot 0 on, not by the kernel's hash.
        let mut t = fake_kernel();
        let tables = locate(&mut t).unwrap();
        let mut probe = TagProbe::from_whole(&mut t, tables).unwrap();
        assert!(!probe.is_hashed());
        // Probing for the split's tag from its hash does not find it there either.
        let mut anchored = TagProbe::new(&mut t, tables, PoolTag::new(*b"Leak")).unwrap();
        assert!(!anchored.is_hashed());
        assert!(anchored.contains(&mut t, PoolTag::new(*b"EtwB")).unwrap());
        assert!(!anchored.contains(&mut t, PoolTag::new(*b"Lea1")).unwrap());
        let tags = [*b"Leak", *b"EtwB", *b"Lea1"].map(PoolTag::new);
        t.run(crate::target::RunFor::Ticks(20)).unwrap();
        let got = probe.usage(&mut t, &tags).unwrap();
        assert_eq!(got, whole(&mut t, &tags));
        assert!(got[0].allocs() > 0);
    }

    #[test]
    fn the_hash_check_refuses_what_probing_would_miss() {
        let n = 16u64;
        let home = |k: u32| tracker::hash(k, n) as usize;
        // Two keys with the same home slot h: the second is filed at h + 1.
        let a = 1u32;
        let b = (2..).find(|&k| home(k) == home(a)).unwrap();
        let h = home(a);
        let mut keys = vec![0u32; n as usize];
        keys[h] = a;
        keys[(h + 1) % n as usize] = b;
        // Two more, each at its home (free).
        let mut k = b + 1;
        let mut more = 0;
        while more < 2 {
            if keys[home(k)] == 0 && home(k) != h {
                keys[home(k)] = k;
                more += 1;
            }
            k += 1;
        }
        assert_eq!(hashed_slots(&keys).map(|m| m.len()), Some(4));
        // With `a` gone, `b` sits behind a free slot: probing from h would miss it.
        keys[h] = 0;
        let k = (k..).find(|&k| keys[home(k)] == 0 && home(k) != h).unwrap();
        keys[home(k)] = k;
        assert!(hashed_slots(&keys).is_none());
        // Too few entries prove nothing; a duplicated key is refused.
        assert!(hashed_slots(&[0, 0, 0, 0]).is_none());
        assert!(hashed_slots(&[5u32; 8]).is_none());
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
