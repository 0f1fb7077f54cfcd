//! [`FlatTarget`]: a ready-made [`Target`] over one block of memory, for tests, benchmarks
//! and examples of stubs and transports.

use std::collections::BTreeMap;

use super::{
    BreakpointKind, BreakpointOps, Resume, RunState, StopReason, Target, TargetError, X64Registers,
};

/// One flat block of memory at `base`, one register file, breakpoints kept in a map, and
/// runs that stop at once (a breakpoint stop at `rip`): the smallest complete target.
///
/// ```
/// use tagsplit_protocol::gdb::stub::{Stub, StubConfig};
/// use tagsplit_protocol::stub::FlatTarget;
///
/// let mut target = FlatTarget::new(0x1000, b"Leak".to_vec());
/// let mut stub = Stub::new(StubConfig::default());
/// let _ = stub.receive(&mut target, b"$m1000,4#8e");
/// let mut out = Vec::new();
/// stub.poll_transmit_into(&mut out);
/// assert_eq!(out, b"+$4c65616b#01");
/// ```
#[derive(Clone, Debug, Default)]
pub struct FlatTarget {
    /// The address of the first byte of `memory`.
    pub base: u64,
    /// The memory; reads and writes outside it fault.
    pub memory: Vec<u8>,
    /// The registers.
    pub registers: X64Registers,
    /// The breakpoints the client inserted, by address.
    pub breakpoints: BTreeMap<u64, BreakpointKind>,
}

impl FlatTarget {
    /// `memory` at `base`, registers zero, no breakpoints.
    pub fn new(base: u64, memory: Vec<u8>) -> Self {
        FlatTarget {
            base,
            memory,
            ..FlatTarget::default()
        }
    }

    /// The offset of `addr` in `memory`, if it lies inside.
    fn offset(&self, addr: u64) -> Option<usize> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        (off < self.memory.len()).then_some(off)
    }
}

impl Target for FlatTarget {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let src = self
            .offset(addr)
            .and_then(|off| self.memory.get(off..))
            .ok_or(TargetError::Fault)?;
        let n = src.len().min(buf.len());
        for (d, s) in buf.iter_mut().zip(src) {
            *d = *s;
        }
        Ok(n)
    }

    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        let off = self.offset(addr).ok_or(TargetError::Fault)?;
        let end = off.checked_add(data.len()).ok_or(TargetError::Fault)?;
        self.memory
            .get_mut(off..end)
            .ok_or(TargetError::Fault)?
            .copy_from_slice(data);
        Ok(())
    }

    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(self.registers)
    }

    fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError> {
        self.registers = *regs;
        Ok(())
    }

    fn resume(&mut self, _how: Resume) -> Result<(), TargetError> {
        Ok(())
    }

    fn poll_run(&mut self) -> RunState {
        RunState::Stopped(StopReason::Breakpoint(self.registers.rip))
    }

    fn interrupt(&mut self) {}

    fn support_breakpoints(&mut self) -> Option<&mut dyn BreakpointOps> {
        Some(self)
    }
}

impl BreakpointOps for FlatTarget {
    fn insert_breakpoint(&mut self, addr: u64, kind: BreakpointKind) -> Result<(), TargetError> {
        self.breakpoints.insert(addr, kind);
        Ok(())
    }

    fn remove_breakpoint(&mut self, addr: u64, _kind: BreakpointKind) -> Result<(), TargetError> {
        self.breakpoints.remove(&addr);
        Ok(())
    }
}
