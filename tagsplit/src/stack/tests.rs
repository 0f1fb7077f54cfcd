//! The unwinder on hand-built memory: a module whose `.pdata`/`.xdata` come from the
//! protocol's encoder, a stack laid out as the functions' prologs would have left it.

use tagsplit_protocol::nt::unwind::{
    RuntimeFunction, Trailer, UnwindCode, UnwindInfo, UnwindOp, UnwindTables, build_tables,
    encode_function_table,
};

use std::collections::BTreeSet;

use super::*;
use crate::target::flat::FlatTarget;

const B: u64 = 0xfffff880_04000000;
const SIZE: u64 = 0x10000;
const PDATA: u32 = 0x3000;
const XDATA: u32 = 0x4000;
const STACK: u64 = 0xfffff880_02f60000;
const STACK_SIZE: u64 = 0x10000;

const F1: u32 = 0x1000; // push rbx; push rsi; sub rsp, 28h
const F2: u32 = 0x1100; // push rdi; sub rsp, 2000h
const F3: u32 = 0x1200; // push rbx; sub rsp, 1010h (far form)
const F4: u32 = 0x1300; // push rbp; sub rsp, 40h; lea rbp, [rsp+20h]; mov [rbp+10h], rbx
const F5: u32 = 0x1400; // push r12; sub rsp, 20h
const F5_COLD: u32 = 0x1500; // chained to F5
const F6: u32 = 0x1600; // interrupt frame with error code; sub rsp, 20h
const LEAF: u32 = 0x1800;

fn put(buf: &mut [u8], off: u64, data: &[u8]) {
    let off = off as usize;
    buf[off..off + data.len()].copy_from_slice(data);
}

fn code(offset: u8, op: UnwindOp) -> UnwindCode {
    UnwindCode::new(offset, op)
}

/// The functions: extent, unwind info.
fn functions() -> Vec<(u32, u32, UnwindInfo)> {
    // Chained to F5: `build_tables` fills in where F5's info goes.
    let f5_entry = RuntimeFunction {
        begin: F5,
        ..RuntimeFunction::default()
    };
    vec![
        (
            F1,
            F1 + 0x100,
            UnwindInfo {
                prolog_size: 6,
                codes: vec![
                    code(6, UnwindOp::AllocSmall(0x28)),
                    code(2, UnwindOp::PushNonvol(Reg::Rsi)),
                    code(1, UnwindOp::PushNonvol(Reg::Rbx)),
                ],
                ..UnwindInfo::default()
            },
        ),
        (
            F2,
            F2 + 0x100,
            UnwindInfo {
                prolog_size: 8,
                codes: vec![
                    code(8, UnwindOp::AllocLarge(0x2000)),
                    code(1, UnwindOp::PushNonvol(Reg::Rdi)),
                ],
                ..UnwindInfo::default()
            },
        ),
        (
            F3,
            F3 + 0x100,
            UnwindInfo {
                prolog_size: 8,
                codes: vec![
                    code(8, UnwindOp::AllocLargeFar(0x1010)),
                    code(1, UnwindOp::PushNonvol(Reg::Rbx)),
                ],
                ..UnwindInfo::default()
            },
        ),
        (
            F4,
            F4 + 0x100,
            UnwindInfo {
                prolog_size: 15,
                frame_register: Some(Reg::Rbp),
                frame_offset: 2,
                codes: vec![
                    code(
                        15,
                        UnwindOp::SaveNonvol {
                            reg: Reg::Rbx,
                            offset: 0x30,
                        },
                    ),
                    code(10, UnwindOp::SetFpreg),
                    code(5, UnwindOp::AllocSmall(0x40)),
                    code(1, UnwindOp::PushNonvol(Reg::Rbp)),
                ],
                ..UnwindInfo::default()
            },
        ),
        (
            F5,
            F5 + 0x100,
            UnwindInfo {
                prolog_size: 6,
                codes: vec![
                    code(6, UnwindOp::AllocSmall(0x20)),
                    code(2, UnwindOp::PushNonvol(Reg::R12)),
                ],
                ..UnwindInfo::default()
            },
        ),
        (
            F5_COLD,
            F5_COLD + 0x80,
            UnwindInfo {
                trailer: Trailer::Chained(f5_entry),
                ..UnwindInfo::default()
            },
        ),
        (
            F6,
            F6 + 0x100,
            UnwindInfo {
                prolog_size: 4,
                codes: vec![
                    code(4, UnwindOp::AllocSmall(0x20)),
                    code(0, UnwindOp::PushMachframe { error_code: true }),
                ],
                ..UnwindInfo::default()
            },
        ),
    ]
}

