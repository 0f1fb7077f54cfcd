//! The kernel structures a debugger reads, laid out in simulated memory as Windows x64 lays
//! them out (offsets from [`crate::layout`] only).
//!
//! * `ntoskrnl.exe` is a PE image at [`NT_BASE`]; its `.text` holds the functions drivers
//!   import (tiny stubs, but `ExAllocatePoolWithTag` and `ExFreePoolWithTag` are real
//!   non-leaf functions with unwind data), an idle loop, and the start of a system thread
//!   (`KiStartSystemThread`, `PspSystemThreadStartup`: [`ThreadFrames`]); its `.data`
//!   holds `PsLoadedModuleList` (a `LIST_ENTRY64` head), the `KDDEBUGGER_DATA64` block
//!   (`KDBG`) and the variables `PoolTrackTable` (pointer), `PoolTrackTableSize`,
//!   `PoolBigPageTable` (pointer), `PoolBigPageTableSize`, `PoolHitTag` (u32) and
//!   `MmPageSize`.
//! * One `KLDR_DATA_TABLE_ENTRY` per module, in load order (nt first), with `UNICODE_STRING`
//!   names pointing at UTF-16 buffers, lives in a loader-data region at [`LOADER_DATA`].
//!
//! A debugger that only reads memory can list the modules (walk `PsLoadedModuleList`) and
//! compute `!poolused` (follow `KDBG.PoolTrackTable` to the table, and the
//! `PoolTrackTableSize` extension field to its size).

use crate::SimError;
use crate::image::{BuiltImage, ImageBuilder, Loc, NT_IMPORTS, Step};
use crate::layout::{PAGE_SIZE, kdbg, ldr_entry, list_entry, unicode_string};
use crate::memory::{Memory, Prot};
use crate::pool::PoolLayout;
use crate::types::VirtAddr;

/// Where `ntoskrnl.exe` is loaded.
pub const NT_BASE: VirtAddr = VirtAddr(0xfffff800_02a00000);
/// `SizeOfImage` of the simulated `ntoskrnl.exe` (as Windows 7 SP1's).
pub const NT_SIZE: u64 = 0x5e7000;
/// Where the loader entries and their name buffers live.
pub const LOADER_DATA: VirtAddr = VirtAddr(0xfffffa80_00800000);
/// Size of the loader-data region (grown in steps of this size, up to
/// [`LOADER_DATA_MAX`], when the module list needs more).
pub const LOADER_DATA_SIZE: u64 = 0x10_0000;
/// Most bytes the loader-data region may grow to (it ends where the pool tables begin).
pub const LOADER_DATA_MAX: u64 = 0x40_0000;
/// The initial value of `nt!PoolHitTag` (what Part 5 of the series shows: `ffffff0f`).
pub const POOL_HIT_TAG_DEFAULT: u32 = 0xffff_ff0f;

/// The addresses of nt's variables and structures.
#[derive(Clone, Debug)]
pub struct NtKernel {
    /// The built image.
    pub image: BuiltImage,
    /// `nt!PsLoadedModuleList` (the list head).
    pub ps_loaded_module_list: VirtAddr,
    /// `nt!KdDebuggerDataBlock`.
    pub kdbg: VirtAddr,
    /// `nt!KdpDebuggerDataListHead`.
    pub debugger_data_list: VirtAddr,
    /// `nt!PoolTrackTable` (the pointer variable).
    pub pool_track_table_var: VirtAddr,
    /// `nt!PoolTrackTableSize`.
    pub pool_track_table_size_var: VirtAddr,
    /// `nt!PoolBigPageTable` (the pointer variable).
    pub pool_big_page_table_var: VirtAddr,
    /// `nt!PoolBigPageTableSize`.
    pub pool_big_page_table_size_var: VirtAddr,
    /// `nt!PoolHitTag`.
    pub pool_hit_tag: VirtAddr,
    /// `nt!MmPageSize`-like variable.
    pub mm_page_size: VirtAddr,
    /// The idle loop (`rip` while the machine runs nothing in particular).
    pub idle: VirtAddr,
    /// Resolved addresses of [`NT_IMPORTS`] in nt's `.text`.
    pub exports: Vec<VirtAddr>,
    /// The frames nt puts under a system thread and inside the allocator.
    pub threads: ThreadFrames,
}

