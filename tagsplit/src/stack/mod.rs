//! x64 call stacks unwound from `.pdata`/`.xdata` over any [`DebugTarget`], frame by
//! frame like WinDbg's `k`.
//!
//! Give an [`Unwinder`] the loaded modules (base and size, from
//! [`DebugTarget::modules`]) and the registers at a break ([`Registers`]: at least `rip`,
//! `rsp` and the non-volatile `rbx rbp rsi rdi r12-r15`); [`Unwinder::walk`] returns the
//! [`Stack`]: one [`Frame`] per function with its `Child-SP`, `RetAddr` and `Call Site`
//! (`module+0xoffset`), and the [`StopReason`] it ended on.
//!
//! For each frame the unwinder finds the module of `rip`, its exception directory (PE data
//! directory 3) through the PE headers, the `RUNTIME_FUNCTION` for `rip` by binary search,
//! and undoes the function's prolog from its `UNWIND_INFO`
//! ([`tagsplit_protocol::nt::unwind`]):
//!
//! - inside a prolog, only the codes whose instruction has run (`CodeOffset <= rip -
//!   BeginAddress`); outside it, all of them;
//! - `UWOP_SET_FPREG`: the frame base is the frame register minus `16 × FrameOffset`
//!   once the prolog has set it, and unwinding resets RSP from it (so `alloca` and other
//!   RSP changes after the prolog do not matter);
//! - chained `UNWIND_INFO` (`UNW_FLAG_CHAININFO`), at most [`MAX_CHAIN`] deep, its codes
//!   all applied;
//! - `UWOP_PUSH_MACHFRAME`: RIP and RSP come from the interrupt frame (no return address
//!   popped);
//! - a `rip` with no `RUNTIME_FUNCTION` in its module is a leaf: the return address is at
//!   `[rsp]`;
//! - epilogs, as Windows recognises them, by decoding the instructions at `rip` (an
//!   optional `add rsp, N` or `lea rsp, [fp + N]`, `pop`s, then `ret` or a `jmp` out of
//!   the function): the rest of the epilog is emulated instead of the prolog undone. This
//!   is done only where `rip` may be anywhere in a function: the first frame and a frame
//!   reached through a machine frame. A return address that points at an epilog (a call
//!   right before it) unwinds the same either way, so other frames read no code.
//!   Version 2's `UWOP_EPILOG` codes are parsed but not needed for this.
//!
//! The walk stops, with a reason, at the first frame it cannot unwind: `rip` outside every
//! module, memory it cannot read (stack, headers, unwind data), malformed unwind data or
//! headers, an `rsp` that does not increase (except across a machine frame, where a stack
//! switch is normal), a return address of zero, or [`Unwinder::max_frames`] frames.
//!
//! Each module's function table and each `UNWIND_INFO` is read once and kept: walking the
//! same stack again reads only the stack (and, for the first frame when it is past its
//! prolog, 64 bytes of code at `rip`). The stack is read in aligned 512-byte blocks, each
//! at most once per walk, so a walk costs about one read per 512 bytes of stack it
//! crosses, on any backend. Call [`Unwinder::set_modules`] when the module list changes.
//!
//! ```
//! use tagsplit::stack::{Registers, StopReason, Unwinder};
//! use tagsplit::target::flat::FlatTarget;
//! use tagsplit::target::{DebugTarget, TargetError};
//! use tagsplit::VirtAddr;
//!
//! /// Prints `k` for any target, from the registers at a break.
//! fn print_k(target: &mut dyn DebugTarget, regs: &Registers) -> Result<StopReason, TargetError> {
//!     let mut unwinder = Unwinder::for_target(target)?;
//!     let stack = unwinder.walk(target, regs)?;
//!     print!("{stack}");
//!     println!("({})", stack.stop);
//!     Ok(stack.stop)
//! }
//!
//! // A target with no modules: the first frame is outside every module.
//! let mut target = FlatTarget::new();
//! let stop = print_k(&mut target, &Registers::new(0xfffff800_02a01000, 0xfffff880_02f6d8a8))?;
//! assert_eq!(stop, StopReason::OutsideModules(VirtAddr(0xfffff800_02a01000)));
//! # Ok::<(), TargetError>(())
//! ```

use std::collections::HashMap;
use std::fmt;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use serde::Serialize;
use tagsplit_protocol::nt::pe::directory;
use tagsplit_protocol::nt::unwind::{
    Reg, RuntimeFunction, UnwindError, UnwindInfo, UnwindOp, lookup, parse_function_table,
};
use tagsplit_protocol::stub::X64Registers;

