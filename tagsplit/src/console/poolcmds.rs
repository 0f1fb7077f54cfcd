//! Pool commands: `!poolused`, `!poolfind`, `!pool`.

use std::fmt::Write as _;

use tagsplit_protocol::nt::layout::pool_header;

use super::expr::parse_number;
use super::memory::read_lossy;
use super::{CmdError, CmdResult, Console, split_args};
use crate::pool::{self, PoolHeader, TagUsage};
use crate::pooltag::glob_match;
use crate::target::DebugTarget;
use crate::{PoolTag, VirtAddr};

/// Where `!poolfind` looks for small blocks: the kernel half of the address space.
const KERNEL_SPACE: (u64, u64) = (0xffff_8000_0000_0000, u64::MAX);
/// Most tag hits `!poolfind` validates.
const MAX_POOLFIND_HITS: usize = 100_000;

/// `!poolused` options.
#[derive(Debug, Default)]
struct PoolusedArgs {
    flags: u64,
    top: Option<usize>,
    pattern: Option<String>,
}

fn parse_poolused(rest: &str) -> Result<PoolusedArgs, CmdError> {
    let args = split_args(rest)?;
    let mut out = PoolusedArgs::default();
    let mut positional = 0;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let text = a.text.as_str();
        if let Some(n) = text.strip_prefix("/t").or_else(|| text.strip_prefix("/T")) {
            let n = if n.is_empty() {
                i += 1;
                args.get(i).ok_or(CmdError::Syntax)?.text.clone()
            } else {
                n.to_string()
            };
            // The count is decimal, as practitioners type it (`/t5`, `/t 20`).
            let v = n
                .parse::<usize>()
                .ok()
                .or_else(|| parse_number(&n).and_then(|v| usize::try_from(v).ok()));
            out.top = Some(v.ok_or(CmdError::Resolve(n))?);
        } else if text.starts_with('/') {
            return Err(CmdError::Syntax);
        } else if positional == 0 && !a.quoted && parse_number(text).is_some() {
            out.flags = parse_number(text).unwrap_or(0);
            positional = 1;
        } else if positional <= 1 {
            if text.is_empty() || text.len() > 4 && !text.contains('*') {
                return Err(CmdError::Msg(format!("Invalid tag pattern '{text}'")));
            }
            out.pattern = Some(text.to_string());
            positional = 2;
        } else {
            return Err(CmdError::Syntax);
        }
        i += 1;
    }
    Ok(out)
}

/// Whether `tag` matches a `!poolused`/`!poolfind` pattern (`*`, `?`; exact 4 otherwise).
fn tag_matches(pattern: &str, tag: PoolTag) -> bool {
    let mut pat = pattern.as_bytes().to_vec();
    if !pat.contains(&b'*') {
        pat.resize(4, b' ');
    }
    glob_match(&pat, &tag.unprotected().bytes())
}

impl Console {
    /// Writes `!pool`'s description line for `tag`.
    fn write_pooltag(&self, out: &mut String, tag: PoolTag) {
        let _ = writeln!(out, "\t\tPooltag {} : {}", tag, self.pooltag.describe(tag));
    }

