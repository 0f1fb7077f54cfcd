#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The x64 unwind decoder on real PE32+ files that no one here wrote: mingw-w64 builds DLLs
//! from the C and assembly fixtures in `tests/fixtures/unwind/` (with its CRT start-up
//! code linked in), and every function's `RUNTIME_FUNCTION` and `UNWIND_INFO` as we
//! decode them must match `objdump -p`'s "Function Table" and ".xdata" dump of the same
//! file. Then the unwinder walks one frame out of every function of those DLLs, on a stack
//! laid out from objdump's decode.
//!
//! Skipped with a notice when `x86_64-w64-mingw32-gcc` or `x86_64-w64-mingw32-objdump` is
//! missing, unless `CI=true` (`.ci/run` installs mingw-w64).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use tagsplit::VirtAddr;
use tagsplit::pe::data_directory;
use tagsplit::stack::{Registers, StopReason, Unwinder, Unwound};
use tagsplit::target::flat::FlatTarget;
use tagsplit::target::{ModuleInfo, read_exact};
use tagsplit_protocol::nt::pe::directory;
use tagsplit_protocol::nt::unwind::{
    Reg, RuntimeFunction, Trailer, UnwindInfo, UnwindOp, parse_function_table,
};

const GCC: &str = "x86_64-w64-mingw32-gcc";
const OBJDUMP: &str = "x86_64-w64-mingw32-objdump";

fn have(tool: &str) -> bool {
    common::have_tool(
        tool,
        "the mingw-w64 unwind test (apt-get install mingw-w64)",
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unwind")
}

/// Builds a DLL from the fixtures with `flags`.
fn build(name: &str, flags: &[&str]) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let status = Command::new(GCC)
        .args(flags)
        .arg("-shared")
        .arg("-o")
        .arg(&out)
        .arg(fixtures().join("frames.c"))
        .arg(fixtures().join("directives.S"))
        .status()
        .unwrap();
    assert!(status.success(), "{GCC} failed for {name}");
    out
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// The file laid out as the loader would map it: (image base, image).
fn load(file: &[u8]) -> (u64, Vec<u8>) {
    let nt = u32_at(file, 0x3c) as usize;
    assert_eq!(&file[nt..nt + 4], b"PE\0\0");
    let sections = usize::from(u16_at(file, nt + 6));
    let opt = nt + 0x18;
    let opt_size = usize::from(u16_at(file, nt + 0x14));
    assert_eq!(u16_at(file, opt), 0x20b, "PE32+");
    let base = u64::from_le_bytes(file[opt + 0x18..opt + 0x20].try_into().unwrap());
    let size = u32_at(file, opt + 0x38) as usize;
    let headers = u32_at(file, opt + 0x3c) as usize;
    let mut image = vec![0u8; size];
    image[..headers].copy_from_slice(&file[..headers]);
    for i in 0..sections {
        let s = opt + opt_size + 40 * i;
        let vsize = u32_at(file, s + 8) as usize;
        let rva = u32_at(file, s + 12) as usize;
        let raw_size = u32_at(file, s + 16) as usize;
        let raw = u32_at(file, s + 20) as usize;
        let n = raw_size.min(vsize.max(raw_size)).min(size - rva);
        if raw != 0 {
            image[rva..rva + n].copy_from_slice(&file[raw..raw + n]);
        }
    }
    (base, image)
}

/// One `.xdata` block as objdump prints it.
#[derive(Debug, Default)]
struct Dumped {
    version: u8,
    flags: String,
    codes: usize,
    prolog: u8,
    frame_offset: u8,
    frame_reg: String,
    lines: Vec<String>,
    chain: Option<Triple>,
}

/// A function table row: begin, end, unwind data.
type Triple = (u64, u64, u64);

/// objdump's "Function Table" (absolute addresses) and ".xdata" dump (by unwind info RVA).
fn objdump(path: &Path) -> (Vec<Triple>, BTreeMap<u32, Dumped>) {
    let out = Command::new(OBJDUMP).arg("-p").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_end_matches(['.', ',']), 16).unwrap();
    let mut table = Vec::new();
    let mut blocks = BTreeMap::new();
    let mut section = "";
    let mut current: Option<(u32, Dumped)> = None;
    for line in text.lines() {
        if line.starts_with("The Function Table") {
            section = "pdata";
            continue;
        }
        if line.starts_with("Dump of .xdata") {
            section = "xdata";
            continue;
        }
        if line.is_empty() {
            if let Some((rva, d)) = current.take() {
                blocks.insert(rva, d);
            }
            section = "";
            continue;
        }
        match section {
            "pdata" if !line.starts_with("vma:") => {
                let (_, rest) = line.split_once(':').unwrap();
                let v: Vec<u64> = rest.split_whitespace().map(hex).collect();
                table.push((v[0], v[1], v[2]));
            }
            "xdata" => {
                if let Some((_, rest)) = line.split_once("(rva: ") {
                    if let Some((rva, d)) = current.take() {
                        blocks.insert(rva, d);
                    }
                    let rva = hex(rest.split_once(')').unwrap().0) as u32;
                    current = Some((rva, Dumped::default()));
                    continue;
                }
                let d = &mut current.as_mut().unwrap().1;
                let l = line.trim();
                if let Some(rest) = l.strip_prefix("Version: ") {
                    let (v, flags) = rest.split_once(", Flags: ").unwrap();
                    d.version = v.parse().unwrap();
                    d.flags = flags.to_string();
                } else if let Some(rest) = l.strip_prefix("Nbr codes: ") {
                    let parts: Vec<&str> = rest.split(", ").collect();
                    d.codes = parts[0].parse().unwrap();
                    d.prolog = hex(parts[1].strip_prefix("Prologue size: 0x").unwrap()) as u8;
                    d.frame_offset = hex(parts[2].strip_prefix("Frame offset: 0x").unwrap()) as u8;
                    d.frame_reg = parts[3].strip_prefix("Frame reg: ").unwrap().to_string();
                } else if l.starts_with("pc+0x") {
                    d.lines.push(l.to_string());
                } else if let Some(rest) = l.strip_prefix("Chain: start: ") {
                    let (start, end) = rest.split_once(", end: ").unwrap();
                    d.chain = Some((hex(start), hex(end), 0));
                } else if let Some(rest) = l.strip_prefix("unwind data: ") {
                    if let Some(c) = d.chain.as_mut() {
                        c.2 = hex(rest);
                    }
                } else {
                    d.lines.push(format!("?{l}"));
                }
            }
            _ => {}
        }
    }
    if let Some((rva, d)) = current.take() {
        blocks.insert(rva, d);
    }
    (table, blocks)
}

