//! A builder for PE-shaped modules written into simulated memory.
//!
//! The image has real MZ/PE32+ headers (so a debugger can find `MZ` at each module base and
//! parse the section table), a `.text` section (RX) holding real x64 code, `.rdata` (R) with
//! the import address table, an import directory naming `ntoskrnl.exe` functions and any
//! read-only data, and `.data` (RW) for globals. Code is emitted as real x64 instructions;
//! gaps are padded with `int3` (`0xcc`).
//!
//! Allocation sites are `mov r8d, imm32` (`41 b8 <tag>`) followed by `call [rip+IAT]`
//! (`ff 15 disp32`), free sites `mov edx, imm32` (`ba <tag>`), lookaside-init sites
//! `mov dword ptr [rsp+28h], imm32` (`c7 44 24 28 <tag>`), and the decoys a tag search also
//! finds: the tag as text in `.rdata`, a `cmp` against the tag, and a tag held in a `.data`
//! global loaded with `mov r8d, [rip+disp32]` (`44 8b 05 disp32`).
//!
//! Every non-leaf function has a `RUNTIME_FUNCTION` in the exception directory (PE data
//! directory 3) and an `UNWIND_INFO` describing its prolog, both laid out at the end of
//! `.rdata` by [`tagsplit_protocol::nt::unwind::build_tables`]; a prolog's bytes are the
//! instructions its unwind codes describe ([`Step`]). Leaf functions have none, as on
//! Windows. [`ImageBuilder::call_chain`] emits the worker and the thread routine that
//! reach a module's allocation sites through real `call`s.

use crate::SimError;
use crate::layout::PAGE_SIZE;
use crate::memory::{Memory, Prot};
use crate::types::{PoolTag, VirtAddr};
use tagsplit_protocol::nt::unwind::{
    Reg, RuntimeFunction, Trailer, UnwindCode, UnwindInfo, UnwindOp, build_tables,
};

pub use tagsplit_protocol::nt::pe::{
    SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA, SCN_MEM_EXECUTE, SCN_MEM_READ, SCN_MEM_WRITE,
};
/// Where `e_lfanew` puts the `PE\0\0` signature.
pub const PE_OFFSET: u32 = 0xd0;
/// RVA of `.text` in every built image.
pub const TEXT_RVA: u64 = 0x1000;

/// The functions a built image can import from `ntoskrnl.exe`, in IAT order.
pub const NT_IMPORTS: [&str; 5] = [
    "ExAllocatePoolWithTag",
    "ExFreePoolWithTag",
    "ExInitializeNPagedLookasideList",
    "ExFreePool",
    "KeBugCheckEx",
];

/// Index of an imported function in [`NT_IMPORTS`] (and its IAT slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Import {
    /// `ExAllocatePoolWithTag`.
    ExAllocatePoolWithTag = 0,
    /// `ExFreePoolWithTag`.
    ExFreePoolWithTag = 1,
    /// `ExInitializeNPagedLookasideList`.
    ExInitializeNPagedLookasideList = 2,
    /// `ExFreePool`.
    ExFreePool = 3,
    /// `KeBugCheckEx`.
    KeBugCheckEx = 4,
}

/// A location inside an image being built, resolved to an address by [`ImageBuilder::build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// An offset into `.text`.
    Text(u64),
    /// An offset into the caller's part of `.rdata` (after the import data).
    Rdata(u64),
    /// An offset into `.data`.
    Data(u64),
}

/// How an allocation site's code around `mov r8d, tag` looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocStyle {
    /// `mov ecx, type; mov edx, size; mov r8d, tag; call [ExAllocatePoolWithTag]`.
    #[default]
    Plain,
    /// myfault.sys's first site: `mov r8d, tag; cmp eax,ecx; cmovb eax,ecx;
    /// lea ecx,[r9-3]; mov edx,eax; call [..]`.
    MyfaultLea,
    /// myfault.sys's second site: `mov r8d, tag; cmp eax,ecx; cmovb eax,ecx;
    /// xor ecx,ecx; mov edx,eax; call [..]`.
    MyfaultXor,
    /// An allocation helper, `AllocBuffer(size)`, whose callers pass the size in `ecx`:
    /// `mov edx, ecx; mov ecx, type; mov r8d, tag; call [ExAllocatePoolWithTag]`.
    Helper,
}

/// How a compare decoy is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompareStyle {
    /// `cmp ecx, imm32` (`81 f9 imm32`).
    #[default]
    Ecx,
    /// `cmp eax, imm32` (`3d imm32`).
    Eax,
}

/// Addresses (as [`Loc`]s) of an emitted site: the instruction holding or loading the tag,
/// the tag bytes themselves, and the call it feeds, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteLocs {
    /// The instruction (`mov r8d`, `mov edx`, `mov [rsp+28h]`, `cmp`, `mov r8d,[rip+x]`),
    /// or the start of the string for a text decoy.
    pub instr: Loc,
    /// The four tag bytes (the imm32, the global, or the tag inside the string).
    pub imm: Loc,
    /// The `call [rip+IAT]` that consumes the tag, if any.
    pub call: Option<Loc>,
    /// The start of the function holding a code site (`None` for text in `.rdata`).
    pub function: Option<Loc>,
}

/// Where [`ImageBuilder::helper_caller`]'s call of an allocation helper goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperRef {
    /// A function of the image being built: `call rel32`.
    Local(Loc),
    /// A function of another image, at this address: `call [rip+slot]` through a pointer
    /// to it in this image's `.data`.
    Pointer(VirtAddr),
}

/// One instruction of a function up to one of its calls, as the simulator replays it: a
/// prolog step (with an unwind code) or a register move of the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `push reg` (`UWOP_PUSH_NONVOL`).
    Push(Reg),
    /// `sub rsp, n` (`UWOP_ALLOC_SMALL` up to 128 bytes, `UWOP_ALLOC_LARGE` above).
    Alloc(u32),
    /// `mov reg, rsp` (offset 0) or `lea reg, [rsp+offset]` (`UWOP_SET_FPREG`; the offset a
    /// multiple of 16 up to 240).
    SetFp {
        /// The frame register.
        reg: Reg,
        /// Its distance above `rsp`.
        offset: u32,
    },
    /// `mov dst, src` (64-bit), after the prolog.
    Mov {
        /// Destination.
        dst: Reg,
        /// Source.
        src: Reg,
    },
}

impl Step {
    /// Whether the step belongs to the prolog.
    pub fn is_prolog(&self) -> bool {
        !matches!(self, Step::Mov { .. })
    }

    /// The instruction's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SimError> {
        let n = |r: Reg| r.number();
        let hi = |r: Reg| n(r) >= 8;
        Ok(match *self {
            Step::Push(r) if hi(r) => vec![0x41, 0x50 + n(r) - 8],
            Step::Push(r) => vec![0x50 + n(r)],
            Step::Alloc(size) => {
                if size == 0 || !size.is_multiple_of(8) || size >= 0x1000 {
                    return Err(err(format!(
                        "stack allocation {size:#x} (a multiple of 8 below a page)"
                    )));
                }
                match u8::try_from(size) {
                    Ok(b) if b < 0x80 => vec![0x48, 0x83, 0xec, b],
                    _ => {
                        let mut v = vec![0x48, 0x81, 0xec];
                        v.extend_from_slice(&size.to_le_bytes());
                        v
                    }
                }
            }
            Step::SetFp { reg, offset } => {
                if !offset.is_multiple_of(16) || offset > 240 || reg == Reg::Rsp {
                    return Err(err(format!("frame pointer {reg} at rsp+{offset:#x}")));
                }
                if offset == 0 {
                    // mov reg, rsp (89 /r: rsp in ModRM.reg)
                    vec![0x48 | u8::from(hi(reg)), 0x89, 0xe0 | (n(reg) & 7)]
                } else {
                    // lea reg, [rsp+disp8]
                    let disp = u8::try_from(offset).unwrap_or(0);
                    let rex = 0x48 | if hi(reg) { 4 } else { 0 };
                    vec![rex, 0x8d, 0x44 | ((n(reg) & 7) << 3), 0x24, disp]
                }
            }
            Step::Mov { dst, src } => {
                let rex = 0x48 | if hi(dst) { 4 } else { 0 } | u8::from(hi(src));
                vec![rex, 0x8b, 0xc0 | ((n(dst) & 7) << 3) | (n(src) & 7)]
            }
        })
    }

    /// The unwind operation of a prolog step.
    fn unwind_op(&self) -> Option<UnwindOp> {
        match *self {
            Step::Push(r) => Some(UnwindOp::PushNonvol(r)),
            Step::Alloc(size) => Some(UnwindOp::alloc(size)),
            Step::SetFp { .. } => Some(UnwindOp::SetFpreg),
            Step::Mov { .. } => None,
        }
    }
}