use crate::VirtAddr;
use crate::pe::{PeError, data_directory};
use crate::target::{DebugTarget, ModuleInfo, TargetError, read_u64};

/// Most chained `UNWIND_INFO`s followed for one frame.
pub const MAX_CHAIN: usize = 32;
/// Default for [`Unwinder::max_frames`] (WinDbg's `k` shows 20 by default, `kn 100` more).
pub const DEFAULT_MAX_FRAMES: usize = 256;
/// Largest exception directory read (a `RUNTIME_FUNCTION` table of ~700,000 functions;
/// `ntoskrnl.exe`'s is well under a megabyte).
pub const MAX_PDATA_BYTES: u32 = 8 << 20;
/// Stack bytes read at once during a walk (a power of two that divides the page size).
const STACK_BLOCK: u64 = 512;
/// Most stack blocks kept during one walk (512 KiB); reads beyond go one by one.
const MAX_STACK_BLOCKS: usize = 1024;
/// Bytes of code read at `rip` to recognise an epilog.
const EPILOG_WINDOW: usize = 64;
/// Most instructions in a recognised epilog (an adjustment, pops, the return).
const MAX_EPILOG_INSTRUCTIONS: usize = 20;

/// The integer registers of one frame: `rip` and the sixteen general-purpose registers,
/// indexed by unwind register number ([`Reg`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Registers {
    /// `rip`.
    pub rip: u64,
    /// `rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15`, in that (unwind code) order.
    pub gpr: [u64; 16],
}

impl Registers {
    /// Registers with `rip` and `rsp` set, the others zero.
    pub fn new(rip: u64, rsp: u64) -> Registers {
        let mut r = Registers { rip, gpr: [0; 16] };
        r.set(Reg::Rsp, rsp);
        r
    }

    /// One register.
    pub fn get(&self, reg: Reg) -> u64 {
        self.gpr
            .get(usize::from(reg.number()))
            .copied()
            .unwrap_or(0)
    }

    /// Sets one register.
    pub fn set(&mut self, reg: Reg, value: u64) {
        if let Some(r) = self.gpr.get_mut(usize::from(reg.number())) {
            *r = value;
        }
    }

    /// `rsp`.
    pub fn rsp(&self) -> u64 {
        self.get(Reg::Rsp)
    }
}

impl From<&X64Registers> for Registers {
    /// The integer registers of a stub's register file (`tagsplit_protocol::stub`).
    fn from(r: &X64Registers) -> Registers {
        let mut out = Registers {
            rip: r.rip,
            gpr: [0; 16],
        };
        for (reg, v) in [
            (Reg::Rax, r.rax),
            (Reg::Rcx, r.rcx),
            (Reg::Rdx, r.rdx),
            (Reg::Rbx, r.rbx),
            (Reg::Rsp, r.rsp),
            (Reg::Rbp, r.rbp),
            (Reg::Rsi, r.rsi),
            (Reg::Rdi, r.rdi),
            (Reg::R8, r.r8),
            (Reg::R9, r.r9),
            (Reg::R10, r.r10),
            (Reg::R11, r.r11),
            (Reg::R12, r.r12),
            (Reg::R13, r.r13),
            (Reg::R14, r.r14),
            (Reg::R15, r.r15),
        ] {
            out.set(reg, v);
        }
        out
    }
}

/// Where an address is: a module and the offset into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallSite {
    /// The module's name without extension (`nt`, `myfault`), as `k` shows it.
    pub module: String,
    /// The offset from the module's base.
    pub offset: u64,
}

impl fmt::Display for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.module, self.offset)
    }
}

/// How a frame's caller was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Unwound {
    /// From the function's unwind codes (`begin`: its `RUNTIME_FUNCTION`'s RVA).
    Prolog {
        /// `BeginAddress` of the function.
        begin: u32,
    },
    /// `rip` was in an epilog, whose remaining instructions were emulated.
    Epilog,
    /// No `RUNTIME_FUNCTION`: a leaf, return address at `[rsp]`.
    Leaf,
    /// Through a `UWOP_PUSH_MACHFRAME`: the caller is the interrupted context.
    MachineFrame,
}