/// A PE32+ image with an exception directory over `functions` (laid out by the protocol's
/// `build_tables`, `.xdata` at [`XDATA`]), code filled with `int3`.
fn image(functions: &[(u32, u32, UnwindInfo)]) -> Vec<u8> {
    image_with(&build_tables(functions, XDATA).unwrap())
}

/// A PE32+ image with these tables.
fn image_with(tables: &UnwindTables) -> Vec<u8> {
    let mut img = vec![0u8; SIZE as usize];
    put(&mut img, 0, b"MZ");
    put(&mut img, 0x3c, &0x80u32.to_le_bytes());
    put(&mut img, 0x80, b"PE\0\0");
    put(&mut img, 0x84, &0x8664u16.to_le_bytes());
    put(&mut img, 0x94, &0xf0u16.to_le_bytes());
    put(&mut img, 0x98, &0x20bu16.to_le_bytes());
    put(&mut img, 0x98 + 0x6c, &16u32.to_le_bytes());
    put(&mut img, 0x98 + 0x70 + 3 * 8, &PDATA.to_le_bytes());
    put(
        &mut img,
        0x98 + 0x70 + 3 * 8 + 4,
        &(tables.pdata.len() as u32).to_le_bytes(),
    );
    put(&mut img, u64::from(PDATA), &tables.pdata);
    put(&mut img, u64::from(XDATA), &tables.xdata);
    for b in &mut img[0x1000..0x2000] {
        *b = 0xcc;
    }
    img
}

/// The tables as given, unsorted as they may be (`build_tables` sorts): infos packed in
/// order.
fn raw_tables(functions: &[(u32, u32, UnwindInfo)]) -> UnwindTables {
    let mut xdata = Vec::new();
    let mut table = Vec::new();
    for (begin, end, info) in functions {
        table.push(RuntimeFunction {
            begin: *begin,
            end: *end,
            unwind_data: XDATA + xdata.len() as u32,
        });
        xdata.extend(info.encode().unwrap());
    }
    UnwindTables {
        pdata: encode_function_table(&table),
        functions: table,
        xdata,
    }
}

fn module() -> ModuleInfo {
    ModuleInfo {
        name: "unw.sys".into(),
        path: "unw.sys".into(),
        base: VirtAddr(B),
        size: SIZE,
    }
}

/// Lays a stack out from the top, as pushes would.
struct StackBuilder {
    mem: Vec<u8>,
    sp: u64,
}

impl StackBuilder {
    fn new() -> StackBuilder {
        StackBuilder {
            mem: vec![0u8; STACK_SIZE as usize],
            sp: STACK + STACK_SIZE - 0x100,
        }
    }
    fn push(&mut self, v: u64) -> u64 {
        self.sp -= 8;
        self.write(self.sp, v);
        self.sp
    }
    fn sub(&mut self, n: u64) -> u64 {
        self.sp -= n;
        self.sp
    }
    fn write(&mut self, at: u64, v: u64) {
        put(&mut self.mem, at - STACK, &v.to_le_bytes());
    }
}

fn target_with(img: Vec<u8>, stack: Vec<u8>) -> FlatTarget {
    let mut t = FlatTarget::new();
    t.memory.map(VirtAddr(B), img);
    t.memory.map(VirtAddr(STACK), stack);
    t.modules = vec![module()];
    t
}

struct Scene {
    target: FlatTarget,
    regs: Registers,
    /// Expected (child_sp, ret_addr, rip) per frame.
    expect: Vec<(u64, u64, u64)>,
    /// Expected registers restored in frames 1..: (frame, reg, value).
    restored: Vec<(usize, Reg, u64)>,
}

