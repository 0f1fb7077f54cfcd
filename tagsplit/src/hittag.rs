//! `nt!PoolHitTag` breaks, over any [`DebugTarget`] that can run and read registers.
//!
//! Windows checks every allocation and free against the variable `nt!PoolHitTag` and
//! executes an `int 3` when the tag matches (NTDebugging's "Troubleshooting Pool Leaks
//! Part 5": `ed nt!PoolHitTag 3261654c`, `g`, and the kernel stops with "Break
//! instruction exception - code 80000003 (first chance)" on every allocation and free
//! of `Lea2`; its default is `ffffff0f`, a tag no allocation has). The check runs before
//! the block is allocated or freed, with the tag, the size and the block in registers
//! that no calling convention fixes. In the simulated kernel (see
//! `tagsplit_target_sim::machine::AllocPoint::HitTagBreak`):
//!
//! | break in | `rip` | `rbx` | `rsi` | `rdi` | `rax` |
//! |---|---|---|---|---|---|
//! | `nt!ExAllocatePoolWithTag` | its `int 3` | tag | size | pool type | — |
//! | `nt!ExFreePoolWithTag` | its `int 3` | block | — | — | tag (from the block's `POOL_HEADER`) |
//!
//! [`examine`] reads the registers, walks the stack ([`Unwinder`]), and tells the two
//! breaks apart by the function frame 0 is in, compared with `nt!ExAllocatePoolWithTag`
//! and `nt!ExFreePoolWithTag` ([`KernelSymbols`]). A free's break carries its block
//! (`rbx`). An allocation's does not: the block does not exist yet. [`finish_allocation`]
//! gets it the way WinDbg users do (`gu`, or `bp` on the return address and `g`): a
//! breakpoint on the return address (frame 1's `rip`), a run, `rax`, and the breakpoint
//! removed.
//!
//! What that costs in round trips ([`DebugTarget::stats`]), measured on `part4` by
//! `tagsplit/tests/hittag.rs` (`cargo test -p tagsplit --test hittag -- --nocapture`
//! prints them), once the [`Unwinder`] holds `nt`'s and the driver's unwind data (the
//! first break also reads the module list, the PE headers and `.pdata`: 4 more):
//!
//! | step | GDB | KD (KDNET or KDCOM) |
//! |---|---|---|
//! | run to the break | 2: `g` (the client's snapshot before resuming, to recover a lost resume) and `vCont;c`, whose `T05` reply carries `rip` | 1 request (the run limit) and the Continue that the state change answers |
//! | [`examine`] | 2: `g` and one 512-byte stack read | 2: `GetContext` and one stack read |
//! | [`finish_allocation`] | 5: `Z0`, `g`, `vCont;c`, `g`, `z0` | 3 requests (`WriteBreakPoint`, `GetContext`, `RestoreBreakPoint`) and a Continue |
//!
//! So an allocation's break with its stack and block costs 9 exchanges over GDB and 8
//! over KD (6 requests and 2 Continue/state-change pairs); a free's, 4 and 4. Measured in the
//! loop of [`crate::stacks::collect`] (`cargo run --release -p tagsplit-benches --bin
//! breaks`): 10 round trips over GDB and 7 KD requests and 2 Continues per allocation, 5
//! and 4 and 1 per free; a packet trace shows the run limit sent with every run and the
//! code at `rip` (which the unwinder reads to check for an epilog) read at every break.

use std::fmt;
use std::time::Duration;

use crate::stack::{Stack, Unwinder, Unwound};
use crate::symbols::{KernelSymbols, Unresolved};
use crate::target::{DebugTarget, RunFor, StopReason, TargetError, X64Registers, read_u32};
use crate::{PoolTag, VirtAddr};

/// What `nt!PoolHitTag` holds after boot (the value the Part 5 post shows).
pub const DEFAULT_POOL_HIT_TAG: u32 = 0xffff_ff0f;

/// How long [`finish_allocation`] lets the target run to reach the allocator's return
/// (it is reached at once; the bound only stops a run that never gets there).
pub const RETURN_WAIT: Duration = Duration::from_secs(10);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HitTagError {
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A name this needs has no address on this kernel.
    #[error("{0}")]
    Unresolved(Unresolved),
    /// The target is not stopped at a `PoolHitTag` break.
    #[error("not at a PoolHitTag break: {0}")]
    NotAHitBreak(String),
    /// The journal of a `PoolHitTag` write could not be written.
    #[error("journal: {0}")]
    Journal(String),
    /// `nt!PoolHitTag` could not be written back (its journal, if any, is kept).
    #[error("{0}")]
    NotRestored(String),
}

impl From<Unresolved> for HitTagError {
    fn from(u: Unresolved) -> Self {
        HitTagError::Unresolved(u)
    }
}

/// Which check stopped the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HitKind {
    /// The check in `nt!ExAllocatePoolWithTag`, before the block is allocated.
    Allocation,
    /// The check in `nt!ExFreePoolWithTag`, before the block is freed.
    Free,
}

/// A `PoolHitTag` break, examined.
#[derive(Clone, Debug)]
pub struct HitBreak {
    /// Which check.
    pub kind: HitKind,
    /// The `int 3` (`rip`).
    pub at: VirtAddr,
    /// The tag charged.
    pub tag: PoolTag,
    /// An allocation's size (`rsi`).
    pub size: Option<u64>,
    /// An allocation's pool type (`rdi`).
    pub pool_type: Option<u32>,
    /// The block: a free's (`rbx`); an allocation's once [`finish_allocation`] has run.
    pub block: Option<VirtAddr>,
    /// The registers at the break.
    pub registers: X64Registers,
    /// The call stack at the break (frame 0 in the allocator or the free).
    pub stack: Stack,
}