/// What one function of a call chain does up to a call: the steps the simulator replays,
/// and the return address of each of its calls into the next function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSteps {
    /// Prolog and body steps up to (each of) the calls, in execution order.
    pub steps: Vec<Step>,
    /// The return address (the instruction after the `call`) of each call, in order.
    pub returns: Vec<Loc>,
}

/// The worker's prolog shapes [`ImageBuilder::call_chain`] can emit; built-in scenarios
/// take them in turn, so each unwind operation occurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerShape {
    /// `push rbx; push rsi; push rdi; sub rsp, 20h`.
    Pushes,
    /// `push rbx; sub rsp, 230h` (`UWOP_ALLOC_LARGE`).
    LargeLocals,
    /// `push rbp; push rbx; sub rsp, 28h; mov rbp, rsp` (a frame pointer).
    FramePointer,
    /// `push rbx; sub rsp, 20h; jmp` to a fragment `push r12; push r13` whose
    /// `UNWIND_INFO` chains to the function's (`UNW_FLAG_CHAININFO`), which makes the calls.
    Chained,
}

impl WorkerShape {
    /// The shapes, in the order modules take them.
    pub const ALL: [WorkerShape; 4] = [
        WorkerShape::Pushes,
        WorkerShape::Chained,
        WorkerShape::LargeLocals,
        WorkerShape::FramePointer,
    ];
}

/// Where [`ImageBuilder::call_chain`] put a module's thread routine and worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLocs {
    /// The thread routine (`rcx`: its context), which calls the worker.
    pub entry: Loc,
    /// The thread routine up to its call of the worker.
    pub entry_frame: FrameSteps,
    /// The worker, which calls each helper in turn.
    pub worker: Loc,
    /// The worker up to each helper's call (`returns` in the helpers' order).
    pub worker_frame: FrameSteps,
    /// The free helper (`sub rsp, 28h; xor edx, edx; call [ExFreePoolWithTag]`), which the
    /// worker calls after the allocation helpers (with the same steps before the call).
    pub free_helper: Loc,
    /// The return address of the worker's call of the free helper.
    pub free_return: Loc,
    /// The free helper's `call [ExFreePoolWithTag]`.
    pub free_call: Loc,
}

/// A function begun by [`ImageBuilder::begin_function`].
#[derive(Clone, Debug)]
pub struct FunctionStart {
    begin: usize,
    info: UnwindInfo,
    prolog: Vec<Step>,
}

/// A function's code range in `.text` and its unwind info.
#[derive(Clone, Debug)]
struct Func {
    begin: usize,
    end: usize,
    info: UnwindInfo,
}

/// A rip-relative displacement to patch once the layout is known.
#[derive(Clone, Copy, Debug)]
struct Fixup {
    /// Offset in `.text` of the disp32.
    at: usize,
    /// Offset in `.text` of the next instruction (rip).
    next_ip: usize,
    /// What the displacement points to.
    target: Target,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Iat(Import),
    Loc(Loc),
}

/// Builds one PE image; see the module docs.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    name: String,
    base: VirtAddr,
    timestamp: u32,
    nt_exports: Vec<VirtAddr>,
    imports: bool,
    text: Vec<u8>,
    rdata: Vec<u8>,
    data: Vec<u8>,
    min_text: u64,
    min_data: u64,
    entry: Option<u64>,
    fixups: Vec<Fixup>,
    functions: Vec<Func>,
    /// Named functions (and data) for the export directory.
    exports: Vec<(String, Loc)>,
}

/// The result of [`ImageBuilder::build`]: where everything landed.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// Image base.
    pub base: VirtAddr,
    /// `SizeOfImage`.
    pub size: u64,
    /// `CheckSum` written in the optional header.
    pub checksum: u32,
    /// `TimeDateStamp`.
    pub timestamp: u32,
    /// Address of the entry point.
    pub entry: VirtAddr,
    /// Start of `.text`.
    pub text: VirtAddr,
    /// Start of `.rdata` (the IAT, when the image imports).
    pub rdata: VirtAddr,
    /// Start of the caller's part of `.rdata`.
    pub rdata_user: VirtAddr,
    /// Start of `.data`.
    pub data: VirtAddr,
    /// Address of each IAT slot, in [`NT_IMPORTS`] order (empty without imports).
    pub iat: Vec<VirtAddr>,
    /// Each section: name, start, virtual size rounded to pages, protection.
    pub sections: Vec<(String, VirtAddr, u64, Prot)>,
}

impl BuiltImage {
    /// The address of a [`Loc`].
    pub fn addr(&self, loc: Loc) -> VirtAddr {
        match loc {
            Loc::Text(o) => self.text.saturating_add(o),
            Loc::Rdata(o) => self.rdata_user.saturating_add(o),
            Loc::Data(o) => self.data.saturating_add(o),
        }
    }
}

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to).saturating_mul(to)
}
fn err(msg: impl Into<String>) -> SimError {
    SimError::Image(msg.into())
}
/// The RVA of a `.text` offset.
fn rva32(text_offset: usize) -> Result<u32, SimError> {
    u32::try_from(TEXT_RVA + text_offset as u64).map_err(|_| err(".text beyond 4 GiB"))
}

impl ImageBuilder {
    /// A builder for an image called `name` loaded at `base` (page-aligned).
    /// `nt_exports` are the resolved addresses of [`NT_IMPORTS`]; pass an empty vector for
    /// an image without imports (such as `ntoskrnl.exe` itself).
    pub fn new(name: &str, base: VirtAddr, nt_exports: Vec<VirtAddr>) -> ImageBuilder {
        ImageBuilder {
            name: name.to_owned(),
            base,
            timestamp: 0x4a5b_c000,
            imports: !nt_exports.is_empty(),
            nt_exports,
            text: Vec::new(),
            rdata: Vec::new(),
            data: Vec::new(),
            min_text: 0,
            min_data: 0,
            entry: None,
            fixups: Vec::new(),
            functions: Vec::new(),
            exports: Vec::new(),
        }
    }

    /// Exports `at` as `name` (the export directory, PE data directory 0, at the end of
    /// `.rdata`, naming the image in capitals, `MYFAULT.SYS`, so that a tag search for
    /// part of a module's name, such as `netv` in `netvsc60.sys`, finds no more than
    /// before): debuggers that read the image file (gdb through host I/O) then name the
    /// code they show. A name exported twice keeps its first location.
    pub fn export(&mut self, name: &str, at: Loc) -> &mut Self {
        if !self.exports.iter().any(|(n, _)| n == name) {
            self.exports.push((name.to_owned(), at));
        }
        self
    }

