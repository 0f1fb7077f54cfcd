//! Memory commands: `lm`, `s`, `e*`, `d*`, `u`.

use std::fmt::Write as _;

use super::expr::parse_number;
use super::{CmdError, CmdResult, Console, split_args};
use crate::VirtAddr;
use crate::disasm;
use crate::pooltag::glob_match;
use crate::target::{CpuMode, DebugTarget};

/// Most hits `s` reports.
const MAX_SEARCH_HITS: usize = 4096;
/// Most bytes one `d*` command displays.
const MAX_DISPLAY: u64 = 1 << 20;
/// Most instructions one `u` shows.
const MAX_UNASSEMBLE: u64 = 4096;

/// Reads `len` bytes; unreadable ones are `None` (the read stops at the first bad byte,
/// then resumes at the next page).
pub(crate) fn read_lossy(t: &mut dyn DebugTarget, addr: VirtAddr, len: usize) -> Vec<Option<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut buf = vec![0u8; len];
    while out.len() < len {
        let at = addr.saturating_add(out.len() as u64);
        let Some(dst) = buf.get_mut(..len - out.len()) else {
            break;
        };
        let got = t.read_memory(at, dst).unwrap_or(0);
        out.extend(dst.iter().take(got).map(|&b| Some(b)));
        if out.len() < len {
            // Skip to the next page boundary (or the end) as unreadable.
            let at = addr.saturating_add(out.len() as u64).get();
            let next_page = (at | 0xfff).saturating_add(1);
            let skip = usize::try_from(next_page - at)
                .unwrap_or(len)
                .min(len - out.len());
            out.extend(std::iter::repeat_n(None, skip.max(1)));
        }
    }
    out.truncate(len);
    out
}

fn ascii(bytes: &[Option<u8>]) -> String {
    bytes
        .iter()
        .map(|b| match b {
            Some(c) if (0x20..0x7f).contains(c) => *c as char,
            Some(_) => '.',
            None => '?',
        })
        .collect()
}

/// A `db` line: up to 16 bytes, `-` between the 8th and 9th, then the ASCII column.
pub(crate) fn db_line(addr: VirtAddr, bytes: &[Option<u8>]) -> String {
    let mut hex = String::new();
    for (i, b) in bytes.iter().take(16).enumerate() {
        if i > 0 {
            hex.push(if i == 8 { '-' } else { ' ' });
        }
        match b {
            Some(v) => {
                let _ = write!(hex, "{v:02x}");
            }
            None => hex.push_str("??"),
        }
    }
    format!(
        "{addr}  {hex:<47}  {}",
        ascii(bytes.get(..bytes.len().min(16)).unwrap_or_default())
    )
}

/// A `dc`/`dd`/`dq` line: up to `16 / unit` values, optionally the ASCII column.
fn values_line(addr: VirtAddr, bytes: &[Option<u8>], unit: usize, with_ascii: bool) -> String {
    let per_line = 16 / unit;
    let width = per_line * (unit * 2 + 1) - 1;
    let mut vals = Vec::new();
    for chunk in bytes.chunks(unit).take(per_line) {
        if chunk.len() == unit && chunk.iter().all(Option::is_some) {
            let mut v: u64 = 0;
            for (i, b) in chunk.iter().enumerate() {
                v |= u64::from(b.unwrap_or(0)) << (8 * i);
            }
            vals.push(if unit == 8 {
                VirtAddr(v).to_string()
            } else {
                format!("{v:0w$x}", w = unit * 2)
            });
        } else {
            vals.push("?".repeat(unit * 2 + usize::from(unit == 8)));
        }
    }
    let width = if unit == 8 { width + per_line } else { width };
    let text = vals.join(" ");
    if with_ascii {
        format!("{addr}  {text:<width$}  {}", ascii(bytes))
    } else {
        format!("{addr}  {text}")
    }
}

/// Fails unless `v` fits in `unit` bytes (`text` is the argument as typed).
fn check_fits(v: u64, unit: u64, text: &str) -> CmdResult {
    if unit < 8 && v >> (unit * 8) != 0 {
        return Err(CmdError::Msg(format!(
            "Values must fit in {unit} byte(s): '{text}'"
        )));
    }
    Ok(())
}

