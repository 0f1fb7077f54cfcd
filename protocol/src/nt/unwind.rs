//! x64 unwind data: the exception directory's `RUNTIME_FUNCTION` table (`.pdata`) and the
//! `UNWIND_INFO` blocks with their `UNWIND_CODE`s (`.xdata`), as Microsoft's "x64
//! exception handling" documents them. A debugger parses them ([`parse_function_table`],
//! [`UnwindInfo::parse`]); a target that builds images encodes them
//! ([`encode_function_table`], [`UnwindInfo::encode`]), or has [`build_tables`] lay out
//! a whole image's `.pdata` and `.xdata`.
//!
//! Parsing is bounded and total: any byte string gives a value or an [`UnwindError`], never a
//! panic, and nothing allocates more than the input's size (an `UNWIND_INFO` is at most
//! [`UnwindInfo::MAX_SIZE`] bytes). Raw byte offsets of the structures are in
//! [`pe::runtime_function`](super::pe::runtime_function) and
//! [`pe::unwind_info`](super::pe::unwind_info).
//!
//! ```
//! use tagsplit_protocol::nt::unwind::{Reg, UnwindCode, UnwindInfo, UnwindOp};
//!
//! // push rbx (ends at +1); sub rsp, 0x20 (ends at +5).
//! let info = UnwindInfo {
//!     prolog_size: 5,
//!     codes: vec![
//!         UnwindCode::new(5, UnwindOp::AllocSmall(0x20)),
//!         UnwindCode::new(1, UnwindOp::PushNonvol(Reg::Rbx)),
//!     ],
//!     ..UnwindInfo::default()
//! };
//! let bytes = info.encode()?;
//! assert_eq!(bytes, [0x01, 0x05, 0x02, 0x00, 0x05, 0x32, 0x01, 0x30]);
//! assert_eq!(UnwindInfo::parse(&bytes)?, info);
//! # Ok::<(), tagsplit_protocol::nt::unwind::UnwindError>(())
//! ```

use std::fmt;

use super::pe::{runtime_function, unwind_info};

/// Errors from parsing or encoding unwind data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnwindError {
    /// The bytes end before the structure does.
    #[error("unwind data truncated: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// `Version` is not 1 or 2.
    #[error("unsupported UNWIND_INFO version {0}")]
    Version(u8),
    /// `Flags` has bits no version defines, or `UNW_FLAG_CHAININFO` together with a
    /// handler flag.
    #[error("invalid UNWIND_INFO flags {0:#x}")]
    Flags(u8),
    /// An unwind code with an operation this version does not define.
    #[error("unknown unwind operation {op} in code slot {slot}")]
    UnknownOp {
        /// `UnwindOp`.
        op: u8,
        /// Index of the slot.
        slot: usize,
    },
    /// An operation's extra slots run past `CountOfCodes`.
    #[error("unwind operation {op} in code slot {slot} runs past the {count} counted slots")]
    CodeOverrun {
        /// `UnwindOp`.
        op: u8,
        /// Index of the slot.
        slot: usize,
        /// `CountOfCodes`.
        count: usize,
    },
    /// `OpInfo` out of range for its operation.
    #[error("operation info {info} invalid for unwind operation {op} in code slot {slot}")]
    OpInfo {
        /// `UnwindOp`.
        op: u8,
        /// `OpInfo`.
        info: u8,
        /// Index of the slot.
        slot: usize,
    },
    /// `UWOP_SET_FPREG` in an `UNWIND_INFO` whose `FrameRegister` is zero.
    #[error("UWOP_SET_FPREG without a frame register")]
    NoFrameRegister,
    /// A function table whose size is not a whole number of entries.
    #[error("function table of {0} bytes is not a whole number of 12-byte entries")]
    TableSize(usize),
    /// A function table entry that is empty or not above the one before it.
    #[error(
        "function table entry {index} ({begin:#x}..{end:#x}) is empty, unsorted or overlaps the one before"
    )]
    TableOrder {
        /// Index of the entry.
        index: usize,
        /// Its `BeginAddress`.
        begin: u32,
        /// Its `EndAddress`.
        end: u32,
    },
    /// A value that the encoding cannot hold.
    #[error("cannot encode unwind data: {0}")]
    Unencodable(String),
}

/// An x64 integer register, numbered as unwind codes and `FrameRegister` number them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Reg {
    /// All sixteen, in number order.
    pub const ALL: [Reg; 16] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
    ];

    /// The register with this number (the low four bits count).
    pub const fn from_nibble(n: u8) -> Reg {
        match n & 0xf {
            0 => Reg::Rax,
            1 => Reg::Rcx,
            2 => Reg::Rdx,
            3 => Reg::Rbx,
            4 => Reg::Rsp,
            5 => Reg::Rbp,
            6 => Reg::Rsi,
            7 => Reg::Rdi,
            8 => Reg::R8,
            9 => Reg::R9,
            10 => Reg::R10,
            11 => Reg::R11,
            12 => Reg::R12,
            13 => Reg::R13,
            14 => Reg::R14,
            _ => Reg::R15,
        }
    }

    /// The register's number (0 = `rax` .. 15 = `r15`).
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The lower-case name (`rbx`, `r12`).
    pub const fn name(self) -> &'static str {
        match self {
            Reg::Rax => "rax",
            Reg::Rcx => "rcx",
            Reg::Rdx => "rdx",
            Reg::Rbx => "rbx",
            Reg::Rsp => "rsp",
            Reg::Rbp => "rbp",
            Reg::Rsi => "rsi",
            Reg::Rdi => "rdi",
            Reg::R8 => "r8",
            Reg::R9 => "r9",
            Reg::R10 => "r10",
            Reg::R11 => "r11",
            Reg::R12 => "r12",
            Reg::R13 => "r13",
            Reg::R14 => "r14",
            Reg::R15 => "r15",
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `RUNTIME_FUNCTION`: a function's extent and where its unwind data is, all RVAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuntimeFunction {
    /// `BeginAddress`: the function's first byte.
    pub begin: u32,
    /// `EndAddress`: one past its last byte.
    pub end: u32,
    /// `UnwindData`: its [`UnwindInfo`].
    pub unwind_data: u32,
}