    /// The export directory for [`export`](Self::export)ed names, to lie at `rva`, with
    /// each location's RVA from `rva_of`; empty without exports. Its size does not depend
    /// on the RVAs ([`export_size`](Self::export_size)).
    fn export_table(&self, rva: u64, rva_of: impl Fn(Loc) -> u64) -> Vec<u8> {
        if self.exports.is_empty() {
            return Vec::new();
        }
        let n = self.exports.len() as u64;
        // The names are looked up by binary search: the name table is sorted.
        let mut by_name: Vec<(usize, &str)> = self
            .exports
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (i, name.as_str()))
            .collect();
        by_name.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
        let eat = rva + 40;
        let names = eat + 4 * n;
        let ordinals = names + 4 * n;
        let dll = ordinals + 2 * n;
        let mut v = Vec::with_capacity(self.export_size());
        put_u32(&mut v, 0); // Characteristics
        put_u32(&mut v, self.timestamp);
        put_u32(&mut v, 0); // MajorVersion, MinorVersion
        put_u32(&mut v, dll as u32);
        put_u32(&mut v, 1); // Base (first ordinal)
        put_u32(&mut v, n as u32);
        put_u32(&mut v, n as u32);
        put_u32(&mut v, eat as u32);
        put_u32(&mut v, names as u32);
        put_u32(&mut v, ordinals as u32);
        for (_, at) in &self.exports {
            put_u32(&mut v, rva_of(*at) as u32);
        }
        let mut text = dll + self.name.len() as u64 + 1;
        let mut name_rvas = vec![0u64; self.exports.len()];
        for (i, name) in self.exports.iter().map(|(name, _)| name).enumerate() {
            if let Some(slot) = name_rvas.get_mut(i) {
                *slot = text;
            }
            text += name.len() as u64 + 1;
        }
        for (i, _) in &by_name {
            put_u32(&mut v, name_rvas.get(*i).copied().unwrap_or(0) as u32);
        }
        for (i, _) in &by_name {
            put_u16(&mut v, *i as u16);
        }
        v.extend(self.name.bytes().map(|c| c.to_ascii_uppercase()));
        v.push(0);
        for (name, _) in &self.exports {
            v.extend_from_slice(name.as_bytes());
            v.push(0);
        }
        v
    }

    /// The size of [`export_table`](Self::export_table).
    fn export_size(&self) -> usize {
        if self.exports.is_empty() {
            return 0;
        }
        let n = self.exports.len();
        let names: usize = self.exports.iter().map(|(name, _)| name.len() + 1).sum();
        40 + 10 * n + self.name.len() + 1 + names
    }

    /// Sets the COFF `TimeDateStamp`.
    pub fn timestamp(&mut self, ts: u32) -> &mut Self {
        self.timestamp = ts;
        self
    }

    /// Makes `.text` at least this many bytes (virtual size; costs no host memory).
    pub fn min_text_size(&mut self, n: u64) -> &mut Self {
        self.min_text = n;
        self
    }

    /// Makes `.data` at least this many bytes.
    pub fn min_data_size(&mut self, n: u64) -> &mut Self {
        self.min_data = n;
        self
    }

    /// The current end of `.text`, as an RVA.
    pub fn text_rva(&self) -> u64 {
        TEXT_RVA + self.text.len() as u64
    }

    /// Pads `.text` with `int3` up to the given RVA; fails if code already lies past it.
    pub fn org(&mut self, rva: u64) -> Result<(), SimError> {
        let cur = self.text_rva();
        if rva < cur {
            return Err(err(format!(
                "{}: code at rva {rva:#x} would overlap code ending at {cur:#x}",
                self.name
            )));
        }
        let pad = usize::try_from(rva - cur).map_err(|_| err("rva too large"))?;
        if pad > 0x100_0000 {
            return Err(err(format!("{}: rva {rva:#x} too far", self.name)));
        }
        self.text.resize(self.text.len() + pad, 0xcc);
        Ok(())
    }

    /// Pads `.text` with `int3` to a 16-byte boundary.
    pub fn align_text(&mut self) {
        while !self.text.len().is_multiple_of(16) {
            self.text.push(0xcc);
        }
    }

    /// Appends raw code bytes; returns their location.
    pub fn code(&mut self, bytes: &[u8]) -> Loc {
        let at = self.text.len() as u64;
        self.text.extend_from_slice(bytes);
        Loc::Text(at)
    }

    /// Appends read-only data (8-byte aligned); returns its location.
    pub fn rdata(&mut self, bytes: &[u8]) -> Loc {
        while !self.rdata.len().is_multiple_of(8) {
            self.rdata.push(0);
        }
        let at = self.rdata.len() as u64;
        self.rdata.extend_from_slice(bytes);
        Loc::Rdata(at)
    }

    /// Appends writable data (`align`-byte aligned, at least 8); returns its location.
    pub fn data(&mut self, bytes: &[u8], align: usize) -> Loc {
        let align = align.max(8);
        while !self.data.len().is_multiple_of(align) {
            self.data.push(0);
        }
        let at = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        Loc::Data(at)
    }

    /// Marks the current end of `.text` as the entry point.
    pub fn entry_here(&mut self) {
        self.entry = Some(self.text_rva());
    }

    /// Emits `call [rip+IAT(import)]`; returns its location.
    fn call_import(&mut self, import: Import) -> Result<Loc, SimError> {
        if !self.imports {
            return Err(err(format!("{}: image has no imports", self.name)));
        }
        let at = self.code(&[0xff, 0x15, 0, 0, 0, 0]);
        let off = self.text.len();
        self.fixups.push(Fixup {
            at: off - 4,
            next_ip: off,
            target: Target::Iat(import),
        });
        Ok(at)
    }

    /// Emits a 4-byte rip-relative displacement to `target` at the current end of
    /// `.text`, for an instruction that ends `tail` bytes after the displacement.
    fn disp_to(&mut self, target: Loc, tail: usize) {
        let at = self.text.len();
        self.text.extend_from_slice(&[0, 0, 0, 0]);
        self.fixups.push(Fixup {
            at,
            next_ip: at + 4 + tail,
            target: Target::Loc(target),
        });
    }

    /// Records the function that began at `.text` offset `begin` and ends here.
    fn add_function(&mut self, begin: usize, info: UnwindInfo) {
        self.functions.push(Func {
            begin,
            end: self.text.len(),
            info,
        });
    }

    /// The unwind info of a function of `frame` bytes of locals and nothing else
    /// (`sub rsp, frame` first).
    fn small_frame(frame: u8) -> UnwindInfo {
        UnwindInfo {
            prolog_size: 4,
            codes: vec![UnwindCode::new(4, UnwindOp::alloc(u32::from(frame)))],
            ..UnwindInfo::default()
        }
    }

    /// Emits `steps` at the current end of `.text` (the prolog steps first), for a function
    /// that began at `begin`; returns the unwind info of its prolog.
    fn emit_steps(&mut self, begin: usize, steps: &[Step]) -> Result<UnwindInfo, SimError> {
        let mut info = UnwindInfo::default();
        let mut body = false;
        for step in steps {
            let bytes = step.encode()?;
            self.code(&bytes);
            let end = u8::try_from(self.text.len().saturating_sub(begin))
                .map_err(|_| err(format!("{}: prolog longer than 255 bytes", self.name)))?;
            match step.unwind_op() {
                Some(_) if body => {
                    return Err(err(format!("{}: prolog step after the body", self.name)));
                }
                Some(op) => {
                    info.codes.insert(0, UnwindCode::new(end, op));
                    info.prolog_size = end;
                    if let Step::SetFp { reg, offset } = step {
                        info.frame_register = Some(*reg);
                        info.frame_offset = u8::try_from(offset / 16).unwrap_or(0);
                    }
                }
                None => body = true,
            }
        }
        Ok(info)
    }

    /// Undoes a prolog's stack changes: `add rsp, N` then the `pop`s (no `ret`).
    fn unwind_stack(&mut self, prolog: &[Step]) {
        let alloc: u32 = prolog
            .iter()
            .map(|s| if let Step::Alloc(n) = s { *n } else { 0 })
            .sum();
        match u8::try_from(alloc) {
            Ok(0) => {}
            Ok(b) if b < 0x80 => {
                self.code(&[0x48, 0x83, 0xc4, b]);
            }
            _ => {
                self.code(&[0x48, 0x81, 0xc4]);
                self.code(&alloc.to_le_bytes());
            }
        }
        for step in prolog.iter().rev() {
            if let Step::Push(r) = step {
                let n = r.number();
                if n >= 8 {
                    self.code(&[0x41, 0x58 + n - 8]);
                } else {
                    self.code(&[0x58 + n]);
                }
            }
        }
    }

    /// Emits `call rel32` to `target`; returns the return address.
    pub fn call_rel(&mut self, target: Loc) -> Loc {
        self.code(&[0xe8]);
        self.disp_to(target, 0);
        Loc::Text(self.text.len() as u64)
    }

    /// Emits `jmp rel32` to `target`.
    fn jmp_rel(&mut self, target: Loc) {
        self.code(&[0xe9]);
        self.disp_to(target, 0);
    }

    /// Starts a non-leaf function (16-byte aligned) with `steps` (prolog first); emit its
    /// body, then [`end_function`](Self::end_function).
    pub fn begin_function(&mut self, steps: &[Step]) -> Result<FunctionStart, SimError> {
        self.align_text();
        let begin = self.text.len();
        let info = self.emit_steps(begin, steps)?;
        Ok(FunctionStart {
            begin,
            info,
            prolog: steps.iter().copied().filter(Step::is_prolog).collect(),
        })
    }

    /// Ends a function: the epilog (`add rsp, N`, the `pop`s, `ret`) and its unwind data.
    /// Returns where it begins.
    pub fn end_function(&mut self, f: FunctionStart) -> Loc {
        self.unwind_stack(&f.prolog);
        self.code(&[0xc3]);
        self.add_function(f.begin, f.info);
        Loc::Text(f.begin as u64)
    }

    /// Emits `prefix` and a rip-relative disp32 to `target` (the instruction ends there);
    /// returns where the instruction begins.
    pub fn code_rip(&mut self, prefix: &[u8], target: Loc) -> Loc {
        let at = self.code(prefix);
        self.disp_to(target, 0);
        at
    }

    /// The current end of `.text`, as a location.
    pub fn here(&self) -> Loc {
        Loc::Text(self.text.len() as u64)
    }

    /// Emits a non-leaf function (16-byte aligned): `steps` (prolog first), then for each
    /// of `targets` the `per_call` steps and a `call`, then the epilog and `ret`. Returns
    /// where it begins and the frame the simulator replays.
    pub fn function(
        &mut self,
        steps: &[Step],
        per_call: &[Step],
        targets: &[Loc],
    ) -> Result<(Loc, FrameSteps), SimError> {
        let f = self.begin_function(steps)?;
        let returns = self.calls(per_call, targets)?;
        let begin = self.end_function(f);
        let mut all = steps.to_vec();
        all.extend_from_slice(per_call);
        Ok((
            begin,
            FrameSteps {
                steps: all,
                returns,
            },
        ))
    }

    /// `per_call` then `call target`, for each target; returns the return addresses.
    fn calls(&mut self, per_call: &[Step], targets: &[Loc]) -> Result<Vec<Loc>, SimError> {
        let mut returns = Vec::with_capacity(targets.len());
        for t in targets {
            for step in per_call {
                self.code(&step.encode()?);
            }
            returns.push(self.call_rel(*t));
        }
        Ok(returns)
    }

    /// Emits a module's call chain to its allocation helpers (the site functions at
    /// `helpers`): a free helper, a worker of the given shape that calls each allocation
    /// helper in turn and then the free helper (context in a non-volatile register, passed
    /// on in `rcx`), and a thread routine
    /// (`push rbp; push rsi; sub rsp, 28h; lea rbp, [rsp+20h]`) that calls the worker.
    pub fn call_chain(
        &mut self,
        shape: WorkerShape,
        helpers: &[Loc],
    ) -> Result<ChainLocs, SimError> {
        use Reg::{Rbp, Rbx, Rcx, Rdi, Rsi};
        let save_ctx = Step::Mov { dst: Rbx, src: Rcx };
        let pass_ctx = Step::Mov { dst: Rcx, src: Rbx };
        let prolog: &[Step] = match shape {
            WorkerShape::Pushes => &[
                Step::Push(Rbx),
                Step::Push(Rsi),
                Step::Push(Rdi),
                Step::Alloc(0x20),
            ],
            WorkerShape::LargeLocals => &[Step::Push(Rbx), Step::Alloc(0x230)],
            WorkerShape::FramePointer => &[
                Step::Push(Rbp),
                Step::Push(Rbx),
                Step::Alloc(0x28),
                Step::SetFp {
                    reg: Rbp,
                    offset: 0,
                },
            ],
            WorkerShape::Chained => &[],
        };
        // FreeBuffer(p): sub rsp,28h; xor edx,edx; call [ExFreePoolWithTag]; add rsp,28h; ret
        // (no tag in its code: a tag search finds nothing new).
        self.align_text();
        let free_begin = self.text.len();
        self.code(&[0x48, 0x83, 0xec, 0x28, 0x33, 0xd2]);
        let free_call = self.call_import(Import::ExFreePoolWithTag)?;
        self.epilogue(0x28);
        self.add_function(free_begin, Self::small_frame(0x28));
        let free_helper = Loc::Text(free_begin as u64);
        // The worker calls every allocation helper, then the free helper.
        let mut targets = helpers.to_vec();
        targets.push(free_helper);
        let (worker, mut worker_frame) = if shape == WorkerShape::Chained {
            self.chained_worker(&targets)?
        } else {
            let mut steps = prolog.to_vec();
            steps.push(save_ctx);
            self.function(&steps, &[pass_ctx], &targets)?
        };
        let free_return = worker_frame
            .returns
            .pop()
            .ok_or_else(|| err("worker without calls"))?;
        let (entry, entry_frame) = self.function(
            &[
                Step::Push(Rbp),
                Step::Push(Rsi),
                Step::Alloc(0x28),
                Step::SetFp {
                    reg: Rbp,
                    offset: 0x20,
                },
                Step::Mov { dst: Rsi, src: Rcx },
            ],
            &[],
            &[worker],
        )?;
        Ok(ChainLocs {
            entry,
            entry_frame,
            worker,
            worker_frame,
            free_helper,
            free_return,
            free_call,
        })
    }

    /// The [`WorkerShape::Chained`] worker: the function (`push rbx; sub rsp, 20h;
    /// mov rbx, rcx; jmp fragment`, then its tail `add rsp, 20h; pop rbx; ret`) and right
    /// after it the fragment (`push r12; push r13; mov r12, rbx`, the calls,
    /// `pop r13; pop r12; jmp tail`), whose unwind info chains to the function's.
    fn chained_worker(&mut self, helpers: &[Loc]) -> Result<(Loc, FrameSteps), SimError> {
        use Reg::{R12, R13, Rbx, Rcx};
        self.align_text();
        let begin = self.text.len();
        let parent = [
            Step::Push(Rbx),
            Step::Alloc(0x20),
            Step::Mov { dst: Rbx, src: Rcx },
        ];
        let info = self.emit_steps(begin, &parent)?;
        // jmp fragment: the fragment starts after the tail (jmp 5 + add 4 + pop 1 + ret 1,
        // aligned to 16 by padding after the ret).
        let jmp_at = self.text.len();
        self.code(&[0xe9, 0, 0, 0, 0]);
        let tail = self.text.len();
        self.unwind_stack(&parent[..2]);
        self.code(&[0xc3]);
        self.add_function(begin, info);
        self.align_text();
        let frag = self.text.len();
        let rel = i32::try_from(frag - (jmp_at + 5)).map_err(|_| err("fragment too far"))?;
        if let Some(slot) = self.text.get_mut(jmp_at + 1..jmp_at + 5) {
            slot.copy_from_slice(&rel.to_le_bytes());
        }
        let fragment = [
            Step::Push(R12),
            Step::Push(R13),
            Step::Mov { dst: R12, src: Rbx },
        ];
        let mut frag_info = self.emit_steps(frag, &fragment)?;
        let pass = [Step::Mov { dst: Rcx, src: R12 }];
        let returns = self.calls(&pass, helpers)?;
        self.unwind_stack(&fragment[..2]);
        self.jmp_rel(Loc::Text(tail as u64));
        frag_info.trailer = Trailer::Chained(RuntimeFunction {
            begin: rva32(begin)?,
            end: 0,
            unwind_data: 0,
        });
        self.add_function(frag, frag_info);
        let mut steps = parent.to_vec();
        steps.extend_from_slice(&fragment);
        steps.extend_from_slice(&pass);
        Ok((Loc::Text(begin as u64), FrameSteps { steps, returns }))
    }

    /// Emits an allocation site as a small function and returns its locations. With
    /// `rva`, the `mov r8d` lands exactly at that RVA (the prologue sits before it).
    pub fn alloc_site(
        &mut self,
        style: AllocStyle,
        tag: PoolTag,
        pool_type: u32,
        size: u32,
        rva: Option<u64>,
    ) -> Result<SiteLocs, SimError> {
        // The code before `mov r8d` depends on the style.
        let pre: Vec<u8> = match style {
            AllocStyle::Plain => {
                let mut v = vec![0x48, 0x83, 0xec, 0x28, 0xb9]; // sub rsp,28h; mov ecx,
                v.extend_from_slice(&pool_type.to_le_bytes());
                v.push(0xba); // mov edx, size
                v.extend_from_slice(&size.to_le_bytes());
                v
            }
            AllocStyle::Helper => {
                // sub rsp,28h; mov edx,ecx; mov ecx, type
                let mut v = vec![0x48, 0x83, 0xec, 0x28, 0x8b, 0xd1, 0xb9];
                v.extend_from_slice(&pool_type.to_le_bytes());
                v
            }
            AllocStyle::MyfaultLea | AllocStyle::MyfaultXor => {
                // sub rsp,28h; mov eax,edx; mov ecx,1000h
                vec![
                    0x48, 0x83, 0xec, 0x28, 0x8b, 0xc2, 0xb9, 0x00, 0x10, 0x00, 0x00,
                ]
            }
        };
        match rva {
            Some(r) => self.org(r.saturating_sub(pre.len() as u64))?,
            None => self.align_text(),
        }
        let begin = self.text.len();
        self.code(&pre);
        let instr = self.code(&[0x41, 0xb8]);
        let imm = self.code(&tag.bytes());
        match style {
            AllocStyle::Plain | AllocStyle::Helper => {}
            AllocStyle::MyfaultLea => {
                // cmp eax,ecx; cmovb eax,ecx; lea ecx,[r9-3]; mov edx,eax
                self.code(&[
                    0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x41, 0x8d, 0x49, 0xfd, 0x8b, 0xd0,
                ]);
            }
            AllocStyle::MyfaultXor => {
                // cmp eax,ecx; cmovb eax,ecx; xor ecx,ecx; mov edx,eax
                self.code(&[0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x33, 0xc9, 0x8b, 0xd0]);
            }
        }
        let call = self.call_import(Import::ExAllocatePoolWithTag)?;
        self.epilogue(0x28);
        self.add_function(begin, Self::small_frame(0x28));
        Ok(SiteLocs {
            instr,
            imm,
            call: Some(call),
            function: Some(Loc::Text(begin as u64)),
        })
    }

    /// Emits a caller of an allocation helper (an [`AllocStyle::Helper`] site):
    /// `prolog`, `mov ecx, size`, the call of the helper, the epilog and `ret`. A helper
    /// in this image is called with `call rel32`; one in another image (a driver's
    /// exported helper) through a pointer to it in this image's `.data`, as an imported
    /// function is through its IAT slot (`call [rip+slot]`). Returns where the caller
    /// begins, its `call` and its frame (the prolog's steps and the call's return
    /// address).
    pub fn helper_caller(
        &mut self,
        prolog: &[Step],
        size: u32,
        helper: HelperRef,
    ) -> Result<(Loc, Loc, FrameSteps), SimError> {
        let slot = match helper {
            HelperRef::Pointer(at) => Some(self.data(&at.0.to_le_bytes(), 8)),
            HelperRef::Local(_) => None,
        };
        let f = self.begin_function(prolog)?;
        self.code(&[0xb9]);
        self.code(&size.to_le_bytes());
        let call = self.here();
        let ret = match (helper, slot) {
            (_, Some(slot)) => {
                self.code_rip(&[0xff, 0x15], slot);
                self.here()
            }
            (HelperRef::Local(at), None) => self.call_rel(at),
            (HelperRef::Pointer(_), None) => return Err(err("helper pointer without a slot")),
        };
        let begin = self.end_function(f);
        Ok((
            begin,
            call,
            FrameSteps {
                steps: prolog.to_vec(),
                returns: vec![ret],
            },
        ))
    }

    /// Emits an allocation site whose tag comes from a `.data` global:
    /// `mov ecx, type; mov edx, size; mov r8d, [rip+global]; call [..]`.
    pub fn global_alloc_site(
        &mut self,
        tag: PoolTag,
        pool_type: u32,
        size: u32,
    ) -> Result<SiteLocs, SimError> {
        let global = self.data(&tag.bytes(), 8);
        self.align_text();
        let begin = self.text.len();
        let mut pre = vec![0x48, 0x83, 0xec, 0x28, 0xb9];
        pre.extend_from_slice(&pool_type.to_le_bytes());
        pre.push(0xba);
        pre.extend_from_slice(&size.to_le_bytes());
        self.code(&pre);
        let instr = self.code(&[0x44, 0x8b, 0x05]);
        self.disp_to(global, 0);
        let call = self.call_import(Import::ExAllocatePoolWithTag)?;
        self.epilogue(0x28);
        self.add_function(begin, Self::small_frame(0x28));
        Ok(SiteLocs {
            instr,
            imm: global,
            call: Some(call),
            function: Some(Loc::Text(begin as u64)),
        })
    }

    /// Emits a free site: `mov rcx, rbx; mov edx, tag; call [ExFreePoolWithTag]`.
    pub fn free_site(&mut self, tag: PoolTag) -> Result<SiteLocs, SimError> {
        self.align_text();
        let begin = self.text.len();
        self.code(&[0x48, 0x83, 0xec, 0x28, 0x48, 0x8b, 0xcb]);
        let instr = self.code(&[0xba]);
        let imm = self.code(&tag.bytes());
        let call = self.call_import(Import::ExFreePoolWithTag)?;
        self.epilogue(0x28);
        self.add_function(begin, Self::small_frame(0x28));
        Ok(SiteLocs {
            instr,
            imm,
            call: Some(call),
            function: Some(Loc::Text(begin as u64)),
        })
    }

    /// Emits a lookaside-list initialisation site for a list header `list` in `.data`:
    /// `lea rcx,[rip+list]; xor edx,edx; xor r8d,r8d; xor r9d,r9d;
    /// mov qword [rsp+20h], size; mov dword [rsp+28h], tag; mov word [rsp+30h], 0;
    /// call [ExInitializeNPagedLookasideList]`.
    pub fn lookaside_site(
        &mut self,
        tag: PoolTag,
        size: u32,
        list: Loc,
    ) -> Result<SiteLocs, SimError> {
        self.align_text();
        let begin = self.text.len();
        self.code(&[0x48, 0x83, 0xec, 0x48, 0x48, 0x8d, 0x0d]);
        self.disp_to(list, 0);
        self.code(&[0x33, 0xd2, 0x45, 0x33, 0xc0, 0x45, 0x33, 0xc9]);
        self.code(&[0x48, 0xc7, 0x44, 0x24, 0x20]);
        self.code(&size.to_le_bytes());
        let instr = self.code(&[0xc7, 0x44, 0x24, 0x28]);
        let imm = self.code(&tag.bytes());
        self.code(&[0x66, 0xc7, 0x44, 0x24, 0x30, 0x00, 0x00]);
        let call = self.call_import(Import::ExInitializeNPagedLookasideList)?;
        self.epilogue(0x48);
        self.add_function(begin, Self::small_frame(0x48));
        Ok(SiteLocs {
            instr,
            imm,
            call: Some(call),
            function: Some(Loc::Text(begin as u64)),
        })
    }

    /// Emits a compare decoy: `cmp ecx, tag` (`81 f9`) or `cmp eax, tag` (`3d`), then
    /// `sete al; ret`.
    pub fn compare_decoy(&mut self, tag: PoolTag, style: CompareStyle) -> SiteLocs {
        self.align_text();
        let instr = match style {
            CompareStyle::Ecx => self.code(&[0x81, 0xf9]),
            CompareStyle::Eax => self.code(&[0x3d]),
        };
        let imm = self.code(&tag.bytes());
        self.code(&[0x0f, 0x94, 0xc0, 0xc3]);
        SiteLocs {
            instr,
            imm,
            call: None,
            function: Some(instr),
        }
    }

    /// Puts `text` (which must contain the tag's four bytes) in `.rdata`, NUL-terminated.
    pub fn text_decoy(&mut self, tag: PoolTag, text: &str) -> Result<SiteLocs, SimError> {
        let pos = memchr::memmem::find(text.as_bytes(), &tag.bytes())
            .ok_or_else(|| err(format!("decoy text {text:?} does not contain tag {tag}")))?;
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        let Loc::Rdata(at) = self.rdata(&bytes) else {
            return Err(err("rdata"));
        };
        Ok(SiteLocs {
            instr: Loc::Rdata(at),
            imm: Loc::Rdata(at + pos as u64),
            call: None,
            function: None,
        })
    }

    /// Fills `.text` with small real functions (`sub rsp,28h; mov ecx,n; test ecx,ecx;
    /// je +6; call [ExFreePool]; add rsp,28h; ret`, and a few `xor eax,eax; ret`), 16-byte
    /// aligned, until the next one would end past `end` bytes of `.text`. Their immediates
    /// stay below `0x1000`, so no tag made of printable characters occurs in them.
    pub fn fill_code(&mut self, end: u64) -> Result<(), SimError> {
        const FUNCTION: u64 = 32;
        let mut n = 0u32;
        loop {
            self.align_text();
            if self.text.len() as u64 + FUNCTION > end {
                return Ok(());
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(8) {
                // xor eax,eax; ret
                self.code(&[0x33, 0xc0, 0xc3]);
                continue;
            }
            let begin = self.text.len();
            self.code(&[0x48, 0x83, 0xec, 0x28, 0xb9]);
            self.code(&((n.wrapping_mul(0x38)) & 0xfff).to_le_bytes());
            // test ecx,ecx; je +6 (over the call)
            self.code(&[0x85, 0xc9, 0x74, 0x06]);
            self.call_import(Import::ExFreePool)?;
            self.epilogue(0x28);
            self.add_function(begin, Self::small_frame(0x28));
        }
    }

    /// Emits `add rsp, frame; ret`.
    fn epilogue(&mut self, frame: u8) {
        self.code(&[0x48, 0x83, 0xc4, frame, 0xc3]);
    }

    /// Lays the image out, writes it into `mem` (mapping each section with its
    /// protection) and returns where everything landed.
    pub fn build(&self, mem: &mut Memory) -> Result<BuiltImage, SimError> {
        let n_imp = NT_IMPORTS.len() as u64;
        // .rdata: [IAT][descriptors][INT][hint/name][dll name][user data]
        let iat_size = if self.imports { (n_imp + 1) * 8 } else { 0 };
        let desc_off = iat_size;
        let desc_size = if self.imports { 2 * 20 } else { 0 };
        let int_off = desc_off + desc_size;
        let int_size = iat_size;
        let names_off = int_off + int_size;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        if self.imports {
            for f in NT_IMPORTS {
                name_offs.push(names_off + names.len() as u64);
                put_u16(&mut names, 0); // hint
                names.extend_from_slice(f.as_bytes());
                names.push(0);
                if names.len() % 2 == 1 {
                    names.push(0);
                }
            }
        }
        let dll_off = names_off + names.len() as u64;
        let dll: &[u8] = if self.imports { b"ntoskrnl.exe\0" } else { b"" };
        let user_off = round_up(dll_off + dll.len() as u64, 16);

        let text_vsize = round_up(
            (self.text.len() as u64).max(self.min_text).max(1),
            PAGE_SIZE,
        );
        // .xdata then .pdata at the end of .rdata.
        let xdata_off = round_up(user_off + self.rdata.len() as u64, 4);
        let xdata_rva = u32::try_from(TEXT_RVA + text_vsize + xdata_off)
            .map_err(|_| err(format!("{}: image beyond 4 GiB", self.name)))?;
        let (xdata, pdata) = self.unwind_tables(xdata_rva)?;
        let pdata_off = round_up(xdata_off + xdata.len() as u64, 4);
        let tables_end = if pdata.is_empty() {
            user_off + self.rdata.len() as u64
        } else {
            pdata_off + pdata.len() as u64
        };
        // The export directory last, so that none of the above moves.
        let edata_off = round_up(tables_end, 4);
        let edata_size = self.export_size() as u64;
        let rdata_len = if edata_size == 0 {
            tables_end
        } else {
            edata_off + edata_size
        };
        let rdata_vsize = round_up(rdata_len.max(1), PAGE_SIZE);
        let data_vsize = round_up(
            (self.data.len() as u64).max(self.min_data).max(8),
            PAGE_SIZE,
        );
        let text_rva = TEXT_RVA;
        let rdata_rva = text_rva + text_vsize;
        let data_rva = rdata_rva + rdata_vsize;
        let size = data_rva + data_vsize;
        let base = self.base.0;
        let text = base + text_rva;
        let rdata = base + rdata_rva;
        let data = base + data_rva;

        let mut image = BuiltImage {
            base: self.base,
            size,
            checksum: 0,
            timestamp: self.timestamp,
            entry: VirtAddr(base + self.entry.unwrap_or(text_rva)),
            text: VirtAddr(text),
            rdata: VirtAddr(rdata),
            rdata_user: VirtAddr(rdata + user_off),
            data: VirtAddr(data),
            iat: (0..if self.imports { n_imp } else { 0 })
                .map(|i| VirtAddr(rdata + i * 8))
                .collect(),
            sections: vec![
                (".text".into(), VirtAddr(text), text_vsize, Prot::RX),
                (".rdata".into(), VirtAddr(rdata), rdata_vsize, Prot::R),
                (".data".into(), VirtAddr(data), data_vsize, Prot::RW),
            ],
        };

        // .text with fixups applied
        let mut code = self.text.clone();
        for f in &self.fixups {
            let target = match f.target {
                Target::Iat(i) => rdata + (i as u64) * 8,
                Target::Loc(l) => image.addr(l).0,
            };
            let rip = text + f.next_ip as u64;
            let disp = i32::try_from(target.wrapping_sub(rip) as i64)
                .map_err(|_| err(format!("{}: displacement out of range", self.name)))?;
            let slot = code
                .get_mut(f.at..f.at + 4)
                .ok_or_else(|| err("fixup outside .text"))?;
            slot.copy_from_slice(&disp.to_le_bytes());
        }

        // .rdata
        let mut ro = Vec::with_capacity(rdata_len as usize);
        if self.imports {
            for i in 0..n_imp as usize {
                let v = self.nt_exports.get(i).map_or(0, |a| a.0);
                put_u64(&mut ro, v);
            }
            put_u64(&mut ro, 0);
            // IMAGE_IMPORT_DESCRIPTOR: OriginalFirstThunk, TimeDateStamp, ForwarderChain,
            // Name, FirstThunk; then an all-zero terminator.
            put_u32(&mut ro, (rdata_rva + int_off) as u32);
            put_u32(&mut ro, 0);
            put_u32(&mut ro, 0);
            put_u32(&mut ro, (rdata_rva + dll_off) as u32);
            put_u32(&mut ro, rdata_rva as u32);
            ro.extend_from_slice(&[0u8; 20]);
            for off in &name_offs {
                put_u64(&mut ro, rdata_rva + off);
            }
            put_u64(&mut ro, 0);
            ro.extend_from_slice(&names);
            ro.extend_from_slice(dll);
        }
        ro.resize(user_off as usize, 0);
        ro.extend_from_slice(&self.rdata);
        if !pdata.is_empty() {
            ro.resize(xdata_off as usize, 0);
            ro.extend_from_slice(&xdata);
            ro.resize(pdata_off as usize, 0);
            ro.extend_from_slice(&pdata);
        }
        if edata_size > 0 {
            let rva_of = |l: Loc| image.addr(l).0.wrapping_sub(base);
            let edata = self.export_table(rdata_rva + edata_off, rva_of);
            ro.resize(edata_off as usize, 0);
            ro.extend_from_slice(&edata);
        }

        // headers
        let raw_text = round_up(code.len() as u64, 0x200);
        let raw_rdata = round_up(ro.len() as u64, 0x200);
        let raw_data = round_up(self.data.len() as u64, 0x200);
        let mut hdr = self.headers(HeaderInfo {
            text_vsize,
            rdata_vsize,
            data_vsize,
            raw: [raw_text, raw_rdata, raw_data],
            size,
            entry: self.entry.unwrap_or(text_rva),
            iat_size,
            desc_rva: rdata_rva + desc_off,
            desc_size,
            pdata_rva: rdata_rva + pdata_off,
            pdata_size: pdata.len() as u64,
            edata_rva: rdata_rva + edata_off,
            edata_size,
        });
        let checksum = pe_checksum(
            &hdr,
            &[&code, &ro, &self.data],
            [raw_text, raw_rdata, raw_data],
        );
        if let Some(slot) = hdr.get_mut(PE_OFFSET as usize + 24 + 64..PE_OFFSET as usize + 24 + 68)
        {
            slot.copy_from_slice(&checksum.to_le_bytes());
        }
        image.checksum = checksum;

        mem.map(self.base, PAGE_SIZE, Prot::R)?;
        mem.write(self.base, &hdr)?;
        for ((_, start, vsize, prot), bytes) in image.sections.iter().zip([&code, &ro, &self.data])
        {
            mem.map(*start, *vsize, *prot)?;
            if !bytes.is_empty() {
                mem.write(*start, bytes)?;
            }
        }
        Ok(image)
    }

    /// The `.xdata` (to go at `xdata_rva`) and `.pdata` of the image's functions; empty
    /// without any. Functions with the same unwind info share one `UNWIND_INFO` (the
    /// filler's hundreds of `sub rsp, 28h` functions), except where a chain names them.
    fn unwind_tables(&self, xdata_rva: u32) -> Result<(Vec<u8>, Vec<u8>), SimError> {
        if self.functions.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let bad = |e: tagsplit_protocol::nt::unwind::UnwindError| {
            err(format!("{}: unwind data: {e}", self.name))
        };
        let parents: std::collections::BTreeSet<u32> = self
            .functions
            .iter()
            .filter_map(|f| f.info.chained().map(|p| p.begin))
            .collect();
        let mut shared: std::collections::HashMap<&UnwindInfo, u32> =
            std::collections::HashMap::new();
        let mut unique = Vec::new();
        let mut all = Vec::with_capacity(self.functions.len());
        for f in &self.functions {
            let (begin, end) = (rva32(f.begin)?, rva32(f.end)?);
            let sharable = f.info.chained().is_none() && !parents.contains(&begin);
            match shared.get(&f.info) {
                Some(rep) if sharable => all.push((begin, end, Some(*rep))),
                _ => {
                    if sharable {
                        shared.insert(&f.info, begin);
                    }
                    unique.push((begin, end, f.info.clone()));
                    all.push((begin, end, None));
                }
            }
        }
        let tables = build_tables(&unique, xdata_rva).map_err(bad)?;
        let data_of = |begin: u32| {
            tables
                .functions
                .iter()
                .find(|f| f.begin == begin)
                .map(|f| f.unwind_data)
                .ok_or_else(|| err("unwind data lost"))
        };
        let mut table = Vec::with_capacity(all.len());
        for (begin, end, rep) in all {
            table.push(RuntimeFunction {
                begin,
                end,
                unwind_data: data_of(rep.unwrap_or(begin))?,
            });
        }
        table.sort_by_key(|f| f.begin);
        let pdata = tagsplit_protocol::nt::unwind::encode_function_table(&table);
        tagsplit_protocol::nt::unwind::parse_function_table(&pdata).map_err(bad)?;
        Ok((tables.xdata, pdata))
    }

    fn headers(&self, h: HeaderInfo) -> Vec<u8> {
        let mut v = Vec::with_capacity(0x400);
        // IMAGE_DOS_HEADER
        v.extend_from_slice(b"MZ");
        for x in [0x90u16, 3, 0, 4, 0, 0xffff, 0, 0xb8, 0, 0, 0, 0x40, 0] {
            put_u16(&mut v, x);
        }
        v.resize(0x3c, 0);
        put_u32(&mut v, PE_OFFSET);
        // DOS stub
        v.extend_from_slice(&[
            0x0e, 0x1f, 0xba, 0x0e, 0x00, 0xb4, 0x09, 0xcd, 0x21, 0xb8, 0x01, 0x4c, 0xcd, 0x21,
        ]);
        v.extend_from_slice(b"This program cannot be run in DOS mode.\r\r\n$");
        v.resize(PE_OFFSET as usize, 0);
        // PE signature + IMAGE_FILE_HEADER
        v.extend_from_slice(b"PE\0\0");
        put_u16(&mut v, 0x8664);
        put_u16(&mut v, 3);
        put_u32(&mut v, self.timestamp);
        put_u32(&mut v, 0);
        put_u32(&mut v, 0);
        put_u16(&mut v, 0xf0);
        put_u16(&mut v, 0x0022); // EXECUTABLE_IMAGE | LARGE_ADDRESS_AWARE
        // IMAGE_OPTIONAL_HEADER64
        put_u16(&mut v, 0x20b);
        v.push(9);
        v.push(0);
        put_u32(&mut v, h.raw[0] as u32); // SizeOfCode
        put_u32(&mut v, (h.raw[1] + h.raw[2]) as u32); // SizeOfInitializedData
        put_u32(&mut v, 0);
        put_u32(&mut v, h.entry as u32);
        put_u32(&mut v, TEXT_RVA as u32); // BaseOfCode
        put_u64(&mut v, self.base.0);
        put_u32(&mut v, PAGE_SIZE as u32); // SectionAlignment
        put_u32(&mut v, 0x200); // FileAlignment
        for x in [6u16, 1, 6, 1, 6, 1] {
            put_u16(&mut v, x);
        }
        put_u32(&mut v, 0); // Win32VersionValue
        put_u32(&mut v, h.size as u32);
        put_u32(&mut v, 0x400); // SizeOfHeaders
        put_u32(&mut v, 0); // CheckSum, patched later
        put_u16(&mut v, 1); // IMAGE_SUBSYSTEM_NATIVE
        put_u16(&mut v, 0x0160); // HIGH_ENTROPY_VA | DYNAMIC_BASE | NX_COMPAT
        put_u64(&mut v, 0x40000);
        put_u64(&mut v, 0x1000);
        put_u64(&mut v, 0x100000);
        put_u64(&mut v, 0x1000);
        put_u32(&mut v, 0);
        put_u32(&mut v, 16);
        for i in 0..16 {
            let (rva, sz) = match i {
                0 if h.edata_size > 0 => (h.edata_rva, h.edata_size),
                1 if h.desc_size > 0 => (h.desc_rva, h.desc_size),
                3 if h.pdata_size > 0 => (h.pdata_rva, h.pdata_size),
                12 if h.iat_size > 0 => (TEXT_RVA + h.text_vsize, h.iat_size),
                _ => (0, 0),
            };
            put_u32(&mut v, rva as u32);
            put_u32(&mut v, sz as u32);
        }
        // section table
        let rdata_rva = TEXT_RVA + h.text_vsize;
        let data_rva = rdata_rva + h.rdata_vsize;
        let secs = [
            (
                b".text\0\0\0",
                TEXT_RVA,
                h.text_vsize,
                SCN_CNT_CODE | SCN_MEM_EXECUTE | SCN_MEM_READ,
            ),
            (
                b".rdata\0\0",
                rdata_rva,
                h.rdata_vsize,
                SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ,
            ),
            (
                b".data\0\0\0",
                data_rva,
                h.data_vsize,
                SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ | SCN_MEM_WRITE,
            ),
        ];
        let mut file_off = 0x400u64;
        for (i, (name, rva, vsize, ch)) in secs.into_iter().enumerate() {
            let raw = h.raw.get(i).copied().unwrap_or(0);
            v.extend_from_slice(name);
            put_u32(&mut v, vsize as u32);
            put_u32(&mut v, rva as u32);
            put_u32(&mut v, raw as u32);
            put_u32(&mut v, if raw > 0 { file_off as u32 } else { 0 });
            put_u32(&mut v, 0);
            put_u32(&mut v, 0);
            put_u16(&mut v, 0);
            put_u16(&mut v, 0);
            put_u32(&mut v, ch);
            file_off += raw;
        }
        v.resize(0x400, 0);
        v
    }
}

