//! Arbitrary bytes as x64 unwind data and as the memory an unwinder walks: parsing,
//! re-encoding and walking a stack never panic, hang or allocate without bound.
//!
//! Layout of an input: byte 0 is how many `RUNTIME_FUNCTION`s the exception directory
//! holds, bytes 1-2 where `rip` is in the image (little-endian, from the image base), byte
//! 3 where `rsp` is on the stack (in 8-byte slots); the rest is mapped both at RVA
//! [`REGION`] of a PE32+ image (the table first, then whatever its RVAs point at) and as
//! the stack.

use tagsplit::VirtAddr;
use tagsplit::stack::{Registers, Unwinder};
use tagsplit::target::ModuleInfo;
use tagsplit::target::flat::FlatTarget;
use tagsplit_protocol::nt::unwind::{UnwindInfo, parse_function_table};

/// Where the image is.
pub const BASE: u64 = 0xfffff880_04000000;
/// Where the fuzz bytes go in the image (the exception directory's RVA).
pub const REGION: u32 = 0x1000;
/// The image's size.
pub const IMAGE_SIZE: usize = 0x4000;
/// Where the stack is.
pub const STACK: u64 = 0xfffff880_02f60000;

/// A PE32+ header whose exception directory is `table_len` bytes at [`REGION`].
fn header(img: &mut [u8], table_len: u32) {
    let mut put = |off: usize, data: &[u8]| {
        if let Some(dst) = img.get_mut(off..off + data.len()) {
            dst.copy_from_slice(data);
        }
    };
    put(0, b"MZ");
    put(0x3c, &0x80u32.to_le_bytes());
    put(0x80, b"PE\0\0");
    put(0x84, &0x8664u16.to_le_bytes());
    put(0x94, &0xf0u16.to_le_bytes());
    put(0x98, &0x20bu16.to_le_bytes());
    put(0x98 + 0x6c, &16u32.to_le_bytes());
    put(0x98 + 0x70 + 3 * 8, &REGION.to_le_bytes());
    put(0x98 + 0x70 + 3 * 8 + 4, &table_len.to_le_bytes());
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    // The parsers on the raw bytes; what parses re-encodes and parses the same.
    if let Ok(info) = UnwindInfo::parse(data) {
        let again = info.encode().unwrap_or_default();
        assert_eq!(UnwindInfo::parse(&again).ok(), Some(info));
    }
    let _ = parse_function_table(data);

    let [count, rip_lo, rip_hi, slot, rest @ ..] = data else {
        return;
    };
    let mut img = vec![0u8; IMAGE_SIZE];
    header(&mut img, u32::from(*count) * 12);
    let region = img.get_mut(REGION as usize..).unwrap_or_default();
    let n = rest.len().min(region.len());
    if let (Some(dst), Some(src)) = (region.get_mut(..n), rest.get(..n)) {
        dst.copy_from_slice(src);
    }
    let mut t = FlatTarget::new();
    t.memory.map(VirtAddr(BASE), img);
    t.memory.map(VirtAddr(STACK), rest.to_vec());
    let module = ModuleInfo {
        name: "fuzz.sys".into(),
        path: "fuzz.sys".into(),
        base: VirtAddr(BASE),
        size: IMAGE_SIZE as u64,
    };
    let rip = BASE + u64::from(u16::from_le_bytes([*rip_lo, *rip_hi]));
    let rsp = STACK + 8 * u64::from(*slot);
    let mut unwinder = Unwinder::new(vec![module]);
    unwinder.max_frames = 64;
    let mut regs = Registers::new(rip, rsp);
    regs.set(tagsplit_protocol::nt::unwind::Reg::Rbp, rsp + 0x40);
    if let Ok(stack) = unwinder.walk(&mut t, &regs) {
        assert!(!stack.frames.is_empty() && stack.frames.len() <= 64);
        let _ = stack.to_string();
        // A second walk reads only the stack and gives the same answer.
        assert_eq!(unwinder.walk(&mut t, &regs).ok(), Some(stack));
    }
}
