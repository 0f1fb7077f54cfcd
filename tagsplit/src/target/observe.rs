//! A target that forwards every call to another and tells an [`Observer`] after each:
//! the one forwarding wrapper that meters traffic per phase
//! ([`PhaseMeter`](crate::split::traffic::PhaseMeter)), notices a lost connection in the
//! console, or whatever a consumer wants to watch.

use std::fmt;

use super::{
    CpuMode, DebugTarget, Interrupt, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError,
    WireStats, X64Registers,
};
use crate::VirtAddr;

/// What an [`Observed`] target tells after each call to the target it wraps.
pub trait Observer {
    /// After a call that returned a result: the wrapped target (for its counters) and the
    /// error, if the call failed. The result is passed on unchanged.
    fn after(&mut self, target: &dyn DebugTarget, error: Option<&TargetError>);
}

/// Forwards every [`DebugTarget`] call to `inner`, unchanged, and tells `observer` after
/// each one that returns a result.
pub struct Observed<'t, O> {
    /// The target that does the work.
    pub inner: &'t mut dyn DebugTarget,
    /// Told after every call.
    pub observer: O,
}

impl<'t, O: Observer> Observed<'t, O> {
    /// `inner`, watched by `observer`.
    pub fn new(inner: &'t mut dyn DebugTarget, observer: O) -> Self {
        Observed { inner, observer }
    }

    fn note<T>(&mut self, result: Result<T, TargetError>) -> Result<T, TargetError> {
        self.observer.after(&*self.inner, result.as_ref().err());
        result
    }
}

impl<O: fmt::Debug> fmt::Debug for Observed<'_, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observed")
            .field("target", &self.inner.describe())
            .field("observer", &self.observer)
            .finish()
    }
}

impl<O: Observer> DebugTarget for Observed<'_, O> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let r = self.inner.read_memory(addr, buf);
        self.note(r)
    }
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        let r = self.inner.write_memory(addr, data);
        self.note(r)
    }
    fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let r = self.inner.read_fresh(addr, buf);
        self.note(r)
    }
    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        let r = self.inner.kernel_info();
        self.note(r)
    }
    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        let r = self.inner.modules();
        self.note(r)
    }
    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        let r = self.inner.search_memory(start, end, pattern, max_hits);
        self.note(r)
    }
    fn prefetch(&mut self, ranges: &[(VirtAddr, usize)]) -> Result<(), TargetError> {
        let r = self.inner.prefetch(ranges);
        self.note(r)
    }
    fn crc32_many(
        &mut self,
        ranges: &[(VirtAddr, usize)],
    ) -> Result<Option<Vec<Option<u32>>>, TargetError> {
        let r = self.inner.crc32_many(ranges);
        self.note(r)
    }
    fn read_fresh_many(
        &mut self,
        reads: &mut [(VirtAddr, &mut [u8])],
    ) -> Result<Vec<usize>, TargetError> {
        let r = self.inner.read_fresh_many(reads);
        self.note(r)
    }
    fn write_many(&mut self, writes: &[(VirtAddr, &[u8])]) -> Result<Vec<usize>, TargetError> {
        let r = self.inner.write_many(writes);
        self.note(r)
    }
    fn search_many(
        &mut self,
        ranges: &[(VirtAddr, VirtAddr, usize)],
        pattern: &[u8],
    ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
        let r = self.inner.search_many(ranges, pattern);
        self.note(r)
    }
    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        let r = self.inner.run(how_long);
        self.note(r)
    }
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let r = self.inner.set_breakpoint(addr);
        self.note(r)
    }
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let r = self.inner.clear_breakpoint(addr);
        self.note(r)
    }
    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.inner.set_interrupt(interrupt);
    }
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        let r = self.inner.registers();
        self.note(r)
    }
    fn cpu_mode(&mut self) -> Result<CpuMode, TargetError> {
        let r = self.inner.cpu_mode();
        self.note(r)
    }
    fn stats(&self) -> Option<WireStats> {
        self.inner.stats()
    }
    fn max_read(&self) -> usize {
        self.inner.max_read()
    }
    fn default_run(&self) -> RunFor {
        self.inner.default_run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::flat::FlatTarget;

    #[derive(Debug, Default)]
    struct Count {
        calls: usize,
        errors: usize,
    }

    impl Observer for Count {
        fn after(&mut self, _: &dyn DebugTarget, error: Option<&TargetError>) {
            self.calls += 1;
            self.errors += usize::from(error.is_some());
        }
    }

    #[test]
    fn every_call_is_forwarded_and_told() {
        let mut flat = FlatTarget::new();
        flat.memory.map(VirtAddr(0x1000), vec![1, 2, 3, 4]);
        let mut t = Observed::new(&mut flat, Count::default());
        let mut buf = [0u8; 2];
        assert_eq!(t.read_memory(VirtAddr(0x1001), &mut buf).ok(), Some(2));
        assert_eq!(buf, [2, 3]);
        assert_eq!(t.write_memory(VirtAddr(0x1000), &[9]).ok(), Some(1));
        assert!(t.set_breakpoint(VirtAddr(0x1000)).is_err());
        assert_eq!(t.observer.calls, 3);
        assert_eq!(t.observer.errors, 1);
        assert_eq!(t.describe(), "flat");
        assert_eq!(flat.memory.read(VirtAddr(0x1000), &mut buf), 2);
        assert_eq!(buf, [9, 2]);
    }
}