/// The lines objdump may print for each of our codes (two for the far XMM save: binutils
/// multiplies its offset by 16, which the format does not; gas writes it unscaled).
fn expected_lines(info: &UnwindInfo) -> Vec<Vec<String>> {
    let fr = info.frame_register.map_or("none", Reg::name);
    info.codes
        .iter()
        .map(|c| {
            let pc = format!("pc+0x{:02x}: ", c.offset);
            let texts: Vec<String> = match c.op {
                UnwindOp::PushNonvol(r) => vec![format!("push {r}")],
                UnwindOp::AllocLarge(n) | UnwindOp::AllocLargeFar(n) => {
                    vec![format!("alloc large area: rsp = rsp - {n:#x}")]
                }
                UnwindOp::AllocSmall(n) => vec![format!("alloc small area: rsp = rsp - {n:#x}")],
                UnwindOp::SetFpreg => vec![format!(
                    "FPReg: {fr} = rsp + {:#x} (info = 0x0)",
                    16 * u32::from(info.frame_offset)
                )],
                UnwindOp::SaveNonvol { reg, offset } | UnwindOp::SaveNonvolFar { reg, offset } => {
                    vec![format!("save {reg} at rsp + {offset:#x}")]
                }
                UnwindOp::SaveXmm128 { xmm, offset } => {
                    vec![format!("save xmm{xmm} at rsp + {offset:#x}")]
                }
                UnwindOp::SaveXmm128Far { xmm, offset } => vec![
                    format!("save xmm{xmm} at rsp + {offset:#x}"),
                    format!("save xmm{xmm} at rsp + {:#x}", u64::from(offset) * 16),
                ],
                UnwindOp::PushMachframe { error_code } => vec![format!(
                    "interrupt entry (SS, old RSP, EFLAGS, CS, RIP{})",
                    if error_code { ",ErrorCode" } else { "" }
                )],
                UnwindOp::Epilog { info } => vec![format!("v2 epilog {:02x} {info:x}", c.offset)],
            };
            texts.into_iter().map(|t| format!("{pc}{t}")).collect()
        })
        .collect()
}

fn flags_text(t: &Trailer) -> &'static str {
    match t {
        Trailer::None => "none",
        Trailer::Handler {
            exception: true,
            termination: true,
            ..
        } => "UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER",
        Trailer::Handler {
            exception: true, ..
        } => "UNW_FLAG_EHANDLER",
        Trailer::Handler { .. } => "UNW_FLAG_UHANDLER",
        Trailer::Chained(_) => "UNW_FLAG_CHAININFO",
    }
}

