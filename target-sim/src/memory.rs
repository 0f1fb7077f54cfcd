//! Sparse simulated memory: 4 KiB pages over canonical x64 addresses with per-page
//! protections.
//!
//! Mapping a region costs no host memory: a page is materialised (zero-filled) only when it
//! is first written, and reads of mapped pages that were never written return zeros. Reads
//! and writes that run into an unmapped page stop there and report how many bytes were
//! done and the first bad address, like a real target does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use memchr::memmem;

use crate::layout::PAGE_SIZE;
use crate::types::VirtAddr;

/// Page size as a `usize`, for buffer arithmetic.
const PAGE: usize = PAGE_SIZE as usize;
/// Mask of the offset within a page.
const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// Pages per chunk of the page slab (256 KiB of host memory, allocated zeroed).
const CHUNK_PAGES: usize = 64;

/// Page protection bits (read, write, execute).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prot(u8);

impl Prot {
    /// No access.
    pub const NONE: Prot = Prot(0);
    /// Readable.
    pub const R: Prot = Prot(1);
    /// Readable and writable.
    pub const RW: Prot = Prot(1 | 2);
    /// Readable and executable (code).
    pub const RX: Prot = Prot(1 | 4);
    /// Readable, writable and executable.
    pub const RWX: Prot = Prot(1 | 2 | 4);

    /// Whether the pages can be read.
    pub const fn readable(self) -> bool {
        self.0 & 1 != 0
    }

    /// Whether the pages can be written by the simulated CPU.
    pub const fn writable(self) -> bool {
        self.0 & 2 != 0
    }

    /// Whether the pages hold executable code.
    pub const fn executable(self) -> bool {
        self.0 & 4 != 0
    }
}

impl fmt::Display for Prot {
    /// `r-x` style.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.readable() { 'r' } else { '-' };
        let w = if self.writable() { 'w' } else { '-' };
        let x = if self.executable() { 'x' } else { '-' };
        write!(f, "{r}{w}{x}")
    }
}

/// Why a memory operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemErrorKind {
    /// The address is not mapped (or not canonical).
    Unmapped,
    /// The page is mapped but the access is not allowed by its protection.
    Protection,
    /// A mapping request overlaps an existing mapping.
    Overlap,
    /// A mapping request is not page-aligned, empty, or wraps the address space.
    BadRange,
}

/// A failed memory access: the first bad address and how many bytes succeeded before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("memory access error at {addr} after {done} bytes ({kind:?})")]
pub struct MemError {
    /// The first address that could not be accessed.
    pub addr: VirtAddr,
    /// How many leading bytes were read or written before the failure.
    pub done: usize,
    /// What went wrong.
    pub kind: MemErrorKind,
}

/// A mapped range of pages sharing one protection; `end` is exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address (page-aligned).
    pub start: VirtAddr,
    /// End address, exclusive (page-aligned).
    pub end: VirtAddr,
    /// Protection of every page in the range.
    pub prot: Prot,
}

impl Region {
    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start.0 && addr < self.end.0
    }
}

/// The simulated address space.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    /// Mapped regions keyed by start address; never overlapping.
    regions: BTreeMap<u64, Region>,
    /// The bytes of the materialised pages.
    slab: Slab,
    /// Page address -> slab index of each materialised page (a hash map: every access
    /// looks one up).
    pages: HashMap<u64, usize, FastHash>,
    /// The same, in address order: search and digest walk it and reach the pages' bytes
    /// with no hash probe per page.
    page_order: BTreeMap<u64, usize>,
}

/// The materialised pages' bytes, in chunks of [`CHUNK_PAGES`] pages: page `i` is page
/// `i % CHUNK_PAGES` of chunk `i / CHUNK_PAGES`, so pages materialised one after another
/// lie side by side in host memory. Pages are only ever added (regions are never
/// unmapped).
#[derive(Clone, Debug, Default)]
struct Slab {
    /// Zero-filled when allocated (by `calloc`: the host touches a page when it is
    /// written).
    chunks: Vec<Box<[u8]>>,
    /// Pages handed out.
    len: usize,
}

impl Slab {
    /// A new zero-filled page; returns its index.
    fn push(&mut self) -> usize {
        let i = self.len;
        if i.is_multiple_of(CHUNK_PAGES) {
            self.chunks
                .push(vec![0u8; CHUNK_PAGES * PAGE].into_boxed_slice());
        }
        self.len += 1;
        i
    }

    /// The bytes of the `n` pages from index `first`, when they lie in one chunk.
    fn pages(&self, first: usize, n: usize) -> Option<&[u8]> {
        let off = first % CHUNK_PAGES * PAGE;
        self.chunks
            .get(first / CHUNK_PAGES)?
            .get(off..off.checked_add(n.checked_mul(PAGE)?)?)
    }