/// nt's part of a system thread's stack, as the simulator replays it:
/// `KiStartSystemThread` (its return address slot holds 0, the bottom of the stack) calls
/// `PspSystemThreadStartup(StartRoutine, StartContext)`, which calls the thread routine
/// through `call rdi`; and the prologs of `ExAllocatePoolWithTag` and `ExFreePoolWithTag`
/// up to their `PoolHitTag` checks.
#[derive(Clone, Debug)]
pub struct ThreadFrames {
    /// `nt!KiStartSystemThread`, where a system thread starts (`rcx` the start routine,
    /// `rdx` its context).
    pub ki_start_system_thread: VirtAddr,
    /// `KiStartSystemThread` up to its call.
    pub ki_steps: Vec<Step>,
    /// The return address of that call (in `KiStartSystemThread`).
    pub ki_return: VirtAddr,
    /// `PspSystemThreadStartup` up to `call rdi`.
    pub psp_steps: Vec<Step>,
    /// The return address of `call rdi`.
    pub psp_return: VirtAddr,
    /// `ExAllocatePoolWithTag` up to its `PoolHitTag` check (`rbx` the tag, `rsi` the
    /// size, `rdi` the pool type).
    pub allocate_steps: Vec<Step>,
    /// The `int 3` that `ExAllocatePoolWithTag` executes when the tag is `PoolHitTag`.
    pub hit_break: VirtAddr,
    /// `ExFreePoolWithTag` up to its `PoolHitTag` check (`rbx` the block, `eax` the tag
    /// from its `POOL_HEADER`).
    pub free_steps: Vec<Step>,
    /// The `int 3` that `ExFreePoolWithTag` executes when the block's tag is `PoolHitTag`.
    pub free_break: VirtAddr,
}

/// A module as the loader records it.
#[derive(Clone, Debug)]
pub struct LdrModule {
    /// `BaseDllName`.
    pub name: String,
    /// `FullDllName`.
    pub path: String,
    /// `DllBase`.
    pub base: VirtAddr,
    /// `SizeOfImage`.
    pub size: u64,
    /// `EntryPoint`.
    pub entry: VirtAddr,
    /// `CheckSum`.
    pub checksum: u32,
    /// `TimeDateStamp`.
    pub timestamp: u32,
}