/// One line of `k`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Frame number (0 = where the target stopped).
    pub number: usize,
    /// `Child-SP`: `rsp` in this frame.
    pub child_sp: VirtAddr,
    /// `RetAddr`: where this frame returns to (the next frame's `rip`); `None` for the
    /// last frame when the walk stopped there.
    pub ret_addr: Option<VirtAddr>,
    /// `rip` in this frame.
    pub rip: VirtAddr,
    /// `Call Site`: the module and offset of `rip`; `None` outside every module.
    pub call_site: Option<CallSite>,
    /// How the caller was found, when it was.
    pub unwound: Option<Unwound>,
    /// The integer registers in this frame as far as unwinding restores them: `rip`,
    /// `rsp` and the non-volatile registers are exact; volatile ones are left as found.
    pub registers: Registers,
}

impl Frame {
    /// The `RetAddr` column: the address, or `????????`????????` where the walk
    /// stopped.
    pub fn ret_addr_text(&self) -> String {
        self.ret_addr
            .map_or_else(|| "????????`????????".to_string(), |a| a.to_string())
    }

    /// The `Call Site` column: `module+0xoffset`, or the bare address.
    pub fn call_site_text(&self) -> String {
        self.call_site
            .as_ref()
            .map_or_else(|| format!("{:#x}", self.rip.get()), ToString::to_string)
    }
}

/// Why a walk ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum StopReason {
    /// A return address of zero: the bottom of the stack.
    EndOfStack,
    /// `rip` is in no loaded module, so there is no unwind data for it.
    OutsideModules(VirtAddr),
    /// Memory needed to unwind (stack, headers, unwind data) could not be read.
    Unreadable(VirtAddr),
    /// The module's PE headers or exception directory are unusable.
    BadImage {
        /// The module.
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// The module's function table or an `UNWIND_INFO` is malformed.
    BadUnwindData {
        /// The module.
        module: String,
        /// RVA of the table or the `UNWIND_INFO`.
        rva: u32,
        /// What is wrong.
        #[serde(serialize_with = "display")]
        error: UnwindError,
    },
    /// Chained unwind info more than [`MAX_CHAIN`] deep (or looping).
    ChainTooDeep {
        /// The module.
        module: String,
        /// `BeginAddress` of the function.
        begin: u32,
    },
    /// The caller's `rsp` is not above this frame's.
    StackNotIncreasing {
        /// This frame's `rsp`.
        rsp: VirtAddr,
        /// The caller's, as unwound.
        caller_rsp: VirtAddr,
    },
    /// [`Unwinder::max_frames`] frames were walked.
    FrameLimit(usize),
}

fn display<S: serde::Serializer>(e: &UnwindError, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(e)
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::EndOfStack => f.write_str("end of stack"),
            StopReason::OutsideModules(a) => write!(f, "rip {a} is outside every module"),
            StopReason::Unreadable(a) => write!(f, "memory at {a} is unreadable"),
            StopReason::BadImage { module, reason } => {
                write!(f, "{module}: unusable image: {reason}")
            }
            StopReason::BadUnwindData { module, rva, error } => {
                write!(
                    f,
                    "{module}: malformed unwind data at rva {rva:#x}: {error}"
                )
            }
            StopReason::ChainTooDeep { module, begin } => write!(
                f,
                "{module}: chained unwind info of the function at rva {begin:#x} is more than {MAX_CHAIN} deep"
            ),
            StopReason::StackNotIncreasing { rsp, caller_rsp } => write!(
                f,
                "the caller's rsp {caller_rsp} is not above the frame's rsp {rsp}"
            ),
            StopReason::FrameLimit(n) => write!(f, "stopped after {n} frames"),
        }
    }
}

/// A walked call stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// The frames, innermost first.
    pub frames: Vec<Frame>,
    /// Why the walk ended.
    pub stop: StopReason,
}

impl Stack {
    /// Whether the walk reached the bottom of the stack ([`StopReason::EndOfStack`]).
    pub fn complete(&self) -> bool {
        self.stop == StopReason::EndOfStack
    }
}

impl Stack {
    /// WinDbg's `k` table (`Child-SP RetAddr Call Site`, a line a frame, `RetAddr`
    /// `????????`????????` where the walk stopped), with `kn`'s frame numbers when
    /// `numbered`.
    pub fn table(&self, numbered: bool) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        let number = |n: usize| {
            if numbered {
                format!("{n:02x} ")
            } else {
                String::new()
            }
        };
        let head = if numbered { " # " } else { "" };
        let _ = writeln!(
            out,
            "{head}Child-SP          RetAddr               Call Site"
        );
        for fr in &self.frames {
            let _ = writeln!(
                out,
                "{}{} {}     {}",
                number(fr.number),
                fr.child_sp,
                fr.ret_addr_text(),
                fr.call_site_text()
            );
        }
        out
    }
}