/// The whole chain, outermost first: F3 interrupted after its first push, F6 (machine
/// frame), F5 (chained cold part), F4 (frame pointer and alloca), F2 (large), F1, a leaf.
fn scene() -> Scene {
    let mut s = StackBuilder::new();
    let a = |rva: u32| B + u64::from(rva);
    let mut expect = Vec::new();

    // F3, called from nowhere (return address 0), pushed rbx, then interrupted.
    s.push(0);
    s.push(0x3333);
    let sp_f3 = s.sp;
    let rip_f3 = a(F3 + 1);
    // The processor: SS, RSP, EFLAGS, CS, RIP, error code.
    s.push(0x18);
    s.push(sp_f3);
    s.push(0x202);
    s.push(0x10);
    s.push(rip_f3);
    s.push(0xe);
    // F6: sub rsp, 20h; calls F5.
    s.sub(0x20);
    let sp_f6 = s.sp;
    let rip_f6 = a(F6 + 0x10);
    s.push(rip_f6);
    // F5: push r12; sub rsp, 20h; its cold part calls F4.
    s.push(0x1212);
    s.sub(0x20);
    let sp_f5 = s.sp;
    let rip_f5 = a(F5_COLD + 0x20);
    s.push(rip_f5);
    // F4: push rbp; sub rsp, 40h; rbp = rsp + 20h; save rbx at frame + 30h; alloca 100h.
    s.push(0x5555);
    let est = s.sub(0x40);
    let rbp_f4 = est + 0x20;
    s.write(est + 0x30, 0xb5b5);
    s.sub(0x100);
    let sp_f4 = s.sp;
    let rip_f4 = a(F4 + 0x80);
    s.push(rip_f4);
    // F2: push rdi; sub rsp, 2000h.
    s.push(0xd4d4);
    s.sub(0x2000);
    let sp_f2 = s.sp;
    let rip_f2 = a(F2 + 0x40);
    s.push(rip_f2);
    // F1: push rbx (F4's), push rsi; sub rsp, 28h.
    s.push(0xb4b4);
    s.push(0x5151);
    s.sub(0x28);
    let sp_f1 = s.sp;
    let rip_f1 = a(F1 + 0x50);
    s.push(rip_f1);
    let sp_leaf = s.sp;
    let rip_leaf = a(LEAF + 3);

    expect.push((sp_leaf, rip_f1, rip_leaf));
    expect.push((sp_f1, rip_f2, rip_f1));
    expect.push((sp_f2, rip_f4, rip_f2));
    expect.push((sp_f4, rip_f5, rip_f4));
    expect.push((sp_f5, rip_f6, rip_f5));
    expect.push((sp_f6, rip_f3, rip_f6));
    expect.push((sp_f3, 0, rip_f3));

    let mut regs = Registers::new(rip_leaf, sp_leaf);
    regs.set(Reg::Rbx, 0xb1b1);
    regs.set(Reg::Rsi, 0x5111);
    regs.set(Reg::Rdi, 0xd2d2);
    regs.set(Reg::Rbp, rbp_f4);
    regs.set(Reg::R12, 0x1515);
    Scene {
        target: target_with(image(&functions()), s.mem),
        regs,
        expect,
        restored: vec![
            (1, Reg::Rbx, 0xb1b1),
            (2, Reg::Rbx, 0xb4b4),
            (2, Reg::Rsi, 0x5151),
            (3, Reg::Rdi, 0xd4d4),
            (3, Reg::Rbp, rbp_f4),
            (4, Reg::Rbx, 0xb5b5),
            (4, Reg::Rbp, 0x5555),
            (5, Reg::R12, 0x1212),
            (6, Reg::Rbx, 0xb5b5),
        ],
    }
}

