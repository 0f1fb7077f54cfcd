//! x64 disassembly in WinDbg's style, with iced-x86.

use iced_x86::{
    Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, OpKind, Register,
    SymbolResolver, SymbolResult,
};

use crate::VirtAddr;
use crate::target::ModuleInfo;

/// Names kernel addresses in memory and branch operands the way WinDbg does without
/// symbols: `myfault+0x2000 (fffff880`0496f000)`, or just the address outside modules.
struct ModuleResolver {
    modules: Vec<ModuleInfo>,
}

impl SymbolResolver for ModuleResolver {
    fn symbol(
        &mut self,
        instruction: &Instruction,
        _operand: u32,
        instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let kind = instruction.op_kind(instruction_operand?);
        // Only absolute or rip-relative memory (not `[r9-3]`), and branch targets.
        let absolute = instruction.memory_index() == Register::None
            && matches!(instruction.memory_base(), Register::None | Register::RIP);
        let wanted = kind == OpKind::NearBranch64 || kind == OpKind::Memory && absolute;
        if !wanted || address < 0xffff_8000_0000_0000 {
            return None;
        }
        let at = VirtAddr(address);
        let text = match self.modules.iter().find(|m| m.contains(at)) {
            Some(m) => format!("{}+0x{:x} ({at})", m.module_name(), address - m.base.get()),
            None => at.to_string(),
        };
        Some(SymbolResult::with_string(address, text))
    }
}

/// A formatter configured like WinDbg's `u`: uppercase hex with an `h` suffix and a
/// leading zero, no space after commas; `pad` puts operands at column 8.
pub fn formatter(pad: bool) -> IntelFormatter {
    let mut f = IntelFormatter::new();
    let o = f.options_mut();
    o.set_hex_suffix("h");
    o.set_hex_prefix("");
    o.set_uppercase_hex(true);
    o.set_add_leading_zero_to_hex_numbers(true);
    o.set_space_after_operand_separator(false);
    o.set_first_operand_char_index(if pad { 8 } else { 0 });
    o.set_show_branch_size(false);
    f
}

/// Formats one instruction (`mov r8d,3261654Ch`, or padded `mov     r8d,...`).
pub fn format(ins: &Instruction, pad: bool) -> String {
    let mut out = String::new();
    formatter(pad).format(ins, &mut out);
    out
}

/// Decodes one instruction at `ip` from `bytes` (invalid bytes decode as an invalid
/// instruction of length 1, as a debugger shows `???`).
pub fn decode_one(bytes: &[u8], ip: VirtAddr) -> Instruction {
    decode_one_as(bytes, ip, 64)
}

/// [`decode_one`] as `bitness`-bit code (16, 32 or 64; anything else is taken as 64).
pub fn decode_one_as(bytes: &[u8], ip: VirtAddr, bitness: u32) -> Instruction {
    let bitness = if matches!(bitness, 16 | 32) {
        bitness
    } else {
        64
    };
    let mut d = Decoder::with_ip(bitness, bytes, ip.get(), DecoderOptions::NONE);
    d.decode()
}

/// A `u`-style line: `fffff880`0496e3a8 41b84c65616b    mov     r8d,6B61654Ch`.
/// Addresses in memory and branch operands are named after `modules`.
pub fn u_line(ins: &Instruction, bytes: &[u8], modules: &[ModuleInfo]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let text = if ins.is_invalid() {
        "???".to_string()
    } else {
        let resolver = ModuleResolver {
            modules: modules.to_vec(),
        };
        let mut f = IntelFormatter::with_options(Some(Box::new(resolver)), None);
        *f.options_mut() = formatter(true).options().clone();
        let mut out = String::new();
        f.format(ins, &mut out);
        out
    };
    format!("{} {hex:<15} {text}", VirtAddr(ins.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_operands_are_named_after_modules() {
        // call qword ptr [rip+0x0bd5] at ...e62e
        let bytes = [0xff, 0x15, 0xd5, 0x0b, 0x00, 0x00];
        let ins = decode_one(&bytes, VirtAddr(0xfffff880_0496e62e));
        let m = ModuleInfo {
            name: "myfault.sys".into(),
            path: "myfault.sys".into(),
            base: VirtAddr(0xfffff880_0496d000),
            size: 0x7000,
        };
        assert_eq!(
            u_line(&ins, &bytes, &[m]),
            "fffff880`0496e62e ff15d50b0000    call    qword ptr [myfault+0x2209 (fffff880`0496f209)]"
        );
        // Register-relative operands stay as they are.
        let lea = [0x41, 0x8d, 0x49, 0xfd];
        let ins = decode_one(&lea, VirtAddr(0xfffff880_0496e3b3));
        assert!(u_line(&ins, &lea, &[]).ends_with("lea     ecx,[r9-3]"));
        // Immediates stay numbers even when they look like addresses.
        let mov = [0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff];
        let ins = decode_one(&mov, VirtAddr(0x1000));
        assert_eq!(
            u_line(&ins, &mov, &[]),
            "00000000`00001000 48c7c0ffffffff  mov     rax,0FFFFFFFFFFFFFFFFh"
        );
    }

    #[test]
    fn windbg_style_mov() {
        let bytes = [0x41, 0xb8, 0x4c, 0x65, 0x61, 0x6b];
        let ins = decode_one(&bytes, VirtAddr(0xfffff880_0496e3a8));
        assert_eq!(format(&ins, false), "mov r8d,6B61654Ch");
        assert_eq!(
            u_line(&ins, &bytes, &[]),
            "fffff880`0496e3a8 41b84c65616b    mov     r8d,6B61654Ch"
        );
    }
}