/// Kinds of unwind operation seen, to check that the fixtures cover them.
fn kind(op: &UnwindOp) -> &'static str {
    match op {
        UnwindOp::PushNonvol(_) => "push",
        UnwindOp::AllocLarge(_) => "alloc large",
        UnwindOp::AllocLargeFar(_) => "alloc large far",
        UnwindOp::AllocSmall(_) => "alloc small",
        UnwindOp::SetFpreg => "set fpreg",
        UnwindOp::SaveNonvol { .. } => "save nonvol",
        UnwindOp::SaveNonvolFar { .. } => "save nonvol far",
        UnwindOp::Epilog { .. } => "epilog",
        UnwindOp::SaveXmm128 { .. } => "save xmm128",
        UnwindOp::SaveXmm128Far { .. } => "save xmm128 far",
        UnwindOp::PushMachframe { error_code: false } => "machframe",
        UnwindOp::PushMachframe { error_code: true } => "machframe with error code",
    }
}

struct Checked {
    functions: usize,
    codes: usize,
    kinds: BTreeSet<&'static str>,
    walked: usize,
}

/// Decodes the DLL at `path` through a flat target and compares with objdump.
fn check(path: &Path) -> Checked {
    let file = std::fs::read(path).unwrap();
    let (base, image) = load(&file);
    let mut t = FlatTarget::new();
    let module = ModuleInfo {
        name: "fixture.dll".into(),
        path: path.display().to_string(),
        base: VirtAddr(base),
        size: image.len() as u64,
    };
    t.memory.map(VirtAddr(base), image.clone());
    t.modules = vec![module.clone()];

    let (rva, size) = data_directory(&mut t, VirtAddr(base), directory::EXCEPTION)
        .unwrap()
        .expect("an exception directory");
    let mut raw = vec![0u8; size as usize];
    read_exact(&mut t, VirtAddr(base + u64::from(rva)), &mut raw).unwrap();
    let table = parse_function_table(&raw).unwrap();

    let (dumped_table, blocks) = objdump(path);
    let ours: Vec<Triple> = table
        .iter()
        .map(|f| {
            (
                base + u64::from(f.begin),
                base + u64::from(f.end),
                base + u64::from(f.unwind_data),
            )
        })
        .collect();
    assert_eq!(ours, dumped_table, "function table of {}", path.display());

    let mut checked = Checked {
        functions: 0,
        codes: 0,
        kinds: BTreeSet::new(),
        walked: 0,
    };
    let mut infos = Vec::new();
    for f in &table {
        let at = f.unwind_data as usize;
        let info = UnwindInfo::parse(&image[at..]).unwrap();
        let d = blocks
            .get(&f.unwind_data)
            .unwrap_or_else(|| panic!("objdump has no .xdata for {f:x?}"));
        let what = format!("{} function {:#x}: {d:?}", path.display(), f.begin);
        assert_eq!(info.version, d.version, "{what}");
        assert_eq!(flags_text(&info.trailer), d.flags, "{what}");
        assert_eq!(info.slot_count(), d.codes, "{what}");
        assert_eq!(info.prolog_size, d.prolog, "{what}");
        assert_eq!(info.frame_offset, d.frame_offset, "{what}");
        assert_eq!(
            info.frame_register.map_or("none", Reg::name),
            d.frame_reg,
            "{what}"
        );
        let expected = expected_lines(&info);
        assert_eq!(expected.len(), d.lines.len(), "{what}");
        for (alternatives, line) in expected.iter().zip(&d.lines) {
            assert!(
                alternatives.contains(line),
                "{what}: objdump says {line:?}, we decode {alternatives:?}"
            );
        }
        if let Trailer::Chained(c) = info.trailer {
            assert_eq!(
                d.chain,
                Some((
                    u64::from(c.begin),
                    u64::from(c.end),
                    u64::from(c.unwind_data)
                )),
                "{what}"
            );
        }
        checked.functions += 1;
        checked.codes += info.codes.len();
        checked.kinds.extend(info.codes.iter().map(|c| kind(&c.op)));
        infos.push((*f, info));
    }
    checked.walked = walk_each(&mut t, &module, &infos, &blocks);
    checked
}

