//! WinDbg MASM-style expressions and ranges.

use super::{Arg, CmdError, Console};
use crate::VirtAddr;
use crate::target::DebugTarget;

/// Ranges longer than this need the `L?` form, as in WinDbg.
pub(crate) const MAX_RANGE: u64 = 256 << 20;

/// A parsed memory range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub start: VirtAddr,
    /// Number of elements (of the command's unit size).
    pub count: u64,
}

/// Parses a number in WinDbg syntax: hex by default, `` ` `` separators, `0x`, `0n`
/// (decimal), `0t` (octal), `0y` (binary) prefixes, an optional `h` suffix.
pub(crate) fn parse_number(s: &str) -> Option<u64> {
    let s: String = s.chars().filter(|&c| c != '`').collect();
    let lower = s.to_ascii_lowercase();
    let (digits, radix) = match lower.get(..2) {
        Some("0x") => (lower.get(2..)?, 16),
        Some("0n") => (lower.get(2..)?, 10),
        Some("0t") => (lower.get(2..)?, 8),
        Some("0y") => (lower.get(2..)?, 2),
        _ => (
            lower
                .strip_suffix('h')
                .filter(|d| !d.is_empty())
                .unwrap_or(&lower),
            16,
        ),
    };
    if digits.is_empty() || digits.len() > 64 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

impl Console {
    /// The address the first of `args` evaluates to (a syntax error without one).
    pub(crate) fn first_address(
        &mut self,
        t: &mut dyn DebugTarget,
        args: &[Arg],
    ) -> Result<VirtAddr, CmdError> {
        let first = args.first().ok_or(CmdError::Syntax)?;
        Ok(VirtAddr(self.eval(t, &first.text)?))
    }

    /// Evaluates an expression: terms joined by `+`/`-`.
    pub(crate) fn eval(&mut self, t: &mut dyn DebugTarget, text: &str) -> Result<u64, CmdError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CmdError::Syntax);
        }
        let mut acc: u64 = 0;
        let mut sign_plus = true;
        let mut term_start = 0usize;
        let bytes = text.as_bytes();
        let mut i = 0usize;
        loop {
            let at_end = i >= bytes.len();
            let c = bytes.get(i).copied();
            // A '-' or '+' right after the start of a term is a sign, not an operator.
            if at_end || ((c == Some(b'+') || c == Some(b'-')) && i > term_start) {
                let term = text.get(term_start..i).unwrap_or_default().trim();
                let v = self.term(t, term)?.ok_or_else(|| {
                    CmdError::Resolve(text.get(term_start..).unwrap_or_default().to_string())
                })?;
                acc = if sign_plus {
                    acc.wrapping_add(v)
                } else {
                    acc.wrapping_sub(v)
                };
                if at_end {
                    return Ok(acc);
                }
                sign_plus = c == Some(b'+');
                term_start = i + 1;
            }
            i += 1;
        }
    }

    /// One term: a number, `nt!Name` (through the `KDBG` block: a name this kernel does
    /// not resolve is an error naming it), or a module name (its base; `nt` is the
    /// kernel). `None`: nothing by that name.
    fn term(&mut self, t: &mut dyn DebugTarget, term: &str) -> Result<Option<u64>, CmdError> {
        if let Some(n) = parse_number(term) {
            return Ok(Some(n));
        }
        if term.is_empty() || term.len() > 256 {
            return Ok(None);
        }
        if let Some((module, sym)) = term.split_once('!') {
            if !module.eq_ignore_ascii_case("nt") {
                return Ok(None);
            }
            let symbols = self.symbols(t)?;
            return match symbols.resolve(sym) {
                Ok(a) => Ok(Some(a.get())),
                Err(e) => Err(CmdError::Msg(e.to_string())),
            };
        }
        // `@reg` is a register; so is a bare register name that names no module.
        if let Some(reg) = term.strip_prefix('@') {
            return self.register_value(t, reg);
        }
        // A module name stands for its base.
        let modules = match t.modules() {
            Ok(m) => m,
            Err(e) if e.is_link_failure() => return Err(e.into()),
            Err(_) => Vec::new(),
        };
        let module = modules
            .iter()
            .find(|m| {
                m.module_name().eq_ignore_ascii_case(term)
                    || m.name.eq_ignore_ascii_case(term)
                    || crate::stack::debugger_name(m).eq_ignore_ascii_case(term)
            })
            .map(|m| m.base.get());
        match module {
            Some(base) => Ok(Some(base)),
            None => self.register_value(t, term),
        }
    }

    /// The value of register `name` (`None` if it names no register, or the target has
    /// none).
    fn register_value(
        &mut self,
        t: &mut dyn DebugTarget,
        name: &str,
    ) -> Result<Option<u64>, CmdError> {
        let probe = crate::target::X64Registers::default();
        if super::debug::register(&probe, name).is_none() {
            return Ok(None);
        }
        match t.registers() {
            Ok(r) => Ok(super::debug::register(&r, name)),
            Err(e) if e.is_link_failure() => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    /// Parses `START [END | L count | L?count]` from `args`, in units of `unit` bytes.
    /// `END` is inclusive, as in WinDbg. Returns the range and how many args were used.
    pub(crate) fn range(
        &mut self,
        t: &mut dyn DebugTarget,
        args: &[Arg],
        unit: u64,
        default_count: u64,
    ) -> Result<(Range, usize), CmdError> {
        let first = args.first().ok_or(CmdError::Syntax)?;
        // `1000L4` (count glued to the address) is accepted too.
        let (start_text, glued) = split_count(&first.text);
        let start = VirtAddr(self.eval(t, start_text)?);
        let mut used = 1;
        let mut count = default_count;
        let count_text = match glued {
            Some(c) => Some(c.to_string()),
            None => match args.get(1) {
                Some(a) if !a.quoted && (a.text.starts_with('l') || a.text.starts_with('L')) => {
                    used = 2;
                    let c = a.text.get(1..).unwrap_or_default();
                    if c.is_empty() {
                        let n = args.get(2).ok_or(CmdError::Syntax)?;
                        used = 3;
                        Some(n.text.clone())
                    } else {
                        Some(c.to_string())
                    }
                }
                Some(a) if !a.quoted && used_as_end(&a.text) => {
                    used = 2;
                    let end = self.eval(t, &a.text)?;
                    if end < start.get() {
                        return Err(CmdError::Msg(format!("Range error in '{}'", a.text)));
                    }
                    let bytes = (end - start.get()).saturating_add(1);
                    count = bytes.div_ceil(unit.max(1));
                    if bytes > MAX_RANGE {
                        return Err(CmdError::Msg(format!(
                            "Range error in '{}': ranges over 256 MB need the L? form",
                            a.text
                        )));
                    }
                    None
                }
                _ => None,
            },
        };
        if let Some(c) = count_text {
            let (unlimited, c) = match c.strip_prefix('?') {
                Some(rest) => (true, rest),
                None => (false, c.as_str()),
            };
            count = self.eval(t, c)?;
            if !unlimited && count.saturating_mul(unit) > MAX_RANGE {
                return Err(CmdError::Msg(format!(
                    "Range error in 'L{c}': ranges over 256 MB need the L? form"
                )));
            }
        }
        Ok((Range { start, count }, used))
    }
}

/// Splits `1000L4` into `1000` and `4` (only when the part before `L` is a number).
fn split_count(s: &str) -> (&str, Option<&str>) {
    if let Some(i) = s.find(['l', 'L']) {
        let (a, b) = (
            s.get(..i).unwrap_or_default(),
            s.get(i + 1..).unwrap_or_default(),
        );
        if !a.is_empty() && parse_number(a).is_some() && !b.is_empty() {
            return (a, Some(b));
        }
    }
    (s, None)
}

/// Whether an argument after the start address looks like an end address (not a pattern).
fn used_as_end(s: &str) -> bool {
    !s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("fffff880`0496e3aa"), Some(0xfffff880_0496e3aa));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("0n10"), Some(10));
        assert_eq!(parse_number("0t10"), Some(8));
        assert_eq!(parse_number("0y101"), Some(5));
        assert_eq!(parse_number("10h"), Some(16));
        assert_eq!(parse_number("xyz"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn split_counts() {
        assert_eq!(split_count("1000L4"), ("1000", Some("4")));
        assert_eq!(split_count("l1"), ("l1", None));
    }
}