struct HeaderInfo {
    text_vsize: u64,
    rdata_vsize: u64,
    data_vsize: u64,
    raw: [u64; 3],
    size: u64,
    entry: u64,
    iat_size: u64,
    desc_rva: u64,
    desc_size: u64,
    pdata_rva: u64,
    pdata_size: u64,
    edata_rva: u64,
    edata_size: u64,
}

/// The PE checksum (the `imagehlp` algorithm) over the file the image would be loaded
/// from: headers then each section's raw data padded to `FileAlignment`.
fn pe_checksum(hdr: &[u8], sections: &[&Vec<u8>; 3], raw: [u64; 3]) -> u32 {
    let mut sum: u64 = 0;
    let mut len: u64 = 0;
    let mut add = |bytes: &[u8], pad_to: u64| {
        let mut i = 0u64;
        for pair in bytes.chunks(2) {
            let lo = u64::from(pair.first().copied().unwrap_or(0));
            let hi = u64::from(pair.get(1).copied().unwrap_or(0));
            sum += lo | (hi << 8);
            sum = (sum & 0xffff) + (sum >> 16);
            i += 2;
        }
        len += pad_to.max(i);
    };
    add(hdr, hdr.len() as u64);
    for (s, r) in sections.iter().zip(raw) {
        add(s, r);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(len as u32)
}

/// Where each part of a PE file lies in the image loaded from it: the headers
/// (`SizeOfHeaders` bytes) at the image base, and each section's raw data
/// (`SizeOfRawData` bytes from `PointerToRawData` in the file) at its RVA. Read back
/// through it, a loaded image gives the file it was loaded from (the loader copies
/// nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// `SizeOfHeaders`.
    pub headers: u64,
    /// Each section with raw data: file offset, size in the file, RVA; by file offset.
    pub sections: Vec<(u64, u64, u64)>,
}

