//! `DebugTarget` for a target of your own — here a "crash dump": one flat memory image
//! holding one module, no run control — and the console run on it. Everything else (search,
//! `run`, breakpoints) comes from the trait's defaults; a target whose reads are costly
//! would be wrapped in `tagsplit::target::CachedTarget`.
//!
//! `cargo run -p tagsplit --example custom_target` (no simulator needed:
//! `--no-default-features` works too).

#![allow(clippy::indexing_slicing, missing_docs)]

use tagsplit::VirtAddr;
use tagsplit::console::{Console, PROMPT};
use tagsplit::target::{DebugTarget, ModuleInfo, TargetError};

/// A memory image loaded at `base`.
struct DumpTarget {
    base: u64,
    image: Vec<u8>,
}

impl DumpTarget {
    /// The image bytes from `addr` on, if `addr` is inside.
    fn at(&mut self, addr: VirtAddr) -> &mut [u8] {
        let off = addr.get().wrapping_sub(self.base);
        let off = usize::try_from(off).map_or(self.image.len(), |o| o.min(self.image.len()));
        &mut self.image[off..]
    }
}

impl DebugTarget for DumpTarget {
    fn describe(&self) -> String {
        "dump:example".into()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let src = self.at(addr);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        let dst = self.at(addr);
        let n = dst.len().min(data.len());
        dst[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    // A dump with no kernel loader list: say which module is where. (A target that has the
    // list implements `kernel_info` instead and gets `modules` for free.)
    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        Ok(vec![ModuleInfo {
            name: "example.sys".into(),
            path: r"\SystemRoot\system32\drivers\example.sys".into(),
            base: VirtAddr(self.base),
            size: self.image.len() as u64,
        }])
    }
}

fn main() {
    let mut image = vec![0xccu8; 0x2000];
    image[..2].copy_from_slice(b"MZ");
    // mov r8d,'Xmpl' ; mov edx,ecx ; call [rip+0]
    image[0x1000..0x100c].copy_from_slice(&[
        0x41, 0xb8, b'X', b'm', b'p', b'l', 0x8b, 0xd1, 0xff, 0x15, 0, 0,
    ]);
    let mut target = DumpTarget {
        base: 0xfffff880_01230000,
        image,
    };
    let mut console = Console::new();
    for cmd in [
        "lm",
        r#"!for_each_module s -a @#Base @#End "Xmpl""#,
        "u example+1000 l3",
        "eb example+1005 31",
        "dc example+1002 l1",
        "g",
        "!poolused",
    ] {
        print!("{PROMPT}{cmd}\n{}", console.execute(&mut target, cmd));
    }
}
