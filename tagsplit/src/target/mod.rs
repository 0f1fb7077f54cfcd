//! The [`DebugTarget`] trait: everything above it (console, split) works on any backend.
//!
//! Backends: `sim` (the in-process simulator, feature `sim`), `gdb` (a GDB RSP client) and
//! `kd` (a KD client over KDNET or KDCOM). A backend that cannot do something natively
//! (search, module listing) gets a default built on plain memory reads; one that cannot run
//! or set breakpoints (a memory image) says so with [`TargetError::Unsupported`].
//!
//! Implementing the trait takes three methods: [`describe`](DebugTarget::describe),
//! [`read_memory`](DebugTarget::read_memory) and [`write_memory`](DebugTarget::write_memory).
//! Add [`kernel_info`](DebugTarget::kernel_info) for the kernel's module list and pool
//! commands, [`modules`](DebugTarget::modules) when you know the modules another way, and
//! run control and breakpoints when your target can run. Wrap a target whose reads are
//! costly in [`CachedTarget`]: small reads are then served from blocks kept while it is
//! stopped.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::VirtAddr;

/// Errors from a debug target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The memory at this address could not be read.
    #[error("memory access error at {0}")]
    Unreadable(VirtAddr),
    /// The memory at this address could not be written.
    #[error("memory write error at {0}")]
    Unwritable(VirtAddr),
    /// The target does not support this operation.
    #[error("unsupported by this target: {0}")]
    Unsupported(&'static str),
    /// The peer broke the protocol or answered with an error.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out waiting for the target")]
    Timeout,
    /// The connection is gone.
    #[error("target disconnected")]
    Disconnected,
    /// The kernel structures in target memory are not what was expected.
    #[error("unexpected kernel data: {0}")]
    BadKernelData(String),
    /// I/O on the transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The [`Interrupt`] given to [`DebugTarget::set_interrupt`] was triggered (Ctrl-C or
    /// another signal); a running target was broken into and is stopped.
    #[error("interrupted")]
    Interrupted,
}

impl TargetError {
    /// Whether the connection to the target is gone or no longer answers (closed, an
    /// I/O error, no answer in time): nothing sent after it can work, and anything that
    /// turned such an error into "unreadable" would mislead.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            TargetError::Disconnected | TargetError::Io(_) | TargetError::Timeout
        )
    }
}

/// A loaded kernel module, as `lm` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// `BaseDllName`, e.g. `myfault.sys`.
    pub name: String,
    /// `FullDllName`, e.g. `\SystemRoot\system32\drivers\myfault.sys` (may equal `name`).
    pub path: String,
    /// Image base.
    pub base: VirtAddr,
    /// `SizeOfImage`; the module ends (exclusively) at `base + size`.
    pub size: u64,
}

impl ModuleInfo {
    /// The exclusive end address.
    pub fn end(&self) -> VirtAddr {
        self.base.saturating_add(self.size)
    }

    /// Whether `addr` lies inside the image.
    pub fn contains(&self, addr: VirtAddr) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// The name without extension (`myfault`), as `@#ModuleName` and `lm` show it.
    pub fn module_name(&self) -> &str {
        self.name
            .rsplit_once('.')
            .map_or(self.name.as_str(), |(stem, _)| stem)
    }
}

/// Where the kernel keeps what a debugger needs, as `DBGKD_GET_VERSION64` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KernelInfo {
    /// `KernBase`: the base of `nt`.
    pub kern_base: VirtAddr,
    /// `PsLoadedModuleList`: the list head.
    pub ps_loaded_module_list: VirtAddr,
    /// `DebuggerDataList`: the `KDDEBUGGER_DATA64` (`KDBG`) block, when known.
    pub kdbg: Option<VirtAddr>,
}

/// How long to let the target run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunFor {
    /// A number of virtual-clock ticks (exact on the simulator; over a wire, a stub that
    /// understands ticks honours it, others run for about a tick per millisecond).
    Ticks(u64),
    /// Wall-clock time, then break in.
    Time(Duration),
}

/// Virtual-clock ticks per millisecond of wall time: a [`RunFor::Time`] on the simulator
/// (which has no wall clock) and a [`RunFor::Ticks`] on a target that cannot count ticks
/// are converted at 1 ms = 1 tick.
pub const TICKS_PER_MS: u64 = 1;