impl RuntimeFunction {
    /// Size of one entry.
    pub const SIZE: usize = runtime_function::SIZE as usize;

    /// Reads an entry from the first [`SIZE`](Self::SIZE) bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<RuntimeFunction, UnwindError> {
        let field = |off: u64| u32_at(b, off as usize, Self::SIZE);
        Ok(RuntimeFunction {
            begin: field(runtime_function::BEGIN_ADDRESS)?,
            end: field(runtime_function::END_ADDRESS)?,
            unwind_data: field(runtime_function::UNWIND_DATA)?,
        })
    }

    /// The entry as stored.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (dst, v) in out
            .chunks_exact_mut(4)
            .zip([self.begin, self.end, self.unwind_data])
        {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Whether `rva` lies in `[begin, end)`.
    pub fn contains(&self, rva: u32) -> bool {
        rva >= self.begin && rva < self.end
    }
}

/// Parses a function table (the exception directory's bytes): every entry non-empty
/// (`begin < end`) and above the one before, so that [`lookup`] can binary-search it.
pub fn parse_function_table(bytes: &[u8]) -> Result<Vec<RuntimeFunction>, UnwindError> {
    if !bytes.len().is_multiple_of(RuntimeFunction::SIZE) {
        return Err(UnwindError::TableSize(bytes.len()));
    }
    let mut out: Vec<RuntimeFunction> = Vec::with_capacity(bytes.len() / RuntimeFunction::SIZE);
    for (index, raw) in bytes.chunks_exact(RuntimeFunction::SIZE).enumerate() {
        let f = RuntimeFunction::parse(raw)?;
        let above = out.last().is_none_or(|prev| f.begin >= prev.end);
        if f.begin >= f.end || !above {
            return Err(UnwindError::TableOrder {
                index,
                begin: f.begin,
                end: f.end,
            });
        }
        out.push(f);
    }
    Ok(out)
}

/// The function table as stored (the caller sorts it).
pub fn encode_function_table(table: &[RuntimeFunction]) -> Vec<u8> {
    table.iter().flat_map(RuntimeFunction::to_bytes).collect()
}

/// The entry of a sorted table (as [`parse_function_table`] returns it) that contains `rva`.
pub fn lookup(table: &[RuntimeFunction], rva: u32) -> Option<&RuntimeFunction> {
    let after = table.partition_point(|f| f.begin <= rva);
    table.get(after.checked_sub(1)?).filter(|f| f.contains(rva))
}

/// One unwind operation: what a prolog instruction did, to be undone when unwinding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnwindOp {
    /// `UWOP_PUSH_NONVOL` (0): `push reg`; RSP went down by 8.
    PushNonvol(Reg),
    /// `UWOP_ALLOC_LARGE` (1) with `OpInfo` 0: a multiple of 8 up to 512 KiB - 8, stored
    /// divided by 8 in one extra slot.
    AllocLarge(u32),
    /// `UWOP_ALLOC_LARGE` (1) with `OpInfo` 1: any size up to 4 GiB - 8, unscaled in two
    /// extra slots.
    AllocLargeFar(u32),
    /// `UWOP_ALLOC_SMALL` (2): 8 to 128 bytes in steps of 8, in `OpInfo`.
    AllocSmall(u32),
    /// `UWOP_SET_FPREG` (3): the frame register was set to RSP + 16 × `FrameOffset`.
    SetFpreg,
    /// `UWOP_SAVE_NONVOL` (4): `mov [frame + offset], reg`, offset a multiple of 8 below
    /// 512 KiB (one extra slot, divided by 8).
    SaveNonvol {
        /// The register saved.
        reg: Reg,
        /// Its offset from the frame base.
        offset: u32,
    },
    /// `UWOP_SAVE_NONVOL_FAR` (5): as [`SaveNonvol`](Self::SaveNonvol), unscaled in two
    /// extra slots.
    SaveNonvolFar {
        /// The register saved.
        reg: Reg,
        /// Its offset from the frame base.
        offset: u32,
    },
    /// `UWOP_EPILOG` (6, version 2 only): describes an epilog rather than a prolog step.
    /// The code's [`offset`](UnwindCode::offset) byte and this `OpInfo` are kept as
    /// stored: in the first such code, the epilog's size and flags (bit 0: an epilog at
    /// the function's end); in the next ones, the low and high bits of an epilog's
    /// distance from the function's end.
    Epilog {
        /// `OpInfo` as stored.
        info: u8,
    },
    /// `UWOP_SAVE_XMM128` (8): `movaps [frame + offset], xmmN`, offset a multiple of 16
    /// below 1 MiB (one extra slot, divided by 16).
    SaveXmm128 {
        /// The XMM register number.
        xmm: u8,
        /// Its offset from the frame base.
        offset: u32,
    },
    /// `UWOP_SAVE_XMM128_FAR` (9): as [`SaveXmm128`](Self::SaveXmm128), unscaled in two
    /// extra slots.
    SaveXmm128Far {
        /// The XMM register number.
        xmm: u8,
        /// Its offset from the frame base.
        offset: u32,
    },
    /// `UWOP_PUSH_MACHFRAME` (10): the processor pushed an interrupt frame (SS, old RSP,
    /// EFLAGS, CS, RIP), and an error code below it when `error_code`.
    PushMachframe {
        /// `OpInfo` 1: an error code was pushed too.
        error_code: bool,
    },
}

