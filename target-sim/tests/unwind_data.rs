#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The exception directory of every module of every built-in scenario: it parses with
//! `nt::unwind`, and the prolog bytes of every `RUNTIME_FUNCTION` decode (iced-x86) to
//! exactly the instructions its unwind codes describe. Leaf functions have none.

use std::collections::BTreeSet;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use tagsplit_protocol::nt::unwind::{
    Reg, RuntimeFunction, Trailer, UnwindInfo, UnwindOp, lookup, parse_function_table,
};
use tagsplit_target_sim::VirtAddr;
use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::scenario::Scenario;

/// The exception directory (data directory 3) of the image at `base`.
fn exception_directory(m: &Machine, base: VirtAddr) -> Option<(u32, u32)> {
    let mem = m.memory();
    let pe = u64::from(mem.read_u32(VirtAddr(base.0 + 0x3c)).unwrap());
    assert_eq!(mem.read_u32(VirtAddr(base.0 + pe)).unwrap(), 0x4550);
    let opt = base.0 + pe + 24;
    assert_eq!(
        u16::from_le_bytes({
            let mut b = [0u8; 2];
            mem.read(VirtAddr(opt), &mut b).unwrap();
            b
        }),
        0x20b
    );
    let count = mem.read_u32(VirtAddr(opt + 108)).unwrap();
    assert!(count > 3);
    let dir = opt + 112 + 3 * 8;
    let rva = mem.read_u32(VirtAddr(dir)).unwrap();
    let size = mem.read_u32(VirtAddr(dir + 4)).unwrap();
    (size > 0).then_some((rva, size))
}

fn reg_of(r: Register) -> Reg {
    Reg::from_nibble(u8::try_from(r.full_register().number()).unwrap())
}

/// What a prolog instruction did, as an unwind op (with the frame register and offset
/// for `SET_FPREG`).
fn op_of(ins: &Instruction) -> (UnwindOp, Option<(Reg, u64)>) {
    let reg0 = ins.op0_kind() == OpKind::Register;
    match ins.mnemonic() {
        Mnemonic::Push if reg0 && ins.op0_register().is_gpr64() => {
            (UnwindOp::PushNonvol(reg_of(ins.op0_register())), None)
        }
        Mnemonic::Sub if reg0 && ins.op0_register() == Register::RSP => (
            UnwindOp::alloc(u32::try_from(ins.immediate(1)).unwrap()),
            None,
        ),
        Mnemonic::Mov
            if reg0
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register() == Register::RSP =>
        {
            (UnwindOp::SetFpreg, Some((reg_of(ins.op0_register()), 0)))
        }
        Mnemonic::Lea
            if reg0
                && ins.memory_base() == Register::RSP
                && ins.memory_index() == Register::None =>
        {
            (
                UnwindOp::SetFpreg,
                Some((reg_of(ins.op0_register()), ins.memory_displacement64())),
            )
        }
        _ => panic!("not a prolog instruction: {ins}"),
    }
}

