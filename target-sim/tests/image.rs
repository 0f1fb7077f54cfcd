#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The built images: real PE headers, section protections, and code that iced-x86 decodes
//! as intended.

use iced_x86::{
    Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register,
};
use tagsplit_target_sim::image::{AllocStyle, CompareStyle, ImageBuilder, NT_IMPORTS, PE_OFFSET};
use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::memory::{Memory, Prot};
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::{PoolTag, VirtAddr};

fn decode_at(mem: &Memory, addr: VirtAddr, n: usize) -> Vec<Instruction> {
    let mut buf = vec![0u8; 64 * n];
    mem.read(addr, &mut buf).unwrap();
    let mut d = Decoder::with_ip(64, &buf, addr.0, DecoderOptions::NONE);
    (0..n).map(|_| d.decode()).collect()
}

fn text(i: &Instruction) -> String {
    let mut out = String::new();
    IntelFormatter::new().format(i, &mut out);
    out
}

fn read_u32(mem: &Memory, a: u64) -> u32 {
    mem.read_u32(VirtAddr(a)).unwrap()
}

#[test]
fn part4_myfault_sites_decode_as_in_the_seed() {
    let m = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let mem = m.memory();
    let first = decode_at(mem, VirtAddr(0xfffff880_0496e3a8), 6);
    let got: Vec<String> = first.iter().map(text).collect();
    assert_eq!(
        &got[..5],
        &[
            "mov r8d,6B61654Ch",
            "cmp eax,ecx",
            "cmovb eax,ecx",
            "lea ecx,[r9-3]",
            "mov edx,eax"
        ]
    );
    let second = decode_at(mem, VirtAddr(0xfffff880_0496e61f), 6);
    let got: Vec<String> = second.iter().map(text).collect();
    assert_eq!(
        &got[..5],
        &[
            "mov r8d,6B61654Ch",
            "cmp eax,ecx",
            "cmovb eax,ecx",
            "xor ecx,ecx",
            "mov edx,eax"
        ]
    );
    // both calls go through myfault's IAT slot for ExAllocatePoolWithTag
    let sites = m.sites();
    for (call, site) in [
        (&first[5], &sites[sites.len() - 2]),
        (&second[5], &sites[sites.len() - 1]),
    ] {
        assert_eq!(call.mnemonic(), Mnemonic::Call);
        assert!(call.is_ip_rel_memory_operand());
        let slot = call.ip_rel_memory_address();
        let target = mem.read_u64(VirtAddr(slot)).unwrap();
        let nt = &m.modules()[0];
        assert!(target >= nt.base.0 && target < nt.base.0 + nt.size);
        assert_eq!(Some(VirtAddr(call.ip())), site.call);
    }
    // disp32 of the second call starts with 0xcc, as the seed's dump shows
    let mut b = [0u8; 1];
    mem.read(VirtAddr(0xfffff880_0496e630), &mut b).unwrap();
    assert_eq!(b[0], 0xcc);
}

