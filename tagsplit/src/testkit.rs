//! A tiny fake kernel on a [`FlatTarget`], for unit tests that must not need the simulator.

use tagsplit_protocol::nt::layout::{kdbg, ldr_entry, tracker, unicode_string};

use crate::target::flat::{FlatMemory, FlatTarget};
use crate::target::{KernelInfo, ModuleInfo, RunFor};
use crate::{PoolTag, VirtAddr};

pub const NT_BASE: u64 = 0xfffff800_02a00000;
pub const MOD_BASE: u64 = 0xfffff880_0496d000;
pub const MOD_SIZE: u64 = 0x7000;
pub const DATA: u64 = 0xfffff800_03000000;
pub const LIST_HEAD: u64 = DATA;
pub const KDBG: u64 = DATA + 0x1000;
pub const TRACK_PTR: u64 = DATA + 0x2000;
pub const TRACK_SIZE_VAR: u64 = DATA + 0x2008;
pub const TRACK_TABLE: u64 = DATA + 0x3000;
pub const TRACK_ENTRIES: u64 = 64;
pub const SITE1: u64 = 0xfffff880_0496e3aa;
pub const SITE2: u64 = 0xfffff880_0496e621;
pub const FREE_SITE: u64 = 0xfffff880_0496e701;
pub const RDATA_TAG: u64 = MOD_BASE + 0x3010;

fn put(buf: &mut [u8], off: usize, data: &[u8]) {
    buf[off..off + data.len()].copy_from_slice(data);
}

fn pe_image(size: usize, text: (u32, u32), rdata: (u32, u32)) -> Vec<u8> {
    let mut img = vec![0u8; size];
    put(&mut img, 0, b"MZ");
    put(&mut img, 0x3c, &0x80u32.to_le_bytes());
    put(&mut img, 0x80, b"PE\0\0");
    put(&mut img, 0x84, &0x8664u16.to_le_bytes());
    put(&mut img, 0x86, &2u16.to_le_bytes());
    put(&mut img, 0x94, &0xf0u16.to_le_bytes());
    let table = 0x80 + 4 + 20 + 0xf0;
    for (i, (name, (rva, len), ch)) in [
        (b".text\0\0\0", text, 0x6000_0020u32),
        (b".rdata\0\0", rdata, 0x4000_0040u32),
    ]
    .into_iter()
    .enumerate()
    {
        let at = table + i * 40;
        put(&mut img, at, name);
        put(&mut img, at + 8, &len.to_le_bytes());
        put(&mut img, at + 12, &rva.to_le_bytes());
        put(&mut img, at + 36, &ch.to_le_bytes());
    }
    img
}

