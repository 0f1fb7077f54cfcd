//! Finding the tag in module memory and classifying every hit with iced-x86.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};
use serde::Serialize;

use crate::pe::{self, Section};
use crate::target::{DebugTarget, ModuleInfo, TargetError, read_exact};
use crate::{PoolTag, VirtAddr, disasm};

/// Most hits looked at per module.
pub const MAX_HITS_PER_MODULE: usize = 4096;
/// Largest executable section decoded (bigger ones are decoded per hit only).
pub const MAX_SWEEP_BYTES: u64 = 32 << 20;
/// How many instructions after `mov r8d, imm32` may pass before the `call`.
pub const CALL_WINDOW: usize = 8;

/// What a hit of the tag bytes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HitKind {
    /// `mov r8d, imm32` followed by a call: the tag argument of an allocation. Patched.
    Allocation,
    /// `mov edx, imm32`: the tag argument of `ExFreePoolWithTag`. Reported, not patched
    /// (a free is charged to the tag in the block's header, not to this argument).
    Free,
    /// `mov dword ptr [rsp+x], imm32`: a stack argument, as lookaside-list initialisation
    /// passes its tag. Reported; patched only with `patch_lookaside`.
    LookasideInit,
    /// A `cmp` against the tag. Reported, never patched.
    Compare,
    /// Another instruction carrying the tag as an immediate (e.g. a wrapper's argument
    /// in `ecx`/`r9d`, or `mov r8d` with no call following). Reported.
    OtherCode,
    /// The tag bytes inside code that do not decode as an immediate. Reported.
    UnknownCode,
    /// The tag outside executable sections (strings, constants). Reported.
    Data,
    /// The tag in data that code loads into `r8d` with `mov r8d, [rip+x]`: the tag is
    /// applied indirectly. Reported; patching it would change every user at once.
    IndirectUse,
}

impl HitKind {
    /// Short lowercase label for reports.
    pub fn label(self) -> &'static str {
        match self {
            HitKind::Allocation => "allocation site",
            HitKind::Free => "free site",
            HitKind::LookasideInit => "lookaside init",
            HitKind::Compare => "compare",
            HitKind::OtherCode => "other code",
            HitKind::UnknownCode => "code (no immediate)",
            HitKind::Data => "data",
            HitKind::IndirectUse => "indirect use",
        }
    }
}

/// One occurrence of the tag in a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// Address of the first tag byte.
    pub address: VirtAddr,
    /// Module file name (`myfault.sys`).
    pub module: String,
    /// Module base.
    pub module_base: VirtAddr,
    /// `address - module_base`.
    pub offset: u64,
    /// `myfault.sys+0x1621`.
    pub location: String,
    /// Section name, when the PE headers could be read.
    pub section: Option<String>,
    /// The four bytes as found (the 4th may carry `PROTECTED_POOL`).
    pub tag: PoolTag,
    /// What the hit is.
    pub kind: HitKind,
    /// Start of the instruction holding the tag (code hits).
    pub instruction_address: Option<VirtAddr>,
    /// The instruction's bytes.
    #[serde(skip)]
    pub instruction_bytes: Vec<u8>,
    /// Offset of the tag within the instruction bytes.
    #[serde(skip)]
    pub imm_offset: usize,
    /// The instruction, WinDbg style (`mov r8d,6B61654Ch`).
    pub instruction: Option<String>,
    /// Extra detail (e.g. which instruction loads an indirect tag).
    pub note: Option<String>,
}

impl Hit {
    /// `myfault.sys+0x1621`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The instruction text with the tag immediate replaced by `tag`.
    pub fn instruction_with(&self, tag: PoolTag) -> Option<String> {
        let ip = self.instruction_address?;
        let mut bytes = self.instruction_bytes.clone();
        bytes
            .get_mut(self.imm_offset..self.imm_offset + 4)?
            .copy_from_slice(&tag.bytes());
        Some(disasm::format(&disasm::decode_one(&bytes, ip), false))
    }
}

/// Finds every occurrence of `tag` in every module: the exact bytes, and the variant with
/// `PROTECTED_POOL` set in the 4th byte (found by searching the first three bytes).
pub fn find_hits<T: DebugTarget + ?Sized>(
    target: &mut T,
    modules: &[ModuleInfo],
    tag: PoolTag,
) -> Result<Vec<(usize, VirtAddr, PoolTag)>, TargetError> {
    let fourth = tag.unprotected().bytes()[3];
    let mut all = find_prefix_hits(target, modules, tag)?;
    all.retain(|(_, _, t)| t.unprotected().bytes()[3] == fourth);
    Ok(all)
}