    /// The bytes of page `i`.
    fn page(&self, i: usize) -> Option<&[u8]> {
        self.pages(i, 1)
    }

    /// The bytes of page `i`, writable.
    fn page_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let off = i % CHUNK_PAGES * PAGE;
        self.chunks
            .get_mut(i / CHUNK_PAGES)?
            .get_mut(off..off + PAGE)
    }

    /// Whether pages `i` and `i + 1` lie side by side (in one chunk).
    fn adjacent(i: usize) -> bool {
        !(i + 1).is_multiple_of(CHUNK_PAGES)
    }
}

impl Memory {
    /// An empty address space.
    pub fn new() -> Memory {
        Memory::default()
    }

    /// Maps `len` bytes at `start` (both page-aligned) with protection `prot`.
    ///
    /// Costs no host memory until the pages are written.
    pub fn map(&mut self, start: VirtAddr, len: u64, prot: Prot) -> Result<(), MemError> {
        let bad = |kind| MemError {
            addr: start,
            done: 0,
            kind,
        };
        if start.0 & PAGE_MASK != 0 || len == 0 || len & PAGE_MASK != 0 {
            return Err(bad(MemErrorKind::BadRange));
        }
        let end = start
            .0
            .checked_add(len)
            .ok_or(bad(MemErrorKind::BadRange))?;
        let last = VirtAddr(end - 1);
        if !start.is_canonical() || !last.is_canonical() {
            return Err(bad(MemErrorKind::BadRange));
        }
        if let Some((_, r)) = self.regions.range(..end).next_back()
            && r.end.0 > start.0
        {
            return Err(bad(MemErrorKind::Overlap));
        }
        self.regions.insert(
            start.0,
            Region {
                start,
                end: VirtAddr(end),
                prot,
            },
        );
        Ok(())
    }