#[test]
fn every_site_kind_decodes_as_intended() {
    let mut mem = Memory::new();
    let exports: Vec<VirtAddr> = (0..NT_IMPORTS.len() as u64)
        .map(|i| VirtAddr(0xfffff800_02a01000 + 16 * i))
        .collect();
    let base = VirtAddr(0xfffff880_01000000);
    let tag = PoolTag::new(*b"Ddk ");
    let mut b = ImageBuilder::new("test.sys", base, exports.clone());
    let alloc = b.alloc_site(AllocStyle::Plain, tag, 1, 300, None).unwrap();
    let free = b.free_site(tag).unwrap();
    let list = b.data(&[0u8; 0x80], 16);
    let la = b.lookaside_site(tag, 256, list).unwrap();
    let cmp_ecx = b.compare_decoy(tag, CompareStyle::Ecx);
    let cmp_eax = b.compare_decoy(tag, CompareStyle::Eax);
    let global = b.global_alloc_site(tag, 0, 96).unwrap();
    let text_site = b.text_decoy(tag, "Ddk pool exhausted").unwrap();
    let img = b.build(&mut mem).unwrap();

    let check_call = |instrs: &[Instruction], import: usize| {
        let call = instrs
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Call)
            .expect("a call");
        assert_eq!(
            mem.read_u64(VirtAddr(call.ip_rel_memory_address()))
                .unwrap(),
            exports[import].0
        );
        assert_eq!(call.ip_rel_memory_address(), img.iat[import].0);
        call.ip()
    };

    // alloc: mov r8d, tag ... call [ExAllocatePoolWithTag]
    let i = decode_at(&mem, img.addr(alloc.instr), 3);
    assert_eq!(
        (i[0].mnemonic(), i[0].op0_register(), i[0].op1_kind()),
        (Mnemonic::Mov, Register::R8D, OpKind::Immediate32)
    );
    assert_eq!(i[0].immediate32(), tag.to_u32());
    assert_eq!(img.addr(alloc.imm).0, i[0].ip() + 2);
    assert_eq!(Some(check_call(&i, 0)), alloc.call.map(|c| img.addr(c).0));
    // the code before it loads the pool type and size
    let fn_start = img.addr(alloc.instr).0 - 14;
    let pre: Vec<String> = decode_at(&mem, VirtAddr(fn_start), 3)
        .iter()
        .map(text)
        .collect();
    assert_eq!(pre, ["sub rsp,28h", "mov ecx,1", "mov edx,12Ch"]);

    // free: mov edx, tag; call [ExFreePoolWithTag]
    let i = decode_at(&mem, img.addr(free.instr), 2);
    assert_eq!(
        (i[0].op0_register(), i[0].immediate32()),
        (Register::EDX, tag.to_u32())
    );
    check_call(&i, 1);

    // lookaside: mov dword ptr [rsp+28h], tag; ... call [ExInitializeNPagedLookasideList]
    let i = decode_at(&mem, img.addr(la.instr), 3);
    assert_eq!(text(&i[0]), "mov dword ptr [rsp+28h],206B6444h");
    assert_eq!(img.addr(la.imm).0, i[0].ip() + 4);
    check_call(&i, 2);

    // compares
    let i = decode_at(&mem, img.addr(cmp_ecx.instr), 1);
    assert_eq!(text(&i[0]), "cmp ecx,206B6444h");
    assert_eq!(img.addr(cmp_ecx.imm).0, i[0].ip() + 2);
    let i = decode_at(&mem, img.addr(cmp_eax.instr), 1);
    assert_eq!(text(&i[0]), "cmp eax,206B6444h");
    assert_eq!(img.addr(cmp_eax.imm).0, i[0].ip() + 1);

    // global: mov r8d, [rip+x] where x holds the tag in .data
    let i = decode_at(&mem, img.addr(global.instr), 2);
    assert_eq!(
        (i[0].mnemonic(), i[0].op0_register()),
        (Mnemonic::Mov, Register::R8D)
    );
    assert_eq!(i[0].ip_rel_memory_address(), img.addr(global.imm).0);
    assert_eq!(read_u32(&mem, img.addr(global.imm).0), tag.to_u32());
    assert_eq!(mem.region_of(img.addr(global.imm)).unwrap().prot, Prot::RW);
    check_call(&i, 0);

    // text decoy in .rdata
    let mut s = [0u8; 18];
    mem.read(img.addr(text_site.instr), &mut s).unwrap();
    assert_eq!(&s, b"Ddk pool exhausted");
    assert_eq!(
        mem.region_of(img.addr(text_site.imm)).unwrap().prot,
        Prot::R
    );

    // the whole of .text decodes without an invalid instruction
    let (_, tstart, _, _) = &img.sections[0];
    let mut code = vec![0u8; 0x200];
    mem.read(*tstart, &mut code).unwrap();
    let mut d = Decoder::with_ip(64, &code, tstart.0, DecoderOptions::NONE);
    for ins in d.iter() {
        assert!(!ins.is_invalid(), "invalid instruction at {:#x}", ins.ip());
    }
}

