//! Debugging commands: `r`, `k`/`kb`/`kn`, `bp`/`bl`/`bc`/`bd`/`be`, `ln`, and the
//! `nt!` names and stop reports they share.

use std::fmt::Write as _;

use super::{CmdError, CmdResult, Console, split_args};
use crate::VirtAddr;
use crate::stack::{Registers, Stack, Unwinder};
use crate::symbols::KernelSymbols;
use crate::target::{DebugTarget, TargetError, X64Registers, read_u64};

/// Most breakpoints the console keeps (WinDbg's ids go to 0x3fff or so; a bound is what
/// matters).
pub(crate) const MAX_BREAKPOINTS: usize = 256;

/// A breakpoint the console set (`bp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConsoleBreakpoint {
    /// Its number (`bp` gives the lowest free one).
    pub id: u32,
    /// Where.
    pub addr: VirtAddr,
    /// Set in the target (`be`) or not (`bd`).
    pub enabled: bool,
}

/// What the console keeps per target (reading it again costs round trips).
#[derive(Default)]
pub(crate) struct TargetState {
    /// Which target it is for ([`DebugTarget::describe`]).
    pub target: String,
    /// The unwinder, with the unwind data it has read.
    pub unwinder: Option<Unwinder>,
    /// The `nt!` names.
    pub symbols: Option<KernelSymbols>,
}

/// Parses `*` or a list of breakpoint ids (hex, as WinDbg takes them).
fn ids(rest: &str) -> Result<Option<Vec<u32>>, CmdError> {
    let rest = rest.trim();
    if rest == "*" {
        return Ok(None);
    }
    let mut out = Vec::new();
    for word in rest.split([' ', ',']).filter(|w| !w.is_empty()) {
        let id = super::expr::parse_number(word)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(CmdError::Syntax)?;
        out.push(id);
    }
    if out.is_empty() {
        return Err(CmdError::Syntax);
    }
    Ok(Some(out))
}

/// WinDbg's flag mnemonics for `efl`: overflow, direction, interrupt, sign, zero,
/// auxiliary carry, parity, carry.
fn flag_text(efl: u64) -> String {
    let bit = |n: u32| efl & (1 << n) != 0;
    let pick = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
    [
        pick(bit(11), "ov", "nv"),
        pick(bit(10), "dn", "up"),
        pick(bit(9), "ei", "di"),
        pick(bit(7), "ng", "pl"),
        pick(bit(6), "zr", "nz"),
        pick(bit(4), "ac", "na"),
        pick(bit(2), "pe", "po"),
        pick(bit(0), "cy", "nc"),
    ]
    .join(" ")
}

/// A register by name, for `r NAME` and expressions (`@rip`, `rsp+8`).
pub(super) fn register(r: &X64Registers, name: &str) -> Option<u64> {
    Some(match name.to_ascii_lowercase().as_str() {
        "rax" => r.rax,
        "rbx" => r.rbx,
        "rcx" => r.rcx,
        "rdx" => r.rdx,
        "rsi" => r.rsi,
        "rdi" => r.rdi,
        "rbp" => r.rbp,
        "rsp" => r.rsp,
        "r8" => r.r8,
        "r9" => r.r9,
        "r10" => r.r10,
        "r11" => r.r11,
        "r12" => r.r12,
        "r13" => r.r13,
        "r14" => r.r14,
        "r15" => r.r15,
        "rip" => r.rip,
        "efl" | "rflags" => r.rflags,
        "cs" => u64::from(r.cs),
        "ss" => u64::from(r.ss),
        "ds" => u64::from(r.ds),
        "es" => u64::from(r.es),
        "fs" => u64::from(r.fs),
        "gs" => u64::from(r.gs),
        _ => return None,
    })
}

impl Console {
    /// The per-target state, reset when the console is used on another target.
    fn state(&mut self, t: &mut dyn DebugTarget) -> &mut TargetState {
        let name = t.describe();
        if self.target_state.target != name {
            self.target_state = TargetState {
                target: name,
                ..TargetState::default()
            };
            self.breakpoints.clear();
        }
        &mut self.target_state
    }

    /// The `nt!` names of the target's kernel (read once).
    pub(super) fn symbols(&mut self, t: &mut dyn DebugTarget) -> Result<KernelSymbols, CmdError> {
        if let Some(s) = &self.state(t).symbols {
            return Ok(s.clone());
        }
        let s = KernelSymbols::read(t)?;
        self.state(t).symbols = Some(s.clone());
        Ok(s)
    }

    /// The unwinder for the target (its modules read once).
    fn unwinder(&mut self, t: &mut dyn DebugTarget) -> Result<Unwinder, CmdError> {
        if let Some(u) = self.state(t).unwinder.take() {
            return Ok(u);
        }
        Ok(Unwinder::for_target(t)?)
    }