/// Why the target stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum StopReason {
    /// The requested run length elapsed (or a break-in was delivered).
    BreakIn,
    /// A breakpoint at this address was hit.
    Breakpoint(VirtAddr),
    /// The target executed a break instruction (`int 3`) of its own at this address: one
    /// that is part of its code, not a breakpoint the debugger set. `rip` points at the
    /// instruction, as WinDbg shows it ("Break instruction exception - code 80000003
    /// (first chance)"). The kernel's `PoolHitTag` checks stop this way; so do `DbgBreakPoint` and a driver's `__debugbreak()`.
    ///
    /// Backends tell it from [`BreakIn`](Self::BreakIn) as follows: the simulator
    /// knows; over GDB it is a `T05` stop with `swbreak` at an address where the client
    /// set no breakpoint; over KD an exception `0x80000003` at an address where the
    /// client set no breakpoint and that holds `0xcc` (the state change's instruction
    /// stream), when the client did not break in.
    BreakInstruction(VirtAddr),
    /// The target stopped for another reason, described by the backend.
    Other(String),
}

/// The processor's mode at a stop: what `u` decodes as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum CpuMode {
    /// Real mode (`CR0.PE` clear): 16-bit code, as a PC's firmware starts.
    Real16,
    /// Protected mode without long mode active: 32-bit code.
    Protected32,
    /// Long mode (`EFER.LMA`): 64-bit code, as an x64 Windows kernel runs.
    Long64,
}

impl CpuMode {
    /// The code size in bits (16, 32, 64).
    pub fn bitness(self) -> u32 {
        match self {
            CpuMode::Real16 => 16,
            CpuMode::Protected32 => 32,
            CpuMode::Long64 => 64,
        }
    }
}

/// Traffic counters of a wire backend (`--stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    /// Packets (or datagrams) sent to the target.
    pub packets_sent: u64,
    /// Packets received from the target.
    pub packets_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Request/response round trips.
    pub round_trips: u64,
    /// Retransmissions (either direction).
    pub retransmissions: u64,
}

impl fmt::Display for WireStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} round trips; sent {} packets / {} bytes; received {} packets / {} bytes; {} retransmissions",
            self.round_trips,
            self.packets_sent,
            self.bytes_sent,
            self.packets_received,
            self.bytes_received,
            self.retransmissions
        )
    }
}

/// A debuggee: memory, modules, the kernel's debugger data, and run control.
///
/// Reads are partial like a real debugger's: [`read_memory`](DebugTarget::read_memory)
/// returns how many leading bytes it could read, and stops at the first unreadable byte.
pub trait DebugTarget {
    /// A short description (`sim:part4`, `gdb://127.0.0.1:1234`).
    fn describe(&self) -> String;

    /// Reads into `buf` starting at `addr`; returns how many leading bytes were read.
    /// Zero means `addr` itself is unreadable (not an error).
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError>;

    /// Writes `data` at `addr`; returns how many leading bytes were written.
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError>;