    /// The mapped regions in address order (adjacent regions are not merged).
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        self.regions.values().copied()
    }

    /// The region containing `addr`, if mapped.
    pub fn region_of(&self, addr: VirtAddr) -> Option<Region> {
        find_region(&self.regions, addr.0)
    }

    /// How many pages hold host memory (were written at least once).
    pub fn materialized_pages(&self) -> usize {
        self.pages.len()
    }

    /// Reads `buf.len()` bytes at `addr`. Needs readable pages; never-written pages read
    /// as zeros. On failure the leading `done` bytes of `buf` are filled.
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> Result<(), MemError> {
        walk(
            &self.regions,
            addr,
            buf.len(),
            Prot::readable,
            |page, off, done, n| {
                let dst = buf.get_mut(done..done + n).ok_or(MemErrorKind::BadRange)?;
                match self.written(page + off as u64, n) {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0),
                }
                Ok(())
            },
        )
    }

    /// A debugger write: needs mapped pages but ignores the write bit (a kernel debugger
    /// can patch code). On failure the leading `done` bytes were written.
    pub fn write(&mut self, addr: VirtAddr, data: &[u8]) -> Result<(), MemError> {
        self.write_inner(addr, data, |_| true)
    }

    /// A write by the simulated CPU: fails on pages without the write bit.
    pub fn write_checked(&mut self, addr: VirtAddr, data: &[u8]) -> Result<(), MemError> {
        self.write_inner(addr, data, Prot::writable)
    }

    fn write_inner(
        &mut self,
        addr: VirtAddr,
        data: &[u8],
        allowed: fn(Prot) -> bool,
    ) -> Result<(), MemError> {
        let slab = &mut self.slab;
        let pages = &mut self.pages;
        let order = &mut self.page_order;
        walk(
            &self.regions,
            addr,
            data.len(),
            allowed,
            |page, off, done, n| {
                let src = data.get(done..done + n).ok_or(MemErrorKind::BadRange)?;
                let i = *pages.entry(page).or_insert_with(|| {
                    let i = slab.push();
                    order.insert(page, i);
                    i
                });
                let dst = slab
                    .page_mut(i)
                    .and_then(|p| p.get_mut(off..off + n))
                    .ok_or(MemErrorKind::BadRange)?;
                dst.copy_from_slice(src);
                Ok(())
            },
        )
    }

    /// The `len` bytes at `addr` in place, when they lie in one page that was already
    /// written (materialised); `None` otherwise. No protection check: for the pool's own
    /// tables and blocks, in regions it mapped read-write itself (regions are never
    /// unmapped nor re-protected, so a written page stays mapped as it was).
    #[inline]
    pub(crate) fn written(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let page = addr & !PAGE_MASK;
        let off = (addr - page) as usize;
        self.slab
            .page(*self.pages.get(&page)?)?
            .get(off..off.checked_add(len)?)
    }

    /// [`written`](Self::written), writable.
    #[inline]
    pub(crate) fn written_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let page = addr & !PAGE_MASK;
        let off = (addr - page) as usize;
        self.slab
            .page_mut(*self.pages.get(&page)?)?
            .get_mut(off..off.checked_add(len)?)
    }

    /// Reads a little-endian `u32`.
    pub fn read_u32(&self, addr: VirtAddr) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    pub fn read_u64(&self, addr: VirtAddr) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u32` (debugger write).
    pub fn write_u32(&mut self, addr: VirtAddr, v: u32) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a little-endian `u64` (debugger write).
    pub fn write_u64(&mut self, addr: VirtAddr, v: u64) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Finds up to `max_hits` occurrences of `pattern` fully inside `[start, end)`,
    /// overlapping ones included, skipping unmapped and unreadable holes. Matches may
    /// straddle page and region boundaries as long as the memory is contiguous.
    pub fn search(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Vec<VirtAddr> {
        let mut s = Searcher {
            finder: memmem::Finder::new(pattern),
            keep: pattern.len().saturating_sub(1),
            all_zero: pattern.iter().all(|&b| b == 0),
            carry: Vec::new(),
            hits: Vec::new(),
            max_hits,
            first: pattern.first().copied().unwrap_or(0),
        };
        if pattern.is_empty() || max_hits == 0 || end <= start {
            return s.hits;
        }
        let mut contiguous_to = None;
        let first = self
            .regions
            .range(..=start.0)
            .next_back()
            .map_or(start.0, |(k, _)| *k);
        for region in self.regions.range(first..end.0).map(|(_, r)| *r) {
            if !region.prot.readable() || region.end.0 <= start.0 {
                contiguous_to = None;
                continue;
            }
            let lo = region.start.0.max(start.0);
            let hi = region.end.0.min(end.0);
            if contiguous_to != Some(lo) {
                s.carry.clear();
            }
            // The materialised pages of the range in address order (one walk of the
            // ordered index), in runs of pages that are contiguous both in the address
            // space and in the slab, each searched as one slice; the gaps between them
            // read as zeros.
            let mut pos = lo;
            let mut walk = self.page_order.range(lo & !PAGE_MASK..hi).peekable();
            while let Some((&page, &first)) = walk.next() {
                let mut n = 1usize;
                while let Some(&(&p, &i)) = walk.peek()
                    && p - page == n as u64 * PAGE_SIZE
                    && i == first + n
                    && Slab::adjacent(i - 1)
                {
                    n += 1;
                    walk.next();
                }
                if page > pos {
                    s.zeros(pos, page - pos);
                    pos = page;
                }
                let run_end = (page + n as u64 * PAGE_SIZE).min(hi);
                let bytes = self
                    .slab
                    .pages(first, n)
                    .and_then(|p| p.get((pos - page) as usize..(run_end - page) as usize))
                    .unwrap_or_default();
                s.scan(pos, bytes);
                pos = run_end;
                if s.hits.len() >= max_hits {
                    s.hits.truncate(max_hits);
                    return s.hits;
                }
            }
            if pos < hi {
                s.zeros(pos, hi - pos);
            }
            if s.hits.len() >= max_hits {
                s.hits.truncate(max_hits);
                return s.hits;
            }
            contiguous_to = Some(hi);
        }
        s.hits
    }

    /// A digest of every mapped region and every materialised byte, for determinism
    /// checks (FNV-1a 64 over regions and non-zero pages in address order).
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for r in self.regions.values() {
            eat(&r.start.0.to_le_bytes());
            eat(&r.end.0.to_le_bytes());
            eat(&[r.prot.0]);
        }
        for (addr, p) in self
            .page_order
            .iter()
            .filter_map(|(a, &i)| Some((a, self.slab.page(i)?)))
        {
            if p.iter().any(|&b| b != 0) {
                eat(&addr.to_le_bytes());
                eat(p);
            }
        }
        h
    }
}

/// A hasher for the simulator's integer keys (page addresses, block addresses, tags): one
/// folded multiply, so every input bit reaches the bits a hash table indexes by (page
/// addresses have their low 12 bits zero). The keys come from the simulation, and no
/// table's iteration order is ever observed (ordered views are kept or sorted apart).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        let m = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (m >> 64) as u64 ^ m as u64;
    }
}

/// A `HashMap` hasher built on [`FoldHasher`].
pub(crate) type FastHash = BuildHasherDefault<FoldHasher>;

/// The region of `regions` containing `addr`.
fn find_region(regions: &BTreeMap<u64, Region>, addr: u64) -> Option<Region> {
    regions
        .range(..=addr)
        .next_back()
        .map(|(_, r)| *r)
        .filter(|r| r.contains(addr))
}

/// Walks `len` bytes from `addr` page by page, calling `f(page, offset in page, bytes
/// done, chunk length)` for each chunk in a mapped region whose protection passes
/// `allowed`; stops at the first address that is unmapped or not allowed.
fn walk(
    regions: &BTreeMap<u64, Region>,
    addr: VirtAddr,
    len: usize,
    allowed: fn(Prot) -> bool,
    mut f: impl FnMut(u64, usize, usize, usize) -> Result<(), MemErrorKind>,
) -> Result<(), MemError> {
    let mut done = 0usize;
    while done < len {
        let cur = addr.0.wrapping_add(done as u64);
        let fail = |kind| MemError {
            addr: VirtAddr(cur),
            done,
            kind,
        };
        if done > 0 && cur < addr.0 {
            return Err(fail(MemErrorKind::Unmapped));
        }
        let region = find_region(regions, cur).ok_or(fail(MemErrorKind::Unmapped))?;
        if !allowed(region.prot) {
            return Err(fail(MemErrorKind::Protection));
        }
        let page = cur & !PAGE_MASK;
        let off = (cur - page) as usize;
        let n = (PAGE - off).min(len - done);
        f(page, off, done, n).map_err(fail)?;
        done += n;
    }
    Ok(())
}

/// State of one search: the bytes just before the current position that a match may
/// still start in, and the hits so far.
struct Searcher<'p> {
    finder: memmem::Finder<'p>,
    keep: usize,
    all_zero: bool,
    carry: Vec<u8>,
    hits: Vec<VirtAddr>,
    max_hits: usize,
    /// The pattern's first byte.
    first: u8,
}