/// Modules closer together than this are searched as one range (one search request for
/// a run of adjacent drivers instead of one per module: 250 fewer round trips for 250
/// drivers); the bytes between them are at most this many per gap.
pub const SEARCH_GAP: u64 = 64 << 10;

/// Finds every place in every module where the first three bytes of `tag` occur, with
/// the four bytes found there (module index, address, tag): the tag itself, and tags
/// that differ only in the 4th byte (such as the ones a split writes). Modules that lie
/// within [`SEARCH_GAP`] of each other are searched together; hits between them are
/// dropped.
pub fn find_prefix_hits<T: DebugTarget + ?Sized>(
    target: &mut T,
    modules: &[ModuleInfo],
    tag: PoolTag,
) -> Result<Vec<(usize, VirtAddr, PoolTag)>, TargetError> {
    let bare = tag.unprotected().bytes();
    let prefix = bare.get(..3).unwrap_or_default();
    let mut order: Vec<usize> = (0..modules.len()).collect();
    order.sort_by_key(|&i| modules.get(i).map(|m| m.base));
    // Runs of modules (indices into `order`) searched as one range.
    let mut runs: Vec<(VirtAddr, VirtAddr, usize)> = Vec::new();
    for m in order.iter().filter_map(|&i| modules.get(i)) {
        match runs.last_mut() {
            Some((_, end, n)) if m.base >= *end && m.base.get() - end.get() <= SEARCH_GAP => {
                *end = m.end();
                *n += 1;
            }
            _ => runs.push((m.base, m.end(), 1)),
        }
    }
    let searches: Vec<(VirtAddr, VirtAddr, usize)> = runs
        .iter()
        .map(|&(start, end, n)| (start, end, MAX_HITS_PER_MODULE.saturating_mul(n)))
        .collect();
    let found = target.search_many(&searches, prefix)?;
    // The code around every hit, fetched together where the target pipelines: the 4th
    // byte read below and the window classifying decodes.
    let around: Vec<(VirtAddr, usize)> = found
        .iter()
        .flatten()
        .map(|h| {
            let from = VirtAddr(h.get().saturating_sub(SYNC_BYTES));
            let len = h.get() - from.get() + FOLLOW_BYTES;
            (from, usize::try_from(len).unwrap_or(0))
        })
        .collect();
    target.prefetch(&around)?;
    let mut out = Vec::new();
    for h in found.into_iter().flatten() {
        // The last module starting at or before the hit, if the hit is inside it.
        let after = order.partition_point(|&i| modules.get(i).is_some_and(|m| m.base <= h));
        let Some(i) = after
            .checked_sub(1)
            .and_then(|k| order.get(k).copied())
            .filter(|&i| modules.get(i).is_some_and(|m| m.contains(h)))
        else {
            continue;
        };
        // The 4th byte, with the code before it that classifying the hit decodes (one
        // read, which a cached target keeps for that).
        let Some(m) = modules.get(i) else { continue };
        let from = VirtAddr(h.get().saturating_sub(SYNC_BYTES)).max(m.base);
        let want = usize::try_from(h.get() - from.get() + 4).unwrap_or(4);
        let mut b = vec![0u8; want];
        if target.read_memory(from, &mut b)? != want {
            continue;
        }
        let mut found = bare;
        found[3] = b.last().copied().unwrap_or(0);
        out.push((i, h, PoolTag::new(found)));
    }
    out.sort_by_key(|(i, h, _)| (*i, *h));
    // Overlapping modules are searched in more than one run.
    out.dedup_by_key(|(i, h, _)| (*i, *h));
    Ok(out)
}

/// Executable sections up to this size that hold a hit are decoded whole (one read, about
/// what the windows around its hits cost); larger ones only in windows. Bytes are what a
/// slow link charges: at 16 KiB, the 2 hits of `part4` read its whole 16 KiB `.text`
/// (1.4 s at 115,200 baud) where one window of 0.9 KiB does.
pub const WHOLE_SWEEP_BYTES: u64 = 4 << 10;
/// Bytes decoded before a code hit when only a window around it is read: linear x86
/// decoding falls into step with the real instruction stream within a few instructions.
pub const SYNC_BYTES: u64 = 256;
/// Bytes decoded after a code hit (its instruction and [`CALL_WINDOW`] more).
pub const FOLLOW_BYTES: u64 = 192;

