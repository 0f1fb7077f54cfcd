//! Who calls the function that holds an allocation site, found the way a debugger can on
//! a real kernel without symbols: the function from its module's `.pdata` (the
//! [`Unwinder`]'s function table), then its calls in the code of the modules.
//!
//! A split names allocation *sites*. When the one leaking site is an allocation helper
//! (`AllocBuffer(size)` with a fixed tag) that several functions call, the split cannot
//! tell which caller leaks: only call stacks can (`tagsplit run --stacks`,
//! [`crate::stacks`]). [`find_callers`] counts the calls so that the split's report can
//! say so:
//!
//! 1. the function holding the site: its `RUNTIME_FUNCTION` (a leaf function, without
//!    one, is not looked into);
//! 2. pointers to its first byte anywhere in a module image (one search for the 8 bytes
//!    per module): how another driver calls a helper it imports (an IAT slot) or keeps
//!    in a table;
//! 3. in the executable sections of the helper's module and of every module holding
//!    such a pointer (at most [`MAX_SCAN_BYTES`] in all), each `call rel32` (`e8`) whose
//!    target is the function's first byte, and each `call [rip+disp32]` (`ff 15`)
//!    through one of those pointers, outside the function itself.
//!
//! The byte patterns are not decoded instructions: a match inside another instruction
//! is possible, which only makes the count a hint ("reached from several callers"),
//! never a verdict.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::VirtAddr;
use crate::pe;
use crate::stack::Unwinder;
use crate::target::{DebugTarget, ModuleInfo, TargetError};

/// Most bytes of code [`find_callers`] reads in all.
pub const MAX_SCAN_BYTES: u64 = 32 << 20;

/// Most calls (and pointers) [`find_callers`] keeps.
pub const MAX_CALLS: usize = 256;

/// The calls of the function that holds an allocation site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteCallers {
    /// The function's first byte (from `.pdata`).
    pub function: VirtAddr,
    /// The same as `module+0xoffset`.
    pub function_location: String,
    /// Each call of it found (`module+0xoffset` of the `call` instruction), in module
    /// and address order.
    pub calls: Vec<String>,
    /// How many modules those calls are in.
    pub modules: usize,
}

impl SiteCallers {
    /// Whether more than one call reaches the function: a helper, whose caller only a
    /// call stack names.
    pub fn several(&self) -> bool {
        self.calls.len() > 1
    }
}

/// `module+0xoffset` of `addr` in `modules` (the address alone outside them).
fn location(modules: &[ModuleInfo], addr: VirtAddr) -> String {
    modules.iter().find(|m| m.contains(addr)).map_or_else(
        || addr.to_string(),
        |m| format!("{}+{:#x}", m.name, addr.get() - m.base.get()),
    )
}