impl Searcher<'_> {
    /// Scans `bytes`, which start at `pos` and follow the carried bytes directly. The
    /// page is searched where it lies (no copy); only the few bytes around its start, where
    /// a match may begin in the carry, are searched in a small joint buffer.
    fn scan(&mut self, pos: u64, bytes: &[u8]) {
        let carried = self.carry.len();
        // A match can start in the carry only where the pattern's first byte is.
        let joined = carried > 0 && memchr::memchr(self.first, &self.carry).is_some();
        if joined {
            let head = bytes.get(..self.keep.min(bytes.len())).unwrap_or_default();
            self.carry.extend_from_slice(head);
            let base = pos - carried as u64;
            let mut from = 0usize;
            while self.hits.len() < self.max_hits {
                match self.carry.get(from..).and_then(|r| self.finder.find(r)) {
                    // Only matches that start in the carry: the rest are found below.
                    Some(i) if from + i < carried => {
                        self.hits.push(VirtAddr(base + (from + i) as u64));
                        from += i + 1;
                    }
                    _ => break,
                }
            }
        }
        // Overlapping matches count (`find_iter` would skip them): search again one byte
        // after each.
        let mut from = 0usize;
        while self.hits.len() < self.max_hits {
            let Some(i) = bytes.get(from..).and_then(|r| self.finder.find(r)) else {
                break;
            };
            self.hits.push(VirtAddr(pos + (from + i) as u64));
            from += i + 1;
        }
        // The new carry: the last `keep` bytes of everything so far.
        if bytes.len() >= self.keep {
            self.carry.clear();
            self.carry
                .extend_from_slice(bytes.get(bytes.len() - self.keep..).unwrap_or_default());
        } else {
            // The old carry and all of `bytes` (added above if the carry was searched).
            if !joined {
                self.carry.extend_from_slice(bytes);
            }
            let drop = self.carry.len().saturating_sub(self.keep);
            self.carry.drain(..drop);
        }
    }

    /// Scans `n` zero bytes (never-written pages) starting at `pos`, in O(pattern) time.
    fn zeros(&mut self, pos: u64, n: u64) {
        let keep = self.keep as u64;
        if self.all_zero {
            let tz = self.carry.iter().rev().take_while(|&&b| b == 0).count() as u64;
            let len = keep + 1;
            let mut p = pos - tz;
            while p + len <= pos + n && self.hits.len() < self.max_hits {
                self.hits.push(VirtAddr(p));
                p += 1;
            }
            let z = (tz + n).min(keep) as usize;
            self.carry.clear();
            self.carry.resize(z, 0);
        } else {
            let z = n.min(keep) as usize;
            self.scan(pos, &vec![0u8; z]);
            if n > keep {
                self.carry.clear();
                self.carry.resize(self.keep, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xfffff880_00000000;

    fn mem() -> Memory {
        let mut m = Memory::new();
        m.map(VirtAddr(BASE), 3 * PAGE_SIZE, Prot::RW).unwrap();
        m.map(VirtAddr(BASE + 4 * PAGE_SIZE), PAGE_SIZE, Prot::RX)
            .unwrap();
        m
    }

    #[test]
    fn partial_read_reports_first_bad_address_and_bytes_done() {
        let m = mem();
        let mut buf = [0xffu8; 32];
        let e = m
            .read(VirtAddr(BASE + 3 * PAGE_SIZE - 8), &mut buf)
            .unwrap_err();
        assert_eq!(e.addr, VirtAddr(BASE + 3 * PAGE_SIZE));
        assert_eq!(e.done, 8);
        assert_eq!(e.kind, MemErrorKind::Unmapped);
        assert_eq!(&buf[..8], &[0u8; 8]);
    }

    #[test]
    fn partial_write_reports_bytes_done() {
        let mut m = mem();
        let e = m
            .write(VirtAddr(BASE + 3 * PAGE_SIZE - 3), b"abcdef")
            .unwrap_err();
        assert_eq!((e.addr, e.done), (VirtAddr(BASE + 3 * PAGE_SIZE), 3));
        let mut b = [0u8; 3];
        m.read(VirtAddr(BASE + 3 * PAGE_SIZE - 3), &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn debugger_write_ignores_w_bit_checked_write_does_not() {
        let mut m = mem();
        let code = VirtAddr(BASE + 4 * PAGE_SIZE);
        m.write(code, &[0xcc]).unwrap();
        let e = m.write_checked(code, &[0x90]).unwrap_err();
        assert_eq!(e.kind, MemErrorKind::Protection);
        assert_eq!(m.read_u32(code).unwrap(), 0xcc);
    }

    #[test]
    fn overlapping_maps_and_bad_ranges_are_refused() {
        let mut m = mem();
        let e = m
            .map(VirtAddr(BASE + PAGE_SIZE), PAGE_SIZE, Prot::R)
            .unwrap_err();
        assert_eq!(e.kind, MemErrorKind::Overlap);
        let e = m.map(VirtAddr(0x0000_8000_0000_0000), PAGE_SIZE, Prot::R);
        assert_eq!(e.unwrap_err().kind, MemErrorKind::BadRange);
        let e = m.map(VirtAddr(BASE + 5 * PAGE_SIZE + 1), PAGE_SIZE, Prot::R);
        assert_eq!(e.unwrap_err().kind, MemErrorKind::BadRange);
    }

    #[test]
    fn untouched_pages_cost_nothing() {
        let mut m = Memory::new();
        m.map(VirtAddr(BASE), 1 << 36, Prot::RW).unwrap();
        assert_eq!(m.materialized_pages(), 0);
        let mut buf = [1u8; 64];
        m.read(VirtAddr(BASE + (1 << 35)), &mut buf).unwrap();
        assert_eq!(buf, [0u8; 64]);
        assert_eq!(m.materialized_pages(), 0);
        m.write(VirtAddr(BASE + PAGE_SIZE - 2), &[1, 2, 3, 4])
            .unwrap();
        assert_eq!(m.materialized_pages(), 2);
    }

    #[test]
    fn search_finds_straddling_and_overlapping_matches_and_skips_holes() {
        let mut m = mem();
        // straddles the page boundary between page 0 and 1
        m.write(VirtAddr(BASE + PAGE_SIZE - 2), b"Leak").unwrap();
        // overlapping "aaa" in "aaaa" at two positions
        m.write(VirtAddr(BASE + 2 * PAGE_SIZE + 10), b"aaaa")
            .unwrap();
        // in the second region, after a hole
        m.write(VirtAddr(BASE + 4 * PAGE_SIZE + 100), b"Leak")
            .unwrap();
        let all = m.search(VirtAddr(BASE), VirtAddr(BASE + 5 * PAGE_SIZE), b"Leak", 10);
        assert_eq!(
            all,
            vec![
                VirtAddr(BASE + PAGE_SIZE - 2),
                VirtAddr(BASE + 4 * PAGE_SIZE + 100)
            ]
        );
        let aaa = m.search(VirtAddr(BASE), VirtAddr(BASE + 5 * PAGE_SIZE), b"aaa", 10);
        assert_eq!(
            aaa,
            vec![
                VirtAddr(BASE + 2 * PAGE_SIZE + 10),
                VirtAddr(BASE + 2 * PAGE_SIZE + 11)
            ]
        );
        // only matches fully inside the range count
        let cut = m.search(VirtAddr(BASE), VirtAddr(BASE + PAGE_SIZE + 1), b"Leak", 10);
        assert!(cut.is_empty());
        let one = m.search(VirtAddr(BASE), VirtAddr(BASE + 5 * PAGE_SIZE), b"Leak", 1);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn search_for_zeros_sees_untouched_pages() {
        let mut m = mem();
        m.write(VirtAddr(BASE), &[1, 1, 0, 0, 0, 1]).unwrap();
        let hits = m.search(VirtAddr(BASE), VirtAddr(BASE + 8), &[0, 0], 10);
        assert_eq!(
            hits,
            vec![VirtAddr(BASE + 2), VirtAddr(BASE + 3), VirtAddr(BASE + 6)]
        );
        let far = m.search(
            VirtAddr(BASE + PAGE_SIZE - 1),
            VirtAddr(BASE + PAGE_SIZE + 3),
            &[0, 0, 0],
            10,
        );
        assert_eq!(
            far,
            vec![VirtAddr(BASE + PAGE_SIZE - 1), VirtAddr(BASE + PAGE_SIZE)]
        );
    }

    #[test]
    fn search_across_adjacent_regions() {
        let mut m = Memory::new();
        m.map(VirtAddr(BASE), PAGE_SIZE, Prot::RX).unwrap();
        m.map(VirtAddr(BASE + PAGE_SIZE), PAGE_SIZE, Prot::R)
            .unwrap();
        m.write(VirtAddr(BASE + PAGE_SIZE - 1), b"MZ").unwrap();
        let h = m.search(VirtAddr(BASE), VirtAddr(BASE + 2 * PAGE_SIZE), b"MZ", 4);
        assert_eq!(h, vec![VirtAddr(BASE + PAGE_SIZE - 1)]);
    }

    /// Every occurrence of `pattern` (overlapping ones included) in `[start, end)`, read
    /// out flat: the reference for `search` over fully mapped, readable ranges.
    fn flat_search(m: &Memory, start: u64, end: u64, pattern: &[u8]) -> Vec<VirtAddr> {
        let mut buf = vec![0u8; (end - start) as usize];
        m.read(VirtAddr(start), &mut buf).unwrap();
        buf.windows(pattern.len())
            .enumerate()
            .filter(|(_, w)| *w == pattern)
            .map(|(i, _)| VirtAddr(start + i as u64))
            .collect()
    }

    /// Three slab chunks' worth of pages, materialised so that the slab has a run across
    /// a chunk boundary (pages 0 to 69 in order), pages adjacent in memory but not in the
    /// slab (80 to 99, materialised backwards) and holes (70 to 79, 100 on).
    fn slab_memory() -> (Memory, u64) {
        let pages = 3 * CHUNK_PAGES as u64;
        let mut m = Memory::new();
        m.map(VirtAddr(BASE), pages * PAGE_SIZE, Prot::RW).unwrap();
        for p in (0..70).chain((80..100).rev()) {
            m.write(VirtAddr(BASE + p * PAGE_SIZE + 7), &[p as u8 | 0x80])
                .unwrap();
        }
        (m, BASE + pages * PAGE_SIZE)
    }

    #[test]
    fn search_straddles_slab_runs_chunks_and_holes() {
        let (mut m, end) = slab_memory();
        let at = |page: u64, back: u64| BASE + page * PAGE_SIZE - back;
        // Across pages inside a run (62 and 63), across the chunk boundary that ends a run
        // (pages 63 and 64 are slab pages 63 and 64, in two chunks), across pages
        // materialised backwards (one run each), at the start and the end of a run.
        for (page, back) in [(2, 1), (63, 1), (64, 3), (85, 2), (99, 3), (80, 0), (70, 4)] {
            m.write(VirtAddr(at(page, back)), b"Leak").unwrap();
        }
        let want = [(2, 1), (63, 1), (64, 3), (70, 4), (80, 0), (85, 2), (99, 3)]
            .map(|(p, b)| VirtAddr(at(p, b)));
        assert_eq!(m.search(VirtAddr(BASE), VirtAddr(end), b"Leak", 100), want);
        assert_eq!(flat_search(&m, BASE, end, b"Leak"), want);
        // The searches stop at the range's ends and at `max_hits`, mid-run.
        assert_eq!(
            m.search(VirtAddr(at(64, 3)), VirtAddr(at(64, 3) + 4), b"Leak", 9),
            [VirtAddr(at(64, 3))]
        );
        assert!(
            m.search(VirtAddr(at(64, 3)), VirtAddr(at(64, 3) + 3), b"Leak", 9)
                .is_empty()
        );
        assert_eq!(
            m.search(VirtAddr(BASE), VirtAddr(end), b"Leak", 3),
            want.get(..3).unwrap()
        );
        // A pattern that runs from a run's last page into a hole (zeros).
        m.write(VirtAddr(at(70, 1)), b"k").unwrap();
        let kz = [b'k', 0, 0];
        assert_eq!(
            m.search(VirtAddr(BASE), VirtAddr(end), &kz, 100),
            flat_search(&m, BASE, end, &kz)
        );
    }

    /// The wire fuzzer's `SearchMemory` of a whole address space (length up to
    /// `u64::MAX`): the search steps over never-written memory and unmapped holes a region
    /// or a gap between written pages at a time, so it covers both canonical halves
    /// (2^48 bytes, 2^36 pages) at once, with the right answers. A walk page by page or
    /// byte by byte would not finish; the test harness would hang.
    #[test]
    fn search_of_the_whole_address_space_steps_over_untouched_memory() {
        let mut m = Memory::new();
        let user = (PAGE_SIZE, 0x0000_7fff_ffff_f000 - PAGE_SIZE);
        let kernel = (0xffff_8000_0000_0000, 0x0000_7fff_ffff_f000);
        m.map(VirtAddr(user.0), user.1, Prot::RW).unwrap();
        m.map(VirtAddr(kernel.0), kernel.1, Prot::RW).unwrap();
        let top = kernel.0 + kernel.1 - PAGE_SIZE + 100;
        let low = user.0 + 5 * PAGE_SIZE;
        m.write(VirtAddr(top), b"Zq9X").unwrap();
        m.write(VirtAddr(low), &[0xff; 8]).unwrap();
        let all = VirtAddr(u64::MAX);
        assert_eq!(m.search(VirtAddr(0), all, b"Zq9X", 1), vec![VirtAddr(top)]);
        assert_eq!(
            m.search(VirtAddr(kernel.0), all, b"Zq9X", 1),
            vec![VirtAddr(top)]
        );
        assert!(m.search(VirtAddr(0), all, b"nowhere", 1).is_empty());
        assert!(m.search(VirtAddr(top + 1), all, b"Zq9X", 1).is_empty());
        assert_eq!(
            m.search(VirtAddr(0), all, &[0xff; 8], 1),
            vec![VirtAddr(low)]
        );
        // Zeros are everywhere untouched memory is: the first hit is the first mapped byte,
        // and the first one past the written bytes is right after them.
        assert_eq!(
            m.search(VirtAddr(0), all, &[0; 16], 1),
            vec![VirtAddr(user.0)]
        );
        assert_eq!(
            m.search(VirtAddr(low), all, &[0; 16], 1),
            vec![VirtAddr(low + 8)]
        );
        // A range that spans most of the address space and ends inside a region.
        let end = VirtAddr(top + 4);
        assert_eq!(m.search(VirtAddr(1), end, b"Zq9X", 1), vec![VirtAddr(top)]);
        assert!(
            m.search(VirtAddr(1), VirtAddr(top + 3), b"Zq9X", 1)
                .is_empty()
        );
    }

    #[test]
    fn search_agrees_with_a_flat_copy_across_the_slab() {
        let (mut m, end) = slab_memory();
        // Pseudo-random bytes from a small alphabet, so patterns recur and straddle.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = [1, 2, 62, 63, 64, 65, 69, 80, 81, 98, 99, 150][(x % 12) as usize];
            let off = (x >> 8) % (PAGE_SIZE + 8);
            let addr = (BASE + page * PAGE_SIZE + off).saturating_sub(4);
            m.write(VirtAddr(addr), &[(x >> 20) as u8 % 3; 3]).unwrap();
        }
        let mut found = 0;
        for pattern in [&[0u8, 1][..], &[1, 1, 2], &[0; 5], &[2], &[0x82, 0]] {
            let want = flat_search(&m, BASE, end, pattern);
            found += want.len();
            assert_eq!(
                m.search(VirtAddr(BASE), VirtAddr(end), pattern, usize::MAX),
                want,
                "{pattern:?}"
            );
            let lo = BASE + 62 * PAGE_SIZE + 5;
            let hi = BASE + 99 * PAGE_SIZE + 3;
            assert_eq!(
                m.search(VirtAddr(lo), VirtAddr(hi), pattern, usize::MAX),
                flat_search(&m, lo, hi, pattern),
                "{pattern:?}"
            );
        }
        assert!(found > 1000, "{found}");
    }

    /// The digest as documented: FNV-1a 64 over each region's start, end and protection,
    /// then the address and bytes of each non-zero page, in address order.
    fn reference_digest(m: &Memory) -> u64 {
        let mut bytes = Vec::new();
        for r in m.regions() {
            bytes.extend_from_slice(&r.start.0.to_le_bytes());
            bytes.extend_from_slice(&r.end.0.to_le_bytes());
            bytes.push(r.prot.0);
            let mut page = vec![0u8; PAGE];
            for a in (r.start.0..r.end.0).step_by(PAGE) {
                m.read(VirtAddr(a), &mut page).unwrap();
                if page.iter().any(|&b| b != 0) {
                    bytes.extend_from_slice(&a.to_le_bytes());
                    bytes.extend_from_slice(&page);
                }
            }
        }
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    #[test]
    fn digest_follows_addresses_not_materialisation_order() {
        let (m, _) = slab_memory();
        assert_eq!(m.digest(), reference_digest(&m));
        // The same contents written in another order: another slab, the same digest.
        let mut other = Memory::new();
        other
            .map(VirtAddr(BASE), 3 * CHUNK_PAGES as u64 * PAGE_SIZE, Prot::RW)
            .unwrap();
        for p in (0..100).rev().filter(|p| !(70..80).contains(p)) {
            other
                .write(VirtAddr(BASE + p * PAGE_SIZE + 7), &[p as u8 | 0x80])
                .unwrap();
        }
        // A page written with zeros only is materialised but not digested.
        other
            .write(VirtAddr(BASE + 150 * PAGE_SIZE), &[0; 9])
            .unwrap();
        assert_eq!(other.materialized_pages(), m.materialized_pages() + 1);
        assert_eq!(other.digest(), m.digest());
        // The value the page map gave before the slab (pinned).
        assert_eq!(m.digest(), DIGEST_BEFORE_SLAB);
    }

    /// `slab_memory().0.digest()` as computed by the hash-map-of-pages memory.
    const DIGEST_BEFORE_SLAB: u64 = 0x5f4c_eafe_1d50_19b1;
}

#[cfg(test)]
mod model {
    //! Memory against a byte-per-address model: reads, writes and searches agree.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const BASE: u64 = 0xffff_f880_0000_0000;
    /// Mapped pages of the model window: 0, 1, 2 and 4 (page 3 is a hole).
    const MAPPED: [u64; 4] = [0, 1, 2, 4];

    fn mapped(addr: u64) -> bool {
        addr >= BASE && MAPPED.contains(&((addr - BASE) / PAGE_SIZE))
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, Vec<u8>),
        Read(u64, usize),
        Search(u64, u64, Vec<u8>),
    }

    fn addr() -> impl Strategy<Value = u64> {
        (0u64..5 * PAGE_SIZE).prop_map(|o| BASE + o)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (addr(), proptest::collection::vec(0u8..4, 1..40)).prop_map(|(a, d)| Op::Write(a, d)),
            (addr(), 0usize..300).prop_map(|(a, n)| Op::Read(a, n)),
            (addr(), 0u64..6000, proptest::collection::vec(0u8..4, 1..4))
                .prop_map(|(a, n, p)| Op::Search(a, n, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn memory_agrees_with_a_byte_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = Memory::new();
            m.map(VirtAddr(BASE), 3 * PAGE_SIZE, Prot::RW).unwrap();
            m.map(VirtAddr(BASE + 4 * PAGE_SIZE), PAGE_SIZE, Prot::RX).unwrap();
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            let byte = |model: &BTreeMap<u64, u8>, a: u64| model.get(&a).copied().unwrap_or(0);
            for op in ops {
                match op {
                    Op::Write(a, d) => {
                        let ok = (0..d.len() as u64).take_while(|i| mapped(a + i)).count();
                        let r = m.write(VirtAddr(a), &d);
                        for (i, b) in d.iter().enumerate().take(ok) {
                            model.insert(a + i as u64, *b);
                        }
                        if ok == d.len() {
                            prop_assert!(r.is_ok());
                        } else {
                            let e = r.unwrap_err();
                            prop_assert_eq!((e.addr.0, e.done), (a + ok as u64, ok));
                        }
                    }
                    Op::Read(a, n) => {
                        let mut buf = vec![0xeeu8; n];
                        let ok = (0..n as u64).take_while(|i| mapped(a + i)).count();
                        let r = m.read(VirtAddr(a), &mut buf);
                        for (i, b) in buf.iter().enumerate().take(ok) {
                            prop_assert_eq!(*b, byte(&model, a + i as u64));
                        }
                        prop_assert_eq!(r.is_ok(), ok == n);
                        if let Err(e) = r {
                            prop_assert_eq!((e.addr.0, e.done), (a + ok as u64, ok));
                        }
                    }
                    Op::Search(a, n, p) => {
                        let end = a + n;
                        let expect: Vec<VirtAddr> = (a..end)
                            .filter(|s| s + p.len() as u64 <= end)
                            .filter(|s| (0..p.len() as u64).all(|i| mapped(s + i)))
                            .filter(|s| p.iter().enumerate().all(|(i, b)| byte(&model, s + i as u64) == *b))
                            .map(VirtAddr)
                            .take(50)
                            .collect();
                        prop_assert_eq!(m.search(VirtAddr(a), VirtAddr(end), &p, 50), expect);
                    }
                }
            }
        }
    }
}
