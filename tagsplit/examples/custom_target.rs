//! `DebugTarget` implemented for a target of your own — here a "crash dump": one flat
//! memory image, no run control — and the console run on it.
//!
//! `cargo run -p tagsplit --example custom_target`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tagsplit::VirtAddr;
use tagsplit::console::{Console, PROMPT};
use tagsplit::target::{
    DebugTarget, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError, search_by_reading,
};

/// A memory image loaded at `base`, with one module covering it.
struct DumpTarget {
    base: u64,
    image: Vec<u8>,
}

impl DumpTarget {
    fn offset(&self, addr: VirtAddr) -> Option<usize> {
        let off = usize::try_from(addr.get().checked_sub(self.base)?).ok()?;
        (off < self.image.len()).then_some(off)
    }
}

impl DebugTarget for DumpTarget {
    fn describe(&self) -> String {
        "dump:example".into()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let Some(off) = self.offset(addr) else {
            return Ok(0);
        };
        let src = &self.image[off..];
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        let Some(off) = self.offset(addr) else {
            return Ok(0);
        };
        let dst = &mut self.image[off..];
        let n = dst.len().min(data.len());
        dst[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        Ok(KernelInfo {
            kern_base: VirtAddr(self.base),
            ps_loaded_module_list: VirtAddr(0),
            kdbg: None,
        })
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        Ok(vec![ModuleInfo {
            name: "example.sys".into(),
            path: r"\SystemRoot\system32\drivers\example.sys".into(),
            base: VirtAddr(self.base),
            size: self.image.len() as u64,
        }])
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        // No native search: the trait's helper reads in chunks and scans.
        search_by_reading(self, start, end, pattern, max_hits, 0x1000)
    }

    fn run(&mut self, _: RunFor) -> Result<StopReason, TargetError> {
        Err(TargetError::Unsupported("a dump cannot run"))
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