impl fmt::Display for HitBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            HitKind::Allocation => write!(
                f,
                "PoolHitTag: allocation of {:#x} bytes (pool type {}) tagged {}",
                self.size.unwrap_or(0),
                self.pool_type.unwrap_or(0),
                self.tag
            )?,
            HitKind::Free => write!(f, "PoolHitTag: free of a block tagged {}", self.tag)?,
        }
        if let Some(b) = self.block {
            write!(f, ", block {b}")?;
        }
        Ok(())
    }
}

/// The address of `nt!PoolHitTag`.
pub fn pool_hit_tag_address(symbols: &KernelSymbols) -> Result<VirtAddr, HitTagError> {
    Ok(symbols.resolve("PoolHitTag")?)
}

/// Reads `nt!PoolHitTag`.
pub fn read_pool_hit_tag<T: DebugTarget + ?Sized>(
    target: &mut T,
    symbols: &KernelSymbols,
) -> Result<u32, HitTagError> {
    let at = pool_hit_tag_address(symbols)?;
    Ok(read_u32(target, at)?)
}

/// Writes `nt!PoolHitTag` (`ed nt!PoolHitTag value`): a tag makes the kernel break on
/// its allocations and frees, 0 stops it.
pub fn set_pool_hit_tag<T: DebugTarget + ?Sized>(
    target: &mut T,
    symbols: &KernelSymbols,
    value: u32,
) -> Result<(), HitTagError> {
    let at = pool_hit_tag_address(symbols)?;
    let wrote = target.write_memory(at, &value.to_le_bytes())?;
    if wrote < 4 {
        return Err(TargetError::Unwritable(at.saturating_add(wrote as u64)).into());
    }
    Ok(())
}

/// Examines the break the target stopped at: reads the registers, walks the stack, and
/// tells an allocation's check from a free's by the function frame 0 is in.
pub fn examine<T: DebugTarget + ?Sized>(
    target: &mut T,
    unwinder: &mut Unwinder,
    symbols: &KernelSymbols,
) -> Result<HitBreak, HitTagError> {
    let allocator = symbols.resolve("ExAllocatePoolWithTag")?;
    let free = symbols.resolve("ExFreePoolWithTag")?;
    let registers = target.registers()?;
    let stack = unwinder.walk(target, &crate::stack::Registers::from(&registers))?;
    let at = VirtAddr(registers.rip);
    let begin = stack.frames.first().and_then(|f| match f.unwound {
        Some(Unwound::Prolog { begin }) => unwinder
            .module_of(f.rip)
            .map(|m| m.base.saturating_add(u64::from(begin))),
        _ => None,
    });
    let tag32 = |v: u64| PoolTag::from_u32(v as u32);
    let (kind, tag, size, pool_type, block) = match begin {
        Some(b) if b == allocator => (
            HitKind::Allocation,
            tag32(registers.rbx),
            Some(registers.rsi),
            Some(registers.rdi as u32),
            None,
        ),
        Some(b) if b == free => (
            HitKind::Free,
            tag32(registers.rax),
            None,
            None,
            Some(VirtAddr(registers.rbx)),
        ),
        _ => {
            return Err(HitTagError::NotAHitBreak(format!(
                "rip {at} is in neither nt!ExAllocatePoolWithTag ({allocator}) nor nt!ExFreePoolWithTag ({free})"
            )));
        }
    };
    Ok(HitBreak {
        kind,
        at,
        tag,
        size,
        pool_type,
        block,
        registers,
        stack,
    })
}

/// At an allocation's break, runs the target to the allocator's return (a breakpoint on
/// frame 1's `rip`), reads the block from `rax`, removes the breakpoint, and records the
/// block in `hit`. The target is then stopped in the caller, just after its `call`.
/// Fails (the breakpoint removed) if the run stops anywhere else or returns on another
/// stack.
pub fn finish_allocation<T: DebugTarget + ?Sized>(
    target: &mut T,
    hit: &mut HitBreak,
) -> Result<VirtAddr, HitTagError> {
    if hit.kind != HitKind::Allocation {
        return Err(HitTagError::NotAHitBreak(
            "the block of a free is in rbx; only an allocation runs to its return".into(),
        ));
    }
    let Some(caller) = hit.stack.frames.get(1) else {
        return Err(HitTagError::NotAHitBreak(format!(
            "the stack at {} has no caller frame ({})",
            hit.at, hit.stack.stop
        )));
    };
    let (ret, caller_sp) = (caller.rip, caller.child_sp);
    target.set_breakpoint(ret)?;
    let outcome = run_to(target, ret, caller_sp);
    let cleared = target.clear_breakpoint(ret);
    let block = outcome?;
    cleared?;
    hit.block = Some(block);
    Ok(block)
}

/// Runs until the breakpoint at `ret` with `rsp` at `caller_sp`; returns `rax`.
fn run_to<T: DebugTarget + ?Sized>(
    target: &mut T,
    ret: VirtAddr,
    caller_sp: VirtAddr,
) -> Result<VirtAddr, HitTagError> {
    match target.run(RunFor::Time(RETURN_WAIT))? {
        StopReason::Breakpoint(a) if a == ret => {}
        other => {
            return Err(HitTagError::NotAHitBreak(format!(
                "running to the allocator's return {ret} stopped elsewhere: {other:?}"
            )));
        }
    }
    let regs = target.registers()?;
    if regs.rsp != caller_sp.get() {
        return Err(HitTagError::NotAHitBreak(format!(
            "the return to {ret} came with rsp {:#x}, not the caller's {caller_sp}",
            regs.rsp
        )));
    }
    Ok(VirtAddr(regs.rax))
}
