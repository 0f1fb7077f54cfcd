//! Random command lines against the console on a small flat target: never a panic, hang
//! or unbounded allocation.

use tagsplit::VirtAddr;
use tagsplit::console::Console;
use tagsplit::target::flat::FlatTarget;
use tagsplit::target::{KernelInfo, ModuleInfo};

fn target() -> FlatTarget {
    let mut t = FlatTarget::new();
    let mut image = vec![0xccu8; 0x2000];
    for (at, bytes) in [
        (0, &b"MZ"[..]),
        (
            0x1000,
            &[0x41, 0xb8, b'L', b'e', b'a', b'k', 0xff, 0x15][..],
        ),
    ] {
        if let Some(dst) = image.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    t.memory.map(VirtAddr(0xfffff880_0496d000), image);
    t.memory
        .map(VirtAddr(0xfffffa80_01000000), vec![0u8; 0x1000]);
    t.modules.push(ModuleInfo {
        name: "myfault.sys".into(),
        path: "myfault.sys".into(),
        base: VirtAddr(0xfffff880_0496d000),
        size: 0x2000,
    });
    t.kernel = KernelInfo {
        kern_base: VirtAddr(0xfffff880_0496d000),
        ps_loaded_module_list: VirtAddr(0xfffffa80_01000000),
        kdbg: Some(VirtAddr(0xfffffa80_01000000)),
    };
    t
}

/// One fuzz input.
pub fn run(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let mut t = target();
    let mut c = Console::new();
    let _ = c.execute(&mut t, &line);
}
