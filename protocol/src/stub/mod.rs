//! The target side of a debugger connection: the trait a consumer implements.
//!
//! A stub (the GDB one in [`gdb::stub`](crate::gdb::stub)) speaks the wire protocol; a
//! [`Target`] is what it debugs: an emulator, a hypervisor guest, a memory image, our
//! simulator. The trait is named for the target, not for a protocol, so every stub drives
//! the same implementation.
//!
//! What every target has is required: memory, the x64 registers, run control (a target
//! that cannot run says so from [`Target::resume`]). Everything else is a capability the
//! target opts into by returning `Some(self)` from a `support_*` method, in the manner of
//! the `gdbstub` crate; a stub offers a capability to its client only when the target
//! has it, so a target that supports less gets a correct reduced stub with no code of its
//! own.
//!
//! ```
//! use tagsplit_protocol::stub::{Resume, RunState, Target, TargetError, X64Registers};
//!
//! /// Four bytes of memory at 0x1000 that cannot run.
//! struct Tiny([u8; 4]);
//!
//! impl Target for Tiny {
//!     fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError> {
//!         let start = addr.checked_sub(0x1000).ok_or(TargetError::Fault)? as usize;
//!         let src = self.0.get(start..).filter(|s| !s.is_empty()).ok_or(TargetError::Fault)?;
//!         let n = src.len().min(buf.len());
//!         buf[..n].copy_from_slice(&src[..n]);
//!         Ok(n)
//!     }
//!     fn write_memory(&mut self, _addr: u64, _data: &[u8]) -> Result<(), TargetError> {
//!         Err(TargetError::Fault)
//!     }
//!     fn registers(&mut self) -> Result<X64Registers, TargetError> {
//!         Ok(X64Registers::default())
//!     }
//!     fn write_registers(&mut self, _regs: &X64Registers) -> Result<(), TargetError> {
//!         Err(TargetError::Unsupported)
//!     }
//!     fn resume(&mut self, _how: Resume) -> Result<(), TargetError> {
//!         Err(TargetError::CannotRun)
//!     }
//!     fn poll_run(&mut self) -> RunState {
//!         RunState::Stopped(tagsplit_protocol::stub::StopReason::Trap)
//!     }
//!     fn interrupt(&mut self) {}
//! }
//!
//! let mut t = Tiny(*b"Leak");
//! let mut buf = [0u8; 8];
//! assert_eq!(t.read_memory(0x1002, &mut buf), Ok(2));
//! assert!(t.support_search().is_none());
//! ```

mod flat;
pub use flat::FlatTarget;

use std::time::Duration;

/// Why a target operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The memory is not mapped or not accessible.
    #[error("memory not accessible")]
    Fault,
    /// The target does not do this.
    #[error("not supported by this target")]
    Unsupported,
    /// The target cannot run (a memory image, a crash dump).
    #[error("this target cannot run")]
    CannotRun,
    /// An argument is out of range for the target.
    #[error("invalid argument")]
    Invalid,
}

/// The x64 integer register set a debugger sees when the target is stopped.
///
/// Floating-point and vector state is not part of it: stubs report it at its reset value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub struct X64Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
}

/// How to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resume {
    /// Run until something stops the target.
    Continue,
    /// Execute one instruction.
    Step,
}

/// Why a target stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// It reached a breakpoint set through [`BreakpointOps`] at this address.
    Breakpoint(u64),
    /// It executed a break instruction of its own (`int 3` in its code, not a
    /// breakpoint set through [`BreakpointOps`]) at this address; the reported `rip`
    /// points at the instruction. The GDB stub reports it as `T05` with `swbreak` (gdb
    /// shows SIGTRAP), the KD stub as exception `0x80000003` at the address, first
    /// chance (WinDbg shows "Break instruction exception").
    BreakInstruction(u64),
    /// A step finished, or the target trapped for a reason of its own.
    Trap,
    /// It was interrupted, or a run limit ([`RunLimitOps`]) ran out.
    Interrupted,
    /// The program exited with this code.
    Exited(u8),
}