#[test]
fn walks_every_kind_of_frame_to_the_end() {
    let mut sc = scene();
    let mut u = Unwinder::for_target(&mut sc.target).unwrap();
    let stack = u.walk(&mut sc.target, &sc.regs).unwrap();
    assert_eq!(stack.stop, StopReason::EndOfStack, "{stack}");
    let got: Vec<(u64, u64, u64)> = stack
        .frames
        .iter()
        .map(|f| (f.child_sp.get(), f.ret_addr.unwrap().get(), f.rip.get()))
        .collect();
    assert_eq!(got, sc.expect, "{stack}");
    for (frame, reg, value) in sc.restored {
        assert_eq!(
            stack.frames[frame].registers.get(reg),
            value,
            "{reg} in frame {frame}"
        );
    }
    let how: Vec<Unwound> = stack.frames.iter().map(|f| f.unwound.unwrap()).collect();
    assert_eq!(
        how,
        [
            Unwound::Leaf,
            Unwound::Prolog { begin: F1 },
            Unwound::Prolog { begin: F2 },
            Unwound::Prolog { begin: F4 },
            Unwound::Prolog { begin: F5_COLD },
            Unwound::MachineFrame,
            Unwound::Prolog { begin: F3 },
        ]
    );
    let text = stack.to_string();
    assert!(text.starts_with(" # Child-SP          RetAddr               Call Site\n"));
    assert!(
        text.contains(&format!(
            "01 {} {}     unw+0x1050\n",
            VirtAddr(sc.expect[1].0),
            VirtAddr(sc.expect[1].1)
        )),
        "{text}"
    );
    assert!(text.contains("     unw+0x1803\n"), "{text}");
    let k = stack.table(false);
    assert!(k.starts_with("Child-SP          RetAddr               Call Site\n"));
    assert!(
        k.contains(&format!(
            "\n{} {}     unw+0x1050\n",
            VirtAddr(sc.expect[1].0),
            VirtAddr(sc.expect[1].1)
        )),
        "{k}"
    );
}

#[test]
fn the_kernel_is_nt() {
    let m = |name: &str| ModuleInfo {
        name: name.into(),
        path: name.into(),
        base: VirtAddr(B),
        size: SIZE,
    };
    assert_eq!(debugger_name(&m("ntoskrnl.exe")), "nt");
    assert_eq!(debugger_name(&m("NTKRNLMP.EXE")), "nt");
    assert_eq!(debugger_name(&m("myfault.sys")), "myfault");
    assert_eq!(debugger_name(&m("hal")), "hal");
}

/// Counts reads and remembers where they went.
struct Counting<'a> {
    inner: &'a mut FlatTarget,
    reads: Vec<VirtAddr>,
}

impl DebugTarget for Counting<'_> {
    fn describe(&self) -> String {
        "counting".into()
    }
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.reads.push(addr);
        self.inner.read_memory(addr, buf)
    }
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.inner.write_memory(addr, data)
    }
}

#[test]
fn a_second_walk_reads_only_the_stack() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    let mut t = Counting {
        inner: &mut sc.target,
        reads: Vec::new(),
    };
    let first = u.walk(&mut t, &sc.regs).unwrap();
    let in_image = |a: &VirtAddr| (B..B + SIZE).contains(&a.get());
    let first_image_reads = t.reads.iter().filter(|a| in_image(a)).count();
    // Headers (2), the table, 7 infos.
    assert_eq!(first_image_reads, 10, "{:?}", t.reads);
    t.reads.clear();
    let second = u.walk(&mut t, &sc.regs).unwrap();
    assert_eq!(first, second);
    let image_reads: Vec<u64> = t
        .reads
        .iter()
        .filter(|a| in_image(a))
        .map(|a| a.get() - B)
        .collect();
    // None: a leaf has no epilog to look for, and the interrupted rip is in a prolog.
    assert_eq!(image_reads, [0u64; 0]);
    // The stack in 512-byte blocks, each read once: 7 frames in 3 reads.
    let blocks: BTreeSet<u64> = t.reads.iter().map(|a| a.get()).collect();
    assert_eq!(blocks.len(), t.reads.len(), "{:x?}", t.reads);
    assert!(t.reads.iter().all(|a| a.get() % 512 == 0), "{:x?}", t.reads);
    assert_eq!(t.reads.len(), 3, "{:x?}", t.reads);
}