impl Console {
    pub(super) fn cmd_lm(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let mut addr: Option<VirtAddr> = None;
        let mut pattern: Option<String> = None;
        let mut i = 0;
        while let Some(a) = args.get(i) {
            match a.text.as_str() {
                "a" => {
                    let v = args.get(i + 1).ok_or(CmdError::Syntax)?;
                    addr = Some(VirtAddr(self.eval(t, &v.text)?));
                    i += 2;
                }
                "m" | "M" => {
                    pattern = Some(args.get(i + 1).ok_or(CmdError::Syntax)?.text.clone());
                    i += 2;
                }
                // Display options (`o`, `v`, `k`, `sm`...) are accepted and ignored.
                s if s.chars().all(|c| c.is_ascii_alphanumeric()) && s.len() <= 3 => i += 1,
                _ => return Err(CmdError::Syntax),
            }
        }
        let modules = t.modules()?;
        out.push_str("start             end                 module name\n");
        for m in &modules {
            if addr.is_some_and(|a| !m.contains(a)) {
                continue;
            }
            if let Some(p) = &pattern {
                let name = m.module_name().to_ascii_lowercase();
                if !glob_match(p.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
                    continue;
                }
            }
            let _ = writeln!(
                out,
                "{} {}   {:<10} (deferred)",
                m.base,
                m.end(),
                m.module_name()
            );
        }
        Ok(())
    }

    pub(super) fn cmd_search(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        // Flags: `-a`, `-b`, `-w`, `-d`, `-q`, optionally with `1` (addresses only): `-1a`.
        let (kind, addresses_only, skip) = match args.first() {
            Some(a) if a.text.starts_with('-') && !a.quoted => {
                let f = a.text.get(1..).unwrap_or_default().to_ascii_lowercase();
                let only = f.contains('1');
                let k = f.chars().filter(|c| *c != '1').collect::<String>();
                (k, only, 1)
            }
            _ => ("b".to_string(), false, 0),
        };
        let unit: u64 = match kind.as_str() {
            "a" | "b" => 1,
            "w" => 2,
            "d" => 4,
            "q" => 8,
            _ => return Err(CmdError::Syntax),
        };
        let rest_args = args.get(skip..).unwrap_or_default();
        let (range, used) = self.range(t, rest_args, 1, 0)?;
        if range.count == 0 {
            return Err(CmdError::Syntax);
        }
        let pat_args = rest_args.get(used..).unwrap_or_default();
        let mut pattern = Vec::new();
        if kind == "a" {
            let p = pat_args.first().ok_or(CmdError::Syntax)?;
            pattern.extend_from_slice(p.text.as_bytes());
        } else {
            for a in pat_args {
                let v = parse_number(&a.text).ok_or_else(|| CmdError::Resolve(a.text.clone()))?;
                let bytes = v.to_le_bytes();
                let Some(unit_bytes) = bytes.get(..unit as usize) else {
                    return Err(CmdError::Syntax);
                };
                check_fits(v, unit, &a.text)?;
                pattern.extend_from_slice(unit_bytes);
            }
        }
        if pattern.is_empty() || pattern.len() > 4096 {
            return Err(CmdError::Syntax);
        }
        let end = range.start.saturating_add(range.count);
        // Only matches wholly inside the range count.
        let hits = t.search_memory(range.start, end, &pattern, MAX_SEARCH_HITS)?;
        for h in hits {
            if unit > 1 && h.get() % unit != 0 {
                continue; // -w/-d/-q report naturally aligned hits only
            }
            if h.saturating_add(pattern.len() as u64) > end {
                continue;
            }
            if addresses_only {
                let _ = writeln!(out, "{h}");
                continue;
            }
            let bytes = read_lossy(t, h, 16);
            let line = match unit {
                1 => db_line(h, &bytes),
                u => values_line(h, &bytes, u as usize, false),
            };
            out.push_str(&line);
            out.push('\n');
        }
        Ok(())
    }