/// What [`Target::poll_run`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Still running; poll again after at most this long (zero: as soon as the stub has
    /// looked at its input). This is the deadline a transport sets its read time-out from.
    Running(Duration),
    /// It stopped.
    Stopped(StopReason),
}

/// One loaded module, for [`LibraryOps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// The name a debugger shows (a full path, for instance).
    pub name: String,
    /// The load address (the image base).
    pub address: u64,
    /// The image size in bytes (0 if unknown); KD reports it in load-symbols state changes.
    pub size: u64,
}

/// One mapped region of memory, for [`MemoryMapOps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// What a stub needs from the thing it debugs. See the [module docs](self).
pub trait Target {
    /// Reads memory at `addr` into `buf`, and returns how many bytes were read: all of
    /// `buf`, or the readable prefix when a hole starts inside it. A read whose first
    /// byte is not readable is [`TargetError::Fault`].
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<usize, TargetError>;

    /// Writes all of `data` at `addr`.
    fn write_memory(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError>;

    /// The registers of the (single) processor the stub reports.
    fn registers(&mut self) -> Result<X64Registers, TargetError>;

    /// Replaces the registers.
    fn write_registers(&mut self, regs: &X64Registers) -> Result<(), TargetError>;

    /// Starts running. A target that cannot run answers [`TargetError::CannotRun`]; the
    /// stub then reports the error to its client and stays stopped.
    fn resume(&mut self, how: Resume) -> Result<(), TargetError>;

    /// Lets a running target make progress and reports whether it stopped. Called by the
    /// stub only after a successful [`resume`](Self::resume), until it reports a stop.
    fn poll_run(&mut self) -> RunState;

    /// Stops a running target (the client asked for a break-in). The stub reports
    /// [`StopReason::Interrupted`].
    fn interrupt(&mut self);

    /// Memory search, if the target does it faster than the client reading everything.
    fn support_search(&mut self) -> Option<&mut dyn SearchOps> {
        None
    }

    /// The list of loaded modules.
    fn support_libraries(&mut self) -> Option<&mut dyn LibraryOps> {
        None
    }

    /// The map of mapped memory.
    fn support_memory_map(&mut self) -> Option<&mut dyn MemoryMapOps> {
        None
    }

    /// Text commands (`monitor` in gdb).
    fn support_monitor(&mut self) -> Option<&mut dyn MonitorOps> {
        None
    }

    /// Breakpoints.
    fn support_breakpoints(&mut self) -> Option<&mut dyn BreakpointOps> {
        None
    }

    /// Exact-length runs (tagsplit's own extension, see [`RunLimitOps`]).
    fn support_run_limit(&mut self) -> Option<&mut dyn RunLimitOps> {
        None
    }

    /// Where a Windows kernel keeps what a kernel debugger looks up first (see
    /// [`KernelOps`]).
    fn support_kernel(&mut self) -> Option<&mut dyn KernelOps> {
        None
    }

    /// Files served by name, read-only (see [`FileOps`]): on GDB, the host I/O packets
    /// (`vFile:open`, `pread`, `fstat`, `close`) through which gdb loads the libraries a
    /// stub lists. Without it those packets get the empty reply ("not supported").
    fn support_files(&mut self) -> Option<&mut dyn FileOps> {
        None
    }
}

/// A file [`FileOps::open_file`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// The target's own id for it, passed back to [`FileOps::read_file`].
    pub id: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a file operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// No file by that name.
    #[error("no such file")]
    NotFound,
    /// The file exists but may not be read.
    #[error("permission denied")]
    Denied,
    /// Anything else.
    #[error("file error")]
    Other,
}

/// Read-only files, by name: a stub keeps its client's open descriptors (a bounded
/// number) and asks the target only to find a file and to read from it, so a target
/// keeps no per-client state.
pub trait FileOps {
    /// Finds the file a client names (the bytes as sent: a path in the target's own
    /// form, or as the client rewrote it).
    fn open_file(&mut self, name: &[u8]) -> Result<FileInfo, FileError>;

