//! A block read cache for targets whose reads are costly (one round trip each over a wire):
//! [`BlockCache`] for a backend to embed, [`CachedTarget`] to wrap any [`DebugTarget`].
//!
//! Small reads (structure fields, names, list links) fetch the [`CACHE_BLOCK`]-aligned
//! block around them once; later small reads in the same block cost nothing. Memory only
//! stays put while the target is stopped, so the cache is dropped on every write,
//! breakpoint change and run. Reads of a block or more go straight to the target.

use std::collections::BTreeMap;

use super::{
    CpuMode, DebugTarget, Interrupt, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError,
    WireStats, X64Registers, walk_module_list,
};
use crate::VirtAddr;

/// Block size of the read cache: small reads fetch the aligned block around them (a
/// block never straddles a page, so it is all readable or not from its start).
pub const CACHE_BLOCK: usize = 0x400;
/// Most blocks a cache holds before it starts over.
pub const CACHE_MAX_BLOCKS: usize = 4096;

/// Memory read while the target is stopped, by [`CACHE_BLOCK`]-aligned block (a short
/// block ends in unreadable memory). The owner calls [`clear`](Self::clear) whenever
/// memory may change.
#[derive(Clone, Debug, Default)]
pub struct BlockCache {
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl BlockCache {
    /// An empty cache.
    pub fn new() -> BlockCache {
        BlockCache::default()
    }

    /// Forgets everything (after a write, a breakpoint change or a run).
    pub fn clear(&mut self) {
        self.blocks.clear();
    }

    /// How many blocks are held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Reads into `buf` from `addr` like [`DebugTarget::read_memory`]: reads shorter than a
    /// block are served from cached blocks, fetching a missing block with `fetch`; longer
    /// reads go to `fetch` directly. Returns how many leading bytes were read.
    pub fn read(
        &mut self,
        addr: VirtAddr,
        buf: &mut [u8],
        mut fetch: impl FnMut(VirtAddr, &mut [u8]) -> Result<usize, TargetError>,
    ) -> Result<usize, TargetError> {
        if buf.len() >= CACHE_BLOCK {
            // Served from the cache only when every block is there whole (prefetched).
            if self.copy_whole(addr, buf) {
                return Ok(buf.len());
            }
            return fetch(addr, buf);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let Some(cur) = addr.get().checked_add(done as u64) else {
                break;
            };
            let base = cur & !(CACHE_BLOCK as u64 - 1);
            let off = usize::try_from(cur - base).unwrap_or(0);
            if !self.blocks.contains_key(&base) {
                // The read may straddle into the next block: when that one is missing too,
                // both come in one fetch (one round trip, not two).
                let last =
                    addr.get().saturating_add(buf.len() as u64 - 1) & !(CACHE_BLOCK as u64 - 1);
                let next = base.saturating_add(CACHE_BLOCK as u64);
                let blocks = if last == next && !self.blocks.contains_key(&next) {
                    2
                } else {
                    1
                };
                let mut raw = vec![0u8; CACHE_BLOCK * blocks];
                let got = fetch(VirtAddr(base), &mut raw)?;
                self.insert(base, &raw, got);
            }
            let block = self.blocks.get(&base).map_or(&[][..], Vec::as_slice);
            let src = block.get(off..).unwrap_or(&[]);
            let n = src.len().min(buf.len() - done);
            if let (Some(dst), Some(src)) = (buf.get_mut(done..done + n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
            if block.len() < CACHE_BLOCK {
                // The block ends in unreadable memory.
                break;
            }
        }
        Ok(done)
    }

    /// Keeps `raw` (read from the block-aligned `base`, `got` leading bytes of it
    /// readable) as blocks: a short read ends in unreadable memory, so the block it ends
    /// in is kept short and a block it did not reach is not kept.
    fn insert(&mut self, base: u64, raw: &[u8], got: usize) {
        let got = got.min(raw.len());
        if self.blocks.len() + raw.len().div_ceil(CACHE_BLOCK) > CACHE_MAX_BLOCKS {
            self.blocks.clear();
        }
        for (i, chunk) in raw.chunks(CACHE_BLOCK).enumerate() {
            let from = i * CACHE_BLOCK;
            if i > 0 && got <= from {
                break;
            }
            let keep = got.saturating_sub(from).min(CACHE_BLOCK);
            let block = chunk.get(..keep).unwrap_or_default().to_vec();
            self.blocks.insert(base + from as u64, block);
        }
    }

    /// Copies `[addr, addr + buf.len())` from blocks held whole; `false` (and `buf`
    /// unspecified) when one is missing or short.
    fn copy_whole(&self, addr: VirtAddr, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(cur) = addr.get().checked_add(done as u64) else {
                return false;
            };
            let base = cur & !(CACHE_BLOCK as u64 - 1);
            let Some(block) = self.blocks.get(&base).filter(|b| b.len() == CACHE_BLOCK) else {
                return false;
            };
            let off = usize::try_from(cur - base).unwrap_or(0);
            let n = (CACHE_BLOCK - off).min(buf.len() - done);
            match (buf.get_mut(done..done + n), block.get(off..off + n)) {
                (Some(dst), Some(src)) => dst.copy_from_slice(src),
                _ => return false,
            }
            done += n;
        }
        true
    }

    /// The blocks that `ranges` (address, length) need and the cache lacks, as reads of
    /// runs of adjacent missing blocks of at most `max_read` bytes (at least one block).
    pub fn missing(&self, ranges: &[(VirtAddr, usize)], max_read: usize) -> Vec<(VirtAddr, usize)> {
        let block = CACHE_BLOCK as u64;
        let mut want: Vec<u64> = Vec::new();
        for &(addr, len) in ranges {
            if len == 0 {
                continue;
            }
            let first = addr.get() & !(block - 1);
            let last = addr.get().saturating_add(len as u64 - 1) & !(block - 1);
            // Bounded: a range of more than the whole cache is not prefetched.
            let count = (last - first) / block + 1;
            if count > CACHE_MAX_BLOCKS as u64 {
                continue;
            }
            want.extend(
                (0..count)
                    .map(|i| first + i * block)
                    .filter(|b| !self.blocks.contains_key(b)),
            );
        }
        want.sort_unstable();
        want.dedup();
        let per_read = (max_read / CACHE_BLOCK).max(1) as u64;
        let mut runs: Vec<(VirtAddr, usize)> = Vec::new();
        let mut last: Option<(u64, u64)> = None; // (start, blocks)
        for b in want {
            match last.as_mut() {
                Some((start, n)) if *start + *n * block == b && *n < per_read => *n += 1,
                _ => {
                    if let Some((start, n)) = last.take() {
                        runs.push((VirtAddr(start), (n * block) as usize));
                    }
                    last = Some((b, 1));
                }
            }
        }
        if let Some((start, n)) = last {
            runs.push((VirtAddr(start), (n * block) as usize));
        }
        runs
    }

    /// Fetches the blocks that `ranges` need and the cache lacks (see
    /// [`missing`](Self::missing)) with one call of `fetch_each` (which reads each
    /// `(address, length)` into a buffer and says how many leading bytes of it it read,
    /// as [`read_fresh_each`](super::read_fresh_each) does), and keeps them.
    pub fn prefetch(
        &mut self,
        ranges: &[(VirtAddr, usize)],
        max_read: usize,
        fetch_each: impl FnOnce(&[(VirtAddr, usize)]) -> Result<Vec<(Vec<u8>, usize)>, TargetError>,
    ) -> Result<(), TargetError> {
        let runs = self.missing(ranges, max_read);
        if runs.is_empty() {
            return Ok(());
        }
        for (&(addr, _), (raw, n)) in runs.iter().zip(fetch_each(&runs)?) {
            self.insert(addr.get(), &raw, n);
        }
        Ok(())
    }
}

/// Any [`DebugTarget`] with a [`BlockCache`] in front of its reads. `T` may be a
/// [`BoxedTarget`](super::BoxedTarget) (`CachedTarget::new(open(spec)?)`) or a `&mut`
/// borrow.
///
/// Writes, runs and breakpoint changes drop the cache and go to the inner target, as do
/// searches, kernel info and stats. [`modules`](DebugTarget::modules) walks
/// `PsLoadedModuleList` through the cache when the kernel has one (the many small reads of
/// a walk are what the cache is for), and asks the inner target otherwise.
///
/// ```
/// use tagsplit::VirtAddr;
/// use tagsplit::target::flat::FlatTarget;
/// use tagsplit::target::{CachedTarget, DebugTarget};
///
/// let mut flat = FlatTarget::new();
/// flat.memory.map(VirtAddr(0x1000), vec![7; 0x1000]);
/// let mut t = CachedTarget::new(flat);
/// let mut b = [0u8; 4];
/// assert_eq!(t.read_memory(VirtAddr(0x1010), &mut b)?, 4);
/// assert_eq!(t.cache().len(), 1);
/// t.write_memory(VirtAddr(0x1010), &[1])?;
/// assert!(t.cache().is_empty());
/// # Ok::<(), tagsplit::target::TargetError>(())
/// ```
#[derive(Debug)]
pub struct CachedTarget<T> {
    inner: T,
    cache: BlockCache,
}

impl<T: DebugTarget> CachedTarget<T> {
    /// Wraps `inner` with an empty cache.
    pub fn new(inner: T) -> CachedTarget<T> {
        CachedTarget {
            inner,
            cache: BlockCache::new(),
        }
    }

    /// The inner target.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The inner target, writable; the cache is dropped since anything may change.
    pub fn inner_mut(&mut self) -> &mut T {
        self.cache.clear();
        &mut self.inner
    }

    /// The inner target, back.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// The cache (to see what it holds).
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Drops the cache: for when memory changed behind the target's back.
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }
}

impl<T: DebugTarget> DebugTarget for CachedTarget<T> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let inner = &mut self.inner;
        self.cache
            .read(addr, buf, |at, dst| inner.read_memory(at, dst))
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.cache.clear();
        self.inner.write_memory(addr, data)
    }

    fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.inner.read_fresh(addr, buf)
    }

    fn prefetch(&mut self, ranges: &[(VirtAddr, usize)]) -> Result<(), TargetError> {
        // Only a backend that pipelines gains from fetching ahead (into its own cache,
        // which this one's reads then hit).
        self.inner.prefetch(ranges)
    }

    fn read_fresh_many(
        &mut self,
        reads: &mut [(VirtAddr, &mut [u8])],
    ) -> Result<Vec<usize>, TargetError> {
        self.inner.read_fresh_many(reads)
    }

    fn crc32_many(
        &mut self,
        ranges: &[(VirtAddr, usize)],
    ) -> Result<Option<Vec<Option<u32>>>, TargetError> {
        self.inner.crc32_many(ranges)
    }

    fn write_many(&mut self, writes: &[(VirtAddr, &[u8])]) -> Result<Vec<usize>, TargetError> {
        self.cache.clear();
        self.inner.write_many(writes)
    }

    fn search_many(
        &mut self,
        ranges: &[(VirtAddr, VirtAddr, usize)],
        pattern: &[u8],
    ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
        self.inner.search_many(ranges, pattern)
    }

    fn max_read(&self) -> usize {
        self.inner.max_read()
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        self.inner.kernel_info()
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        match self.inner.kernel_info() {
            Ok(k) if k.ps_loaded_module_list != VirtAddr(0) => {
                walk_module_list(self, k.ps_loaded_module_list)
            }
            _ => self.inner.modules(),
        }
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        self.inner.search_memory(start, end, pattern, max_hits)
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        self.cache.clear();
        self.inner.run(how_long)
    }

    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        // A real target writes 0xCC there: forget what was read.
        self.cache.clear();
        self.inner.set_breakpoint(addr)
    }

    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.cache.clear();
        self.inner.clear_breakpoint(addr)
    }

    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.inner.set_interrupt(interrupt);
    }

    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        self.inner.registers()
    }

    fn cpu_mode(&mut self) -> Result<CpuMode, TargetError> {
        self.inner.cpu_mode()
    }

    fn stats(&self) -> Option<WireStats> {
        self.inner.stats()
    }

    fn default_run(&self) -> RunFor {
        self.inner.default_run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::flat::FlatTarget;
    use crate::testkit::*;

    /// Counts the reads that reach the inner target.
    struct Counting {
        inner: FlatTarget,
        reads: usize,
    }

    impl DebugTarget for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
            self.reads += 1;
            self.inner.read_memory(addr, buf)
        }
        fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
            self.inner.write_memory(addr, data)
        }
        fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
            self.inner.kernel_info()
        }
    }

    #[test]
    fn small_reads_share_blocks_until_memory_may_change() {
        let mut t = CachedTarget::new(Counting {
            inner: fake_kernel(),
            reads: 0,
        });
        let uncached = {
            let mut plain = Counting {
                inner: fake_kernel(),
                reads: 0,
            };
            let mods = plain.modules().unwrap();
            assert_eq!(mods.len(), 2);
            plain.reads
        };
        let mods = t.modules().unwrap();
        assert_eq!(mods.len(), 2);
        let first = t.inner().reads;
        assert!(first < uncached, "{first} reads cached, {uncached} without");
        // Again: all from the cache.
        assert_eq!(t.modules().unwrap(), mods);
        assert_eq!(t.inner().reads, first);
        // A write drops the cache and is seen by the next read.
        let mut b = [0u8; 2];
        t.write_memory(VirtAddr(MOD_BASE), b"ZM").unwrap();
        assert!(t.cache().is_empty());
        t.read_memory(VirtAddr(MOD_BASE), &mut b).unwrap();
        assert_eq!(&b, b"ZM");
        // So does a run (here unsupported, the cache is gone all the same).
        assert!(!t.cache().is_empty());
        assert!(matches!(
            t.run(RunFor::Ticks(1)),
            Err(TargetError::Unsupported("run"))
        ));
        assert!(t.cache().is_empty());
    }

    #[test]
    fn reads_stop_at_the_end_of_readable_memory() {
        let mut flat = FlatTarget::new();
        flat.memory.map(VirtAddr(0x1000), vec![5; 0x10]);
        let mut t = CachedTarget::new(flat);
        let mut b = [0u8; 0x20];
        assert_eq!(t.read_memory(VirtAddr(0x1008), &mut b).unwrap(), 8);
        assert_eq!(t.read_memory(VirtAddr(0x1010), &mut b).unwrap(), 0);
        // Large reads bypass the cache.
        let mut big = vec![0u8; CACHE_BLOCK];
        assert_eq!(t.read_memory(VirtAddr(0x1000), &mut big).unwrap(), 0x10);
    }

    #[test]
    fn boxed_and_borrowed_targets_can_be_wrapped() {
        let boxed: crate::target::BoxedTarget = Box::new(fake_kernel());
        let mut t = CachedTarget::new(boxed);
        assert_eq!(t.modules().unwrap().len(), 2);
        assert!(!t.cache().is_empty());
        let mut flat = fake_kernel();
        let mut t = CachedTarget::new(&mut flat);
        t.write_memory(VirtAddr(MOD_BASE), b"ZM").unwrap();
        drop(t);
        let mut b = [0u8; 2];
        flat.read_memory(VirtAddr(MOD_BASE), &mut b).unwrap();
        assert_eq!(&b, b"ZM");
    }

    #[test]
    fn a_bare_target_gets_the_defaults() {
        let mut t = Counting {
            inner: FlatTarget::new(),
            reads: 0,
        };
        // No kernel list: lm says so, typed.
        assert!(matches!(
            t.modules(),
            Err(TargetError::Unsupported("a kernel module list"))
        ));
        assert!(matches!(
            t.set_breakpoint(VirtAddr(0)),
            Err(TargetError::Unsupported("breakpoints"))
        ));
        t.inner
            .memory
            .map(VirtAddr(0x2000), b"xxLeakxxLeak".to_vec());
        assert_eq!(
            t.search_memory(VirtAddr(0x2000), VirtAddr(0x3000), b"Leak", 10)
                .unwrap(),
            vec![VirtAddr(0x2002), VirtAddr(0x2008)]
        );
    }
}
