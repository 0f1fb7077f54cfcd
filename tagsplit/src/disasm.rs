//! x64 disassembly in WinDbg's style, with iced-x86.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use crate::VirtAddr;

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
    let mut d = Decoder::with_ip(64, bytes, ip.get(), DecoderOptions::NONE);
    d.decode()
}

/// A `u`-style line: `fffff880`0496e3a8 41b84c65616b    mov     r8d,6B61654Ch`.
pub fn u_line(ins: &Instruction, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let text = if ins.is_invalid() {
        "???".to_string()
    } else {
        format(ins, true)
    };
    format!("{} {hex:<15} {text}", VirtAddr(ins.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windbg_style_mov() {
        let bytes = [0x41, 0xb8, 0x4c, 0x65, 0x61, 0x6b];
        let ins = decode_one(&bytes, VirtAddr(0xfffff880_0496e3a8));
        assert_eq!(format(&ins, false), "mov r8d,6B61654Ch");
        assert_eq!(
            u_line(&ins, &bytes),
            "fffff880`0496e3a8 41b84c65616b    mov     r8d,6B61654Ch"
        );
    }
}