    /// Reads like [`read_memory`](Self::read_memory), but exactly these bytes: a backend
    /// with a read cache neither answers from it nor fetches a block around them. For data
    /// read once that changes between stops (tracker entries probed at each sample): on a
    /// slow link a 1 KiB block costs more than the 160 bytes wanted.
    ///
    /// Default: [`read_memory`](Self::read_memory).
    fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.read_memory(addr, buf)
    }

    /// Where the kernel's module list and debugger data are.
    ///
    /// Default: [`TargetError::Unsupported`] (a target that is no Windows kernel).
    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        Err(TargetError::Unsupported("kernel debugger data"))
    }

    /// The loaded kernel modules in load order.
    ///
    /// Default: walk `PsLoadedModuleList` from [`kernel_info`](Self::kernel_info) with
    /// memory reads ([`walk_module_list`]); a target without the list (a zero list head)
    /// gets [`TargetError::Unsupported`].
    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        let list = self.kernel_info()?.ps_loaded_module_list;
        if list == VirtAddr(0) {
            return Err(TargetError::Unsupported("a kernel module list"));
        }
        walk_module_list(self, list)
    }

    /// All addresses in `[start, end)` where `pattern` occurs (overlapping matches
    /// included, unreadable holes skipped), ascending, at most `max_hits`.
    ///
    /// Default: [`search_by_reading`] in [`SEARCH_CHUNK`]-byte reads.
    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        search_by_reading(self, start, end, pattern, max_hits, SEARCH_CHUNK)
    }

    /// gdb's CRC-32 ([`tagsplit_protocol::gdb::crc32`], what `qCRC` answers) of each
    /// `(address, length)`, computed by the target: `Ok(None)` when the target cannot
    /// (then read the bytes instead); `None` for a range it could not read. A restore is
    /// verified this way where the target offers it (one `qCRC` per patch, pipelined,
    /// instead of reading the bytes back).
    ///
    /// Default: `Ok(None)`.
    fn crc32_many(
        &mut self,
        ranges: &[(VirtAddr, usize)],
    ) -> Result<Option<Vec<Option<u32>>>, TargetError> {
        let _ = ranges;
        Ok(None)
    }

    /// Says that `ranges` (address, length) are about to be read while the target stays
    /// stopped. A backend that can have many requests in flight (GDB in no-ack mode)
    /// fetches what its read cache lacks now, in one burst, so the reads that follow cost
    /// no round trip each. Unreadable memory is not an error here (the read that follows
    /// says so); a failed link is.
    ///
    /// Default: nothing.
    fn prefetch(&mut self, ranges: &[(VirtAddr, usize)]) -> Result<(), TargetError> {
        let _ = ranges;
        Ok(())
    }

    /// [`read_fresh`](Self::read_fresh) of each `(address, buffer)`: how many leading
    /// bytes of each were read. A backend that can pipeline sends the requests together
    /// (one round trip for many scattered reads: tracker entries, patched sites).
    ///
    /// Default: one [`read_fresh`](Self::read_fresh) after another.
    fn read_fresh_many(
        &mut self,
        reads: &mut [(VirtAddr, &mut [u8])],
    ) -> Result<Vec<usize>, TargetError> {
        reads
            .iter_mut()
            .map(|(addr, buf)| self.read_fresh(*addr, buf))
            .collect()
    }

    /// [`write_memory`](Self::write_memory) of each `(address, bytes)`, in order: how
    /// many leading bytes of each were written. A backend that can pipeline sends the
    /// requests together.
    ///
    /// Default: one [`write_memory`](Self::write_memory) after another.
    fn write_many(&mut self, writes: &[(VirtAddr, &[u8])]) -> Result<Vec<usize>, TargetError> {
        writes
            .iter()
            .map(|(addr, data)| self.write_memory(*addr, data))
            .collect()
    }

    /// [`search_memory`](Self::search_memory) of `pattern` in each `(start, end,
    /// max_hits)`: the hits of each range. A backend that can pipeline searches all the
    /// ranges at once, in as many round trips as the range with the most hits needs.
    ///
    /// Default: one [`search_memory`](Self::search_memory) after another.
    fn search_many(
        &mut self,
        ranges: &[(VirtAddr, VirtAddr, usize)],
        pattern: &[u8],
    ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
        ranges
            .iter()
            .map(|&(start, end, max_hits)| self.search_memory(start, end, pattern, max_hits))
            .collect()
    }

    /// Lets the target run, then stops it; returns why it stopped.
    ///
    /// Default: [`TargetError::Unsupported`] (a memory image cannot run).
    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        let _ = how_long;
        Err(TargetError::Unsupported("run"))
    }

    /// The registers of the processor the target stopped on: the integer registers,
    /// `rip`, `rflags` and the segment selectors (x87/SSE state is not part of it). At a
    /// break the non-volatile registers and `rsp` are what [`crate::stack::Unwinder`]
    /// starts from.
    ///
    /// The simulator answers from the machine's current thread context; a GDB stub with
    /// one `g` request (the x86-64 `g` block: 16 integer registers, `rip`, `eflags`,
    /// six segment selectors, ...); a KD target with one `DbgKdGetContextApi` request
    /// (the AMD64 `CONTEXT`, [`tagsplit_protocol::kd::context`]).
    ///
    /// Default: [`TargetError::Unsupported`] (a memory image has no processor).
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Err(TargetError::Unsupported("registers"))
    }

    /// The processor's mode now (what the console's `u` decodes as).
    ///
    /// Default: [`CpuMode::Long64`], an x64 Windows kernel's. The GDB backend reads `CR0`
    /// and `EFER` where the stub's target description names them (QEMU's does), so a
    /// guest in its firmware's real mode disassembles as 16-bit code.
    fn cpu_mode(&mut self) -> Result<CpuMode, TargetError> {
        Ok(CpuMode::Long64)
    }

    /// Sets a software breakpoint at `addr`: a later [`run`](Self::run) that reaches it
    /// stops with [`StopReason::Breakpoint`]. Setting one twice is not an error.
    ///
    /// Default: [`TargetError::Unsupported`].
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let _ = addr;
        Err(TargetError::Unsupported("breakpoints"))
    }

    /// Removes a breakpoint set with [`set_breakpoint`](Self::set_breakpoint); removing
    /// one that is not set is not an error.
    ///
    /// Default: [`TargetError::Unsupported`].
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let _ = addr;
        Err(TargetError::Unsupported("breakpoints"))
    }

    /// Gives the target an [`Interrupt`] to honour: once it is triggered, a
    /// [`run`](DebugTarget::run) in progress breaks in (the target is stopped again when
    /// it returns) and returns [`TargetError::Interrupted`]. A run started after the
    /// trigger resumes and breaks in at once. Backends that never wait may ignore it (the
    /// default); backends that block on a link register a waker
    /// ([`Interrupt::on_trigger`]) rather than poll.
    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        let _ = interrupt;
    }

    /// Wire traffic so far, for backends that have a wire.
    fn stats(&self) -> Option<WireStats> {
        None
    }

    /// The most bytes one read request brings back (the peer's packet limit, or what the
    /// link allows now): a caller that reads many small scattered pieces merges nearby
    /// ones into reads of up to this size.
    ///
    /// Default: [`SEARCH_CHUNK`].
    fn max_read(&self) -> usize {
        SEARCH_CHUNK
    }

    /// How long a bare `g` runs: the scenario's default on the simulator, otherwise one
    /// second of wall-clock time.
    fn default_run(&self) -> RunFor {
        RunFor::Time(Duration::from_secs(1))
    }
}