/// Decoded code of one executable section, or of a window of it.
struct Sweep {
    /// First decoded byte.
    start: VirtAddr,
    /// Whether the whole section is decoded.
    whole: bool,
    instrs: Vec<(Instruction, Option<usize>)>,
    bytes: Vec<u8>,
}

impl Sweep {
    /// Decodes the whole section (needed to find the code that loads a data hit).
    fn run<T: DebugTarget + ?Sized>(target: &mut T, section: &Section) -> Option<Sweep> {
        if section.size > MAX_SWEEP_BYTES {
            return None;
        }
        let mut sw = Sweep::window(target, section.start, section.end())?;
        sw.whole = true;
        Some(sw)
    }

    /// Decodes `[start, end)`.
    fn window<T: DebugTarget + ?Sized>(
        target: &mut T,
        start: VirtAddr,
        end: VirtAddr,
    ) -> Option<Sweep> {
        let len = end.get().checked_sub(start.get()).filter(|&n| n > 0)?;
        let mut bytes = vec![0u8; usize::try_from(len).ok()?];
        let got = target.read_memory(start, &mut bytes).ok()?;
        bytes.truncate(got);
        let mut dec = Decoder::with_ip(64, &bytes, start.get(), DecoderOptions::NONE);
        let mut instrs = Vec::new();
        let mut ins = Instruction::default();
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            let offs = dec.get_constant_offsets(&ins);
            let imm = (offs.has_immediate() && offs.immediate_size() == 4)
                .then_some(offs.immediate_offset());
            instrs.push((ins, imm));
        }
        Some(Sweep {
            start,
            whole: false,
            instrs,
            bytes,
        })
    }

    /// Whether `addr` lies in the decoded bytes.
    fn contains(&self, addr: VirtAddr) -> bool {
        addr >= self.start && addr.get() - self.start.get() < self.bytes.len() as u64
    }

    /// Index of the instruction containing `addr`.
    fn index_of(&self, addr: VirtAddr) -> Option<usize> {
        let i = self
            .instrs
            .partition_point(|(ins, _)| ins.ip() <= addr.get());
        let i = i.checked_sub(1)?;
        let (ins, _) = self.instrs.get(i)?;
        (addr.get() < ins.next_ip()).then_some(i)
    }

    fn bytes_of(&self, ins: &Instruction) -> Vec<u8> {
        let off = usize::try_from(ins.ip().wrapping_sub(self.start.get())).unwrap_or(usize::MAX);
        self.bytes
            .get(off..off.saturating_add(ins.len()))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
}

/// Decodes the instruction whose 4-byte immediate starts at `hit`, trying starts
/// `hit-1 ..= hit-15` (used when the linear sweep disagrees). Prefers the earliest start.
fn decode_back<T: DebugTarget + ?Sized>(
    target: &mut T,
    hit: VirtAddr,
    floor: VirtAddr,
) -> Option<(Instruction, usize, Vec<u8>)> {
    for back in (1..=15u64).rev() {
        let Some(start) = hit.get().checked_sub(back) else {
            continue;
        };
        if start < floor.get() {
            continue;
        }
        let mut buf = [0u8; 32];
        if read_exact(target, VirtAddr(start), &mut buf).is_err() {
            continue;
        }
        let mut dec = Decoder::with_ip(64, &buf, start, DecoderOptions::NONE);
        let ins = dec.decode();
        if ins.is_invalid() {
            continue;
        }
        let offs = dec.get_constant_offsets(&ins);
        if offs.has_immediate()
            && offs.immediate_size() == 4
            && offs.immediate_offset() as u64 == back
        {
            let bytes = buf.get(..ins.len()).map(<[u8]>::to_vec).unwrap_or_default();
            return Some((ins, back as usize, bytes));
        }
    }
    None
}

fn kind_of(ins: &Instruction, following: &[Instruction]) -> HitKind {
    match ins.mnemonic() {
        Mnemonic::Cmp => HitKind::Compare,
        Mnemonic::Mov if ins.op0_kind() == OpKind::Register => match ins.op0_register() {
            Register::R8D => {
                let call = following
                    .iter()
                    .take(CALL_WINDOW)
                    .take_while(|i| {
                        !matches!(
                            i.flow_control(),
                            FlowControl::Return | FlowControl::UnconditionalBranch
                        )
                    })
                    .any(|i| {
                        matches!(
                            i.flow_control(),
                            FlowControl::Call | FlowControl::IndirectCall
                        )
                    });
                if call {
                    HitKind::Allocation
                } else {
                    HitKind::OtherCode
                }
            }
            Register::EDX => HitKind::Free,
            _ => HitKind::OtherCode,
        },
        Mnemonic::Mov if ins.op0_kind() == OpKind::Memory && ins.memory_base() == Register::RSP => {
            HitKind::LookasideInit
        }
        _ => HitKind::OtherCode,
    }
}