#[test]
fn inside_a_prolog_only_the_codes_that_ran_are_undone() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    // F1 after `push rbx` (offset 1..2): rsp points at the saved rbx.
    let mut s = StackBuilder::new();
    s.push(0);
    s.push(B + u64::from(F2) + 0x40);
    let sp = s.push(0xabcd);
    sc.target.memory.map(VirtAddr(STACK), s.mem);
    let mut regs = Registers::new(B + u64::from(F1) + 1, sp);
    regs.set(Reg::Rsi, 0x77);
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    let f0 = &stack.frames[0];
    assert_eq!(f0.ret_addr, Some(VirtAddr(B + u64::from(F2) + 0x40)));
    assert_eq!(stack.frames[1].registers.get(Reg::Rbx), 0xabcd);
    // rsi was not pushed yet: unchanged.
    assert_eq!(stack.frames[1].registers.get(Reg::Rsi), 0x77);
    assert_eq!(stack.frames[1].child_sp, VirtAddr(sp + 16));
}

#[test]
fn a_first_frame_in_an_epilog_is_emulated() {
    let mut sc = scene();
    // F1's epilog at +0x90: add rsp, 28h; pop rsi; pop rbx; ret.
    let epilog = [0x48, 0x83, 0xc4, 0x28, 0x5e, 0x5b, 0xc3];
    sc.target
        .write_memory(VirtAddr(B + u64::from(F1) + 0x90), &epilog)
        .unwrap();
    let mut s = StackBuilder::new();
    s.push(0);
    let ret = B + u64::from(F2) + 0x40;
    s.push(ret);
    s.push(0xb0);
    s.push(0x50);
    let sp = s.sub(0x28);
    sc.target.memory.map(VirtAddr(STACK), s.mem);
    let mut u = Unwinder::new(vec![module()]);
    for (at, sp, skip) in [
        (0x90, sp, 0),
        (0x94, sp + 0x28, 0x28),
        (0x96, sp + 0x38, 0x38),
    ] {
        let regs = Registers::new(B + u64::from(F1) + at, sp);
        let stack = u.walk(&mut sc.target, &regs).unwrap();
        let f0 = &stack.frames[0];
        assert_eq!(f0.unwound, Some(Unwound::Epilog), "at +{at:#x}");
        assert_eq!(f0.ret_addr, Some(VirtAddr(ret)), "at +{at:#x}");
        assert_eq!(
            stack.frames[1].child_sp,
            VirtAddr(sp - skip + 0x40),
            "at +{at:#x}"
        );
        if at < 0x96 {
            assert_eq!(stack.frames[1].registers.get(Reg::Rbx), 0xb0);
        }
    }
    // A tail call out of the function is an epilog too: jmp to F2.
    let jmp = [0x5e, 0x5b, 0xe9, 0x00, 0x01, 0x00, 0x00]; // pop rsi; pop rbx; jmp F2+0x97
    sc.target
        .write_memory(VirtAddr(B + u64::from(F1) + 0x90), &jmp)
        .unwrap();
    let regs = Registers::new(B + u64::from(F1) + 0x90, sp + 0x28);
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert_eq!(stack.frames[0].unwound, Some(Unwound::Epilog));
    assert_eq!(stack.frames[0].ret_addr, Some(VirtAddr(ret)));
    // A jump inside the function is not: the prolog is undone instead.
    let inner = [0x5e, 0x5b, 0xeb, 0x00];
    sc.target
        .write_memory(VirtAddr(B + u64::from(F1) + 0x90), &inner)
        .unwrap();
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert_eq!(stack.frames[0].unwound, Some(Unwound::Prolog { begin: F1 }));
}

#[test]
fn stops_outside_modules() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    let stack = u
        .walk(&mut sc.target, &Registers::new(0x1234, sc.regs.rsp()))
        .unwrap();
    assert_eq!(stack.stop, StopReason::OutsideModules(VirtAddr(0x1234)));
    assert_eq!(stack.frames.len(), 1);
    assert_eq!(stack.frames[0].ret_addr, None);
    assert_eq!(stack.frames[0].call_site_text(), "0x1234");
    assert!(stack.to_string().contains("????????`????????"));
}

#[test]
fn stops_at_an_unreadable_stack() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    let regs = Registers::new(B + u64::from(LEAF), 0x10);
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert_eq!(stack.stop, StopReason::Unreadable(VirtAddr(0x10)));
}