/// Reads each `(address, length)` fresh with one [`DebugTarget::read_fresh_many`] (one
/// burst where the target pipelines): each range's buffer, and how many leading bytes of
/// it were read.
pub fn read_fresh_each<T: DebugTarget + ?Sized>(
    target: &mut T,
    ranges: &[(VirtAddr, usize)],
) -> Result<Vec<(Vec<u8>, usize)>, TargetError> {
    let mut bufs: Vec<Vec<u8>> = ranges.iter().map(|&(_, n)| vec![0u8; n]).collect();
    let mut reads: Vec<(VirtAddr, &mut [u8])> = ranges
        .iter()
        .map(|&(a, _)| a)
        .zip(bufs.iter_mut().map(Vec::as_mut_slice))
        .collect();
    let got = target.read_fresh_many(&mut reads)?;
    drop(reads);
    Ok(bufs.into_iter().zip(got).collect())
}

/// Read size of the default [`DebugTarget::search_memory`].
pub const SEARCH_CHUNK: usize = 0x1000;

/// Searches `[start, end)` with plain [`DebugTarget::read_memory`] calls: reads in chunks,
/// keeps `pattern.len() - 1` bytes of overlap so matches across chunk edges are found, and
/// skips to the next page when a read stops short (an unmapped or unreadable hole).
/// Backends without a native search use this.
pub fn search_by_reading<T: DebugTarget + ?Sized>(
    target: &mut T,
    start: VirtAddr,
    end: VirtAddr,
    pattern: &[u8],
    max_hits: usize,
    chunk: usize,
) -> Result<Vec<VirtAddr>, TargetError> {
    const PAGE: u64 = 0x1000;
    let mut hits = Vec::new();
    if pattern.is_empty() || end <= start || max_hits == 0 {
        return Ok(hits);
    }
    let chunk = chunk.max(pattern.len()).max(256);
    let finder = memchr::memmem::Finder::new(pattern);
    // `buf[..len]` holds contiguous readable bytes starting at `window_start`: the tail
    // of the last chunk that a match may still start in, then the chunk just read (read
    // straight into place; the buffer is allocated and zeroed once).
    let keep_max = pattern.len().saturating_sub(1);
    let mut buf = vec![0u8; keep_max + chunk];
    let mut len = 0usize;
    let mut window_start = start.get();
    let mut cursor = start.get();
    while cursor < end.get() {
        let want = usize::try_from((end.get() - cursor).min(chunk as u64)).unwrap_or(chunk);
        let Some(dst) = buf.get_mut(len..len + want) else {
            break;
        };
        let got = target.read_memory(VirtAddr(cursor), dst)?.min(want);
        len += got;
        // Every match, overlapping ones too (`find_iter` would skip those), as the
        // simulator's search reports them.
        let window = buf.get(..len).unwrap_or_default();
        let mut from = 0usize;
        while let Some(pos) = window.get(from..).and_then(|w| finder.find(w)) {
            let at = window_start + (from + pos) as u64;
            from += pos + 1;
            if hits.last().is_some_and(|h: &VirtAddr| h.get() >= at) {
                continue;
            }
            hits.push(VirtAddr(at));
            if hits.len() >= max_hits {
                return Ok(hits);
            }
        }
        cursor += got as u64;
        if got < want {
            // Hole: nothing can match across it. Skip to the next page.
            len = 0;
            cursor = (cursor / PAGE + 1).saturating_mul(PAGE);
            window_start = cursor;
        } else {
            // Keep the tail that could begin a match straddling the next chunk.
            let keep = keep_max.min(len);
            buf.copy_within(len - keep..len, 0);
            window_start += (len - keep) as u64;
            len = keep;
        }
    }
    Ok(hits)
}