/// Finds the calls of the function holding `site` (see the [module docs](self)).
/// `Ok(None)` when `site` is in no module or in no function of its module's `.pdata`;
/// only a failing target is an error (an unreadable section is skipped).
pub fn find_callers(
    target: &mut dyn DebugTarget,
    site: VirtAddr,
) -> Result<Option<SiteCallers>, TargetError> {
    let modules = target.modules()?;
    let mut unwinder = Unwinder::new(modules.clone());
    let Some((begin, end)) = unwinder.function_at(target, site)? else {
        return Ok(None);
    };
    let Some(home) = modules.iter().position(|m| m.contains(begin)) else {
        return Ok(None);
    };
    // Pointers to the function, module by module.
    let mut slots: BTreeSet<u64> = BTreeSet::new();
    let mut scan: Vec<usize> = vec![home];
    for (i, m) in modules.iter().enumerate() {
        let found = target.search_memory(m.base, m.end(), &begin.get().to_le_bytes(), MAX_CALLS)?;
        if !found.is_empty() && i != home {
            scan.push(i);
        }
        slots.extend(found.iter().map(|a| a.get()));
    }
    let mut calls: Vec<VirtAddr> = Vec::new();
    let mut budget = MAX_SCAN_BYTES;
    for m in scan.iter().filter_map(|&i| modules.get(i)) {
        let Ok(sections) = pe::sections(target, m.base) else {
            continue;
        };
        for s in sections.iter().filter(|s| s.is_executable()) {
            let len = s.size.min(budget);
            budget -= len;
            let Ok(n) = usize::try_from(len) else {
                continue;
            };
            let mut code = vec![0u8; n];
            let got = match target.read_memory(s.start, &mut code) {
                Ok(got) => got,
                Err(e) if e.is_link_failure() || matches!(e, TargetError::Interrupted) => {
                    return Err(e);
                }
                Err(_) => continue,
            };
            code.truncate(got);
            calls.extend(
                calls_in(&code, s.start, begin, &slots)
                    .into_iter()
                    .filter(|c| *c < begin || *c >= end),
            );
            if calls.len() >= MAX_CALLS || budget == 0 {
                break;
            }
        }
    }
    calls.truncate(MAX_CALLS);
    let in_modules: BTreeSet<usize> = calls
        .iter()
        .filter_map(|c| modules.iter().position(|m| m.contains(*c)))
        .collect();
    Ok(Some(SiteCallers {
        function: begin,
        function_location: location(&modules, begin),
        calls: calls.iter().map(|c| location(&modules, *c)).collect(),
        modules: in_modules.len(),
    }))
}

/// The `call rel32` to `target` and the `call [rip+disp32]` through one of `slots` in
/// `code` (loaded at `at`): the address of each call instruction.
fn calls_in(code: &[u8], at: VirtAddr, target: VirtAddr, slots: &BTreeSet<u64>) -> Vec<VirtAddr> {
    let mut out = Vec::new();
    for (i, w) in code.windows(6).enumerate() {
        let addr = at.get().wrapping_add(i as u64);
        let disp = |from: usize| {
            let d: [u8; 4] = [
                w.get(from).copied().unwrap_or(0),
                w.get(from + 1).copied().unwrap_or(0),
                w.get(from + 2).copied().unwrap_or(0),
                w.get(from + 3).copied().unwrap_or(0),
            ];
            i64::from(i32::from_le_bytes(d))
        };
        let hit = match (w.first(), w.get(1)) {
            (Some(0xe8), _) => addr.wrapping_add(5).wrapping_add_signed(disp(1)) == target.get(),
            (Some(0xff), Some(0x15)) => {
                slots.contains(&addr.wrapping_add(6).wrapping_add_signed(disp(2)))
            }
            _ => false,
        };
        if hit {
            out.push(VirtAddr(addr));
            if out.len() >= MAX_CALLS {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_indirect_calls_are_found_and_others_not() {
        let at = VirtAddr(0x1000);
        let helper = VirtAddr(0x1100);
        let slot = 0x2000u64;
        let mut code = vec![0x90u8; 0x40];
        // 0x1000: call rel32 to 0x1100 (rel = 0x1100 - 0x1005 = 0xfb)
        code[..5].copy_from_slice(&[0xe8, 0xfb, 0, 0, 0]);
        // 0x1010: call [rip+disp] with rip 0x1016 -> slot 0x2000 (disp 0xfea)
        code[0x10..0x16].copy_from_slice(&[0xff, 0x15, 0xea, 0x0f, 0, 0]);
        // 0x1020: call rel32 elsewhere
        code[0x20..0x25].copy_from_slice(&[0xe8, 0x00, 0x01, 0, 0]);
        let slots: BTreeSet<u64> = [slot].into();
        let found = calls_in(&code, at, helper, &slots);
        assert_eq!(found, vec![VirtAddr(0x1000), VirtAddr(0x1010)]);
        assert!(calls_in(&code, at, helper, &BTreeSet::new()).len() == 1);
    }
}
