#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The workload: tags read from code at run time, determinism, breakpoints, PoolHitTag,
//! the loader list in memory, and the many-sites ground truth.

use std::collections::BTreeMap;

use tagsplit_target_sim::layout::{kdbg, ldr_entry, list_entry, pool_header, unicode_string};
use tagsplit_target_sim::machine::{Machine, PoolOp, SimStop, SiteKind};
use tagsplit_target_sim::pool::{PoolKind, TrackerEntry, read_tracker};
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::{PoolTag, VirtAddr};

const SITE1_IMM: u64 = 0xfffff880_0496e3aa;
const SITE2_INSTR: u64 = 0xfffff880_0496e61f;
const SITE2_IMM: u64 = 0xfffff880_0496e621;

fn part4() -> (Scenario, Machine) {
    let s = Scenario::builtin("part4").unwrap();
    let m = Machine::boot(&s).unwrap();
    (s, m)
}

fn tracker(m: &Machine) -> BTreeMap<String, TrackerEntry> {
    let k = m.kernel();
    read_tracker(m.memory(), k.pool_track_table, k.pool_track_table_size)
        .unwrap()
        .into_iter()
        .map(|e| (e.tag.to_string(), e))
        .collect()
}

#[test]
fn patching_the_immediate_changes_only_later_allocations() {
    let (_, mut m) = part4();
    let before = tracker(&m);
    let leak = before["Leak"];
    assert_eq!(
        (leak.paged_allocs, leak.nonpaged_allocs),
        (2, 1),
        "boot: site 1 fired at ticks 2 and 4, site 2 at tick 4"
    );
    let old: Vec<_> = m
        .pool()
        .live_allocations()
        .filter(|a| a.tag == PoolTag::new(*b"Leak"))
        .cloned()
        .collect();
    assert_eq!(old.len(), 3);
    m.write(VirtAddr(SITE1_IMM + 3), b"1").unwrap();
    m.run(20);
    let after = tracker(&m);
    // the old blocks kept their tag and their frees were charged to it
    let leak = after["Leak"];
    assert_eq!(
        (leak.paged_allocs, leak.paged_frees, leak.paged_bytes),
        (2, 2, 0)
    );
    let lea1 = after["Lea1"];
    assert_eq!(lea1.paged_allocs, 10, "ticks 6..=24, every 2");
    assert_eq!(lea1.paged_allocs - lea1.paged_frees, 5);
    // site 2 was not patched: its allocations are still Leak
    assert_eq!(leak.nonpaged_allocs, 6);
    for a in m
        .pool()
        .live_allocations()
        .filter(|a| a.kind == PoolKind::Paged && a.requested == 1000)
    {
        let mut tag = [0u8; 4];
        m.read(VirtAddr(a.addr.0 - 16 + pool_header::POOL_TAG), &mut tag)
            .unwrap();
        assert_eq!(&tag, b"Lea1");
    }
    // restoring the byte makes later allocations Leak again
    m.write(VirtAddr(SITE1_IMM + 3), b"k").unwrap();
    m.run(4);
    assert_eq!(tracker(&m)["Leak"].paged_allocs, 4);
}

#[test]
fn same_scenario_same_seed_same_memory() {
    let (s, mut a) = part4();
    let mut b = Machine::boot(&s).unwrap();
    assert_eq!(a.digest(), b.digest());
    a.run(100);
    b.run(60);
    assert_ne!(a.digest(), b.digest());
    b.run(40);
    assert_eq!(a.digest(), b.digest());

    let toml = r#"
        name = "random"
        seed = 1
        [[modules]]
        name = "r.sys"
        [[modules.sites]]
        kind = "alloc"
        tag = "Rnd1"
        size = 16
        size_max = 3000
        count = 5
        free_after = 3
        [[background]]
        tag = "Bgnd"
        size = 100
        count = 50
        [[background]]
        tag = "Bgn2"
        pool = "paged"
        size = 300
        count = 50
    "#;
    let s1 = Scenario::from_toml(toml).unwrap();
    let mut s2 = s1.clone();
    s2.seed = 2;
    let mut x = Machine::boot(&s1).unwrap();
    let mut y = Machine::boot(&s1).unwrap();
    let mut z = Machine::boot(&s2).unwrap();
    for m in [&mut x, &mut y, &mut z] {
        m.run(50);
    }
    assert_eq!(x.digest(), y.digest());
    assert_ne!(
        x.digest(),
        z.digest(),
        "a different seed draws different sizes and order"
    );
}