/// `UWOP_*` operation numbers.
pub mod op {
    /// `UWOP_PUSH_NONVOL`.
    pub const PUSH_NONVOL: u8 = 0;
    /// `UWOP_ALLOC_LARGE`.
    pub const ALLOC_LARGE: u8 = 1;
    /// `UWOP_ALLOC_SMALL`.
    pub const ALLOC_SMALL: u8 = 2;
    /// `UWOP_SET_FPREG`.
    pub const SET_FPREG: u8 = 3;
    /// `UWOP_SAVE_NONVOL`.
    pub const SAVE_NONVOL: u8 = 4;
    /// `UWOP_SAVE_NONVOL_FAR`.
    pub const SAVE_NONVOL_FAR: u8 = 5;
    /// `UWOP_EPILOG` (version 2).
    pub const EPILOG: u8 = 6;
    /// `UWOP_SPARE_CODE`: defined by no version; rejected.
    pub const SPARE_CODE: u8 = 7;
    /// `UWOP_SAVE_XMM128`.
    pub const SAVE_XMM128: u8 = 8;
    /// `UWOP_SAVE_XMM128_FAR`.
    pub const SAVE_XMM128_FAR: u8 = 9;
    /// `UWOP_PUSH_MACHFRAME`.
    pub const PUSH_MACHFRAME: u8 = 10;
}

impl UnwindOp {
    /// The smallest encoding of a fixed stack allocation of `size` bytes (a multiple of 8):
    /// `ALLOC_SMALL`, `ALLOC_LARGE` or its far form.
    pub fn alloc(size: u32) -> UnwindOp {
        if (8..=128).contains(&size) {
            UnwindOp::AllocSmall(size)
        } else if size.is_multiple_of(8) && size / 8 <= u32::from(u16::MAX) {
            UnwindOp::AllocLarge(size)
        } else {
            UnwindOp::AllocLargeFar(size)
        }
    }

    /// The smallest encoding of saving `reg` at `offset` from the frame base.
    pub fn save_nonvol(reg: Reg, offset: u32) -> UnwindOp {
        if offset.is_multiple_of(8) && offset / 8 <= u32::from(u16::MAX) {
            UnwindOp::SaveNonvol { reg, offset }
        } else {
            UnwindOp::SaveNonvolFar { reg, offset }
        }
    }

    /// The `UWOP_*` number ([`op`]).
    pub const fn number(&self) -> u8 {
        match self {
            UnwindOp::PushNonvol(_) => op::PUSH_NONVOL,
            UnwindOp::AllocLarge(_) | UnwindOp::AllocLargeFar(_) => op::ALLOC_LARGE,
            UnwindOp::AllocSmall(_) => op::ALLOC_SMALL,
            UnwindOp::SetFpreg => op::SET_FPREG,
            UnwindOp::SaveNonvol { .. } => op::SAVE_NONVOL,
            UnwindOp::SaveNonvolFar { .. } => op::SAVE_NONVOL_FAR,
            UnwindOp::Epilog { .. } => op::EPILOG,
            UnwindOp::SaveXmm128 { .. } => op::SAVE_XMM128,
            UnwindOp::SaveXmm128Far { .. } => op::SAVE_XMM128_FAR,
            UnwindOp::PushMachframe { .. } => op::PUSH_MACHFRAME,
        }
    }

    /// How many 2-byte slots the operation takes (1 to 3).
    pub const fn slots(&self) -> usize {
        match self {
            UnwindOp::PushNonvol(_)
            | UnwindOp::AllocSmall(_)
            | UnwindOp::SetFpreg
            | UnwindOp::Epilog { .. }
            | UnwindOp::PushMachframe { .. } => 1,
            UnwindOp::AllocLarge(_) | UnwindOp::SaveNonvol { .. } | UnwindOp::SaveXmm128 { .. } => {
                2
            }
            UnwindOp::AllocLargeFar(_)
            | UnwindOp::SaveNonvolFar { .. }
            | UnwindOp::SaveXmm128Far { .. } => 3,
        }
    }

    /// How far RSP moved when the prolog did this (what unwinding adds back); zero for
    /// operations that do not move it ([`SetFpreg`](Self::SetFpreg) replaces RSP instead,
    /// [`PushMachframe`](Self::PushMachframe) reloads it).
    pub const fn stack_adjust(&self) -> u64 {
        match self {
            UnwindOp::PushNonvol(_) => 8,
            UnwindOp::AllocLarge(n) | UnwindOp::AllocLargeFar(n) | UnwindOp::AllocSmall(n) => {
                *n as u64
            }
            _ => 0,
        }
    }
}

/// One `UNWIND_CODE` (with its extra slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnwindCode {
    /// `CodeOffset`: the offset from the function's start of the end of the prolog
    /// instruction that did this (for [`UnwindOp::Epilog`], the raw byte).
    pub offset: u8,
    /// What it did.
    pub op: UnwindOp,
}

impl UnwindCode {
    /// A code for an instruction ending at `offset`.
    pub const fn new(offset: u8, op: UnwindOp) -> UnwindCode {
        UnwindCode { offset, op }
    }
}

/// What follows the unwind codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Trailer {
    /// Nothing (`Flags` 0).
    #[default]
    None,
    /// `UNW_FLAG_EHANDLER` and/or `UNW_FLAG_UHANDLER`: the handler's RVA (language-specific
    /// data follows it in the image; it is neither parsed nor encoded here).
    Handler {
        /// `UNW_FLAG_EHANDLER`: an exception handler.
        exception: bool,
        /// `UNW_FLAG_UHANDLER`: a termination handler.
        termination: bool,
        /// The handler's RVA.
        handler: u32,
    },
    /// `UNW_FLAG_CHAININFO`: a chained `RUNTIME_FUNCTION` whose unwind info applies after
    /// this one's (its prolog has run in full).
    Chained(RuntimeFunction),
}

impl Trailer {
    /// The `Flags` bits it stands for.
    pub const fn flags(&self) -> u8 {
        match self {
            Trailer::None => 0,
            Trailer::Handler {
                exception,
                termination,
                ..
            } => {
                (if *exception {
                    unwind_info::FLAG_EHANDLER
                } else {
                    0
                }) | (if *termination {
                    unwind_info::FLAG_UHANDLER
                } else {
                    0
                })
            }
            Trailer::Chained(_) => unwind_info::FLAG_CHAININFO,
        }
    }

    /// Its size in bytes after the (even-padded) code array.
    pub const fn size(&self) -> usize {
        match self {
            Trailer::None => 0,
            Trailer::Handler { .. } => 4,
            Trailer::Chained(_) => RuntimeFunction::SIZE,
        }
    }
}