impl fmt::Display for Stack {
    /// [`Stack::table`] with frame numbers (`kn`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table(true))
    }
}

/// The name WinDbg gives a module in `k` and `ln`: `nt` for the kernel image
/// (`ntoskrnl.exe`, `ntkrnlmp.exe`, `ntkrnlpa.exe`, `ntkrpamp.exe`), otherwise the file
/// name without its extension (`myfault`).
pub fn debugger_name(module: &ModuleInfo) -> &str {
    let stem = module.module_name();
    let kernel = ["ntoskrnl", "ntkrnlmp", "ntkrnlpa", "ntkrpamp"]
        .iter()
        .any(|k| stem.eq_ignore_ascii_case(k));
    if kernel { "nt" } else { stem }
}

/// What ends one frame's unwinding: a stop, or a target failure (not an unreadable byte).
enum Halt {
    Stop(StopReason),
    Target(TargetError),
}

impl From<TargetError> for Halt {
    fn from(e: TargetError) -> Halt {
        match e {
            TargetError::Unreadable(a) => Halt::Stop(StopReason::Unreadable(a)),
            other => Halt::Target(other),
        }
    }
}

impl From<StopReason> for Halt {
    fn from(s: StopReason) -> Halt {
        Halt::Stop(s)
    }
}

/// What is kept of one module.
#[derive(Default)]
struct ModuleData {
    /// The function table, once read (empty when the image has none).
    table: Option<Vec<RuntimeFunction>>,
    /// `UNWIND_INFO`s read, by RVA.
    infos: HashMap<u32, UnwindInfo>,
}

/// Walks x64 stacks over any [`DebugTarget`], keeping each module's unwind data.
pub struct Unwinder {
    /// Modules sorted by base.
    modules: Vec<ModuleInfo>,
    /// Unwind data by module base.
    data: HashMap<u64, ModuleData>,
    /// Stack blocks of the walk in progress.
    stack: StackReads,
    /// Most frames one walk returns.
    pub max_frames: usize,
}

impl Unwinder {
    /// An unwinder over these modules (any order).
    pub fn new(modules: Vec<ModuleInfo>) -> Unwinder {
        let mut u = Unwinder {
            modules: Vec::new(),
            data: HashMap::new(),
            stack: StackReads::default(),
            max_frames: DEFAULT_MAX_FRAMES,
        };
        u.set_modules(modules);
        u
    }

    /// An unwinder over the target's modules ([`DebugTarget::modules`]).
    pub fn for_target<T: DebugTarget + ?Sized>(target: &mut T) -> Result<Unwinder, TargetError> {
        Ok(Unwinder::new(target.modules()?))
    }

    /// Replaces the module list, keeping what was read of modules still loaded at the
    /// same base with the same size and name.
    pub fn set_modules(&mut self, mut modules: Vec<ModuleInfo>) {
        modules.sort_by_key(|m| m.base);
        let old = std::mem::take(&mut self.modules);
        for m in &old {
            let kept = modules
                .binary_search_by_key(&m.base, |n| n.base)
                .ok()
                .and_then(|i| modules.get(i))
                .is_some_and(|n| n == m);
            if !kept {
                self.data.remove(&m.base.get());
            }
        }
        self.modules = modules;
    }

    /// The modules, sorted by base.
    pub fn modules(&self) -> &[ModuleInfo] {
        &self.modules
    }

    /// Forgets every table and `UNWIND_INFO` read (after memory changed under them).
    pub fn clear_cache(&mut self) {
        self.data.clear();
    }

    /// The module containing `addr`.
    pub fn module_of(&self, addr: VirtAddr) -> Option<&ModuleInfo> {
        let after = self.modules.partition_point(|m| m.base <= addr);
        self.modules
            .get(after.checked_sub(1)?)
            .filter(|m| m.contains(addr))
    }

    /// `module+0xoffset` of `addr`, when it is in a module ([`debugger_name`] names it).
    pub fn call_site(&self, addr: VirtAddr) -> Option<CallSite> {
        self.module_of(addr).map(|m| CallSite {
            module: debugger_name(m).to_string(),
            offset: addr.get().wrapping_sub(m.base.get()),
        })
    }