    /// `ADDR` as `module+0xoffset`, or `nt!Name+0xoffset` inside a function the `KDBG`
    /// block names (the function found from `.pdata`), or the bare address.
    pub(super) fn name_of(&mut self, t: &mut dyn DebugTarget, addr: VirtAddr) -> String {
        let mut unwinder = match self.unwinder(t) {
            Ok(u) => u,
            Err(_) => return addr.to_string(),
        };
        let symbols = self.symbols(t).unwrap_or_default();
        let named = unwinder
            .function_at(t, addr)
            .ok()
            .flatten()
            .and_then(|(begin, _)| {
                let name = symbols.name_at(begin)?;
                let off = addr.get().wrapping_sub(begin.get());
                Some(if off == 0 {
                    format!("nt!{name}")
                } else {
                    format!("nt!{name}+{off:#x}")
                })
            })
            .or_else(|| symbols.name_at(addr).map(|n| format!("nt!{n}")));
        let text = named.unwrap_or_else(|| {
            unwinder
                .call_site(addr)
                .map_or_else(|| addr.to_string(), |c| c.to_string())
        });
        self.state(t).unwinder = Some(unwinder);
        text
    }

    /// What WinDbg prints where the target stopped: the symbol line and the instruction.
    pub(super) fn show_stop(
        &mut self,
        t: &mut dyn DebugTarget,
        at: VirtAddr,
        out: &mut String,
    ) -> CmdResult {
        let name = self.name_of(t, at);
        let _ = writeln!(out, "{name}:");
        self.unassemble_lines(t, at, 1, out)?;
        Ok(())
    }

    /// The console's breakpoint at `addr`, if it set one.
    pub(super) fn breakpoint_id(&self, addr: VirtAddr) -> Option<u32> {
        self.breakpoints
            .iter()
            .find(|b| b.addr == addr && b.enabled)
            .map(|b| b.id)
    }