/// Builds `ntoskrnl.exe` into memory and initialises its variables (pool pointers from
/// `pool`, `PoolHitTag` = [`POOL_HIT_TAG_DEFAULT`]).
pub fn build_nt(mem: &mut Memory, pool: &PoolLayout) -> Result<NtKernel, SimError> {
    use tagsplit_protocol::nt::unwind::Reg::{R8, Rbx, Rcx, Rdi, Rdx, Rsi};
    let mut b = ImageBuilder::new("ntoskrnl.exe", NT_BASE, Vec::new());
    b.timestamp(0x4ce7_951a);
    let debugger_data_list = b.data(&[0u8; list_entry::SIZE as usize], 16);
    let ps_loaded = b.data(&[0u8; list_entry::SIZE as usize], 16);
    let kdbg_loc = b.data(&vec![0u8; kdbg::SIZE as usize], 16);
    let track_var = b.data(&pool.track_table.0.to_le_bytes(), 8);
    let track_size_var = b.data(&pool.track_entries.to_le_bytes(), 8);
    let big_var = b.data(&pool.big_table.0.to_le_bytes(), 8);
    let big_size_var = b.data(&pool.big_entries.to_le_bytes(), 8);
    let hit = b.data(&POOL_HIT_TAG_DEFAULT.to_le_bytes(), 8);
    let page_size = b.data(&PAGE_SIZE.to_le_bytes(), 8);
    // KiIdleLoop: pause; jmp $-2
    b.align_text();
    let idle = b.code(&[0xf3, 0x90, 0xeb, 0xfc]);
    b.entry_here();
    // The allocator's and the free's internals: leaves (xor eax,eax; ret).
    b.align_text();
    let exp_allocate = b.code(&[0x33, 0xc0, 0xc3]);
    b.align_text();
    let exp_free = b.code(&[0x33, 0xc0, 0xc3]);
    let mut exports = Vec::new();
    let mut allocate = None;
    let mut free = None;
    for name in NT_IMPORTS {
        match name {
            "ExAllocatePoolWithTag" => {
                // push rbx; push rsi; push rdi; sub rsp,20h; mov rbx,r8; mov rsi,rdx;
                // mov rdi,rcx; cmp ebx,[PoolHitTag]; jne +1; int 3;
                // mov rcx,rdi; mov rdx,rsi; mov r8,rbx; call ExpAllocatePool; epilog
                let steps = [
                    Step::Push(Rbx),
                    Step::Push(Rsi),
                    Step::Push(Rdi),
                    Step::Alloc(0x20),
                    Step::Mov { dst: Rbx, src: R8 },
                    Step::Mov { dst: Rsi, src: Rdx },
                    Step::Mov { dst: Rdi, src: Rcx },
                ];
                let f = b.begin_function(&steps)?;
                b.code_rip(&[0x3b, 0x1d], hit);
                b.code(&[0x75, 0x01]);
                let brk = b.code(&[0xcc]);
                for step in [
                    Step::Mov { dst: Rcx, src: Rdi },
                    Step::Mov { dst: Rdx, src: Rsi },
                    Step::Mov { dst: R8, src: Rbx },
                ] {
                    b.code(&step.encode()?);
                }
                b.call_rel(exp_allocate);
                exports.push(b.end_function(f));
                allocate = Some((steps.to_vec(), brk));
            }
            "ExFreePoolWithTag" => {
                // push rbx; sub rsp,20h; mov rbx,rcx; mov eax,[rbx-0Ch] (the tag in the
                // block's POOL_HEADER); cmp eax,[PoolHitTag]; jne +1; int 3;
                // mov rcx,rbx; call ExpFreePool; epilog
                let steps = [
                    Step::Push(Rbx),
                    Step::Alloc(0x20),
                    Step::Mov { dst: Rbx, src: Rcx },
                ];
                let f = b.begin_function(&steps)?;
                b.code(&[0x8b, 0x43, 0xf4]);
                b.code_rip(&[0x3b, 0x05], hit);
                b.code(&[0x75, 0x01]);
                let brk = b.code(&[0xcc]);
                b.code(&Step::Mov { dst: Rcx, src: Rbx }.encode()?);
                b.call_rel(exp_free);
                exports.push(b.end_function(f));
                free = Some((steps.to_vec(), brk));
            }
            _ => {
                b.align_text();
                // xor eax,eax; ret
                exports.push(b.code(&[0x33, 0xc0, 0xc3]));
            }
        }
    }
    let (allocate_steps, hit_break) =
        allocate.ok_or_else(|| SimError::Image("no ExAllocatePoolWithTag".into()))?;
    let (free_steps, free_break) =
        free.ok_or_else(|| SimError::Image("no ExFreePoolWithTag".into()))?;
    // PspSystemThreadStartup(StartRoutine, StartContext): push rbx; push rdi; sub rsp,28h;
    // mov rdi,rcx; mov rbx,rdx; mov rcx,rbx; call rdi; epilog
    let psp_steps = [
        Step::Push(Rbx),
        Step::Push(Rdi),
        Step::Alloc(0x28),
        Step::Mov { dst: Rdi, src: Rcx },
        Step::Mov { dst: Rbx, src: Rdx },
        Step::Mov { dst: Rcx, src: Rbx },
    ];
    let f = b.begin_function(&psp_steps)?;
    b.code(&[0xff, 0xd7]);
    let psp_ret = b.here();
    let psp = b.end_function(f);
    // KiStartSystemThread: sub rsp,28h; call PspSystemThreadStartup; epilog
    let (ki_start, ki_frame) = b.function(&[Step::Alloc(0x28)], &[], &[psp])?;
    // nt's exports: what the drivers import. (Not `KiStartSystemThread`: its name holds
    // the tag `Thre`, which a tag search would then find in nt.)
    for (name, at) in NT_IMPORTS.iter().zip(&exports) {
        b.export(name, *at);
    }
    // Pad .text so SizeOfImage matches the real kernel's.
    b.min_text_size(NT_SIZE - 0x1000 - 2 * PAGE_SIZE);
    let image = b.build(mem)?;
    let at = |l: Loc| image.addr(l);
    let nt = NtKernel {
        ps_loaded_module_list: at(ps_loaded),
        kdbg: at(kdbg_loc),
        debugger_data_list: at(debugger_data_list),
        pool_track_table_var: at(track_var),
        pool_track_table_size_var: at(track_size_var),
        pool_big_page_table_var: at(big_var),
        pool_big_page_table_size_var: at(big_size_var),
        pool_hit_tag: at(hit),
        mm_page_size: at(page_size),
        idle: at(idle),
        exports: exports.into_iter().map(at).collect(),
        threads: ThreadFrames {
            ki_start_system_thread: at(ki_start),
            ki_steps: ki_frame.steps,
            ki_return: ki_frame.returns.first().map_or(VirtAddr(0), |l| at(*l)),
            psp_steps: psp_steps.to_vec(),
            psp_return: at(psp_ret),
            allocate_steps,
            hit_break: at(hit_break),
            free_steps,
            free_break: at(free_break),
        },
        image,
    };
    // The KDBG block and the debugger-data list (one element).
    let k = nt.kdbg.0;
    let head = nt.debugger_data_list.0;
    mem.write_u64(VirtAddr(head + list_entry::FLINK), k)?;
    mem.write_u64(VirtAddr(head + list_entry::BLINK), k)?;
    mem.write_u64(VirtAddr(k + kdbg::HEADER_LIST + list_entry::FLINK), head)?;
    mem.write_u64(VirtAddr(k + kdbg::HEADER_LIST + list_entry::BLINK), head)?;
    mem.write(VirtAddr(k + kdbg::OWNER_TAG_OFFSET), &kdbg::OWNER_TAG)?;
    mem.write_u32(VirtAddr(k + kdbg::SIZE_OFFSET), kdbg::SIZE as u32)?;
    let fields = [
        (kdbg::KERN_BASE, NT_BASE.0),
        (kdbg::PS_LOADED_MODULE_LIST, nt.ps_loaded_module_list.0),
        (kdbg::MM_PAGE_SIZE, nt.mm_page_size.0),
        (kdbg::POOL_TRACK_TABLE, nt.pool_track_table_var.0),
        (kdbg::POOL_TRACK_TABLE_SIZE, nt.pool_track_table_size_var.0),
        (kdbg::POOL_HIT_TAG, nt.pool_hit_tag.0),
        (kdbg::POOL_BIG_PAGE_TABLE, nt.pool_big_page_table_var.0),
        (
            kdbg::POOL_BIG_PAGE_TABLE_SIZE,
            nt.pool_big_page_table_size_var.0,
        ),
    ];
    for (offset, value) in fields {
        mem.write_u64(VirtAddr(k + offset), value)?;
    }
    // The allocator and the free, in the order of `NT_IMPORTS`.
    let export = |name: &str| {
        NT_IMPORTS
            .iter()
            .position(|n| *n == name)
            .and_then(|i| nt.exports.get(i))
            .map_or(0, |a| a.0)
    };
    for (offset, name) in [
        (kdbg::EX_ALLOCATE_POOL_WITH_TAG, "ExAllocatePoolWithTag"),
        (kdbg::EX_FREE_POOL_WITH_TAG, "ExFreePoolWithTag"),
    ] {
        mem.write_u64(VirtAddr(k + offset), export(name))?;
    }
    Ok(nt)
}