    /// The function containing `addr`: its first byte and one past its last, from its
    /// module's `RUNTIME_FUNCTION` table (read once and kept). `None` outside every
    /// module, for a leaf function (no entry) or when the table cannot be read; only a
    /// failing target is an error. What `ln` needs to name `addr` relative to its
    /// function.
    pub fn function_at<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: VirtAddr,
    ) -> Result<Option<(VirtAddr, VirtAddr)>, TargetError> {
        let Some(module) = self.module_of(addr).cloned() else {
            return Ok(None);
        };
        let Ok(rva) = u32::try_from(addr.get().wrapping_sub(module.base.get())) else {
            return Ok(None);
        };
        let entry = match self.function_entry(target, &module, rva) {
            Ok(entry) => entry,
            Err(Halt::Target(e)) => return Err(e),
            Err(Halt::Stop(_)) => return Ok(None),
        };
        Ok(entry.map(|e| {
            (
                module.base.saturating_add(u64::from(e.begin)),
                module.base.saturating_add(u64::from(e.end)),
            )
        }))
    }

    /// Walks the stack from `regs` (the registers at a break). Unwinding problems end the
    /// walk with a [`StopReason`]; only a failing target (disconnected, timed out, ...)
    /// is an error.
    pub fn walk<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        regs: &Registers,
    ) -> Result<Stack, TargetError> {
        self.stack.blocks.clear();
        let mut frames = Vec::new();
        let mut ctx = *regs;
        // `rip` may be anywhere in a function (not just after a call): look for an epilog.
        let mut exact_pc = true;
        let stop = loop {
            if frames.len() >= self.max_frames {
                break StopReason::FrameLimit(self.max_frames);
            }
            let rip = VirtAddr(ctx.rip);
            let mut frame = Frame {
                number: frames.len(),
                child_sp: VirtAddr(ctx.rsp()),
                ret_addr: None,
                rip,
                call_site: self.call_site(rip),
                unwound: None,
                registers: ctx,
            };
            let step = match self.module_of(rip).cloned() {
                None => Err(Halt::Stop(StopReason::OutsideModules(rip))),
                Some(module) => self.unwind_frame(target, &module, &ctx, exact_pc),
            };
            let (next, how) = match step {
                Ok(v) => v,
                Err(Halt::Target(e)) => return Err(e),
                Err(Halt::Stop(s)) => {
                    frames.push(frame);
                    break s;
                }
            };
            frame.ret_addr = Some(VirtAddr(next.rip));
            frame.unwound = Some(how);
            frames.push(frame);
            if next.rip == 0 {
                break StopReason::EndOfStack;
            }
            if how != Unwound::MachineFrame && next.rsp() <= ctx.rsp() {
                break StopReason::StackNotIncreasing {
                    rsp: VirtAddr(ctx.rsp()),
                    caller_rsp: VirtAddr(next.rsp()),
                };
            }
            exact_pc = how == Unwound::MachineFrame;
            ctx = next;
        };
        Ok(Stack { frames, stop })
    }

    /// The `RUNTIME_FUNCTION` of `module` that contains `rva` (its table read once);
    /// `None` for a leaf.
    fn function_entry<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
        rva: u32,
    ) -> Result<Option<RuntimeFunction>, Halt> {
        self.load_table(target, module)?;
        Ok(self
            .data
            .get(&module.base.get())
            .and_then(|d| d.table.as_deref())
            .and_then(|t| lookup(t, rva))
            .copied())
    }

    /// The caller's registers of the frame at `ctx` in `module`.
    fn unwind_frame<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
        ctx: &Registers,
        exact_pc: bool,
    ) -> Result<(Registers, Unwound), Halt> {
        let bad_image = |reason: &str| StopReason::BadImage {
            module: module.name.clone(),
            reason: reason.to_string(),
        };
        let rva = u32::try_from(ctx.rip.wrapping_sub(module.base.get()))
            .map_err(|_| bad_image("image larger than 4 GiB"))?;
        let Some(entry) = self.function_entry(target, module, rva)? else {
            // A leaf: nothing pushed, the return address at [rsp].
            let mut next = *ctx;
            self.stack.pop_return(target, &mut next)?;
            return Ok((next, Unwound::Leaf));
        };
        let info = self.info(target, module, entry.unwind_data)?;
        let offset = rva - entry.begin;
        if exact_pc
            && offset >= u32::from(info.prolog_size)
            && let Some(next) = self.try_epilog(target, module, ctx, &entry, &info)?
        {
            return Ok((next, Unwound::Epilog));
        }
        self.undo_prolog(target, module, ctx, entry, info, offset)
    }

    /// Applies the unwind codes of `entry` (and its chain) that have run at `offset`.
    fn undo_prolog<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
        ctx: &Registers,
        entry: RuntimeFunction,
        mut info: UnwindInfo,
        offset: u32,
    ) -> Result<(Registers, Unwound), Halt> {
        let frame_base = frame_base(ctx, &info, offset);
        let mut next = *ctx;
        let mut machine_frame = false;
        // Codes of the function itself apply as far as the prolog has run; a chained
        // (parent) entry's prolog has run in full.
        let mut limit = offset;
        let mut depth = 0usize;
        loop {
            for code in info.prolog_codes() {
                if u32::from(code.offset) > limit {
                    continue;
                }
                match code.op {
                    UnwindOp::PushNonvol(reg) => {
                        let v = self.stack.read_u64(target, next.rsp())?;
                        next.set(reg, v);
                        next.set(Reg::Rsp, next.rsp().wrapping_add(8));
                    }
                    UnwindOp::AllocLarge(_)
                    | UnwindOp::AllocLargeFar(_)
                    | UnwindOp::AllocSmall(_) => {
                        next.set(Reg::Rsp, next.rsp().wrapping_add(code.op.stack_adjust()));
                    }
                    UnwindOp::SetFpreg => {
                        let fp = info.frame_register.map_or(0, |r| next.get(r));
                        let delta = 16 * u64::from(info.frame_offset);
                        next.set(Reg::Rsp, fp.wrapping_sub(delta));
                    }
                    UnwindOp::SaveNonvol { reg, offset }
                    | UnwindOp::SaveNonvolFar { reg, offset } => {
                        let at = frame_base.wrapping_add(u64::from(offset));
                        next.set(reg, self.stack.read_u64(target, at)?);
                    }
                    UnwindOp::PushMachframe { error_code } => {
                        let base = next.rsp().wrapping_add(if error_code { 8 } else { 0 });
                        next.rip = self.stack.read_u64(target, base)?;
                        next.set(
                            Reg::Rsp,
                            self.stack.read_u64(target, base.wrapping_add(24))?,
                        );
                        machine_frame = true;
                    }
                    // XMM registers are not tracked; epilog codes are not prolog steps.
                    UnwindOp::SaveXmm128 { .. }
                    | UnwindOp::SaveXmm128Far { .. }
                    | UnwindOp::Epilog { .. } => {}
                }
            }
            let Some(parent) = info.chained() else { break };
            depth += 1;
            if depth > MAX_CHAIN {
                return Err(Halt::Stop(StopReason::ChainTooDeep {
                    module: module.name.clone(),
                    begin: entry.begin,
                }));
            }
            info = self.info(target, module, parent.unwind_data)?;
            limit = u32::MAX;
        }
        if machine_frame {
            return Ok((next, Unwound::MachineFrame));
        }
        self.stack.pop_return(target, &mut next)?;
        Ok((next, Unwound::Prolog { begin: entry.begin }))
    }

    /// Reads the module's function table once.
    fn load_table<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
    ) -> Result<(), Halt> {
        if self
            .data
            .get(&module.base.get())
            .is_some_and(|d| d.table.is_some())
        {
            return Ok(());
        }
        let bad_image = |reason: String| {
            Halt::Stop(StopReason::BadImage {
                module: module.name.clone(),
                reason,
            })
        };
        let dir = match data_directory(target, module.base, directory::EXCEPTION) {
            Ok(d) => d,
            Err(PeError::Target(e)) => return Err(e.into()),
            Err(e) => return Err(bad_image(e.to_string())),
        };
        let table = match dir {
            None => Vec::new(),
            Some((rva, size)) => {
                if size > MAX_PDATA_BYTES {
                    return Err(bad_image(format!(
                        "exception directory of {size} bytes (more than {MAX_PDATA_BYTES})"
                    )));
                }
                if u64::from(rva) + u64::from(size) > module.size {
                    return Err(bad_image(format!(
                        "exception directory {rva:#x}+{size:#x} outside the image"
                    )));
                }
                let mut bytes = vec![0u8; size as usize];
                crate::target::read_exact(
                    target,
                    module.base.saturating_add(u64::from(rva)),
                    &mut bytes,
                )?;
                parse_function_table(&bytes).map_err(|error| {
                    Halt::Stop(StopReason::BadUnwindData {
                        module: module.name.clone(),
                        rva,
                        error,
                    })
                })?
            }
        };
        self.data.entry(module.base.get()).or_default().table = Some(table);
        Ok(())
    }

    /// The `UNWIND_INFO` at `rva`, read once.
    fn info<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
        rva: u32,
    ) -> Result<UnwindInfo, Halt> {
        let data = self.data.entry(module.base.get()).or_default();
        if let Some(info) = data.infos.get(&rva) {
            return Ok(info.clone());
        }
        let bad = |error| {
            Halt::Stop(StopReason::BadUnwindData {
                module: module.name.clone(),
                rva,
                error,
            })
        };
        let room = module.size.saturating_sub(u64::from(rva));
        if room == 0 {
            return Err(Halt::Stop(StopReason::BadImage {
                module: module.name.clone(),
                reason: format!("unwind info at rva {rva:#x} outside the image"),
            }));
        }
        let len = usize::try_from(room)
            .unwrap_or(UnwindInfo::MAX_SIZE)
            .min(UnwindInfo::MAX_SIZE);
        let mut buf = vec![0u8; len];
        let at = module.base.saturating_add(u64::from(rva));
        let got = target.read_memory(at, &mut buf)?;
        buf.truncate(got);
        let info = match UnwindInfo::parse(&buf) {
            Ok(info) => info,
            // Short because the read stopped (not because the image ends): unreadable.
            Err(UnwindError::Truncated { .. }) if got < len => {
                return Err(Halt::Stop(StopReason::Unreadable(
                    at.saturating_add(got as u64),
                )));
            }
            Err(e) => return Err(bad(e)),
        };
        data.infos.insert(rva, info.clone());
        Ok(info)
    }

    /// When `rip` is in an epilog of `entry`, the caller's registers from emulating it.
    fn try_epilog<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        module: &ModuleInfo,
        ctx: &Registers,
        entry: &RuntimeFunction,
        info: &UnwindInfo,
    ) -> Result<Option<Registers>, Halt> {
        let mut code = [0u8; EPILOG_WINDOW];
        let got = match target.read_memory(VirtAddr(ctx.rip), &mut code) {
            Ok(n) => n,
            Err(TargetError::Unreadable(_)) => 0,
            Err(e) => return Err(Halt::Target(e)),
        };
        // The function is this entry and the entries it chains to (a cold fragment
        // jumping back to its function's body is no tail call).
        let base = module.base.get();
        let range = |f: &RuntimeFunction| {
            base.wrapping_add(u64::from(f.begin))..base.wrapping_add(u64::from(f.end))
        };
        let mut func = vec![range(entry)];
        let mut parent = info.chained();
        while let Some(p) = parent
            && func.len() <= MAX_CHAIN
        {
            func.push(range(&p));
            parent = self
                .info(target, module, p.unwind_data)
                .ok()
                .and_then(|i| i.chained());
        }
        let Some(steps) = epilog_steps(
            code.get(..got).unwrap_or_default(),
            ctx.rip,
            &func,
            info.frame_register,
        ) else {
            return Ok(None);
        };
        let mut next = *ctx;
        for step in steps {
            match step {
                EpilogStep::AddRsp(n) => next.set(Reg::Rsp, next.rsp().wrapping_add(n)),
                EpilogStep::LeaRsp(reg, disp) => {
                    next.set(Reg::Rsp, next.get(reg).wrapping_add(disp))
                }
                EpilogStep::Pop(reg) => {
                    let v = self.stack.read_u64(target, next.rsp())?;
                    next.set(reg, v);
                    next.set(Reg::Rsp, next.rsp().wrapping_add(8));
                }
                EpilogStep::Return => self.stack.pop_return(target, &mut next)?,
            }
        }
        Ok(Some(next))
    }
}