// ---------------------------------------------------------------------------------------
// Generic helpers over any target (memory reads only).
// ---------------------------------------------------------------------------------------

mod cache;
pub mod flat;
pub mod gdb;
mod interrupt;
pub mod kd;
pub mod observe;
pub mod record;
#[cfg(feature = "sim")]
pub mod sim;
pub(crate) mod wait;

use tagsplit_protocol::nt::layout::{ldr_entry, list_entry, unicode_string};

pub use self::cache::{BlockCache, CACHE_BLOCK, CACHE_MAX_BLOCKS, CachedTarget};
pub use self::interrupt::{Interrupt, WakerGuard, interrupted};
pub use self::record::OpenOptions;
/// The x64 register file [`DebugTarget::registers`] returns (the protocol crate's
/// target-neutral type, so stubs and clients share it).
pub use tagsplit_protocol::stub::X64Registers;

/// Most modules [`walk_module_list`] accepts before it calls the list corrupt.
pub const MAX_MODULES: usize = 4096;
/// Longest `UNICODE_STRING` (in bytes) [`walk_module_list`] reads.
pub const MAX_NAME_BYTES: u16 = 1024;

/// Reads exactly `buf.len()` bytes or fails with the first unreadable address.
pub fn read_exact<T: DebugTarget + ?Sized>(
    target: &mut T,
    addr: VirtAddr,
    buf: &mut [u8],
) -> Result<(), TargetError> {
    let got = target.read_memory(addr, buf)?;
    if got < buf.len() {
        return Err(TargetError::Unreadable(addr.saturating_add(got as u64)));
    }
    Ok(())
}

/// Reads a little-endian `u16`.
pub fn read_u16<T: DebugTarget + ?Sized>(t: &mut T, addr: VirtAddr) -> Result<u16, TargetError> {
    let mut b = [0u8; 2];
    read_exact(t, addr, &mut b)?;
    Ok(u16::from_le_bytes(b))
}

