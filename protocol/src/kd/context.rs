//! Offsets in the AMD64 `CONTEXT` (0x4D0 bytes) that `GetContext`/`SetContext` carry.

/// Size of the AMD64 `CONTEXT`.
pub const SIZE: usize = 0x4D0;
/// `ContextFlags` (u32).
pub const CONTEXT_FLAGS: usize = 0x30;
/// `MxCsr` (u32).
pub const MX_CSR: usize = 0x34;
/// `SegCs` (u16).
pub const SEG_CS: usize = 0x38;
/// `SegDs` (u16).
pub const SEG_DS: usize = 0x3A;
/// `SegEs` (u16).
pub const SEG_ES: usize = 0x3C;
/// `SegFs` (u16).
pub const SEG_FS: usize = 0x3E;
/// `SegGs` (u16).
pub const SEG_GS: usize = 0x40;
/// `SegSs` (u16).
pub const SEG_SS: usize = 0x42;
/// `EFlags` (u32).
pub const EFLAGS: usize = 0x44;
/// `Dr7` (u64).
pub const DR7: usize = 0x70;
/// `Rax`, then `Rcx`, `Rdx`, `Rbx`, `Rsp`, `Rbp`, `Rsi`, `Rdi`, `R8`..`R15` (u64 each).
pub const RAX: usize = 0x78;
/// `Rip` (u64).
pub const RIP: usize = 0xF8;
/// `CONTEXT_AMD64 | CONTROL | INTEGER | SEGMENTS | FLOATING_POINT | DEBUG_REGISTERS`.
pub const CONTEXT_ALL: u32 = 0x0010_001F;

/// The general-purpose registers in `CONTEXT` order, starting at [`RAX`].
pub const GPR_ORDER: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Offset of general-purpose register `i` in [`GPR_ORDER`].
pub fn gpr(i: usize) -> usize {
    RAX + 8 * i
}

use super::le;
use crate::stub::X64Registers;

/// The general-purpose registers of `r` in `CONTEXT` order ([`GPR_ORDER`]).
fn gprs(r: &X64Registers) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

/// The AMD64 `CONTEXT` (`GetContext`'s data) for `r`: [`CONTEXT_ALL`], the integer,
/// segment and flag registers, `MxCsr` at its reset value, everything else zero.
pub fn from_registers(r: &X64Registers) -> Vec<u8> {
    let mut b = vec![0u8; SIZE];
    le::put_u32(&mut b, CONTEXT_FLAGS, CONTEXT_ALL);
    le::put_u32(&mut b, MX_CSR, 0x1F80);
    for (off, seg) in [
        (SEG_CS, r.cs),
        (SEG_DS, r.ds),
        (SEG_ES, r.es),
        (SEG_FS, r.fs),
        (SEG_GS, r.gs),
        (SEG_SS, r.ss),
    ] {
        le::put_u16(&mut b, off, seg);
    }
    le::put_u32(&mut b, EFLAGS, (r.rflags & 0xFFFF_FFFF) as u32);
    for (i, v) in gprs(r).into_iter().enumerate() {
        le::put_u64(&mut b, gpr(i), v);
    }
    le::put_u64(&mut b, RIP, r.rip);
    b
}

/// Loads the integer, segment and flag registers from an AMD64 `CONTEXT`
/// (`SetContext`'s data) into `r`. `None` if `b` is shorter than [`SIZE`].
pub fn to_registers(r: &mut X64Registers, b: &[u8]) -> Option<()> {
    if b.len() < SIZE {
        return None;
    }
    let g = |i| le::u64_at(b, gpr(i));
    *r = X64Registers {
        rax: g(0),
        rcx: g(1),
        rdx: g(2),
        rbx: g(3),
        rsp: g(4),
        rbp: g(5),
        rsi: g(6),
        rdi: g(7),
        r8: g(8),
        r9: g(9),
        r10: g(10),
        r11: g(11),
        r12: g(12),
        r13: g(13),
        r14: g(14),
        r15: g(15),
        rip: le::u64_at(b, RIP),
        rflags: u64::from(le::u32_at(b, EFLAGS)),
        cs: le::u16_at(b, SEG_CS),
        ds: le::u16_at(b, SEG_DS),
        es: le::u16_at(b, SEG_ES),
        fs: le::u16_at(b, SEG_FS),
        gs: le::u16_at(b, SEG_GS),
        ss: le::u16_at(b, SEG_SS),
    };
    Some(())
}