#[test]
fn stops_at_malformed_unwind_data_and_bad_images() {
    let mut sc = scene();
    // F1's UNWIND_INFO claims version 3.
    sc.target
        .write_memory(VirtAddr(B + u64::from(XDATA)), &[0x03])
        .unwrap();
    let mut u = Unwinder::new(vec![module()]);
    let stack = u.walk(&mut sc.target, &sc.regs).unwrap();
    assert_eq!(stack.frames.len(), 2);
    assert_eq!(
        stack.stop,
        StopReason::BadUnwindData {
            module: "unw.sys".into(),
            rva: XDATA,
            error: UnwindError::Version(3),
        }
    );
    assert!(stack.stop.to_string().contains("version 3"));
    // An unsorted function table.
    let mut fs = functions();
    fs.swap(0, 1);
    let mut t = target_with(image_with(&raw_tables(&fs)), vec![0; 16]);
    let mut u = Unwinder::new(vec![module()]);
    let stack = u.walk(&mut t, &Registers::new(B + 0x1000, STACK)).unwrap();
    assert!(
        matches!(stack.stop, StopReason::BadUnwindData { rva: PDATA, .. }),
        "{:?}",
        stack.stop
    );
    // No MZ.
    sc.target.write_memory(VirtAddr(B), b"ZM").unwrap();
    let mut u = Unwinder::new(vec![module()]);
    let stack = u.walk(&mut sc.target, &sc.regs).unwrap();
    assert!(
        matches!(&stack.stop, StopReason::BadImage { reason, .. } if reason.contains("MZ")),
        "{:?}",
        stack.stop
    );
}

#[test]
fn stops_at_a_chain_that_loops() {
    let mut fs = functions();
    // The cold part chains to itself.
    fs[5].2.trailer = Trailer::Chained(RuntimeFunction {
        begin: F5_COLD,
        ..RuntimeFunction::default()
    });
    let mut t = target_with(image(&fs), vec![0; 16]);
    let mut u = Unwinder::new(vec![module()]);
    let stack = u
        .walk(&mut t, &Registers::new(B + u64::from(F5_COLD) + 4, STACK))
        .unwrap();
    assert_eq!(
        stack.stop,
        StopReason::ChainTooDeep {
            module: "unw.sys".into(),
            begin: F5_COLD
        }
    );
}

#[test]
fn stops_when_rsp_does_not_increase_and_at_the_frame_limit() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    // F4 with a frame pointer below rsp: the caller's rsp would be lower.
    let mut regs = Registers::new(B + u64::from(F4) + 0x80, STACK + 0x8000);
    regs.set(Reg::Rbp, STACK + 0x100);
    sc.target
        .write_memory(
            VirtAddr(STACK + 0x128),
            &(B + u64::from(F1) + 0x50).to_le_bytes(),
        )
        .unwrap();
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert!(
        matches!(stack.stop, StopReason::StackNotIncreasing { rsp, .. } if rsp == VirtAddr(STACK + 0x8000)),
        "{:?}",
        stack.stop
    );
    u.max_frames = 3;
    let stack = u.walk(&mut sc.target, &sc.regs).unwrap();
    assert_eq!(stack.stop, StopReason::FrameLimit(3));
    assert_eq!(stack.frames.len(), 3);
    assert!(stack.frames.iter().all(|f| f.ret_addr.is_some()));
}

#[test]
fn module_list_changes_keep_only_what_still_holds() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    u.walk(&mut sc.target, &sc.regs).unwrap();
    assert!(u.data.contains_key(&B));
    u.set_modules(vec![module()]);
    assert!(u.data.contains_key(&B));
    let mut moved = module();
    moved.size = 0x20000;
    u.set_modules(vec![moved]);
    assert!(!u.data.contains_key(&B));
    assert_eq!(
        u.call_site(VirtAddr(B + 0x1234)),
        Some(CallSite {
            module: "unw".into(),
            offset: 0x1234
        })
    );
    assert_eq!(u.call_site(VirtAddr(B - 1)), None);
}