/// Sections a PE header may declare (the PE format's own limit).
const MAX_SECTIONS: u64 = 96;

impl FileLayout {
    /// Reads the layout from the image's first bytes (its headers); `None` unless they
    /// are PE headers whose section table lies within `headers`.
    pub fn parse(headers: &[u8]) -> Option<FileLayout> {
        use tagsplit_protocol::nt::pe::{dos, file_header, nt_headers, optional_header, section};
        let u16_at = |at: u64| -> Option<u64> {
            let at = usize::try_from(at).ok()?;
            let b = headers.get(at..at.checked_add(2)?)?;
            Some(u64::from(u16::from_le_bytes(b.try_into().ok()?)))
        };
        let u32_at = |at: u64| -> Option<u64> {
            let at = usize::try_from(at).ok()?;
            let b = headers.get(at..at.checked_add(4)?)?;
            Some(u64::from(u32::from_le_bytes(b.try_into().ok()?)))
        };
        if headers.get(..2)? != dos::MAGIC {
            return None;
        }
        let nt = u32_at(dos::E_LFANEW)?;
        if headers.get(usize::try_from(nt).ok()?..)?.get(..4)? != nt_headers::SIGNATURE {
            return None;
        }
        let fh = nt + nt_headers::FILE_HEADER;
        let count = u16_at(fh + file_header::NUMBER_OF_SECTIONS)?.min(MAX_SECTIONS);
        let opt = nt + nt_headers::OPTIONAL_HEADER;
        let table = opt + u16_at(fh + file_header::SIZE_OF_OPTIONAL_HEADER)?;
        let size_of_headers = u32_at(opt + optional_header::SIZE_OF_HEADERS)?;
        let mut sections = Vec::new();
        for i in 0..count {
            let entry = table + i * section::SIZE;
            let raw = u32_at(entry + section::SIZE_OF_RAW_DATA)?;
            let at = u32_at(entry + section::POINTER_TO_RAW_DATA)?;
            let rva = u32_at(entry + section::VIRTUAL_ADDRESS)?;
            if raw > 0 {
                sections.push((at, raw, rva));
            }
        }
        sections.sort_unstable();
        Some(FileLayout {
            headers: size_of_headers,
            sections,
        })
    }

    /// The file's size: the end of its last part.
    pub fn file_size(&self) -> u64 {
        self.sections
            .iter()
            .map(|&(at, raw, _)| at.saturating_add(raw))
            .fold(self.headers, u64::max)
    }

    /// Where file byte `offset` was loaded: its RVA (`None` for a byte of no part, which
    /// reads as zero) and how many bytes from there stay in the same part (at least 1).
    /// `None` at or after the end of the file.
    pub fn locate(&self, offset: u64) -> Option<(Option<u64>, u64)> {
        let end = self.file_size();
        if offset >= end {
            return None;
        }
        if offset < self.headers {
            return Some((Some(offset), self.headers - offset));
        }
        for &(at, raw, rva) in &self.sections {
            if offset < at {
                // A gap before this part.
                return Some((None, at - offset));
            }
            if offset - at < raw {
                return Some((Some(rva + (offset - at)), raw - (offset - at)));
            }
        }
        Some((None, end - offset))
    }
}