/// The frame base that save offsets are relative to: RSP after the fixed allocation, or,
/// once the prolog has set the frame register, that register minus `16 × FrameOffset`.
fn frame_base(ctx: &Registers, info: &UnwindInfo, offset: u32) -> u64 {
    let Some(fr) = info.frame_register else {
        return ctx.rsp();
    };
    let fp_set = offset >= u32::from(info.prolog_size)
        || info
            .prolog_codes()
            .any(|c| c.op == UnwindOp::SetFpreg && u32::from(c.offset) <= offset);
    if fp_set {
        ctx.get(fr).wrapping_sub(16 * u64::from(info.frame_offset))
    } else {
        ctx.rsp()
    }
}

/// Stack memory read during one walk, in aligned blocks that never cross a page: one read
/// serves all the slots a frame pops (and often several frames'), whatever the backend
/// caches. Dropped at the start of every walk (the stack changes while the target runs).
#[derive(Default)]
struct StackReads {
    blocks: HashMap<u64, Vec<u8>>,
}

impl StackReads {
    /// The little-endian u64 at `addr`.
    fn read_u64<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: u64,
    ) -> Result<u64, TargetError> {
        let base = addr & !(STACK_BLOCK - 1);
        let off = usize::try_from(addr - base).unwrap_or(usize::MAX);
        if self.blocks.len() < MAX_STACK_BLOCKS || self.blocks.contains_key(&base) {
            let block = match self.blocks.entry(base) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut buf = vec![0u8; STACK_BLOCK as usize];
                    let got = match target.read_memory(VirtAddr(base), &mut buf) {
                        Ok(n) => n,
                        Err(TargetError::Unreadable(_)) => 0,
                        Err(e) => return Err(e),
                    };
                    buf.truncate(got);
                    v.insert(buf)
                }
            };
            let slot = block
                .get(off..off.saturating_add(8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok());
            if let Some(b) = slot {
                return Ok(u64::from_le_bytes(b));
            }
        }
        // Straddling two blocks, past what a block read returned, or too many blocks: a
        // read of its own (which names the unreadable byte when it fails).
        read_u64(target, VirtAddr(addr))
    }

    /// `rip = [rsp]; rsp += 8`.
    fn pop_return<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        regs: &mut Registers,
    ) -> Result<(), Halt> {
        regs.rip = self.read_u64(target, regs.rsp())?;
        regs.set(Reg::Rsp, regs.rsp().wrapping_add(8));
        Ok(())
    }
}