/// What classifying the hits of one module reads: executable sections decoded whole, and
/// windows around the code hits outside them.
struct Plan<'s> {
    whole: Vec<&'s Section>,
    windows: Vec<(&'s Section, VirtAddr, VirtAddr)>,
}

impl<'s> Plan<'s> {
    fn new(sections: &'s [Section], hits: &[(VirtAddr, PoolTag)]) -> Plan<'s> {
        let section_of = |a: VirtAddr| sections.iter().find(|s| s.contains(a));
        // A hit in data needs every executable section decoded (which code loads it?);
        // code hits in a large section need only a window around each: bytes read grow
        // with the hits, not the image.
        let data_hit = hits
            .iter()
            .any(|(a, _)| section_of(*a).is_some_and(|s| !s.is_executable()));
        let whole: Vec<&Section> = sections
            .iter()
            .filter(|s| s.is_executable() && s.size <= MAX_SWEEP_BYTES)
            .filter(|s| {
                data_hit || s.size <= WHOLE_SWEEP_BYTES && hits.iter().any(|(a, _)| s.contains(*a))
            })
            .collect();
        let mut windows = Vec::new();
        for (addr, _) in hits {
            if let Some(s) = section_of(*addr).filter(|s| s.is_executable())
                && !whole.iter().any(|w| w.contains(*addr))
            {
                push_window(&mut windows, s, *addr);
            }
        }
        Plan { whole, windows }
    }

    /// The reads, as (address, length).
    fn reads(&self) -> impl Iterator<Item = (VirtAddr, usize)> + '_ {
        let whole = self
            .whole
            .iter()
            .map(|s| (s.start, usize::try_from(s.size).unwrap_or(0)));
        let windows = self.windows.iter().map(|&(_, lo, hi)| {
            (
                lo,
                usize::try_from(hi.get().saturating_sub(lo.get())).unwrap_or(0),
            )
        });
        whole.chain(windows)
    }
}

/// Adds the window decoded around the code hit at `addr` in `section`: hits close together
/// share one window (and one read).
fn push_window<'s>(
    windows: &mut Vec<(&'s Section, VirtAddr, VirtAddr)>,
    section: &'s Section,
    addr: VirtAddr,
) {
    let lo = VirtAddr(addr.get().saturating_sub(SYNC_BYTES)).max(section.start);
    let hi = addr.saturating_add(FOLLOW_BYTES).min(section.end());
    match windows.last_mut() {
        Some((ws, wlo, whi))
            if *ws == section && lo >= *wlo && lo <= whi.saturating_add(SYNC_BYTES) =>
        {
            *whi = hi.max(*whi);
        }
        _ => windows.push((section, lo, hi)),
    }
}

/// Tells `target` what classifying `found` (from [`find_prefix_hits`]) will read, so a
/// target that pipelines fetches it in one burst ([`DebugTarget::prefetch`]): each
/// module's headers, then its sections and windows.
pub fn prefetch_for<T: DebugTarget + ?Sized>(
    target: &mut T,
    modules: &[ModuleInfo],
    found: &[(usize, VirtAddr, PoolTag)],
) -> Result<(), TargetError> {
    let mut with_hits: Vec<usize> = found.iter().map(|(i, _, _)| *i).collect();
    with_hits.dedup();
    let heads: Vec<(VirtAddr, usize)> = with_hits
        .iter()
        .filter_map(|&i| modules.get(i))
        .map(|m| (m.base, pe::HEADERS_READ))
        .collect();
    target.prefetch(&heads)?;
    let mut reads = Vec::new();
    for &i in &with_hits {
        let Some(m) = modules.get(i) else { continue };
        let hits: Vec<(VirtAddr, PoolTag)> = found
            .iter()
            .filter(|(j, _, _)| *j == i)
            .map(|&(_, a, t)| (a, t))
            .collect();
        let sections = pe::sections(target, m.base).unwrap_or_default();
        reads.extend(Plan::new(&sections, &hits).reads());
    }
    target.prefetch(&reads)
}