#[test]
fn pe_headers_and_section_protections_are_real() {
    let m = Machine::boot(&Scenario::builtin("part4").unwrap()).unwrap();
    let mem = m.memory();
    for module in m.modules() {
        let b = module.base.0;
        assert_eq!(
            &{
                let mut mz = [0u8; 2];
                mem.read(module.base, &mut mz).unwrap();
                mz
            },
            b"MZ"
        );
        let lfanew = u64::from(read_u32(mem, b + 0x3c));
        assert_eq!(lfanew, u64::from(PE_OFFSET));
        assert_eq!(read_u32(mem, b + lfanew), u32::from_le_bytes(*b"PE\0\0"));
        let coff = b + lfanew + 4;
        let mut h = [0u8; 20];
        mem.read(VirtAddr(coff), &mut h).unwrap();
        assert_eq!(u16::from_le_bytes([h[0], h[1]]), 0x8664);
        let nsec = u16::from_le_bytes([h[2], h[3]]) as u64;
        assert_eq!(nsec, 3);
        let opt = coff + 20;
        let mut o = [0u8; 0xf0];
        mem.read(VirtAddr(opt), &mut o).unwrap();
        assert_eq!(u16::from_le_bytes([o[0], o[1]]), 0x20b);
        assert_eq!(
            u64::from_le_bytes(o[24..32].try_into().unwrap()),
            b,
            "ImageBase"
        );
        assert_eq!(
            u32::from_le_bytes(o[32..36].try_into().unwrap()),
            0x1000,
            "SectionAlignment"
        );
        assert_eq!(
            u64::from(u32::from_le_bytes(o[56..60].try_into().unwrap())),
            module.size,
            "SizeOfImage"
        );
        let sections = opt + 0xf0;
        for s in 0..nsec {
            let mut sh = [0u8; 40];
            mem.read(VirtAddr(sections + s * 40), &mut sh).unwrap();
            let name = String::from_utf8_lossy(&sh[..8])
                .trim_end_matches('\0')
                .to_string();
            let vsize = u64::from(u32::from_le_bytes(sh[8..12].try_into().unwrap()));
            let rva = u64::from(u32::from_le_bytes(sh[12..16].try_into().unwrap()));
            let ch = u32::from_le_bytes(sh[36..40].try_into().unwrap());
            let want = match name.as_str() {
                ".text" => (0x6000_0020, Prot::RX),
                ".rdata" => (0x4000_0040, Prot::R),
                ".data" => (0xc000_0040, Prot::RW),
                other => panic!("unexpected section {other}"),
            };
            assert_eq!(ch, want.0, "{} {name}", module.name);
            for page in (0..vsize).step_by(0x1000) {
                assert_eq!(
                    mem.region_of(VirtAddr(b + rva + page)).unwrap().prot,
                    want.1
                );
            }
        }
        assert_eq!(mem.region_of(module.base).unwrap().prot, Prot::R);
    }
}

#[test]
fn mz_is_found_at_every_module_base() {
    for name in Scenario::builtin_names() {
        let m = Machine::boot(&Scenario::builtin(name).unwrap()).unwrap();
        for module in m.modules() {
            let hits = m.search(
                module.base,
                module.base.saturating_add(module.size),
                b"MZ",
                100,
            );
            assert_eq!(hits.first(), Some(&module.base), "{name} {}", module.name);
        }
    }
}

#[test]
fn many_sites_has_every_site_kind_in_place() {
    let m = Machine::boot(&Scenario::builtin("many-sites").unwrap()).unwrap();
    let sites = m.sites();
    let tag = PoolTag::new(*b"Ddk ");
    for s in &sites {
        let mut b = [0u8; 4];
        m.read(s.imm, &mut b).unwrap();
        assert_eq!(PoolTag::new(b), tag, "{:?} at {}", s.kind, s.imm);
        let mut code = [0u8; 4];
        m.read(s.instr, &mut code).unwrap();
        let expect_prefix: &[u8] = match s.kind {
            SiteKind::Alloc => &[0x41, 0xb8],
            SiteKind::Free => &[0xba],
            SiteKind::LookasideInit => &[0xc7, 0x44, 0x24, 0x28],
            SiteKind::DecoyCompare => {
                if code[0] == 0x3d {
                    &[0x3d]
                } else {
                    &[0x81, 0xf9]
                }
            }
            SiteKind::DecoyGlobal => &[0x44, 0x8b, 0x05],
            SiteKind::DecoyText => b"",
            _ => panic!("unknown kind"),
        };
        assert_eq!(&code[..expect_prefix.len()], expect_prefix, "{:?}", s.kind);
    }
    let count = |k: SiteKind| sites.iter().filter(|s| s.kind == k).count();
    assert_eq!(count(SiteKind::Alloc), 70);
    assert!(count(SiteKind::Free) >= 4);
    assert_eq!(count(SiteKind::LookasideInit), 1);
    assert_eq!(count(SiteKind::DecoyCompare), 2);
    assert_eq!(count(SiteKind::DecoyGlobal), 1);
    assert_eq!(count(SiteKind::DecoyText), 2);
    let leaking: Vec<_> = sites.iter().filter(|s| s.leaks).collect();
    assert_eq!(leaking.len(), 2);
    assert!(leaking.iter().all(|s| s.kind == SiteKind::Alloc));
    let modules: std::collections::BTreeSet<_> = sites
        .iter()
        .filter(|s| s.kind == SiteKind::Alloc)
        .map(|s| s.module.clone())
        .collect();
    assert!(modules.len() >= 3);
    // every hit of the tag in a module is one of the known sites, or the Tag field of the
    // lookaside list the init site filled in (.data)
    let known: std::collections::BTreeSet<_> = sites.iter().map(|s| s.imm).collect();
    let mut in_data = 0;
    for module in m.modules() {
        for hit in m.search(
            module.base,
            module.base.saturating_add(module.size),
            &tag.bytes(),
            1000,
        ) {
            if m.memory().region_of(hit).unwrap().prot == Prot::RW && !known.contains(&hit) {
                in_data += 1;
                continue;
            }
            assert!(
                known.contains(&hit),
                "unexplained hit {hit} in {}",
                module.name
            );
        }
    }
    assert_eq!(in_data, 1, "the lookaside list header holds the tag");
}