    /// Reads up to `buf.len()` bytes at `offset` of file `id` into `buf`; returns how
    /// many (0 at or after the end).
    fn read_file(&mut self, id: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FileError>;

    /// The name of the file a debugger should take for the target's executable (gdb's
    /// `qXfer:exec-file:read`), one [`open_file`](Self::open_file) finds; `None` (the
    /// default) if there is none. With it gdb loads that file at once, and with it the
    /// symbols of every library the stub lists.
    fn exec_file(&mut self) -> Option<String> {
        None
    }
}

/// Where a Windows x64 kernel keeps what a kernel debugger looks up first: the answer to
/// KD's `GetVersion` and the processor blocks of KD's control space. Every field is an
/// address in target memory; 0 means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KernelInfo {
    /// The kernel image base (`KernBase`).
    pub kern_base: u64,
    /// The head of the loaded-module list (`PsLoadedModuleList`).
    pub ps_loaded_module_list: u64,
    /// `DebuggerDataList`: the list head whose `Flink` is the `KDDEBUGGER_DATA64` block.
    pub debugger_data_list: u64,
    /// The current processor's `KPCR` (KD control-space selector 0).
    pub kpcr: u64,
    /// The current processor's `KPRCB` (selector 1).
    pub kprcb: u64,
    /// The current thread's `KTHREAD` (selector 3, and the thread of state changes).
    pub thread: u64,
}

/// A Windows kernel's bookkeeping, for kernel debuggers (KD). A target without it gets a
/// KD stub whose `GetVersion` reports zero addresses: a debugger then has memory,
/// registers and run control, but no kernel module list.
pub trait KernelOps {
    /// The kernel's addresses.
    fn kernel(&mut self) -> KernelInfo;
}

/// Memory search.
pub trait SearchOps {
    /// The lowest address in `start..end` where `pattern` starts, skipping unmapped memory.
    fn search(&mut self, start: u64, end: u64, pattern: &[u8]) -> Result<Option<u64>, TargetError>;
}

/// The list of loaded modules. The GDB stub lists each for gdb under
/// `gdb::xml::gdb_library_name` of its name, at its first
/// section when a PE image lies at the address given (gdb's `<segment address>`).
pub trait LibraryOps {
    /// Every loaded module.
    fn libraries(&mut self) -> Vec<Library>;
}

/// The memory map.
pub trait MemoryMapOps {
    /// The mapped regions, in address order.
    fn memory_map(&mut self) -> Vec<MemoryRegion>;
}

/// Text commands.
pub trait MonitorOps {
    /// Runs `command` and returns its output text.
    fn monitor(&mut self, command: &str) -> String;
}

/// The kind of a breakpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakpointKind {
    /// A software breakpoint (`int3`).
    Software,
    /// A hardware execution breakpoint.
    Hardware,
}

/// Breakpoints. The stub remembers which it set and removes them when its client leaves.
pub trait BreakpointOps {
    /// Sets a breakpoint at `addr`.
    fn insert_breakpoint(&mut self, addr: u64, kind: BreakpointKind) -> Result<(), TargetError>;

    /// Removes the breakpoint at `addr`.
    fn remove_breakpoint(&mut self, addr: u64, kind: BreakpointKind) -> Result<(), TargetError>;
}

/// Exact-length runs: **tagsplit's own extension**, not part of any debugger protocol's
/// core command set (on GDB it is the `QTagsplit.RunLimit` packet, on KD a private
/// selector). A target with a clock of its own (our simulator counts ticks) stops the next
/// run after exactly the given length, so a measurement does not depend on wall-clock
/// timing.
pub trait RunLimitOps {
    /// Limits the next resume to `ticks` units of the target's clock (`None`: no limit).
    /// When the limit runs out the target stops with [`StopReason::Interrupted`].
    fn set_run_limit(&mut self, ticks: Option<u64>);

    /// The run length the target suggests to its client, if it has one.
    fn default_run(&mut self) -> Option<u64> {
        None
    }
}