/// Reads a little-endian `u32`.
pub fn read_u32<T: DebugTarget + ?Sized>(t: &mut T, addr: VirtAddr) -> Result<u32, TargetError> {
    let mut b = [0u8; 4];
    read_exact(t, addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads a little-endian `u64`.
pub fn read_u64<T: DebugTarget + ?Sized>(t: &mut T, addr: VirtAddr) -> Result<u64, TargetError> {
    let mut b = [0u8; 8];
    read_exact(t, addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// `addr + off`, or a [`TargetError::BadKernelData`] naming what overflowed.
pub(crate) fn offset(addr: VirtAddr, off: u64, what: &str) -> Result<VirtAddr, TargetError> {
    addr.checked_add(off)
        .ok_or_else(|| TargetError::BadKernelData(format!("{what}: address overflow at {addr}")))
}

/// Reads an x64 `UNICODE_STRING` at `addr` (at most [`MAX_NAME_BYTES`] bytes of text).
pub fn read_unicode_string<T: DebugTarget + ?Sized>(
    t: &mut T,
    addr: VirtAddr,
) -> Result<String, TargetError> {
    let len = read_u16(t, offset(addr, unicode_string::LENGTH, "UNICODE_STRING")?)?;
    let buffer = read_u64(t, offset(addr, unicode_string::BUFFER, "UNICODE_STRING")?)?;
    let len = usize::from(len.min(MAX_NAME_BYTES) & !1);
    let mut raw = vec![0u8; len];
    if len > 0 {
        read_exact(t, VirtAddr(buffer), &mut raw)?;
    }
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| {
            u16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect();
    Ok(String::from_utf16_lossy(&units))
}

/// Lists modules by walking `PsLoadedModuleList` (`KLDR_DATA_TABLE_ENTRY` in load order)
/// with plain memory reads. Bounded: at most [`MAX_MODULES`] entries, names capped at
/// [`MAX_NAME_BYTES`], and a link seen twice is reported as a corrupt (looping) list.
pub fn walk_module_list<T: DebugTarget + ?Sized>(
    target: &mut T,
    ps_loaded_module_list: VirtAddr,
) -> Result<Vec<ModuleInfo>, TargetError> {
    let head = ps_loaded_module_list;
    let mut seen = std::collections::HashSet::new();
    let mut modules = Vec::new();
    let mut link = VirtAddr(read_u64(
        target,
        offset(head, list_entry::FLINK, "list head")?,
    )?);
    while link != head {
        if modules.len() >= MAX_MODULES {
            return Err(TargetError::BadKernelData(format!(
                "module list longer than {MAX_MODULES} entries"
            )));
        }
        if !seen.insert(link) {
            return Err(TargetError::BadKernelData(format!(
                "module list loops at {link}"
            )));
        }
        let entry = VirtAddr(link.get().wrapping_sub(ldr_entry::IN_LOAD_ORDER_LINKS));
        let base = read_u64(target, offset(entry, ldr_entry::DLL_BASE, "ldr entry")?)?;
        let size = read_u32(
            target,
            offset(entry, ldr_entry::SIZE_OF_IMAGE, "ldr entry")?,
        )?;
        let name = read_unicode_string(
            target,
            offset(entry, ldr_entry::BASE_DLL_NAME, "ldr entry")?,
        )?;
        let path = read_unicode_string(
            target,
            offset(entry, ldr_entry::FULL_DLL_NAME, "ldr entry")?,
        )?;
        modules.push(ModuleInfo {
            name,
            path,
            base: VirtAddr(base),
            size: u64::from(size),
        });
        link = VirtAddr(read_u64(
            target,
            offset(link, list_entry::FLINK, "ldr entry")?,
        )?);
    }
    Ok(modules)
}

/// A boxed target, as [`open`] returns it.
pub type BoxedTarget = Box<dyn DebugTarget + Send>;

/// Implements [`DebugTarget`] for a pointer to a target by forwarding every method, so a
/// boxed or borrowed target can go where a `T: DebugTarget` is wanted
/// (`CachedTarget::new(open(spec)?)`).
macro_rules! forward_debug_target {
    ($($ptr:ty),*) => {$(
        impl<T: DebugTarget + ?Sized> DebugTarget for $ptr {
            fn describe(&self) -> String {
                (**self).describe()
            }
            fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
                (**self).read_memory(addr, buf)
            }
            fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
                (**self).write_memory(addr, data)
            }
            fn read_fresh(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
                (**self).read_fresh(addr, buf)
            }
            fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
                (**self).kernel_info()
            }
            fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
                (**self).modules()
            }
            fn search_memory(
                &mut self,
                start: VirtAddr,
                end: VirtAddr,
                pattern: &[u8],
                max_hits: usize,
            ) -> Result<Vec<VirtAddr>, TargetError> {
                (**self).search_memory(start, end, pattern, max_hits)
            }
            fn prefetch(&mut self, ranges: &[(VirtAddr, usize)]) -> Result<(), TargetError> {
                (**self).prefetch(ranges)
            }
            fn crc32_many(
                &mut self,
                ranges: &[(VirtAddr, usize)],
            ) -> Result<Option<Vec<Option<u32>>>, TargetError> {
                (**self).crc32_many(ranges)
            }
            fn read_fresh_many(
                &mut self,
                reads: &mut [(VirtAddr, &mut [u8])],
            ) -> Result<Vec<usize>, TargetError> {
                (**self).read_fresh_many(reads)
            }
            fn write_many(
                &mut self,
                writes: &[(VirtAddr, &[u8])],
            ) -> Result<Vec<usize>, TargetError> {
                (**self).write_many(writes)
            }
            fn search_many(
                &mut self,
                ranges: &[(VirtAddr, VirtAddr, usize)],
                pattern: &[u8],
            ) -> Result<Vec<Vec<VirtAddr>>, TargetError> {
                (**self).search_many(ranges, pattern)
            }
            fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
                (**self).run(how_long)
            }
            fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
                (**self).set_breakpoint(addr)
            }
            fn registers(&mut self) -> Result<X64Registers, TargetError> {
                (**self).registers()
            }
            fn cpu_mode(&mut self) -> Result<CpuMode, TargetError> {
                (**self).cpu_mode()
            }
            fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
                (**self).clear_breakpoint(addr)
            }
            fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
                (**self).set_interrupt(interrupt)
            }
            fn stats(&self) -> Option<WireStats> {
                (**self).stats()
            }
            fn max_read(&self) -> usize {
                (**self).max_read()
            }
            fn default_run(&self) -> RunFor {
                (**self).default_run()
            }
        }
    )*};
}