/// For each function (but those with machine frames), a stack laid out from objdump's
/// decode as the whole prolog left it; the unwinder must find the return address and the
/// caller's `rsp`, and restore the pushed and saved registers.
fn walk_each(
    t: &mut FlatTarget,
    module: &ModuleInfo,
    infos: &[(RuntimeFunction, UnwindInfo)],
    blocks: &BTreeMap<u32, Dumped>,
) -> usize {
    const STACK: u64 = 0x7ff0_0000_0000;
    const STACK_SIZE: usize = 0x18_0000;
    let mut unwinder = Unwinder::new(vec![module.clone()]);
    let mut walked = 0;
    for (f, info) in infos {
        let d = &blocks[&f.unwind_data];
        if d.lines.iter().any(|l| l.contains("interrupt entry")) || info.chained().is_some() {
            continue;
        }
        // From objdump's text: how far the prolog moved rsp, and where registers went.
        let mut moved = 0u64;
        let mut pushed = Vec::new();
        let mut saved = Vec::new();
        for l in &d.lines {
            let op = l.split_once(": ").unwrap().1;
            if let Some(r) = op.strip_prefix("push ") {
                pushed.push((r.to_string(), moved));
                moved += 8;
            } else if let Some(n) = op.split_once("rsp = rsp - 0x") {
                moved += u64::from_str_radix(n.1, 16).unwrap();
            } else if let Some(rest) = op.strip_prefix("save ") {
                let (r, off) = rest.split_once(" at rsp + 0x").unwrap();
                if !r.starts_with("xmm") {
                    saved.push((r.to_string(), u64::from_str_radix(off, 16).unwrap()));
                }
            }
        }
        // Lines are latest first: a push listed first sits lowest. `moved` at a push is
        // how much was allocated after it, so it sits at rsp + that.
        let mut stack = vec![0u8; STACK_SIZE];
        let rsp = STACK + 0x1000;
        let ret = module.base.get() + 0x1234;
        let put = |stack: &mut Vec<u8>, at: u64, v: u64| {
            let o = (at - STACK) as usize;
            stack[o..o + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut stack, rsp + moved, ret);
        let value =
            |name: &str| 0x1000 + Reg::ALL.iter().position(|r| r.name() == name).unwrap() as u64;
        for (r, at) in &pushed {
            put(&mut stack, rsp + at, value(r));
        }
        for (r, off) in &saved {
            put(&mut stack, rsp + off, value(r) + 0x100);
        }
        t.memory.map(VirtAddr(STACK), stack);
        let mut regs = Registers::new(
            module.base.get() + u64::from(f.begin) + u64::from(info.prolog_size),
            rsp,
        );
        if let Some(fr) = info.frame_register {
            regs.set(fr, rsp + 16 * u64::from(info.frame_offset));
        }
        let s = unwinder.walk(t, &regs).unwrap();
        let what = format!("function {:#x} ({d:?}): {s}\n{:?}", f.begin, s.stop);
        assert!(
            matches!(
                s.frames[0].unwound,
                Some(Unwound::Prolog { .. } | Unwound::Epilog)
            ),
            "{what}"
        );
        assert_eq!(s.frames[0].ret_addr, Some(VirtAddr(ret)), "{what}");
        assert!(s.frames.len() >= 2, "{what}");
        let caller = &s.frames[1];
        assert_eq!(caller.child_sp, VirtAddr(rsp + moved + 8), "{what}");
        for (r, _) in &pushed {
            let reg = Reg::ALL.into_iter().find(|x| x.name() == r).unwrap();
            assert_eq!(caller.registers.get(reg), value(r), "{r}: {what}");
        }
        for (r, _) in &saved {
            let reg = Reg::ALL.into_iter().find(|x| x.name() == r).unwrap();
            assert_eq!(caller.registers.get(reg), value(r) + 0x100, "{r}: {what}");
        }
        assert!(
            !matches!(
                s.stop,
                StopReason::BadUnwindData { .. } | StopReason::BadImage { .. }
            ),
            "{what}"
        );
        walked += 1;
    }
    walked
}

#[test]
fn decode_matches_objdump_on_mingw_dlls() {
    if !have(GCC) || !have(OBJDUMP) {
        return;
    }
    let mut total = Checked {
        functions: 0,
        codes: 0,
        kinds: BTreeSet::new(),
        walked: 0,
    };
    for (name, flags) in [
        ("unwind_o2.dll", &["-O2"][..]),
        ("unwind_fp.dll", &["-O1", "-fno-omit-frame-pointer"][..]),
    ] {
        let c = check(&build(name, flags));
        eprintln!(
            "{name}: {} functions and {} unwind codes match objdump; {} walked",
            c.functions, c.codes, c.walked
        );
        total.functions += c.functions;
        total.codes += c.codes;
        total.walked += c.walked;
        total.kinds.extend(c.kinds);
    }
    eprintln!(
        "compared {} functions ({} unwind codes) with objdump; walked {}; kinds: {:?}",
        total.functions, total.codes, total.walked, total.kinds
    );
    for k in [
        "push",
        "alloc small",
        "alloc large",
        "alloc large far",
        "set fpreg",
        "save nonvol",
        "save nonvol far",
        "save xmm128",
        "save xmm128 far",
        "machframe",
        "machframe with error code",
    ] {
        assert!(total.kinds.contains(k), "no {k} in the fixtures");
    }
    assert!(total.functions >= 40, "{}", total.functions);
}