#[test]
fn many_sites_leakers_are_where_the_docs_say() {
    let m = Machine::boot(&Scenario::builtin("many-sites").unwrap()).unwrap();
    let allocs: Vec<_> = m
        .sites()
        .into_iter()
        .filter(|s| s.kind == SiteKind::Alloc)
        .collect();
    let leaking: Vec<(usize, String)> = allocs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.leaks)
        .map(|(i, s)| (i, s.module.clone()))
        .collect();
    assert_eq!(
        leaking,
        vec![(23, "vstor.sys".to_string()), (61, "vfs.sys".to_string())]
    );
}

/// An image read back through its file layout is the PE file: headers at 0, each
/// section's raw data at its file offset; bytes of no part read as zero, nothing reads
/// past the end, and the export directory names the functions exported, sorted.
#[test]
fn an_image_reads_back_as_its_file_with_its_exports() {
    use tagsplit_target_sim::image::{FileLayout, Loc};
    let mut mem = Memory::new();
    let base = VirtAddr(0xffff_f880_0100_0000);
    let mut b = ImageBuilder::new("zeta.sys", base, vec![VirtAddr(0x1000); NT_IMPORTS.len()]);
    let site = b
        .alloc_site(AllocStyle::Plain, PoolTag::new(*b"Zzz1"), 0, 64, None)
        .unwrap();
    let entry = b.code(&[0x33, 0xc0, 0xc3]);
    b.export("ZetaEntry", entry)
        .export("AllocSite1", site.function.unwrap())
        .export("ZetaEntry", Loc::Text(0));
    let img = b.build(&mut mem).unwrap();
    let mut headers = vec![0u8; 0x1000];
    mem.read(base, &mut headers).unwrap();
    let layout = FileLayout::parse(&headers).unwrap();
    assert_eq!(layout.headers, 0x400);
    assert_eq!(layout.sections.len(), 2, "{layout:?}"); // .data has no raw bytes
    let size = layout.file_size();
    assert_eq!(size, layout.sections[1].0 + layout.sections[1].1);
    assert_eq!(layout.locate(0), Some((Some(0), 0x400)));
    let (at, raw, rva) = layout.sections[0];
    assert_eq!((at, rva), (0x400, 0x1000));
    assert_eq!(layout.locate(at + 5), Some((Some(rva + 5), raw - 5)));
    assert_eq!(layout.locate(size), None);
    assert_eq!(layout.locate(u64::MAX), None);
    // The export directory (data directory 0) in the file.
    let field = |at: u64| {
        let at = (PE_OFFSET as u64 + 24 + 0x70 + at) as usize;
        u32::from_le_bytes(headers[at..at + 4].try_into().unwrap()) as u64
    };
    let (edata, edata_size) = (field(0), field(4));
    assert!(edata > img.rdata.0 - base.0 && edata_size > 40);
    let ex = |off: u64| read_u32(&mem, base.0 + edata + off) as u64;
    assert_eq!(
        (ex(20), ex(24)),
        (2, 2),
        "two names: the second ZetaEntry is dropped"
    );
    let name_at = |rva: u64| {
        let mut s = vec![0u8; 16];
        mem.read(VirtAddr(base.0 + rva), &mut s).unwrap();
        String::from_utf8_lossy(&s[..s.iter().position(|&c| c == 0).unwrap()]).into_owned()
    };
    assert_eq!(name_at(ex(12)), "ZETA.SYS");
    let names: Vec<String> = (0..2)
        .map(|i| name_at(read_u32(&mem, base.0 + ex(32) + 4 * i) as u64))
        .collect();
    assert_eq!(names, ["AllocSite1", "ZetaEntry"]);
    // The ordinals map the sorted names back to the functions, in export order.
    let ordinal = |i: u64| {
        let mut o = [0u8; 2];
        mem.read(VirtAddr(base.0 + ex(36) + 2 * i), &mut o).unwrap();
        u16::from_le_bytes(o) as u64
    };
    let function = |i: u64| read_u32(&mem, base.0 + ex(28) + 4 * i) as u64;
    assert_eq!(
        base.0 + function(ordinal(0)),
        img.addr(site.function.unwrap()).0
    );
    assert_eq!(base.0 + function(ordinal(1)), img.addr(entry).0);
}