forward_debug_target!(Box<T>, &mut T);

/// Errors from [`open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The spec names no known scheme.
    #[error(
        "unknown target {0:?}: expected sim:NAME, sim:FILE.toml, gdb://HOST:PORT[?ack], kdnet:port=N,key=K or kdcom:HOST:PORT"
    )]
    UnknownScheme(String),
    /// The scheme is known but its backend is not part of this build (`sim:` without the
    /// `sim` cargo feature).
    #[error("target scheme {0:?} is not part of this build (enable its cargo feature)")]
    NotBuilt(&'static str),
    /// The spec is malformed or names something that does not exist.
    #[error("bad target {spec:?}: {reason}")]
    Bad {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target was found but could not be brought up.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A recording option ([`OpenOptions`]) that this kind of target cannot honour.
    #[error("{option} does not apply to {spec}: {reason}")]
    NotApplicable {
        /// The option, as the command line spells it (`--pcap`).
        option: &'static str,
        /// The target spec.
        spec: String,
        /// Why not, and what to use instead.
        reason: String,
    },
    /// A recording file could not be created.
    #[error("{option} {}: {source}", path.display())]
    Record {
        /// The option, as the command line spells it.
        option: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Which machine a spec reaches, for finding its journal: the scheme with the host and
/// port (or the scenario), without secrets (a KDNET key) or options that do not change
/// the machine (time-outs). Two specs with the same identity patch the same memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetIdentity {
    name: String,
    ephemeral: bool,
}

impl TargetIdentity {
    /// The identity of a target spec (`gdb://HOST:PORT[?ack]` → `gdb://host:port`,
    /// `kdnet:port=N,key=K[,host=H]` → `kdnet:H:N`, `kdcom:HOST:PORT`, `sim:NAME`).
    pub fn of(spec: &str) -> Result<TargetIdentity, OpenError> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("sim:") {
            return Ok(TargetIdentity {
                name: format!("sim:{rest}"),
                ephemeral: true,
            });
        }
        let name = if let Some(rest) = spec.strip_prefix("gdb://") {
            // Options (`?ack`) do not change which machine it is.
            let addr = rest.split('?').next().unwrap_or(rest);
            format!("gdb://{}", addr.to_ascii_lowercase())
        } else if let Some(rest) = spec.strip_prefix("kdcom:") {
            format!("kdcom:{}", rest.to_ascii_lowercase())
        } else if let Some(rest) = spec.strip_prefix("kdnet:") {
            let s = kd::KdnetSpec::parse(rest)?;
            format!("kdnet:{}", std::net::SocketAddr::new(s.host, s.port))
        } else {
            return Err(OpenError::UnknownScheme(spec.to_string()));
        };
        Ok(TargetIdentity {
            name,
            ephemeral: false,
        })
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Whether the target lives only in this process (`sim:` boots fresh each time), so
    /// a journal left for it protects nothing.
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }
}

impl fmt::Display for TargetIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Opens a target from its spec with recording options; the part after the scheme
/// prefix is passed on.
type Opener = fn(&str, &OpenOptions) -> Result<BoxedTarget, OpenError>;

/// Known schemes: adding a backend is one line here.
const SCHEMES: &[(&str, Opener)] = &[
    #[cfg(feature = "sim")]
    ("sim:", sim::open),
    #[cfg(not(feature = "sim"))]
    ("sim:", |_, _| Err(OpenError::NotBuilt("sim:"))),
    ("gdb://", gdb::open),
    ("kdnet:", kd::open_kdnet),
    ("kdcom:", kd::open_kdcom),
];

/// Opens a target from a spec: `sim:part4`, `sim:path/to/scenario.toml`,
/// `gdb://HOST:PORT`, `kdnet:port=N,key=K`, `kdcom:HOST:PORT`. Records nothing
/// ([`open_with`] records).
pub fn open(spec: &str) -> Result<BoxedTarget, OpenError> {
    open_with(spec, &OpenOptions::default())
}

/// Opens a target like [`open`] and records its traffic as `options` say: a GDB session
/// log for `gdb://`, a pcapng capture for `kdnet:` and `kdcom:` (see [`record`]). An
/// option the target cannot honour is refused before anything is opened, with an
/// [`OpenError::NotApplicable`] that says why; the files are created before connecting,
/// so the first byte on the wire is in them.
pub fn open_with(spec: &str, options: &OpenOptions) -> Result<BoxedTarget, OpenError> {
    for (prefix, opener) in SCHEMES {
        if let Some(rest) = spec.strip_prefix(prefix) {
            return opener(rest, options);
        }
    }
    Err(OpenError::UnknownScheme(spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn search_by_reading_finds_overlapping_and_straddling_matches_and_skips_holes() {
        let mut t = flat::FlatTarget::new();
        let mut page = vec![0u8; 0x1000];
        // "aaaa" holds "aaa" twice; "Leak" straddles the 256-byte read boundary.
        page[0x10..0x14].copy_from_slice(b"aaaa");
        page[0xfe..0x102].copy_from_slice(b"Leak");
        t.memory.map(VirtAddr(0x1000), page.clone());
        // After a hole of one page, a match at the very start of the next region.
        page[..4].copy_from_slice(b"Leak");
        t.memory.map(VirtAddr(0x3000), page);
        let find = |t: &mut flat::FlatTarget, p: &[u8]| {
            search_by_reading(t, VirtAddr(0x1000), VirtAddr(0x4000), p, 10, 256).unwrap()
        };
        assert_eq!(
            find(&mut t, b"aaa"),
            [0x1010, 0x1011, 0x3010, 0x3011].map(VirtAddr)
        );
        assert_eq!(
            find(&mut t, b"Leak"),
            [0x10fe, 0x3000, 0x30fe].map(VirtAddr)
        );
    }

    #[test]
    fn module_walk_detects_loops_and_bad_pointers() {
        let mut t = fake_kernel();
        assert_eq!(
            walk_module_list(&mut t, VirtAddr(LIST_HEAD)).unwrap().len(),
            2
        );
        // Point the second entry's Flink back at the first: a loop.
        let first = read_u64(&mut t, VirtAddr(LIST_HEAD)).unwrap();
        let second = read_u64(&mut t, VirtAddr(first)).unwrap();
        t.write_memory(VirtAddr(second), &first.to_le_bytes())
            .unwrap();
        let err = walk_module_list(&mut t, VirtAddr(LIST_HEAD)).unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
        // A dangling Flink is a read error, not a panic.
        t.write_memory(VirtAddr(second), &0x10u64.to_le_bytes())
            .unwrap();
        assert!(matches!(
            walk_module_list(&mut t, VirtAddr(LIST_HEAD)),
            Err(TargetError::Unreadable(_))
        ));
    }

    #[test]
    fn long_names_are_capped() {
        let mut t = fake_kernel();
        let first = read_u64(&mut t, VirtAddr(LIST_HEAD)).unwrap();
        let name_at = first + ldr_entry::BASE_DLL_NAME;
        // 64 KiB claimed, over a buffer with 28 KiB readable (the module image): exactly
        // MAX_NAME_BYTES bytes, MAX_NAME_BYTES / 2 UTF-16 units, are read.
        t.write_memory(
            VirtAddr(name_at + unicode_string::LENGTH),
            &u16::MAX.to_le_bytes(),
        )
        .unwrap();
        t.write_memory(
            VirtAddr(name_at + unicode_string::BUFFER),
            &MOD_BASE.to_le_bytes(),
        )
        .unwrap();
        let s = read_unicode_string(&mut t, VirtAddr(name_at)).unwrap();
        assert_eq!(s.encode_utf16().count(), usize::from(MAX_NAME_BYTES / 2));
        // Claimed over a buffer that runs off the data after 16 bytes: an error naming
        // where the read stopped, not a short name.
        let near_end = MOD_BASE + MOD_SIZE - 16;
        t.write_memory(
            VirtAddr(name_at + unicode_string::BUFFER),
            &near_end.to_le_bytes(),
        )
        .unwrap();
        assert!(matches!(
            read_unicode_string(&mut t, VirtAddr(name_at)),
            Err(TargetError::Unreadable(a)) if a == VirtAddr(MOD_BASE + MOD_SIZE)
        ));
    }
}
