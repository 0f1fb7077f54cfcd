//! A small target with every capability, shared by the stub fuzz targets: 256 bytes of
//! memory at 0, runs that end after three polls, and its memory served as a file (`m`).

use tagsplit_protocol::stub::{
    BreakpointKind, BreakpointOps, FileError, FileInfo, FileOps, KernelInfo, KernelOps, Library,
    LibraryOps, MemoryMapOps, MemoryRegion, MonitorOps, Resume, RunLimitOps, RunState, SearchOps,
    StopReason, Target, TargetError, X64Registers,
};

/// The target: 256 bytes of memory at address 0 (0xcc), one register file, and a run
/// that stops at a breakpoint after three polls.
#[derive(Debug)]
pub struct Tiny {
    mem: [u8; 256],
    regs: X64Registers,
    left: u32,
}

impl Target for Tiny {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let src = usize::try_from(addr)
            .ok()
            .and_then(|a| self.mem.get(a..))
            .unwrap_or_default();
        let n = src.len().min(buf.len());
        if n == 0 {
            return Err(TargetError::Fault);
        }
        for (d, s) in buf.iter_mut().zip(src) {
            *d = *s;
        }
        Ok(n)
    }
    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        let start = usize::try_from(addr).map_err(|_| TargetError::Fault)?;
        let end = start.checked_add(data.len()).ok_or(TargetError::Fault)?;
        self.mem
            .get_mut(start..end)
            .ok_or(TargetError::Fault)?
            .copy_from_slice(data);
        Ok(())
    }
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(self.regs)
    }
    fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError> {
        self.regs = *regs;
        Ok(())
    }
    fn resume(&mut self, _how: Resume) -> Result<(), TargetError> {
        self.left = 3;
        Ok(())
    }
    fn poll_run(&mut self) -> RunState {
        match self.left.checked_sub(1) {
            Some(l) => {
                self.left = l;
                RunState::Running(std::time::Duration::ZERO)
            }
            None => RunState::Stopped(StopReason::Breakpoint(0x10)),
        }
    }
    fn interrupt(&mut self) {
        self.left = 0;
    }
    fn support_search(&mut self) -> Option<&mut dyn SearchOps> {
        Some(self)
    }
    fn support_libraries(&mut self) -> Option<&mut dyn LibraryOps> {
        Some(self)
    }
    fn support_memory_map(&mut self) -> Option<&mut dyn MemoryMapOps> {
        Some(self)
    }
    fn support_monitor(&mut self) -> Option<&mut dyn MonitorOps> {
        Some(self)
    }
    fn support_breakpoints(&mut self) -> Option<&mut dyn BreakpointOps> {
        Some(self)
    }
    fn support_run_limit(&mut self) -> Option<&mut dyn RunLimitOps> {
        Some(self)
    }
    fn support_kernel(&mut self) -> Option<&mut dyn KernelOps> {
        Some(self)
    }
    fn support_files(&mut self) -> Option<&mut dyn FileOps> {
        Some(self)
    }
}

impl KernelOps for Tiny {
    fn kernel(&mut self) -> KernelInfo {
        KernelInfo {
            kern_base: 0,
            ps_loaded_module_list: 0x10,
            debugger_data_list: 0x20,
            kpcr: 0x30,
            kprcb: 0x38,
            thread: 0x40,
        }
    }
}

impl SearchOps for Tiny {
    fn search(
        &mut self,
        start: u64,
        _end: u64,
        pattern: &[u8],
    ) -> Result<Option<u64>, TargetError> {
        Ok((!pattern.is_empty() && self.mem.starts_with(pattern)).then_some(start))
    }
}
impl LibraryOps for Tiny {
    fn libraries(&mut self) -> Vec<Library> {
        vec![Library {
            name: "<a&b>".into(),
            address: 0,
            size: 0,
        }]
    }
}
impl MemoryMapOps for Tiny {
    fn memory_map(&mut self) -> Vec<MemoryRegion> {
        vec![MemoryRegion {
            start: 0,
            length: 256,
        }]
    }
}
impl MonitorOps for Tiny {
    fn monitor(&mut self, command: &str) -> String {
        command.repeat(3)
    }
}
impl BreakpointOps for Tiny {
    fn insert_breakpoint(&mut self, _addr: u64, _kind: BreakpointKind) -> Result<(), TargetError> {
        Ok(())
    }
    fn remove_breakpoint(&mut self, _addr: u64, _kind: BreakpointKind) -> Result<(), TargetError> {
        Ok(())
    }
}
impl RunLimitOps for Tiny {
    fn set_run_limit(&mut self, _ticks: Option<u64>) {}
}

impl Default for Tiny {
    fn default() -> Self {
        Tiny::new()
    }
}

impl Tiny {
    /// A fresh target: memory all 0xcc, registers zero, stopped.
    pub fn new() -> Self {
        Tiny {
            mem: [0xcc; 256],
            regs: X64Registers::default(),
            left: 0,
        }
    }
}

/// One file, `m`: the memory.
impl FileOps for Tiny {
    fn open_file(&mut self, name: &[u8]) -> Result<FileInfo, FileError> {
        match name {
            b"m" => Ok(FileInfo {
                id: 0,
                size: self.mem.len() as u64,
            }),
            _ => Err(FileError::NotFound),
        }
    }
    fn read_file(&mut self, _id: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FileError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.mem.get(o..))
            .unwrap_or_default();
        let n = src.len().min(buf.len());
        for (d, s) in buf.iter_mut().zip(src) {
            *d = *s;
        }
        Ok(n)
    }
}