    pub(super) fn cmd_poolused(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = parse_poolused(rest)?;
        let snap = pool::snapshot(t)?;
        let verbose = args.flags & 1 != 0;
        let mut rows: Vec<(PoolTag, TagUsage)> = snap
            .tags
            .iter()
            .filter(|(_, u)| u.np_bytes != 0 || u.paged_bytes != 0)
            .filter(|(tag, _)| {
                args.pattern
                    .as_deref()
                    .is_none_or(|p| tag_matches(p, **tag))
            })
            .map(|(t, u)| (*t, *u))
            .collect();
        let heading = if args.flags & 2 != 0 {
            rows.sort_by(|a, b| b.1.np_bytes.cmp(&a.1.np_bytes).then(a.0.cmp(&b.0)));
            "   Sorting by NonPaged Pool Consumed"
        } else if args.flags & 4 != 0 {
            rows.sort_by(|a, b| b.1.paged_bytes.cmp(&a.1.paged_bytes).then(a.0.cmp(&b.0)));
            "   Sorting by Paged Pool Consumed"
        } else {
            "   Sorting by  Tag"
        };
        if let Some(n) = args.top {
            rows.truncate(n);
        }
        out.push_str(heading);
        out.push_str("\n\n");
        if verbose {
            out.push_str("                            NonPaged                                            Paged\n");
            out.push_str(" Tag      Allocs       Frees        Diff         Used       Allocs       Frees        Diff         Used\n\n");
        } else {
            out.push_str("               NonPaged                  Paged\n");
            out.push_str(" Tag     Allocs         Used     Allocs         Used\n\n");
        }
        for (tag, u) in &rows {
            let desc = self.pooltag.describe(*tag);
            if verbose {
                let _ = writeln!(
                    out,
                    " {tag} {:11} {:11} {:11} {:12} {:12} {:11} {:11} {:12}\t{desc}",
                    u.np_allocs,
                    u.np_frees,
                    u.np_outstanding(),
                    u.np_bytes,
                    u.paged_allocs,
                    u.paged_frees,
                    u.paged_outstanding(),
                    u.paged_bytes
                );
            } else {
                let _ = writeln!(
                    out,
                    " {tag}{:10}{:13}{:11}{:13}\t{desc}",
                    u.np_outstanding(),
                    u.np_bytes,
                    u.paged_outstanding(),
                    u.paged_bytes
                );
            }
        }
        // TOTAL covers every tag in the table, not just the rows shown.
        let total = snap.total();
        let np_out: u64 = snap.tags.values().map(TagUsage::np_outstanding).sum();
        let p_out: u64 = snap.tags.values().map(TagUsage::paged_outstanding).sum();
        out.push('\n');
        if verbose {
            let _ = writeln!(
                out,
                " TOTAL {:10} {:11} {:11} {:12} {:12} {:11} {:11} {:12}",
                total.np_allocs,
                total.np_frees,
                np_out,
                total.np_bytes,
                total.paged_allocs,
                total.paged_frees,
                p_out,
                total.paged_bytes
            );
        } else {
            let _ = writeln!(
                out,
                " TOTAL{np_out:10}{:13}{p_out:11}{:13}",
                total.np_bytes, total.paged_bytes
            );
        }
        Ok(())
    }