    pub(super) fn cmd_enter(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        unit: usize,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let addr = self.first_address(t, &args)?;
        if args.len() < 2 {
            return Err(CmdError::Msg(
                "interactive entry (no values) is not supported".into(),
            ));
        }
        let mut data = Vec::new();
        for a in args.get(1..).unwrap_or_default() {
            let v = if a.quoted {
                return Err(CmdError::Syntax);
            } else {
                self.eval(t, &a.text)?
            };
            check_fits(v, unit as u64, &a.text)?;
            data.extend_from_slice(v.to_le_bytes().get(..unit).unwrap_or_default());
        }
        let written = t.write_memory(addr, &data).unwrap_or(0);
        if written < data.len() {
            return Err(CmdError::Memory(rest.trim().to_string()));
        }
        Ok(())
    }

    pub(super) fn cmd_display(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        unit: u64,
        with_ascii: bool,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let default_count = 128 / unit;
        let (start, count) = if args.is_empty() {
            (self.next_display.ok_or(CmdError::Syntax)?, default_count)
        } else {
            let (r, used) = self.range(t, &args, unit, default_count)?;
            if used < args.len() {
                return Err(CmdError::Syntax);
            }
            (r.start, r.count)
        };
        let len = count.saturating_mul(unit).min(MAX_DISPLAY);
        let bytes = read_lossy(t, start, usize::try_from(len).unwrap_or(0));
        for (i, line) in bytes.chunks(16).enumerate() {
            let at = start.saturating_add(i as u64 * 16);
            let text = if unit == 1 {
                db_line(at, line)
            } else {
                values_line(at, line, unit as usize, with_ascii)
            };
            out.push_str(&text);
            out.push('\n');
        }
        self.next_display = Some(start.saturating_add(len));
        Ok(())
    }

    pub(super) fn cmd_unassemble(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        if args.is_empty() {
            let start = self.next_unassemble.ok_or(CmdError::Syntax)?;
            let next = self.unassemble_lines(t, start, 8, out)?;
            self.next_unassemble = Some(next);
            return Ok(());
        }
        let (r, used) = self.range(t, &args, 1, 8)?;
        if used < args.len() {
            return Err(CmdError::Syntax);
        }
        let counted = used == 1 || args.get(1).is_some_and(|a| a.text.starts_with(['l', 'L']));
        if counted {
            // `u ADDR` shows 8 instructions; `u ADDR L n` shows n.
            let next = self.unassemble_lines(t, r.start, r.count.min(MAX_UNASSEMBLE), out)?;
            self.next_unassemble = Some(next);
            Ok(())
        } else {
            // `u START END`: until END (inclusive).
            self.unassemble_until(t, r.start, r.start.saturating_add(r.count), out)
        }
    }

    fn unassemble_until(
        &mut self,
        t: &mut dyn DebugTarget,
        start: VirtAddr,
        end: VirtAddr,
        out: &mut String,
    ) -> CmdResult {
        let mut at = start;
        let mut n = 0;
        while at < end && n < MAX_UNASSEMBLE {
            at = self.unassemble_lines(t, at, 1, out)?;
            n += 1;
        }
        self.next_unassemble = Some(at);
        Ok(())
    }

    /// Disassembles `count` instructions from `start`; returns the address after the last.
    pub(super) fn unassemble_lines(
        &mut self,
        t: &mut dyn DebugTarget,
        start: VirtAddr,
        count: u64,
        out: &mut String,
    ) -> Result<VirtAddr, CmdError> {
        let modules = t.modules().unwrap_or_default();
        // As the processor runs now: a firmware's real mode is 16-bit code.
        let bits = t.cpu_mode().map_or(64, CpuMode::bitness);
        let mut at = start;
        for _ in 0..count {
            let mut buf = [0u8; 16];
            let got = t.read_memory(at, &mut buf).unwrap_or(0);
            if got == 0 {
                let _ = writeln!(out, "{at} ??              ???");
                at = at.saturating_add(1);
                continue;
            }
            let bytes = buf.get(..got).unwrap_or_default();
            let ins = disasm::decode_one_as(bytes, at, bits);
            let len = ins.len().max(1);
            out.push_str(&disasm::u_line(
                &ins,
                bytes.get(..len).unwrap_or(bytes),
                &modules,
            ));
            out.push('\n');
            at = at.saturating_add(len as u64);
        }
        Ok(at)
    }
}