#[test]
fn breakpoint_at_a_site_stops_before_it_allocates() {
    let (s, mut m) = part4();
    assert!(m.set_breakpoint(VirtAddr(SITE2_INSTR)));
    assert!(!m.set_breakpoint(VirtAddr(SITE2_INSTR)));
    let leaks_before = tracker(&m)["Leak"].nonpaged_allocs;
    let out = m.run(s.default_run_ticks());
    assert_eq!(out.stop, Some(SimStop::Breakpoint(VirtAddr(SITE2_INSTR))));
    assert_eq!(
        out.ticks_run, 3,
        "ticks 5, 6, 7 completed; stopped inside tick 8"
    );
    assert_eq!(m.tick(), 7);
    let c = m.context();
    assert_eq!(
        (c.rip, c.r8, c.rdx, c.rcx),
        (SITE2_INSTR, 0x6b61_654c, 1_024_000, 0)
    );
    assert_eq!(
        tracker(&m)["Leak"].nonpaged_allocs,
        leaks_before,
        "not allocated yet"
    );
    // patch while stopped before the mov: this very allocation takes the new tag
    m.write(VirtAddr(SITE2_IMM + 3), b"2").unwrap();
    let out = m.run(s.default_run_ticks());
    assert_eq!(out.stop, Some(SimStop::Breakpoint(VirtAddr(SITE2_INSTR))));
    assert_eq!(
        out.ticks_run, 4,
        "rest of tick 8, then 9, 10, 11; stopped in 12"
    );
    assert_eq!(tracker(&m)["Lea2"].nonpaged_allocs, 1);
    // a breakpoint at the call: r8 already holds the tag, and changing it changes the tag
    let call = m
        .sites()
        .iter()
        .find(|x| x.instr.0 == SITE2_INSTR)
        .unwrap()
        .call
        .unwrap();
    assert!(m.clear_breakpoint(VirtAddr(SITE2_INSTR)));
    m.set_breakpoint(call);
    let out = m.run(10);
    assert_eq!(out.stop, Some(SimStop::Breakpoint(call)));
    assert_eq!(
        out.ticks_run, 0,
        "the allocation in tick 12 is still pending"
    );
    assert_eq!(m.context().rip, call.0);
    assert_eq!(m.context().r8, 0x3261_654c);
    m.context_mut().r8 = u64::from(u32::from_le_bytes(*b"Lea7"));
    m.clear_breakpoint(call);
    let out = m.run(1);
    assert_eq!((out.ticks_run, out.stop), (1, None));
    assert_eq!(tracker(&m)["Lea7"].nonpaged_allocs, 1);
    assert_eq!(m.tick(), 12);
}

#[test]
fn pool_hit_tag_stops_on_alloc_and_free() {
    let (_, mut m) = part4();
    let hit = m.kernel().pool_hit_tag;
    let mut v = [0u8; 4];
    m.read(hit, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0xffff_ff0f, "Part 5's default");
    // The KDBG extension fields name the allocator and the free.
    let k = m.kernel().kdbg.get();
    let mut f = [0u8; 8];
    m.read(VirtAddr(k + kdbg::EX_ALLOCATE_POOL_WITH_TAG), &mut f)
        .unwrap();
    let allocator = u64::from_le_bytes(f);
    m.read(VirtAddr(k + kdbg::EX_FREE_POOL_WITH_TAG), &mut f)
        .unwrap();
    let free = u64::from_le_bytes(f);
    assert!(allocator > m.kernel().kern_base.get() && free > allocator);
    m.write(VirtAddr(SITE1_IMM + 3), b"1").unwrap();
    m.write(hit, b"Lea1").unwrap();
    let allocs_before = tracker(&m).get("Lea1").map_or(0, |e| e.paged_allocs);
    let out = m.run(100);
    let Some(SimStop::PoolHitTag { tag, at, op }) = out.stop else {
        panic!("{out:?}")
    };
    assert_eq!(tag, PoolTag::new(*b"Lea1"));
    let PoolOp::Allocate { size, .. } = op else {
        panic!("{op:?}")
    };
    // At the int 3 in ExAllocatePoolWithTag, before the allocation: rip at 0xcc, inside
    // the allocator, rbx the tag and rsi the size, nothing allocated yet.
    let ctx = *m.context();
    assert_eq!(ctx.rip, at.get());
    assert!(at.get() > allocator && at.get() < free);
    let mut op_byte = [0u8; 1];
    m.read(at, &mut op_byte).unwrap();
    assert_eq!(op_byte, [0xcc]);
    assert_eq!(ctx.rbx, u64::from(tag.to_u32()));
    assert_eq!(ctx.rsi, size);
    assert_eq!(
        tracker(&m).get("Lea1").map_or(0, |e| e.paged_allocs),
        allocs_before,
        "stops before the allocation"
    );
    // Resuming allocates: the same break is not taken twice.
    m.run(1);
    assert_eq!(
        tracker(&m).get("Lea1").map_or(0, |e| e.paged_allocs),
        allocs_before + 1
    );
    // keep going until a free of a Lea1 block: stopped before it is freed, rbx the block
    let mut freed = None;
    for _ in 0..2000 {
        let out = m.run(100);
        if let Some(SimStop::PoolHitTag {
            op: PoolOp::Free { block },
            at,
            ..
        }) = out.stop
        {
            assert!(at.get() > free);
            assert_eq!(m.context().rip, at.get());
            assert_eq!(m.context().rbx, block.get());
            assert_eq!(m.context().rax, u64::from(tag.to_u32()));
            assert!(m.pool().live_allocation(block).is_some(), "not freed yet");
            m.run(1);
            assert!(m.pool().live_allocation(block).is_none(), "freed on resume");
            freed = Some(block);
            break;
        }
    }
    assert!(freed.is_some(), "frees of the tag stop too");
    // PoolHitTag 0: no more stops.
    m.write(hit, &[0; 4]).unwrap();
    assert_eq!(m.run(500).stop, None);
}