/// Writes the `KLDR_DATA_TABLE_ENTRY` list (in the given load order) into the loader-data
/// region and links it from `PsLoadedModuleList`.
pub fn write_module_list(
    mem: &mut Memory,
    head: VirtAddr,
    modules: &[LdrModule],
) -> Result<(), SimError> {
    // Each entry with its two names, 16-byte aligned.
    let entry_bytes = |m: &LdrModule| {
        let full = (m.path.encode_utf16().count() as u64 * 2 + 2).next_multiple_of(8);
        let base = m.name.encode_utf16().count() as u64 * 2 + 2;
        (ldr_entry::SIZE + full + base).next_multiple_of(16)
    };
    let needed = modules
        .iter()
        .fold(0u64, |t, m| t.saturating_add(entry_bytes(m)));
    let size = needed
        .next_multiple_of(LOADER_DATA_SIZE)
        .clamp(LOADER_DATA_SIZE, LOADER_DATA_MAX);
    mem.map(LOADER_DATA, size, Prot::RW)?;
    let limit = LOADER_DATA.0 + size;
    let mut next = LOADER_DATA.0;
    let mut entries = Vec::with_capacity(modules.len());
    for m in modules {
        let entry = next;
        let full: Vec<u8> = m.path.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let base: Vec<u8> = m.name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let full_buf = entry + ldr_entry::SIZE;
        let base_buf = full_buf + (full.len() as u64 + 2).next_multiple_of(8);
        next = (base_buf + base.len() as u64 + 2).next_multiple_of(16);
        if next > limit || full.len() > 0xfff0 || base.len() > 0xfff0 {
            return Err(SimError::Scenario(
                "too many modules or names too long".into(),
            ));
        }
        mem.write(VirtAddr(full_buf), &full)?;
        mem.write(VirtAddr(base_buf), &base)?;
        let e = VirtAddr(entry);
        mem.write_u64(VirtAddr(entry + ldr_entry::DLL_BASE), m.base.0)?;
        mem.write_u64(VirtAddr(entry + ldr_entry::ENTRY_POINT), m.entry.0)?;
        mem.write_u32(VirtAddr(entry + ldr_entry::SIZE_OF_IMAGE), m.size as u32)?;
        write_unicode_string(
            mem,
            VirtAddr(entry + ldr_entry::FULL_DLL_NAME),
            full_buf,
            full.len(),
        )?;
        write_unicode_string(
            mem,
            VirtAddr(entry + ldr_entry::BASE_DLL_NAME),
            base_buf,
            base.len(),
        )?;
        mem.write_u32(VirtAddr(entry + ldr_entry::FLAGS), 0x0910_4000)?;
        mem.write(VirtAddr(entry + ldr_entry::LOAD_COUNT), &1u16.to_le_bytes())?;
        mem.write_u32(VirtAddr(entry + ldr_entry::CHECKSUM), m.checksum)?;
        mem.write_u32(VirtAddr(entry + ldr_entry::TIME_DATE_STAMP), m.timestamp)?;
        entries.push(e);
    }
    // Link: head <-> e0 <-> e1 ... <-> head
    let mut all = vec![head];
    all.extend(entries);
    let n = all.len();
    for (i, node) in all.iter().enumerate() {
        let flink = all.get((i + 1) % n).copied().unwrap_or(head);
        let blink = all.get((i + n - 1) % n).copied().unwrap_or(head);
        mem.write_u64(VirtAddr(node.0 + list_entry::FLINK), flink.0)?;
        mem.write_u64(VirtAddr(node.0 + list_entry::BLINK), blink.0)?;
    }
    Ok(())
}

fn write_unicode_string(
    mem: &mut Memory,
    at: VirtAddr,
    buf: u64,
    len: usize,
) -> Result<(), SimError> {
    mem.write(
        VirtAddr(at.0 + unicode_string::LENGTH),
        &(len as u16).to_le_bytes(),
    )?;
    mem.write(
        VirtAddr(at.0 + unicode_string::MAXIMUM_LENGTH),
        &(len as u16 + 2).to_le_bytes(),
    )?;
    mem.write_u64(VirtAddr(at.0 + unicode_string::BUFFER), buf)?;
    Ok(())
}
