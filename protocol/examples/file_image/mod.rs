//! The [`Target`] both file-stub examples serve: a file's bytes at a base address,
//! everything else unmapped; it cannot run. All a consumer writes for the target.

use tagsplit_protocol::stub::{Resume, RunState, StopReason, Target, TargetError, X64Registers};

/// A file's bytes mapped at `base`.
pub struct FileImage {
    /// Where the first byte is.
    pub base: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl FileImage {
    /// The bytes from `addr` to the end of the image (empty when `addr` is outside).
    fn tail(&mut self, addr: u64) -> &mut [u8] {
        let start = addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok());
        start
            .and_then(|o| self.bytes.get_mut(o..))
            .unwrap_or_default()
    }
}

impl Target for FileImage {
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
        let tail = self.tail(addr);
        let n = tail.len().min(buf.len());
        match (tail.get(..n), buf.get_mut(..n)) {
            (Some(src), Some(dst)) if n > 0 => {
                dst.copy_from_slice(src);
                Ok(n)
            }
            _ => Err(TargetError::Fault),
        }
    }

    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        match self.tail(addr).get_mut(..data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                Ok(())
            }
            None => Err(TargetError::Fault),
        }
    }
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(X64Registers {
            rip: self.base,
            ..X64Registers::default()
        })
    }
    fn write_registers(&mut self, _regs: &X64Registers) -> Result<(), TargetError> {
        Err(TargetError::Unsupported)
    }
    fn resume(&mut self, _how: Resume) -> Result<(), TargetError> {
        Err(TargetError::CannotRun)
    }
    fn poll_run(&mut self) -> RunState {
        RunState::Stopped(StopReason::Trap) // never asked: `resume` always refuses
    }
    fn interrupt(&mut self) {}
}