/// One `UNWIND_INFO`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnwindInfo {
    /// `Version`: 1, or 2 (which adds [`UnwindOp::Epilog`]).
    pub version: u8,
    /// `SizeOfProlog` in bytes.
    pub prolog_size: u8,
    /// `FrameRegister`, when the function sets one (`UWOP_SET_FPREG`).
    pub frame_register: Option<Reg>,
    /// `FrameOffset`, in 16-byte units (0 to 15): the frame register was set to
    /// RSP + 16 × this.
    pub frame_offset: u8,
    /// The codes, latest prolog instruction first, as stored.
    pub codes: Vec<UnwindCode>,
    /// Handler or chained function.
    pub trailer: Trailer,
}

impl Default for UnwindInfo {
    /// Version 1, no prolog, no frame register, no codes, no trailer.
    fn default() -> Self {
        UnwindInfo {
            version: 1,
            prolog_size: 0,
            frame_register: None,
            frame_offset: 0,
            codes: Vec::new(),
            trailer: Trailer::None,
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// A little-endian u32 at `off`; `need` is what a truncation error reports.
fn u32_at(b: &[u8], off: usize, need: usize) -> Result<u32, UnwindError> {
    b.get(off..off.saturating_add(4))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(UnwindError::Truncated {
            need,
            have: b.len(),
        })
}

const fn at(off: u64) -> usize {
    off as usize
}

impl UnwindInfo {
    /// The most bytes an `UNWIND_INFO` takes (255 codes padded to 256, then a chained
    /// entry): what a reader fetches when it does not know the size yet.
    pub const MAX_SIZE: usize = at(unwind_info::UNWIND_CODES) + 256 * 2 + RuntimeFunction::SIZE;

    /// Parses an `UNWIND_INFO` from the start of `b` (which may run on past it).
    pub fn parse(b: &[u8]) -> Result<UnwindInfo, UnwindError> {
        let head = at(unwind_info::UNWIND_CODES);
        let header = b.get(..head).ok_or(UnwindError::Truncated {
            need: head,
            have: b.len(),
        })?;
        let byte = |off: u64| header.get(at(off)).copied().unwrap_or(0);
        let first = byte(unwind_info::VERSION_AND_FLAGS);
        let version = unwind_info::version(first);
        if version != 1 && version != 2 {
            return Err(UnwindError::Version(version));
        }
        let flags = unwind_info::flags(first);
        let fourth = byte(unwind_info::FRAME_REGISTER_AND_OFFSET);
        let frame_register = match unwind_info::frame_register(fourth) {
            0 => None,
            n => Some(Reg::from_nibble(n)),
        };
        let count = usize::from(byte(unwind_info::COUNT_OF_CODES));
        let slots_end = head + 2 * (count + (count & 1));
        let trailer_end = slots_end + Self::trailer_size(flags)?;
        if b.len() < trailer_end {
            return Err(UnwindError::Truncated {
                need: trailer_end,
                have: b.len(),
            });
        }
        let slot_bytes = b.get(head..head + 2 * count).unwrap_or_default();
        let codes = parse_codes(slot_bytes, version)?;
        if frame_register.is_none() && codes.iter().any(|c| c.op == UnwindOp::SetFpreg) {
            return Err(UnwindError::NoFrameRegister);
        }
        let trailer = if flags & unwind_info::FLAG_CHAININFO != 0 {
            Trailer::Chained(RuntimeFunction::parse(
                b.get(slots_end..).unwrap_or_default(),
            )?)
        } else if flags != 0 {
            Trailer::Handler {
                exception: flags & unwind_info::FLAG_EHANDLER != 0,
                termination: flags & unwind_info::FLAG_UHANDLER != 0,
                handler: u32_at(b, slots_end, trailer_end)?,
            }
        } else {
            Trailer::None
        };
        Ok(UnwindInfo {
            version,
            prolog_size: byte(unwind_info::SIZE_OF_PROLOG),
            frame_register,
            frame_offset: unwind_info::frame_offset(fourth),
            codes,
            trailer,
        })
    }

    /// The trailer size `flags` call for, or why they are invalid.
    fn trailer_size(flags: u8) -> Result<usize, UnwindError> {
        let handlers = unwind_info::FLAG_EHANDLER | unwind_info::FLAG_UHANDLER;
        let known = handlers | unwind_info::FLAG_CHAININFO;
        if flags & !known != 0
            || (flags & unwind_info::FLAG_CHAININFO != 0 && flags & handlers != 0)
        {
            return Err(UnwindError::Flags(flags));
        }
        Ok(if flags & unwind_info::FLAG_CHAININFO != 0 {
            RuntimeFunction::SIZE
        } else if flags != 0 {
            4
        } else {
            0
        })
    }

    /// How many bytes the structure takes in the image, given its first four bytes (codes
    /// padded to an even count, then the trailer; not a handler's language-specific data).
    pub fn size_from_header(header: [u8; 4]) -> Result<usize, UnwindError> {
        let [first, _, count, _] = header;
        let count = usize::from(count);
        let flags = unwind_info::flags(first);
        Ok(at(unwind_info::UNWIND_CODES) + 2 * (count + (count & 1)) + Self::trailer_size(flags)?)
    }

    /// How many 2-byte slots the codes take (`CountOfCodes`).
    pub fn slot_count(&self) -> usize {
        self.codes.iter().map(|c| c.op.slots()).sum()
    }

    /// The bytes as stored: the header, the codes padded to an even number of slots, the
    /// trailer. Fails on values the format cannot hold (a misaligned or oversized
    /// allocation or offset, more than 255 slots, a frame offset above 15, ...).
    pub fn encode(&self) -> Result<Vec<u8>, UnwindError> {
        let bad = |what: String| Err(UnwindError::Unencodable(what));
        if self.version != 1 && self.version != 2 {
            return bad(format!("version {}", self.version));
        }
        if self.frame_offset > 15 {
            return bad(format!(
                "frame offset {} (16-byte units, 0-15)",
                self.frame_offset
            ));
        }
        let count = self.slot_count();
        let Ok(count_byte) = u8::try_from(count) else {
            return bad(format!("{count} code slots (at most 255)"));
        };
        let frame_reg = self.frame_register.map_or(0, Reg::number);
        let mut out = Vec::with_capacity(Self::MAX_SIZE);
        out.push(unwind_info::version_and_flags(
            self.version,
            self.trailer.flags(),
        ));
        out.push(self.prolog_size);
        out.push(count_byte);
        out.push(frame_reg | (self.frame_offset << 4));
        for code in &self.codes {
            encode_code(code, self, &mut out)?;
        }
        if count & 1 == 1 {
            out.extend_from_slice(&[0, 0]);
        }
        match self.trailer {
            Trailer::None => {}
            Trailer::Handler { handler, .. } => {
                if self.trailer.flags() == 0 {
                    return bad("a handler with neither handler flag".into());
                }
                out.extend_from_slice(&handler.to_le_bytes());
            }
            Trailer::Chained(f) => out.extend_from_slice(&f.to_bytes()),
        }
        Ok(out)
    }

    /// The codes that describe the prolog (all but version 2's [`UnwindOp::Epilog`]s).
    pub fn prolog_codes(&self) -> impl Iterator<Item = &UnwindCode> {
        self.codes
            .iter()
            .filter(|c| !matches!(c.op, UnwindOp::Epilog { .. }))
    }

    /// The chained function, if any.
    pub fn chained(&self) -> Option<RuntimeFunction> {
        match self.trailer {
            Trailer::Chained(f) => Some(f),
            _ => None,
        }
    }
}

/// Decodes `CountOfCodes` slots into codes.
fn parse_codes(slots: &[u8], version: u8) -> Result<Vec<UnwindCode>, UnwindError> {
    let count = slots.len() / 2;
    let mut codes = Vec::with_capacity(count);
    let mut slot = 0usize;
    while slot < count {
        let at = slot * 2;
        let offset = slots.get(at).copied().unwrap_or(0);
        let op_byte = slots.get(at + 1).copied().unwrap_or(0);
        let (opn, info) = (op_byte & 0xf, op_byte >> 4);
        let op_info_err = UnwindError::OpInfo {
            op: opn,
            info,
            slot,
        };
        let need = match opn {
            op::ALLOC_LARGE if info == 0 => 2,
            op::ALLOC_LARGE if info == 1 => 3,
            op::ALLOC_LARGE => return Err(op_info_err),
            op::SAVE_NONVOL | op::SAVE_XMM128 => 2,
            op::SAVE_NONVOL_FAR | op::SAVE_XMM128_FAR => 3,
            op::PUSH_NONVOL | op::ALLOC_SMALL | op::SET_FPREG | op::PUSH_MACHFRAME => 1,
            op::EPILOG if version >= 2 => 1,
            _ => return Err(UnwindError::UnknownOp { op: opn, slot }),
        };
        if slot + need > count {
            return Err(UnwindError::CodeOverrun {
                op: opn,
                slot,
                count,
            });
        }
        let short = || u32::from(u16_at(slots, at + 2).unwrap_or(0));
        let long = || {
            let lo = short();
            let hi = u32::from(u16_at(slots, at + 4).unwrap_or(0));
            lo | (hi << 16)
        };
        let reg = Reg::from_nibble(info);
        let op = match opn {
            op::PUSH_NONVOL => UnwindOp::PushNonvol(reg),
            op::ALLOC_LARGE if info == 0 => UnwindOp::AllocLarge(short() * 8),
            op::ALLOC_LARGE => UnwindOp::AllocLargeFar(long()),
            op::ALLOC_SMALL => UnwindOp::AllocSmall(u32::from(info) * 8 + 8),
            op::SET_FPREG => UnwindOp::SetFpreg,
            op::SAVE_NONVOL => UnwindOp::SaveNonvol {
                reg,
                offset: short() * 8,
            },
            op::SAVE_NONVOL_FAR => UnwindOp::SaveNonvolFar {
                reg,
                offset: long(),
            },
            op::EPILOG => UnwindOp::Epilog { info },
            op::SAVE_XMM128 => UnwindOp::SaveXmm128 {
                xmm: info,
                offset: short() * 16,
            },
            op::SAVE_XMM128_FAR => UnwindOp::SaveXmm128Far {
                xmm: info,
                offset: long(),
            },
            _ if info <= 1 => UnwindOp::PushMachframe {
                error_code: info == 1,
            },
            _ => return Err(op_info_err),
        };
        codes.push(UnwindCode { offset, op });
        slot += need;
    }
    Ok(codes)
}

/// Appends one code's slots.
fn encode_code(code: &UnwindCode, info: &UnwindInfo, out: &mut Vec<u8>) -> Result<(), UnwindError> {
    let bad = |what: String| Err(UnwindError::Unencodable(what));
    let scaled = |v: u32, unit: u32, name: &str| -> Result<u16, UnwindError> {
        if !v.is_multiple_of(unit) {
            return Err(UnwindError::Unencodable(format!(
                "{name} {v:#x} is not a multiple of {unit}"
            )));
        }
        u16::try_from(v / unit).map_err(|_| {
            UnwindError::Unencodable(format!("{name} {v:#x} too large for the short form"))
        })
    };
    let (op_info, extra): (u8, Vec<u16>) = match code.op {
        UnwindOp::PushNonvol(r) => (r.number(), vec![]),
        UnwindOp::AllocLarge(n) => (0, vec![scaled(n, 8, "ALLOC_LARGE size")?]),
        UnwindOp::AllocLargeFar(n) => (1, split(n)),
        UnwindOp::AllocSmall(n) => {
            if !(8..=128).contains(&n) || !n.is_multiple_of(8) {
                return bad(format!("ALLOC_SMALL size {n:#x} (8 to 128 in steps of 8)"));
            }
            // In range: (n - 8) / 8 is at most 15.
            (u8::try_from((n - 8) / 8).unwrap_or(0), vec![])
        }
        UnwindOp::SetFpreg => {
            if info.frame_register.is_none() {
                return Err(UnwindError::NoFrameRegister);
            }
            (0, vec![])
        }
        UnwindOp::SaveNonvol { reg, offset } => {
            (reg.number(), vec![scaled(offset, 8, "SAVE_NONVOL offset")?])
        }
        UnwindOp::SaveNonvolFar { reg, offset } => (reg.number(), split(offset)),
        UnwindOp::Epilog { info: i } => {
            if info.version < 2 {
                return bad("UWOP_EPILOG in a version 1 UNWIND_INFO".into());
            }
            (i, vec![])
        }
        UnwindOp::SaveXmm128 { xmm, offset } => {
            (xmm, vec![scaled(offset, 16, "SAVE_XMM128 offset")?])
        }
        UnwindOp::SaveXmm128Far { xmm, offset } => (xmm, split(offset)),
        UnwindOp::PushMachframe { error_code } => (u8::from(error_code), vec![]),
    };
    if op_info > 15 {
        return bad(format!("operation info {op_info} (at most 15)"));
    }
    out.push(code.offset);
    out.push(code.op.number() | (op_info << 4));
    for slot in extra {
        out.extend_from_slice(&slot.to_le_bytes());
    }
    Ok(())
}

/// A u32 as two little-endian slots.
fn split(v: u32) -> Vec<u16> {
    vec![(v & 0xffff) as u16, (v >> 16) as u16]
}

/// `.pdata` and `.xdata` laid out for an image, by [`build_tables`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwindTables {
    /// The function table, sorted, with each entry's `UnwindData` filled in.
    pub functions: Vec<RuntimeFunction>,
    /// The exception directory's bytes (the encoded `functions`).
    pub pdata: Vec<u8>,
    /// The `UNWIND_INFO`s, each 4-byte aligned, the first at `xdata_rva`.
    pub xdata: Vec<u8>,
}

/// Lays out the unwind data of an image's functions: `(begin, end, info)` each (any
/// order), the `.xdata` to go at `xdata_rva` (a multiple of 4). A chained trailer whose
/// `unwind_data` is 0 is completed with the `UNWIND_INFO` of the function that begins at
/// its `begin` (so a fragment can name its parent before the layout is known). Fails on
/// an info the format cannot hold, overlapping or empty functions, a chain to no function,
/// or `.xdata` beyond 4 GiB.
pub fn build_tables(
    functions: &[(u32, u32, UnwindInfo)],
    xdata_rva: u32,
) -> Result<UnwindTables, UnwindError> {
    let bad = |what: String| UnwindError::Unencodable(what);
    if !xdata_rva.is_multiple_of(4) {
        return Err(bad(format!(
            ".xdata RVA {xdata_rva:#x} is not 4-byte aligned"
        )));
    }
    let mut order: Vec<&(u32, u32, UnwindInfo)> = functions.iter().collect();
    order.sort_by_key(|f| f.0);
    // Where each info goes: every encoding has a fixed size, chained or not.
    let mut table = Vec::with_capacity(order.len());
    let mut at = u64::from(xdata_rva);
    for (begin, end, info) in &order {
        let unwind_data = u32::try_from(at).map_err(|_| bad(".xdata beyond 4 GiB".into()))?;
        table.push(RuntimeFunction {
            begin: *begin,
            end: *end,
            unwind_data,
        });
        at += info.encode()?.len() as u64;
    }
    let mut xdata = Vec::new();
    for (_, _, info) in &order {
        let mut info = (*info).clone();
        if let Trailer::Chained(parent) = &mut info.trailer
            && parent.unwind_data == 0
        {
            let found = table
                .iter()
                .find(|f| f.begin == parent.begin)
                .ok_or_else(|| {
                    bad(format!(
                        "chain to {:#x}, where no function begins",
                        parent.begin
                    ))
                })?;
            *parent = *found;
        }
        xdata.extend_from_slice(&info.encode()?);
    }
    let pdata = encode_function_table(&table);
    parse_function_table(&pdata)?;
    Ok(UnwindTables {
        functions: table,
        pdata,
        xdata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_op_decodes_from_known_bytes() {
        // Version 2, chained; frame rbp at +0x20; a code of every kind.
        let bytes = [
            0x22, 0x30, 0x14, 0x25, // header: v2 | CHAININFO, prolog 0x30, 20 slots, rbp/2
            0x08, 0x16, // epilog: size 8, at end
            0x30, 0x03, // SET_FPREG
            0x2c, 0x99, 0x04, 0x00, 0x00, 0x00, // SAVE_XMM128_FAR xmm9 at 4
            0x28, 0x78, 0x02, 0x00, // SAVE_XMM128 xmm7 at 0x20
            0x24, 0x35, 0x00, 0x00, 0x08, 0x00, // SAVE_NONVOL_FAR rbx at 0x80000
            0x20, 0x64, 0x03, 0x00, // SAVE_NONVOL rsi at 0x18
            0x1c, 0x11, 0x00, 0x10, 0x00, 0x00, // ALLOC_LARGE far 0x1000
            0x18, 0x01, 0x00, 0x02, // ALLOC_LARGE 0x1000
            0x14, 0xf2, // ALLOC_SMALL 128
            0x10, 0xf0, // PUSH_NONVOL r15
            0x01, 0x1a, // PUSH_MACHFRAME with error code
            0x00, 0x10, 0x00, 0x00, 0x40, 0x10, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00,
        ];
        let info = UnwindInfo::parse(&bytes).unwrap();
        let ops: Vec<UnwindOp> = info.codes.iter().map(|c| c.op).collect();
        assert_eq!(
            ops,
            [
                UnwindOp::Epilog { info: 1 },
                UnwindOp::SetFpreg,
                UnwindOp::SaveXmm128Far { xmm: 9, offset: 4 },
                UnwindOp::SaveXmm128 {
                    xmm: 7,
                    offset: 0x20
                },
                UnwindOp::SaveNonvolFar {
                    reg: Reg::Rbx,
                    offset: 0x80000
                },
                UnwindOp::SaveNonvol {
                    reg: Reg::Rsi,
                    offset: 0x18
                },
                UnwindOp::AllocLargeFar(0x1000),
                UnwindOp::AllocLarge(0x1000),
                UnwindOp::AllocSmall(128),
                UnwindOp::PushNonvol(Reg::R15),
                UnwindOp::PushMachframe { error_code: true },
            ]
        );
        assert_eq!(info.frame_register, Some(Reg::Rbp));
        assert_eq!(info.frame_offset, 2);
        assert_eq!(
            info.chained(),
            Some(RuntimeFunction {
                begin: 0x1000,
                end: 0x1040,
                unwind_data: 0x2000
            })
        );
        assert_eq!(info.encode().unwrap(), bytes);
        assert_eq!(
            UnwindInfo::size_from_header([0x22, 0x30, 0x14, 0x25]),
            Ok(bytes.len())
        );
        assert_eq!(info.prolog_codes().count(), 10);
    }

    #[test]
    fn malformed_input_gives_typed_errors() {
        let unknown = |op| UnwindError::UnknownOp { op, slot: 0 };
        let op_info = |op, info| UnwindError::OpInfo { op, info, slot: 0 };
        let cases: [(&[u8], UnwindError); 11] = [
            (&[1, 0], UnwindError::Truncated { need: 4, have: 2 }),
            (&[3, 0, 0, 0], UnwindError::Version(3)),
            (&[0x01 | (0x08 << 3), 0, 0, 0], UnwindError::Flags(8)),
            (&[0x01 | (0x05 << 3), 0, 0, 0], UnwindError::Flags(5)),
            // Two slots counted; the handler RVA is missing.
            (
                &[0x09, 0, 2, 0, 0, 0x50, 0, 0x50],
                UnwindError::Truncated { need: 12, have: 8 },
            ),
            // UWOP_EPILOG is version 2's; 7 and 11 are no version's.
            (&[1, 0, 1, 0, 0, 0x06, 0, 0], unknown(6)),
            (&[2, 0, 1, 0, 0, 0x07, 0, 0], unknown(7)),
            (&[1, 0, 1, 0, 0, 0x0b, 0, 0], unknown(11)),
            (
                &[1, 0, 1, 0, 0, 0x04, 0, 0],
                UnwindError::CodeOverrun {
                    op: 4,
                    slot: 0,
                    count: 1,
                },
            ),
            (&[1, 0, 2, 0, 0, 0x21, 0, 0], op_info(1, 2)),
            (&[1, 0, 1, 0, 0, 0x2a, 0, 0], op_info(10, 2)),
        ];
        for (bytes, err) in cases {
            assert_eq!(UnwindInfo::parse(bytes), Err(err), "{bytes:x?}");
        }
        assert_eq!(
            UnwindInfo::parse(&[1, 0, 1, 0, 0, 0x03, 0, 0]),
            Err(UnwindError::NoFrameRegister)
        );
    }

    #[test]
    fn function_table_parses_sorted_and_refuses_the_rest() {
        let t = [
            RuntimeFunction {
                begin: 0x1000,
                end: 0x1010,
                unwind_data: 0x3000,
            },
            RuntimeFunction {
                begin: 0x1010,
                end: 0x1100,
                unwind_data: 0x3008,
            },
            RuntimeFunction {
                begin: 0x1200,
                end: 0x1201,
                unwind_data: 0x3010,
            },
        ];
        let bytes = encode_function_table(&t);
        let parsed = parse_function_table(&bytes).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(lookup(&parsed, 0xfff), None);
        assert_eq!(lookup(&parsed, 0x1000), Some(&t[0]));
        assert_eq!(lookup(&parsed, 0x100f), Some(&t[0]));
        assert_eq!(lookup(&parsed, 0x1010), Some(&t[1]));
        assert_eq!(lookup(&parsed, 0x1150), None);
        assert_eq!(lookup(&parsed, 0x1200), Some(&t[2]));
        assert_eq!(lookup(&parsed, 0x1201), None);
        assert_eq!(
            parse_function_table(&bytes[..13]),
            Err(UnwindError::TableSize(13))
        );
        let mut swapped = t;
        swapped.swap(0, 1);
        assert!(matches!(
            parse_function_table(&encode_function_table(&swapped)),
            Err(UnwindError::TableOrder { index: 1, .. })
        ));
        let empty = [RuntimeFunction::default()];
        assert!(matches!(
            parse_function_table(&encode_function_table(&empty)),
            Err(UnwindError::TableOrder { index: 0, .. })
        ));
    }

    #[test]
    fn encoder_refuses_what_the_format_cannot_hold() {
        let with = |op| UnwindInfo {
            codes: vec![UnwindCode::new(1, op)],
            ..UnwindInfo::default()
        };
        for op in [
            UnwindOp::AllocSmall(0),
            UnwindOp::AllocSmall(136),
            UnwindOp::AllocSmall(12),
            UnwindOp::AllocLarge(0x80000),
            UnwindOp::AllocLarge(12),
            UnwindOp::SaveNonvol {
                reg: Reg::Rbx,
                offset: 4,
            },
            UnwindOp::SaveXmm128 { xmm: 6, offset: 8 },
            UnwindOp::SaveXmm128 {
                xmm: 16,
                offset: 16,
            },
            UnwindOp::Epilog { info: 0 },
            UnwindOp::SetFpreg,
        ] {
            assert!(with(op).encode().is_err(), "{op:?}");
        }
        let too_many = UnwindInfo {
            codes: vec![UnwindCode::new(0, UnwindOp::PushNonvol(Reg::Rbx)); 256],
            ..UnwindInfo::default()
        };
        assert!(too_many.encode().is_err());
        assert_eq!(UnwindOp::alloc(0x28), UnwindOp::AllocSmall(0x28));
        assert_eq!(UnwindOp::alloc(0x2000), UnwindOp::AllocLarge(0x2000));
        assert_eq!(UnwindOp::alloc(0x96020), UnwindOp::AllocLargeFar(0x96020));
        assert_eq!(
            UnwindOp::save_nonvol(Reg::Rdi, 0x80000),
            UnwindOp::SaveNonvolFar {
                reg: Reg::Rdi,
                offset: 0x80000
            }
        );
    }

    #[test]
    fn tables_are_laid_out_with_chains_resolved() {
        let push = |r| UnwindInfo {
            prolog_size: 1,
            codes: vec![UnwindCode::new(1, UnwindOp::PushNonvol(r))],
            ..UnwindInfo::default()
        };
        let cold = UnwindInfo {
            trailer: Trailer::Chained(RuntimeFunction {
                begin: 0x1000,
                ..RuntimeFunction::default()
            }),
            ..UnwindInfo::default()
        };
        let t = build_tables(
            &[
                (0x1100, 0x1180, cold),
                (0x1000, 0x1080, push(Reg::Rbx)),
                (0x1080, 0x1100, push(Reg::Rsi)),
            ],
            0x3000,
        )
        .unwrap();
        let begins: Vec<u32> = t.functions.iter().map(|f| f.begin).collect();
        assert_eq!(begins, [0x1000, 0x1080, 0x1100]);
        // 8 bytes each for the pushes, then the chained one.
        let datas: Vec<u32> = t.functions.iter().map(|f| f.unwind_data).collect();
        assert_eq!(datas, [0x3000, 0x3008, 0x3010]);
        assert_eq!(parse_function_table(&t.pdata).unwrap(), t.functions);
        let chained = UnwindInfo::parse(&t.xdata[0x10..]).unwrap();
        assert_eq!(chained.chained(), Some(t.functions[0]));
        assert_eq!(UnwindInfo::parse(&t.xdata[8..]).unwrap(), push(Reg::Rsi));
        // Errors: a chain to nothing, overlapping functions, a misaligned .xdata.
        let orphan = UnwindInfo {
            trailer: Trailer::Chained(RuntimeFunction {
                begin: 0x5000,
                ..RuntimeFunction::default()
            }),
            ..UnwindInfo::default()
        };
        assert!(build_tables(&[(0x1000, 0x1010, orphan)], 0x3000).is_err());
        assert!(
            build_tables(
                &[
                    (0x1000, 0x1080, push(Reg::Rbx)),
                    (0x1040, 0x1100, push(Reg::Rbx))
                ],
                0x3000
            )
            .is_err()
        );
        assert!(build_tables(&[], 0x3002).is_err());
    }

    fn arb_reg() -> impl Strategy<Value = Reg> {
        (0u8..16).prop_map(Reg::from_nibble)
    }

    fn arb_op() -> impl Strategy<Value = UnwindOp> {
        prop_oneof![
            arb_reg().prop_map(UnwindOp::PushNonvol),
            (0u32..=0xffff).prop_map(|n| UnwindOp::AllocLarge(n * 8)),
            any::<u32>().prop_map(UnwindOp::AllocLargeFar),
            (1u32..=16).prop_map(|n| UnwindOp::AllocSmall(n * 8)),
            Just(UnwindOp::SetFpreg),
            (arb_reg(), 0u32..=0xffff)
                .prop_map(|(reg, n)| UnwindOp::SaveNonvol { reg, offset: n * 8 }),
            (arb_reg(), any::<u32>())
                .prop_map(|(reg, offset)| UnwindOp::SaveNonvolFar { reg, offset }),
            (0u8..16).prop_map(|info| UnwindOp::Epilog { info }),
            (0u8..16, 0u32..=0xffff).prop_map(|(xmm, n)| UnwindOp::SaveXmm128 {
                xmm,
                offset: n * 16
            }),
            (0u8..16, any::<u32>())
                .prop_map(|(xmm, offset)| UnwindOp::SaveXmm128Far { xmm, offset }),
            any::<bool>().prop_map(|error_code| UnwindOp::PushMachframe { error_code }),
        ]
    }

    fn arb_info() -> impl Strategy<Value = UnwindInfo> {
        (1u8..=2).prop_flat_map(|version| {
            let trailer = prop_oneof![
                Just(Trailer::None),
                (any::<bool>(), any::<u32>()).prop_map(|(e, handler)| Trailer::Handler {
                    exception: e,
                    termination: !e,
                    handler
                }),
                (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(begin, end, unwind_data)| {
                    Trailer::Chained(RuntimeFunction {
                        begin,
                        end,
                        unwind_data,
                    })
                }),
            ];
            (
                any::<u8>(),
                0u8..16,
                0u8..16,
                prop::collection::vec((any::<u8>(), arb_op()), 0..80),
                trailer,
            )
                .prop_map(move |(prolog_size, fr, frame_offset, codes, trailer)| {
                    UnwindInfo {
                        version,
                        prolog_size,
                        frame_register: (fr != 0).then(|| Reg::from_nibble(fr)),
                        frame_offset,
                        codes: codes
                            .into_iter()
                            .filter(|(_, op)| fr != 0 || *op != UnwindOp::SetFpreg)
                            .filter(|(_, op)| {
                                version == 2 || !matches!(op, UnwindOp::Epilog { .. })
                            })
                            .map(|(offset, op)| UnwindCode { offset, op })
                            .collect(),
                        trailer,
                    }
                })
        })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(info in arb_info()) {
            prop_assume!(info.slot_count() <= 255);
            let bytes = info.encode().unwrap();
            prop_assert_eq!(bytes.len() % 4, 0);
            prop_assert_eq!(
                UnwindInfo::size_from_header([bytes[0], bytes[1], bytes[2], bytes[3]]),
                Ok(bytes.len())
            );
            prop_assert_eq!(UnwindInfo::parse(&bytes).unwrap(), info);
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(info) = UnwindInfo::parse(&bytes) {
                // What parses re-encodes to the same prefix (codes, padding aside).
                let again = info.encode().unwrap();
                prop_assert_eq!(UnwindInfo::parse(&again).unwrap(), info);
            }
            let _ = parse_function_table(&bytes);
        }
    }
}