    /// `r` (all registers, WinDbg's layout) or `r REG [REG ...]`.
    pub(super) fn cmd_registers(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let r = t.registers()?;
        if !rest.is_empty() {
            for name in rest.split([' ', ',']).filter(|w| !w.is_empty()) {
                let v = register(&r, name).ok_or_else(|| CmdError::Resolve(name.to_string()))?;
                let _ = writeln!(out, "{}={v:016x}", name.to_ascii_lowercase());
            }
            return Ok(());
        }
        let rows: [&[(&str, u64)]; 6] = [
            &[("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx)],
            &[("rdx", r.rdx), ("rsi", r.rsi), ("rdi", r.rdi)],
            &[("rip", r.rip), ("rsp", r.rsp), ("rbp", r.rbp)],
            &[("r8", r.r8), ("r9", r.r9), ("r10", r.r10)],
            &[("r11", r.r11), ("r12", r.r12), ("r13", r.r13)],
            &[("r14", r.r14), ("r15", r.r15)],
        ];
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .map(|(name, v)| format!("{name:>3}={v:016x}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join(" "));
        }
        let _ = writeln!(
            out,
            "iopl={:<10x}{}",
            (r.rflags >> 12) & 3,
            flag_text(r.rflags)
        );
        let _ = writeln!(
            out,
            "cs={:04x}  ss={:04x}  ds={:04x}  es={:04x}  fs={:04x}  gs={:04x}             efl={:08x}",
            r.cs, r.ss, r.ds, r.es, r.fs, r.gs, r.rflags as u32
        );
        self.show_stop(t, VirtAddr(r.rip), out)
    }

    /// `k`, `kb`, `kn` `[COUNT]`: the call stack from the current registers.
    pub(super) fn cmd_stack(
        &mut self,
        t: &mut dyn DebugTarget,
        word: &str,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let limit = if rest.is_empty() {
            None
        } else {
            Some(usize::try_from(self.eval(t, rest)?).unwrap_or(usize::MAX))
        };
        let regs = Registers::from(&t.registers()?);
        let mut unwinder = self.unwinder(t)?;
        if let Some(n) = limit {
            unwinder.max_frames = n.clamp(1, crate::stack::DEFAULT_MAX_FRAMES);
        }
        let walked = unwinder.walk(t, &regs);
        unwinder.max_frames = crate::stack::DEFAULT_MAX_FRAMES;
        self.state(t).unwinder = Some(unwinder);
        let stack = walked?;
        if word == "kb" {
            self.stack_with_args(t, &stack, out)?;
        } else {
            out.push_str(&stack.table(word == "kn"));
        }
        if !stack.complete() && !matches!(stack.stop, crate::stack::StopReason::FrameLimit(_)) {
            let _ = writeln!(out, "(the walk stopped: {})", stack.stop);
        }
        Ok(())
    }

    /// `kb`: each frame with the four home-space slots above its return address.
    fn stack_with_args(
        &mut self,
        t: &mut dyn DebugTarget,
        stack: &Stack,
        out: &mut String,
    ) -> CmdResult {
        let _ = writeln!(
            out,
            "RetAddr           : Args to Child                                                           : Call Site"
        );
        for fr in &stack.frames {
            let mut args = Vec::with_capacity(4);
            for i in 1..=4u64 {
                let at = fr.child_sp.saturating_add(8 * i);
                args.push(match read_u64(t, at) {
                    Ok(v) => VirtAddr(v).to_string(),
                    Err(TargetError::Unreadable(_)) => "????????`????????".to_string(),
                    Err(e) => return Err(e.into()),
                });
            }
            let _ = writeln!(
                out,
                "{} : {} : {}",
                fr.ret_addr_text(),
                args.join(" "),
                fr.call_site_text()
            );
        }
        Ok(())
    }

    /// `bp ADDR` (an address, `module+offset`, an `nt!` name).
    pub(super) fn cmd_bp(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let addr = self.first_address(t, &args)?;
        self.state(t);
        if let Some(b) = self.breakpoints.iter().find(|b| b.addr == addr) {
            let _ = writeln!(out, "breakpoint {} redefined", b.id);
            let id = b.id;
            t.set_breakpoint(addr)?;
            if let Some(b) = self.breakpoints.iter_mut().find(|b| b.id == id) {
                b.enabled = true;
            }
            return Ok(());
        }
        if self.breakpoints.len() >= MAX_BREAKPOINTS {
            return Err(CmdError::Msg(format!(
                "no more than {MAX_BREAKPOINTS} breakpoints"
            )));
        }
        t.set_breakpoint(addr)?;
        let id = (0..)
            .find(|i| !self.breakpoints.iter().any(|b| b.id == *i))
            .unwrap_or(0);
        self.breakpoints.push(ConsoleBreakpoint {
            id,
            addr,
            enabled: true,
        });
        self.breakpoints.sort_by_key(|b| b.id);
        Ok(())
    }

    /// `bl`: ` 0 e fffff880`0496e621     0001 (0001) myfault+0x1621`.
    pub(super) fn cmd_bl(&mut self, t: &mut dyn DebugTarget, out: &mut String) -> CmdResult {
        self.state(t);
        for b in self.breakpoints.clone() {
            let name = self.name_of(t, b.addr);
            let _ = writeln!(
                out,
                "{:2} {} {}     0001 (0001) {name}",
                b.id,
                if b.enabled { 'e' } else { 'd' },
                b.addr
            );
        }
        Ok(())
    }

    /// `bc`, `bd`, `be` `IDS|*`: clear, disable, enable.
    pub(super) fn cmd_bchange(
        &mut self,
        t: &mut dyn DebugTarget,
        word: &str,
        rest: &str,
    ) -> CmdResult {
        let wanted = ids(rest)?;
        self.state(t);
        let chosen: Vec<ConsoleBreakpoint> = self
            .breakpoints
            .iter()
            .filter(|b| wanted.as_ref().is_none_or(|w| w.contains(&b.id)))
            .cloned()
            .collect();
        if let Some(w) = &wanted
            && let Some(missing) = w.iter().find(|id| !chosen.iter().any(|b| b.id == **id))
        {
            return Err(CmdError::Msg(format!(
                "Breakpoint {missing:x} does not exist"
            )));
        }
        for b in chosen {
            match word {
                "bc" => {
                    if b.enabled {
                        t.clear_breakpoint(b.addr)?;
                    }
                    self.breakpoints.retain(|x| x.id != b.id);
                }
                "bd" if b.enabled => {
                    t.clear_breakpoint(b.addr)?;
                    self.set_enabled(b.id, false);
                }
                "be" if !b.enabled => {
                    t.set_breakpoint(b.addr)?;
                    self.set_enabled(b.id, true);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn set_enabled(&mut self, id: u32, enabled: bool) {
        if let Some(b) = self.breakpoints.iter_mut().find(|b| b.id == id) {
            b.enabled = enabled;
        }
    }

    /// `ln ADDR`: the nearest name (`(fffff800`02a01000)   nt!ExAllocatePoolWithTag+0x48`).
    pub(super) fn cmd_ln(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let addr = VirtAddr(self.eval(t, rest)?);
        let mut unwinder = self.unwinder(t)?;
        let function = unwinder.function_at(t, addr)?;
        let module = unwinder.module_of(addr).cloned();
        self.state(t).unwinder = Some(unwinder);
        let symbols = self.symbols(t)?;
        let name = self.name_of(t, addr);
        let base = match (function, &module) {
            _ if symbols.name_at(addr).is_some() => addr,
            (Some((begin, _)), _) if symbols.name_at(begin).is_some() => begin,
            (_, Some(m)) => m.base,
            _ => {
                return Err(CmdError::Msg(format!("{addr} is in no loaded module")));
            }
        };
        let _ = writeln!(out, "({base})   {name}");
        if let Some(n) = symbols.name_at(addr) {
            let _ = writeln!(out, "Exact matches:\n    nt!{n} = <no type information>");
        }
        Ok(())
    }
}
