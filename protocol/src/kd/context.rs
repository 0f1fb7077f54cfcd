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
