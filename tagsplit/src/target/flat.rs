//! [`FlatTarget`]: a target over a few flat memory regions, with no kernel behind it.
//!
//! Useful for tests, fuzzing and examples: the console works on it (memory commands,
//! `lm` from the module list you give it), and an optional run hook lets a test mutate
//! memory when the target "runs".

use std::collections::BTreeMap;

use super::{DebugTarget, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError};
use crate::VirtAddr;

/// A run hook: called with the memory and the requested run length.
pub type RunHook = Box<dyn FnMut(&mut FlatMemory, RunFor) + Send>;

/// Flat, non-overlapping memory regions keyed by start address.
#[derive(Clone, Debug, Default)]
pub struct FlatMemory {
    regions: BTreeMap<u64, Vec<u8>>,
}

impl FlatMemory {
    /// Maps `data` at `base` (replacing any region that starts there).
    pub fn map(&mut self, base: VirtAddr, data: Vec<u8>) {
        self.regions.insert(base.get(), data);
    }

    /// The region containing `addr` and the offset into it.
    fn locate(&self, addr: u64) -> Option<(u64, usize)> {
        let (&start, data) = self.regions.range(..=addr).next_back()?;
        let off = usize::try_from(addr - start).ok()?;
        (off < data.len()).then_some((start, off))
    }

    /// Reads as many leading bytes as are mapped; returns the count.
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(at) = addr.checked_add(done as u64) else {
                break;
            };
            let Some((start, off)) = self.locate(at.get()) else {
                break;
            };
            let Some(src) = self.regions.get(&start).and_then(|d| d.get(off..)) else {
                break;
            };
            let Some(dst) = buf.get_mut(done..) else {
                break;
            };
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
        }
        done
    }

    /// Finds `pattern` in `[start, end)`, region by region (a match may not straddle two
    /// regions), ascending, at most `max_hits`.
    pub fn search(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Vec<VirtAddr> {
        let mut hits = Vec::new();
        if pattern.is_empty() || end <= start {
            return hits;
        }
        let first = self.locate(start.get()).map_or(start.get(), |(s, _)| s);
        for (&base, data) in self.regions.range(first..end.get()) {
            for pos in memchr::memmem::find_iter(data, pattern) {
                let at = base.saturating_add(pos as u64);
                let fits = at
                    .checked_add(pattern.len() as u64)
                    .is_some_and(|e| e <= end.get());
                if at >= start.get() && fits {
                    if hits.len() >= max_hits {
                        return hits;
                    }
                    hits.push(VirtAddr(at));
                }
            }
        }
        hits
    }

    /// Writes as many leading bytes as are mapped; returns the count.
    pub fn write(&mut self, addr: VirtAddr, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let Some(at) = addr.checked_add(done as u64) else {
                break;
            };
            let Some((start, off)) = self.locate(at.get()) else {
                break;
            };
            let Some(dst) = self.regions.get_mut(&start).and_then(|d| d.get_mut(off..)) else {
                break;
            };
            let Some(src) = data.get(done..) else { break };
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
        }
        done
    }
}

/// A [`DebugTarget`] over [`FlatMemory`], a module list and kernel addresses you supply.
pub struct FlatTarget {
    /// The memory.
    pub memory: FlatMemory,
    /// What [`DebugTarget::modules`] returns.
    pub modules: Vec<ModuleInfo>,
    /// What [`DebugTarget::kernel_info`] returns.
    pub kernel: KernelInfo,
    hook: Option<RunHook>,
}

impl FlatTarget {
    /// An empty target: no memory, no modules, kernel addresses zero.
    pub fn new() -> FlatTarget {
        FlatTarget {
            memory: FlatMemory::default(),
            modules: Vec::new(),
            kernel: KernelInfo {
                kern_base: VirtAddr(0),
                ps_loaded_module_list: VirtAddr(0),
                kdbg: None,
            },
            hook: None,
        }
    }

    /// Sets what happens when the target runs.
    pub fn set_run_hook(&mut self, hook: RunHook) {
        self.hook = Some(hook);
    }
}

impl Default for FlatTarget {
    fn default() -> Self {
        FlatTarget::new()
    }
}

impl DebugTarget for FlatTarget {
    fn describe(&self) -> String {
        "flat".to_string()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        Ok(self.memory.read(addr, buf))
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        Ok(self.memory.write(addr, data))
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        Ok(self.kernel)
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        Ok(self.modules.clone())
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        Ok(self.memory.search(start, end, pattern, max_hits))
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        if let Some(hook) = self.hook.as_mut() {
            hook(&mut self.memory, how_long);
        }
        Ok(StopReason::BreakIn)
    }

    fn default_run(&self) -> RunFor {
        RunFor::Ticks(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_holes_and_span_adjacent_regions() {
        let mut m = FlatMemory::default();
        m.map(VirtAddr(0x1000), vec![1; 0x10]);
        m.map(VirtAddr(0x1010), vec![2; 0x10]);
        let mut buf = [0u8; 0x30];
        assert_eq!(m.read(VirtAddr(0x1008), &mut buf), 0x18);
        assert_eq!(buf[7], 1);
        assert_eq!(buf[8], 2);
        assert_eq!(m.read(VirtAddr(0xfff), &mut buf), 0);
        assert_eq!(m.write(VirtAddr(0x101e), &[9, 9, 9]), 2);
    }
}
