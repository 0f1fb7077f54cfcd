//! Random command lines against the console on a small flat target: never a panic, hang
//! or unbounded allocation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tagsplit::VirtAddr;
use tagsplit::console::Console;
use tagsplit::target::flat::FlatTarget;
use tagsplit::target::{KernelInfo, ModuleInfo};

fn target() -> FlatTarget {
    let mut t = FlatTarget::new();
    let mut image = vec![0xccu8; 0x2000];
    image[..2].copy_from_slice(b"MZ");
    image[0x1000..0x1008].copy_from_slice(&[0x41, 0xb8, b'L', b'e', b'a', b'k', 0xff, 0x15]);
    t.memory.map(VirtAddr(0xfffff880_0496d000), image);
    t.memory.map(VirtAddr(0xfffffa80_01000000), vec![0u8; 0x1000]);
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

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let mut t = target();
    let mut c = Console::new();
    let _ = c.execute(&mut t, &line);
});