    pub(super) fn cmd_poolfind(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let tag_arg = args.first().ok_or(CmdError::Syntax)?;
        let tag = if let Some(hex) = tag_arg.text.strip_prefix("0x") {
            let v = u32::from_str_radix(hex, 16)
                .map_err(|_| CmdError::Resolve(tag_arg.text.clone()))?;
            PoolTag::from_u32(v)
        } else {
            PoolTag::parse(&tag_arg.text)
                .ok_or_else(|| CmdError::Msg(format!("Invalid tag '{}'", tag_arg.text)))?
        };
        let pool_type = match args.get(1) {
            None => 0,
            Some(a) => parse_number(&a.text).ok_or_else(|| CmdError::Resolve(a.text.clone()))?,
        };
        let want_paged = match pool_type {
            0 => false,
            1 => true,
            _ => {
                return Err(CmdError::Msg(format!(
                    "Pool type {pool_type:x} is not supported (0 nonpaged, 1 paged)"
                )));
            }
        };
        let tables = pool::locate(t)?;
        let bare = tag.unprotected();
        if let Some(big) = tables.big_table {
            let end = big.saturating_add(tables.big_entries.saturating_mul(0x18));
            let _ = writeln!(
                out,
                "Scanning large pool allocation table for Tag: {bare} ({big} : {end})\n"
            );
            for e in pool::big_pages(t, &tables)? {
                if e.tag.unprotected() != bare || (e.pool_type & 1 == 1) != want_paged {
                    continue;
                }
                let prot = if e.tag.is_protected() {
                    " (Protected)"
                } else {
                    ""
                };
                if e.free {
                    let _ = writeln!(
                        out,
                        "*{} :free large page allocation, Tag was {bare}{prot}, size was 0x{:x} bytes",
                        e.va, e.bytes
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "*{} :large page allocation, Tag is {bare}{prot}, size is 0x{:x} bytes",
                        e.va, e.bytes
                    );
                }
            }
        }
        let region = if want_paged { "Paged" } else { "NonPaged" };
        let _ = writeln!(
            out,
            "\nSearching {region} pool ({} : {}) for Tag: {bare}\n",
            VirtAddr(KERNEL_SPACE.0),
            VirtAddr(KERNEL_SPACE.1)
        );
        let modules = t.modules()?;
        let needle = bare.bytes();
        let prefix = needle.get(..3).unwrap_or_default();
        let hits = t.search_memory(
            VirtAddr(KERNEL_SPACE.0),
            VirtAddr(KERNEL_SPACE.1),
            prefix,
            MAX_POOLFIND_HITS,
        )?;
        for h in hits {
            let Some(hdr_addr) = h.get().checked_sub(pool_header::POOL_TAG) else {
                continue;
            };
            if hdr_addr % pool_header::SIZE != 0 || modules.iter().any(|m| m.contains(h)) {
                continue;
            }
            let raw = read_lossy(t, VirtAddr(hdr_addr), 16);
            let Some(bytes) = raw
                .iter()
                .copied()
                .collect::<Option<Vec<u8>>>()
                .and_then(|v| <[u8; 16]>::try_from(v).ok())
            else {
                continue;
            };
            let hdr = PoolHeader::parse(VirtAddr(hdr_addr), &bytes);
            if hdr.tag.unprotected() != bare || !hdr.plausible() {
                continue;
            }
            if hdr.allocated() && hdr.paged() != want_paged {
                continue;
            }
            let state = if hdr.allocated() {
                "(Allocated)"
            } else {
                "(Free)"
            };
            let prot = if hdr.tag.is_protected() {
                " (Protected)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{} size: {:4x} previous size: {:4x}  {state} {bare}{prot}",
                hdr.addr, hdr.block_size, hdr.previous_size
            );
        }
        Ok(())
    }

    pub(super) fn cmd_pool(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let args = split_args(rest)?;
        let addr = self.first_address(t, &args)?;
        let flags = match args.get(1) {
            Some(f) => self.eval(t, &f.text)?,
            None => 0,
        };
        let tables = pool::locate(t)?;
        for e in pool::big_pages(t, &tables)? {
            if !e.free && addr >= e.va && addr < e.va.saturating_add(e.bytes.max(1)) {
                let region = region_name(e.pool_type & 1 == 1);
                let _ = writeln!(out, "Pool page {addr} region is {region} pool");
                let _ = writeln!(
                    out,
                    "*{} : large page allocation, tag is {}, size is 0x{:x} bytes",
                    e.va, e.tag, e.bytes
                );
                self.write_pooltag(out, e.tag);
                return Ok(());
            }
        }
        let headers = match pool::page_headers(t, addr) {
            Ok(h) if !h.is_empty() => h,
            _ => {
                return Err(CmdError::Msg(format!(
                    "{addr}: Unable to get contents of pool block"
                )));
            }
        };
        let region = region_name(headers.iter().any(|h| h.allocated() && h.paged()));
        let _ = writeln!(out, "Pool page {addr} region is {region} pool");
        for h in headers {
            let here = addr >= h.addr && addr < h.addr.saturating_add(h.block_size);
            if flags & 2 != 0 && !here {
                continue;
            }
            let state = if h.allocated() {
                "(Allocated)"
            } else {
                "(Free)     "
            };
            let mark = if here { '*' } else { ' ' };
            let _ = writeln!(
                out,
                "{mark}{} size: {:4x} previous size: {:4x}  {state} {mark}{}{}",
                h.addr,
                h.block_size,
                h.previous_size,
                h.tag,
                if h.tag.is_protected() {
                    " (Protected)"
                } else {
                    ""
                }
            );
            if here && flags & 0x8000_0000 == 0 {
                self.write_pooltag(out, h.tag);
            }
        }
        Ok(())
    }
}

/// The region word `!pool` prints for a page.
fn region_name(paged: bool) -> &'static str {
    if paged { "Paged" } else { "Nonpaged" }
}