#[test]
fn a_jump_from_a_cold_fragment_back_into_its_function_is_no_epilog() {
    let mut sc = scene();
    let mut u = Unwinder::new(vec![module()]);
    let at = B + u64::from(F5_COLD) + 0x30;
    let jmp_to = |target: u64| {
        let rel = (target as i64 - (at as i64 + 5)) as i32;
        let mut b = vec![0xe9];
        b.extend_from_slice(&rel.to_le_bytes());
        b
    };
    let regs = Registers::new(at, STACK + 0x100);
    // Into the body of F5, which the fragment chains to: the prolog is undone.
    sc.target
        .write_memory(VirtAddr(at), &jmp_to(B + u64::from(F5) + 0x10))
        .unwrap();
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert_eq!(
        stack.frames[0].unwound,
        Some(Unwound::Prolog { begin: F5_COLD })
    );
    // Out to F1: a tail call.
    sc.target
        .write_memory(VirtAddr(at), &jmp_to(B + u64::from(F1)))
        .unwrap();
    let stack = u.walk(&mut sc.target, &regs).unwrap();
    assert_eq!(stack.frames[0].unwound, Some(Unwound::Epilog));
}

#[test]
fn iced_registers_map_to_unwind_numbers() {
    assert_eq!(gpr(Register::RAX), Some(Reg::Rax));
    assert_eq!(gpr(Register::RSP), Some(Reg::Rsp));
    assert_eq!(gpr(Register::R15), Some(Reg::R15));
    assert_eq!(gpr(Register::EAX), None);
    assert_eq!(gpr(Register::None), None);
}

mod prologs {
    //! Random prologs run forward on a model machine, then unwound from every point.
    use proptest::prelude::*;

    use super::*;

    const NONVOL: [Reg; 8] = [
        Reg::Rbx,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
    ];
    const RET: u64 = B + 0x1fff;
    const TOP: u64 = STACK + STACK_SIZE - 0x100;

    /// One prolog instruction and its length in bytes.
    #[derive(Clone, Debug)]
    enum Ins {
        Push(Reg),
        Alloc(u32),
        SetFp(Reg, u8),
        Save(Reg, u32),
    }

    #[derive(Clone, Debug)]
    struct Prolog {
        ins: Vec<(Ins, u8)>,
        /// How many instructions ran before the break (all: in the body).
        ran: usize,
        /// `alloca` after the prolog (with a frame pointer only).
        alloca: u64,
    }

    fn arb_prolog() -> impl Strategy<Value = Prolog> {
        (
            Just(NONVOL).prop_shuffle(),
            0usize..=8,
            prop_oneof![
                (1u32..=16).prop_map(|n| n * 8),
                (17u32..=0x1000).prop_map(|n| n * 8),
            ],
            any::<bool>(),
            0usize..=3,
            0u8..=15,
            any::<u32>(),
            prop::collection::vec(1u8..=7, 16),
            0u64..8,
        )
            .prop_map(
                |(regs, pushes, alloc, fp, saves, fp_off, ran, lens, alloca)| {
                    let pushed = &regs[..pushes];
                    let mut ins: Vec<Ins> = pushed.iter().map(|&r| Ins::Push(r)).collect();
                    ins.push(Ins::Alloc(alloc));
                    // The frame register is one that was pushed; its offset fits the allocation.
                    let fp_reg = pushed.first().copied().filter(|_| fp);
                    if let Some(r) = fp_reg {
                        let off = fp_off.min((alloc / 16).min(15) as u8);
                        ins.push(Ins::SetFp(r, off));
                        // Sometimes more stack after the frame pointer is set.
                        if fp_off & 1 == 1 {
                            ins.push(Ins::Alloc(0x20 + 16 * u32::from(fp_off)));
                        }
                    }
                    // Saves of registers not pushed, into distinct 8-byte slots.
                    for (i, &r) in regs[pushes..].iter().take(saves).enumerate() {
                        let slot = (i as u32 * 8) % alloc;
                        if (i as u32) * 8 < alloc {
                            ins.push(Ins::Save(r, slot));
                        }
                    }
                    let n = ins.len();
                    let ins = ins.into_iter().zip(lens).collect();
                    Prolog {
                        ins,
                        ran: ran as usize % (n + 1),
                        alloca: if fp_reg.is_some() { alloca * 16 } else { 0 },
                    }
                },
            )
    }