fn read_unicode(m: &Machine, at: u64) -> String {
    let mut len = [0u8; 2];
    m.read(VirtAddr(at + unicode_string::LENGTH), &mut len)
        .unwrap();
    let mut p = [0u8; 8];
    m.read(VirtAddr(at + unicode_string::BUFFER), &mut p)
        .unwrap();
    let mut buf = vec![0u8; u16::from_le_bytes(len) as usize];
    m.read(VirtAddr(u64::from_le_bytes(p)), &mut buf).unwrap();
    let units: Vec<u16> = buf
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

#[test]
fn module_list_in_memory_matches_the_machine() {
    for name in Scenario::builtin_names() {
        let m = Machine::boot(&Scenario::builtin(name).unwrap()).unwrap();
        let q = |a: u64| m.memory().read_u64(VirtAddr(a)).unwrap();
        let kd = m.kernel().kdbg.0;
        assert_eq!(q(kd + kdbg::KERN_BASE), m.kernel().kern_base.0);
        let head = q(kd + kdbg::PS_LOADED_MODULE_LIST);
        assert_eq!(head, m.kernel().ps_loaded_module_list.0);
        let mut listed = Vec::new();
        let mut e = q(head + list_entry::FLINK);
        while e != head {
            assert_eq!(
                q(q(e + list_entry::FLINK) + list_entry::BLINK),
                e,
                "Blink of the next entry"
            );
            let base = q(e + ldr_entry::DLL_BASE);
            let size = m
                .memory()
                .read_u32(VirtAddr(e + ldr_entry::SIZE_OF_IMAGE))
                .unwrap();
            listed.push((
                read_unicode(&m, e + ldr_entry::BASE_DLL_NAME),
                read_unicode(&m, e + ldr_entry::FULL_DLL_NAME),
                base,
                u64::from(size),
            ));
            e = q(e + list_entry::FLINK);
            assert!(listed.len() < 1000);
        }
        let expect: Vec<_> = m
            .modules()
            .into_iter()
            .map(|x| (x.name, x.path, x.base.0, x.size))
            .collect();
        assert_eq!(listed, expect);
        assert_eq!(listed[0].0, "ntoskrnl.exe");
    }
}

#[test]
fn many_sites_ground_truth_matches_a_manual_split() {
    let s = Scenario::builtin("many-sites").unwrap();
    let mut m = Machine::boot(&s).unwrap();
    // give every allocation site its own tag: "D" + two base-36 digits + "x"
    let mut by_tag = BTreeMap::new();
    for (i, site) in m
        .sites()
        .iter()
        .enumerate()
        .filter(|(_, x)| x.kind == SiteKind::Alloc)
    {
        let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let tag = [b'D', digits[i / 36], digits[i % 36], b'x'];
        m.write(site.imm, &tag).unwrap();
        by_tag.insert(PoolTag::new(tag).to_string(), site.clone());
    }
    let outstanding = |m: &Machine| -> BTreeMap<String, u64> {
        tracker(m)
            .into_iter()
            .map(|(k, e)| (k, e.nonpaged_bytes.wrapping_add(e.paged_bytes)))
            .collect()
    };
    m.run(20);
    let a = outstanding(&m);
    m.run(s.default_run_ticks());
    let b = outstanding(&m);
    m.run(s.default_run_ticks());
    let c = outstanding(&m);
    let growing: Vec<_> = by_tag
        .iter()
        .filter(|(t, _)| a.get(*t) < b.get(*t) && b.get(*t) < c.get(*t))
        .map(|(_, site)| site.clone())
        .collect();
    let leaking: Vec<_> = m.sites().into_iter().filter(|x| x.leaks).collect();
    assert_eq!(growing, leaking);
    assert_eq!(leaking.len(), 2);
    assert_ne!(leaking[0].module, leaking[1].module);
}

#[test]
fn machine_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Machine>();
    let (_, m) = part4();
    let digest = m.digest();
    let moved = std::thread::spawn(move || m.digest()).join().unwrap();
    assert_eq!(moved, digest);
}