/// Builds the fake: `nt` and `myfault.sys`, the seed's two `Leak` sites (plus a free site
/// and the tag as text in .rdata), a module list, a KDBG block and a tracker table holding
/// `Leak` and `EtwB`. Running allocates at both sites: site 1 frees, site 2 leaks.
pub fn fake_kernel() -> FlatTarget {
    let mut t = FlatTarget::new();
    let mut nt = pe_image(0x2000, (0x1000, 0x100), (0x1100, 0x100));
    put(&mut nt, 0x1000, &[0xc3]);
    t.memory.map(VirtAddr(NT_BASE), nt);

    let mut img = pe_image(MOD_SIZE as usize, (0x1000, 0x2000), (0x3000, 0x1000));
    for b in &mut img[0x1000..0x3000] {
        *b = 0xcc;
    }
    let site1 = [
        0x41, 0xb8, 0x4c, 0x65, 0x61, 0x6b, 0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x41, 0x8d, 0x49, 0xfd,
        0x8b, 0xd0, 0xff, 0x15, 0, 0, 0, 0,
    ];
    let site2 = [
        0x41, 0xb8, 0x4c, 0x65, 0x61, 0x6b, 0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x33, 0xc9, 0x8b, 0xd0,
        0xff, 0x15, 0xcc, 0, 0, 0,
    ];
    let free = [
        0xba, 0x4c, 0x65, 0x61, 0x6b, 0x48, 0x8b, 0xcb, 0xff, 0x15, 0, 0, 0, 0,
    ];
    put(&mut img, (SITE1 - 2 - MOD_BASE) as usize, &site1);
    put(&mut img, (SITE2 - 2 - MOD_BASE) as usize, &site2);
    put(&mut img, (FREE_SITE - 1 - MOD_BASE) as usize, &free);
    put(
        &mut img,
        (RDATA_TAG - MOD_BASE) as usize,
        b"Leak detected\0",
    );
    t.memory.map(VirtAddr(MOD_BASE), img);

    // Kernel data: module list, KDBG, tracker.
    let mut data = vec![0u8; 0x6000];
    let entries = [
        (NT_BASE, 0x2000u32, "ntoskrnl.exe"),
        (MOD_BASE, MOD_SIZE as u32, "myfault.sys"),
    ];
    let entry_addr = |i: usize| LIST_HEAD + 0x100 + i as u64 * 0x200;
    let n = entries.len();
    // `data` is mapped at DATA; `at` writes at a virtual address inside it.
    let at = |data: &mut Vec<u8>, va: u64, bytes: &[u8]| put(data, (va - DATA) as usize, bytes);
    at(&mut data, LIST_HEAD, &entry_addr(0).to_le_bytes());
    at(&mut data, LIST_HEAD + 8, &entry_addr(n - 1).to_le_bytes());
    for (i, (base, size, name)) in entries.iter().enumerate() {
        let e = entry_addr(i);
        let next = if i + 1 < n {
            entry_addr(i + 1)
        } else {
            LIST_HEAD
        };
        let prev = if i == 0 { LIST_HEAD } else { entry_addr(i - 1) };
        at(&mut data, e, &next.to_le_bytes());
        at(&mut data, e + 8, &prev.to_le_bytes());
        at(&mut data, e + ldr_entry::DLL_BASE, &base.to_le_bytes());
        at(&mut data, e + ldr_entry::SIZE_OF_IMAGE, &size.to_le_bytes());
        let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let len = (utf16.len() as u16).to_le_bytes();
        let buf = e + 0x100;
        at(&mut data, buf, &utf16);
        for field in [ldr_entry::BASE_DLL_NAME, ldr_entry::FULL_DLL_NAME] {
            let u = e + field;
            at(&mut data, u + unicode_string::LENGTH, &len);
            at(&mut data, u + unicode_string::MAXIMUM_LENGTH, &len);
            at(&mut data, u + unicode_string::BUFFER, &buf.to_le_bytes());
        }
    }
    let kdbg_fields: [(u64, &[u8]); 6] = [
        (kdbg::OWNER_TAG_OFFSET, &kdbg::OWNER_TAG),
        (kdbg::SIZE_OFFSET, &(kdbg::SIZE as u32).to_le_bytes()),
        (kdbg::KERN_BASE, &NT_BASE.to_le_bytes()),
        (kdbg::PS_LOADED_MODULE_LIST, &LIST_HEAD.to_le_bytes()),
        (kdbg::POOL_TRACK_TABLE, &TRACK_PTR.to_le_bytes()),
        (kdbg::POOL_TRACK_TABLE_SIZE, &TRACK_SIZE_VAR.to_le_bytes()),
    ];
    for (field, bytes) in kdbg_fields {
        at(&mut data, KDBG + field, bytes);
    }
    at(&mut data, TRACK_PTR, &TRACK_TABLE.to_le_bytes());
    at(&mut data, TRACK_SIZE_VAR, &TRACK_ENTRIES.to_le_bytes());
    t.memory.map(VirtAddr(DATA), data);
    bump(&mut t.memory, PoolTag::new(*b"Leak"), 3, 2, 0x1000);
    bump(&mut t.memory, PoolTag::new(*b"EtwB"), 98, 4, 945_136);

    t.kernel = KernelInfo {
        kern_base: VirtAddr(NT_BASE),
        ps_loaded_module_list: VirtAddr(LIST_HEAD),
        kdbg: Some(VirtAddr(KDBG)),
    };
    t.modules = entries
        .iter()
        .map(|(b, s, n)| ModuleInfo {
            name: n.to_string(),
            path: n.to_string(),
            base: VirtAddr(*b),
            size: u64::from(*s),
        })
        .collect();
    t.set_run_hook(Box::new(|mem: &mut FlatMemory, how: RunFor| {
        let ticks = match how {
            RunFor::Ticks(n) => n,
            RunFor::Time(d) => d.as_millis() as u64,
        };
        for _ in 0..ticks / 10 {
            for (site, leaks) in [(SITE1, false), (SITE2, true)] {
                let mut tag = [0u8; 4];
                mem.read(VirtAddr(site), &mut tag);
                bump(
                    mem,
                    PoolTag::new(tag),
                    1,
                    if leaks { 0 } else { 1 },
                    if leaks { 1_024_000 } else { 0 },
                );
            }
        }
    }));
    t
}

/// Adds allocs/frees/bytes (nonpaged) to `tag`'s tracker entry, creating it.
pub fn bump(mem: &mut FlatMemory, tag: PoolTag, allocs: u32, frees: u32, bytes: u64) {
    let key = tag.unprotected().to_u32();
    for i in 0..TRACK_ENTRIES {
        let e = VirtAddr(TRACK_TABLE + i * tracker::SIZE);
        let mut raw = [0u8; tracker::SIZE as usize];
        mem.read(e, &mut raw);
        let k = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        if k != 0 && k != key {
            continue;
        }
        let rd32 = |o: u64| u32::from_le_bytes(raw[o as usize..o as usize + 4].try_into().unwrap());
        let rd64 = |o: u64| u64::from_le_bytes(raw[o as usize..o as usize + 8].try_into().unwrap());
        let a = rd32(tracker::NON_PAGED_ALLOCS) + allocs;
        let f = rd32(tracker::NON_PAGED_FREES) + frees;
        let b = rd64(tracker::NON_PAGED_BYTES) + bytes;
        mem.write(e, &key.to_le_bytes());
        mem.write(
            VirtAddr(e.get() + tracker::NON_PAGED_ALLOCS),
            &a.to_le_bytes(),
        );
        mem.write(
            VirtAddr(e.get() + tracker::NON_PAGED_FREES),
            &f.to_le_bytes(),
        );
        mem.write(
            VirtAddr(e.get() + tracker::NON_PAGED_BYTES),
            &b.to_le_bytes(),
        );
        return;
    }
}