    fn value(r: Reg) -> u64 {
        0x1000_0000 + u64::from(r.number())
    }

    proptest! {
        #[test]
        fn unwinding_undoes_exactly_what_ran(p in arb_prolog()) {
            // The unwind info, from the instructions' end offsets.
            let mut end = 0u8;
            let mut codes = Vec::new();
            let mut frame = None;
            for (ins, len) in &p.ins {
                end += len;
                let op = match *ins {
                    Ins::Push(r) => UnwindOp::PushNonvol(r),
                    Ins::Alloc(n) => UnwindOp::alloc(n),
                    Ins::SetFp(r, off) => {
                        frame = Some((r, off));
                        UnwindOp::SetFpreg
                    }
                    Ins::Save(r, off) => UnwindOp::save_nonvol(r, off),
                };
                codes.push(code(end, op));
            }
            codes.reverse();
            let info = UnwindInfo {
                prolog_size: end,
                frame_register: frame.map(|f| f.0),
                frame_offset: frame.map_or(0, |f| f.1),
                codes,
                ..UnwindInfo::default()
            };
            let fs = vec![(F1, F1 + 0x100, info)];

            // Run the first `ran` instructions forward.
            let mut s = StackBuilder::new();
            s.push(RET);
            let entry_rsp = s.sp;
            let mut regs = Registers::new(0, s.sp);
            for r in NONVOL {
                regs.set(r, value(r));
            }
            let mut offset = 0u32;
            for (ins, len) in p.ins.iter().take(p.ran) {
                offset += u32::from(*len);
                match *ins {
                    Ins::Push(r) => {
                        s.push(regs.get(r));
                    }
                    Ins::Alloc(n) => {
                        s.sub(u64::from(n));
                    }
                    Ins::SetFp(r, off) => regs.set(r, s.sp + 16 * u64::from(off)),
                    Ins::Save(r, off) => {
                        // Relative to RSP where the frame register was set.
                        let base = frame.map_or(s.sp, |(fr, fo)| regs.get(fr) - 16 * u64::from(fo));
                        let v = regs.get(r);
                        s.write(base + u64::from(off), v);
                    }
                }
            }
            if p.ran == p.ins.len() {
                // In the body: past the prolog, saved registers clobbered, maybe alloca.
                offset += 0x10;
                let fp = frame.map(|f| f.0);
                for (ins, _) in &p.ins {
                    if let Ins::Push(r) | Ins::Save(r, _) = *ins
                        && Some(r) != fp
                    {
                        regs.set(r, 0xdead_0000 + u64::from(r.number()));
                    }
                }
                s.sub(p.alloca);
            }
            prop_assert!(s.sp > STACK);
            regs.set(Reg::Rsp, s.sp);
            regs.rip = B + u64::from(F1 + offset);

            let mut t = target_with(image(&fs), s.mem);
            let mut u = Unwinder::new(vec![module()]);
            let stack = u.walk(&mut t, &regs).unwrap();
            let f0 = &stack.frames[0];
            prop_assert_eq!(f0.unwound, Some(Unwound::Prolog { begin: F1 }), "{}", stack);
            prop_assert_eq!(f0.ret_addr, Some(VirtAddr(RET)));
            let caller = &stack.frames[1];
            prop_assert_eq!(caller.child_sp, VirtAddr(entry_rsp + 8));
            for r in NONVOL {
                prop_assert_eq!(caller.registers.get(r), value(r), "{}", r);
            }
            prop_assert!(entry_rsp < TOP);
        }
    }
}

#[test]
fn registers_from_a_stub_register_file() {
    let r = X64Registers {
        rip: 1,
        rsp: 2,
        rbx: 3,
        r15: 4,
        ..X64Registers::default()
    };
    let regs = Registers::from(&r);
    assert_eq!(regs.rip, 1);
    assert_eq!(regs.rsp(), 2);
    assert_eq!(regs.get(Reg::Rbx), 3);
    assert_eq!(regs.get(Reg::R15), 4);
}