/// Classifies `hits` (from [`find_hits`]) of one module.
pub fn classify_module<T: DebugTarget + ?Sized>(
    target: &mut T,
    module: &ModuleInfo,
    hits: &[(VirtAddr, PoolTag)],
) -> Vec<Hit> {
    let sections = pe::sections(target, module.base).unwrap_or_default();
    let section_of = |a: VirtAddr| sections.iter().find(|s| s.contains(a));
    let plan = Plan::new(&sections, hits);
    let mut sweeps: Vec<Sweep> = Vec::new();
    for s in plan.whole {
        if let Some(sw) = Sweep::run(target, s) {
            sweeps.push(sw);
        }
    }
    let mut windows: Vec<(&Section, VirtAddr, VirtAddr)> = Vec::new();
    for (addr, _) in hits {
        let Some(s) = section_of(*addr).filter(|s| s.is_executable()) else {
            continue;
        };
        if sweeps.iter().any(|sw| sw.contains(*addr)) {
            continue;
        }
        push_window(&mut windows, s, *addr);
    }
    for (_, lo, hi) in windows {
        if let Some(sw) = Sweep::window(target, lo, hi) {
            sweeps.push(sw);
        }
    }
    let mut out = Vec::new();
    for &(addr, tag) in hits {
        let section = section_of(addr);
        let offset = addr.get().saturating_sub(module.base.get());
        let mut hit = Hit {
            address: addr,
            module: module.name.clone(),
            module_base: module.base,
            offset,
            location: format!("{}+0x{offset:x}", module.name),
            section: section.map(|s| s.name.clone()),
            tag,
            kind: HitKind::Data,
            instruction_address: None,
            instruction_bytes: Vec::new(),
            imm_offset: 0,
            instruction: None,
            note: None,
        };
        // Code unless the headers say otherwise (unreadable headers: treat as code).
        let executable = section.is_none_or(Section::is_executable);
        if executable {
            let from_sweep = sweeps.iter().find(|s| s.contains(addr)).and_then(|sw| {
                let i = sw.index_of(addr)?;
                let (ins, imm) = sw.instrs.get(i)?;
                let off = usize::try_from(addr.get() - ins.ip()).ok()?;
                (*imm == Some(off)).then(|| {
                    let following: Vec<Instruction> = sw
                        .instrs
                        .iter()
                        .skip(i + 1)
                        .take(CALL_WINDOW)
                        .map(|(x, _)| *x)
                        .collect();
                    (*ins, off, sw.bytes_of(ins), following)
                })
            });
            let decoded = from_sweep.or_else(|| {
                let floor = section.map_or(module.base, |s| s.start);
                let (ins, off, bytes) = decode_back(target, addr, floor)?;
                let mut buf = [0u8; 128];
                let got = target
                    .read_memory(VirtAddr(ins.next_ip()), &mut buf)
                    .unwrap_or(0);
                let mut dec = Decoder::with_ip(
                    64,
                    buf.get(..got).unwrap_or_default(),
                    ins.next_ip(),
                    DecoderOptions::NONE,
                );
                let following: Vec<Instruction> = (0..CALL_WINDOW)
                    .map_while(|_| dec.can_decode().then(|| dec.decode()))
                    .collect();
                Some((ins, off, bytes, following))
            });
            match decoded {
                Some((ins, off, bytes, following)) => {
                    hit.kind = kind_of(&ins, &following);
                    hit.instruction_address = Some(VirtAddr(ins.ip()));
                    hit.instruction = Some(disasm::format(&ins, false));
                    hit.instruction_bytes = bytes;
                    hit.imm_offset = off;
                    if hit.kind == HitKind::OtherCode
                        && ins.mnemonic() == Mnemonic::Mov
                        && ins.op0_register() == Register::R8D
                    {
                        hit.note = Some("mov r8d with no call within a few instructions".into());
                    }
                }
                None => hit.kind = HitKind::UnknownCode,
            }
        } else {
            // Data: is it loaded into r8d by rip-relative code?
            for sw in sweeps.iter().filter(|sw| sw.whole) {
                for (ins, _) in &sw.instrs {
                    if ins.is_ip_rel_memory_operand() && ins.ip_rel_memory_address() == addr.get() {
                        let r8d = ins.mnemonic() == Mnemonic::Mov
                            && ins.op0_kind() == OpKind::Register
                            && ins.op0_register() == Register::R8D;
                        let text = disasm::format(ins, false);
                        if r8d {
                            hit.kind = HitKind::IndirectUse;
                            hit.note = Some(format!(
                                "loaded by `{text}` at {}: the tag is applied indirectly; not split",
                                VirtAddr(ins.ip())
                            ));
                        } else if hit.note.is_none() {
                            hit.note =
                                Some(format!("referenced by `{text}` at {}", VirtAddr(ins.ip())));
                        }
                    }
                }
            }
        }
        out.push(hit);
    }
    out
}