/// Op kinds seen: push, alloc small, alloc large, frame pointer (lea), frame pointer
/// (mov), chained.
#[derive(Default, Debug)]
struct Seen(BTreeSet<&'static str>);

fn check_module(m: &Machine, name: &str, base: VirtAddr, size: u64, seen: &mut Seen) -> usize {
    let Some((rva, len)) = exception_directory(m, base) else {
        return 0;
    };
    assert!(u64::from(rva) + u64::from(len) <= size, "{name}");
    let mut bytes = vec![0u8; len as usize];
    m.read(VirtAddr(base.0 + u64::from(rva)), &mut bytes)
        .unwrap();
    let table = parse_function_table(&bytes).unwrap();
    for f in &table {
        let mut raw = vec![0u8; UnwindInfo::MAX_SIZE];
        let at = VirtAddr(base.0 + u64::from(f.unwind_data));
        let room = (size - u64::from(f.unwind_data)).min(raw.len() as u64) as usize;
        m.read(at, &mut raw[..room]).unwrap();
        let info = UnwindInfo::parse(&raw[..room]).unwrap();
        assert_eq!(info.version, 1);
        // Decode the prolog and compare with the codes (stored latest first).
        let mut code = vec![0u8; usize::from(info.prolog_size) + 16];
        let start = base.0 + u64::from(f.begin);
        m.read(VirtAddr(start), &mut code).unwrap();
        let mut d = Decoder::with_ip(64, &code, start, DecoderOptions::NONE);
        let mut decoded = Vec::new();
        while d.position() < usize::from(info.prolog_size) {
            let ins = d.decode();
            assert!(!ins.is_invalid(), "{name}+{:#x}", f.begin);
            let (op, fp) = op_of(&ins);
            if let Some((reg, offset)) = fp {
                assert_eq!(info.frame_register, Some(reg), "{name}+{:#x}", f.begin);
                assert_eq!(u64::from(info.frame_offset) * 16, offset);
                seen.0.insert(if offset == 0 { "fp-mov" } else { "fp-lea" });
            }
            match op {
                UnwindOp::PushNonvol(_) => seen.0.insert("push"),
                UnwindOp::AllocSmall(_) => seen.0.insert("alloc-small"),
                UnwindOp::AllocLarge(_) | UnwindOp::AllocLargeFar(_) => {
                    seen.0.insert("alloc-large")
                }
                _ => false,
            };
            decoded.push((u8::try_from(d.position()).unwrap(), op));
        }
        assert_eq!(
            d.position(),
            usize::from(info.prolog_size),
            "{name}+{:#x}: the prolog ends inside an instruction",
            f.begin
        );
        decoded.reverse();
        let codes: Vec<(u8, UnwindOp)> = info.prolog_codes().map(|c| (c.offset, c.op)).collect();
        assert_eq!(codes, decoded, "{name}+{:#x}", f.begin);
        // A function with unwind data is no leaf: it calls (a chained parent may only
        // jump to its fragment, which calls).
        let mut body = vec![0u8; (f.end - f.begin) as usize];
        m.read(VirtAddr(start), &mut body).unwrap();
        let mut d = Decoder::with_ip(64, &body, start, DecoderOptions::NONE);
        let mnemonics: Vec<Mnemonic> = d.iter().map(|i| i.mnemonic()).collect();
        assert!(
            mnemonics.contains(&Mnemonic::Call) || mnemonics.contains(&Mnemonic::Jmp),
            "{name}+{:#x}: {mnemonics:?}",
            f.begin
        );
        assert!(
            !mnemonics.contains(&Mnemonic::INVALID),
            "{name}+{:#x}",
            f.begin
        );
        if let Trailer::Chained(parent) = info.trailer {
            seen.0.insert("chained");
            let p: &RuntimeFunction = lookup(&table, parent.begin).unwrap();
            assert_eq!(*p, parent, "{name}: the chain names its parent's entry");
            assert!(parent.begin < f.begin);
        }
    }
    table.len()
}

#[test]
fn every_prolog_decodes_to_its_unwind_codes_in_every_builtin_scenario() {
    let mut all = Seen::default();
    for name in Scenario::builtin_names() {
        let m = Machine::boot(&Scenario::builtin(name).unwrap()).unwrap();
        let mut seen = Seen::default();
        let mut functions = 0;
        for md in m.modules() {
            functions += check_module(&m, &md.name, md.base, md.size, &mut seen);
        }
        assert!(functions > 10, "{name}: {functions} functions");
        // Every code site that calls is in a function with unwind data; compare decoys
        // (leaves) are in none.
        for site in m.sites() {
            let md = m
                .modules()
                .into_iter()
                .find(|x| x.name == site.module)
                .unwrap();
            let (rva, len) = exception_directory(&m, md.base).unwrap();
            let mut bytes = vec![0u8; len as usize];
            m.read(VirtAddr(md.base.0 + u64::from(rva)), &mut bytes)
                .unwrap();
            let table = parse_function_table(&bytes).unwrap();
            let rva_of = |a: VirtAddr| u32::try_from(a.0 - md.base.0).unwrap();
            match site.kind {
                SiteKind::DecoyCompare => assert!(lookup(&table, rva_of(site.instr)).is_none()),
                SiteKind::DecoyText => {}
                _ => assert!(lookup(&table, rva_of(site.call.unwrap())).is_some()),
            }
        }
        if *name == "part4" {
            // nt's allocator and free are non-leaf functions with unwind data; the other
            // exports (leaves) have none. A driver's IAT names them: the site's
            // `call [rip+disp]` reads ExAllocatePoolWithTag's slot, the others follow.
            let nt = &m.modules()[0];
            let (rva, len) = exception_directory(&m, nt.base).unwrap();
            let mut bytes = vec![0u8; len as usize];
            m.read(VirtAddr(nt.base.0 + u64::from(rva)), &mut bytes)
                .unwrap();
            let table = parse_function_table(&bytes).unwrap();
            let call = m.sites().last().unwrap().call.unwrap();
            let disp = i64::from(m.memory().read_u32(VirtAddr(call.0 + 2)).unwrap() as i32);
            let slot = (call.0 + 6).wrapping_add(disp as u64);
            let export = |i: u64| {
                let a = m.memory().read_u64(VirtAddr(slot + 8 * i)).unwrap();
                lookup(&table, u32::try_from(a - nt.base.0).unwrap()).is_some()
            };
            // ExAllocatePoolWithTag, ExFreePoolWithTag, ExInitializeNPagedLookasideList,
            // ExFreePool, KeBugCheckEx
            assert_eq!(
                (0..5).map(export).collect::<Vec<_>>(),
                [true, true, false, false, false]
            );
        }
        all.0.extend(seen.0);
    }
    let want = [
        "alloc-large",
        "alloc-small",
        "chained",
        "fp-lea",
        "fp-mov",
        "push",
    ];
    assert_eq!(all.0.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn a_module_may_not_load_where_the_kernel_stacks_are() {
    use tagsplit_target_sim::machine::KERNEL_STACKS;
    use tagsplit_target_sim::scenario::ModuleSpec;
    let mut s = Scenario::new("stacks");
    let mut md = ModuleSpec::new("in-the-way.sys");
    md.base = Some(VirtAddr(KERNEL_STACKS.0 + 0x10000));
    s.modules.push(md);
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("kernel stacks"), "{e}");
}