/// One instruction of an epilog, as unwinding emulates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EpilogStep {
    AddRsp(u64),
    LeaRsp(Reg, u64),
    Pop(Reg),
    Return,
}

/// The unwind register for a 64-bit general-purpose iced register (numbered alike).
fn gpr(r: Register) -> Option<Reg> {
    let n = u8::try_from(r.number()).ok()?;
    (r.is_gpr64() && n < 16).then(|| Reg::from_nibble(n))
}

/// Recognises an epilog at `rip` as Windows does: an optional `add rsp, imm` or
/// `lea rsp, [frame_reg + disp]`, then `pop`s of 64-bit registers, then `ret` or a `jmp`
/// that leaves the function (direct, outside every range of `func`, or indirect through
/// memory).
fn epilog_steps(
    code: &[u8],
    rip: u64,
    func: &[std::ops::Range<u64>],
    frame_reg: Option<Reg>,
) -> Option<Vec<EpilogStep>> {
    let mut decoder = Decoder::with_ip(64, code, rip, DecoderOptions::NONE);
    let mut steps = Vec::new();
    for i in 0..MAX_EPILOG_INSTRUCTIONS {
        if !decoder.can_decode() {
            return None;
        }
        let ins = decoder.decode();
        if ins.is_invalid() {
            return None;
        }
        let to_rsp = ins.op0_kind() == OpKind::Register && ins.op0_register() == Register::RSP;
        let step = match ins.mnemonic() {
            Mnemonic::Add if i == 0 && to_rsp && is_immediate(ins.op1_kind()) => {
                EpilogStep::AddRsp(ins.immediate(1))
            }
            Mnemonic::Lea
                if i == 0
                    && to_rsp
                    && ins.memory_index() == Register::None
                    && gpr(ins.memory_base()).is_some_and(|b| Some(b) == frame_reg) =>
            {
                EpilogStep::LeaRsp(gpr(ins.memory_base())?, ins.memory_displacement64())
            }
            Mnemonic::Pop if ins.op0_kind() == OpKind::Register => match gpr(ins.op0_register()) {
                Some(r) if r != Reg::Rsp => EpilogStep::Pop(r),
                _ => return None,
            },
            Mnemonic::Ret if ins.op_count() == 0 => {
                steps.push(EpilogStep::Return);
                return Some(steps);
            }
            Mnemonic::Jmp => {
                let leaves = match ins.op0_kind() {
                    OpKind::NearBranch64 => !func.iter().any(|r| r.contains(&ins.near_branch64())),
                    OpKind::Memory => true,
                    _ => false,
                };
                if !leaves {
                    return None;
                }
                steps.push(EpilogStep::Return);
                return Some(steps);
            }
            _ => return None,
        };
        steps.push(step);
    }
    None
}

fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate32 | OpKind::Immediate8
    )
}

#[cfg(test)]
mod tests;
