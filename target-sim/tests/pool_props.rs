#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Properties of the pool: the tracker table in memory always equals the sum over the live
//! allocations, and every small block's POOL_HEADER in memory is consistent.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tagsplit_target_sim::layout::{PAGE_SIZE, big_page, pool_header, tracker};
use tagsplit_target_sim::memory::Memory;
use tagsplit_target_sim::pool::{Pool, PoolError, PoolKind, PoolLayout, PoolType, read_tracker};
use tagsplit_target_sim::{PoolTag, VirtAddr};

const TAGS: [u32; 8] = [
    0x6b61_654c,               // Leak
    0x3161_654c,               // Lea1
    0x6b61_654c | 0x8000_0000, // Leak, protected
    0x2020_6343,               // "Cc  "
    0x6e6f_4e20,               // " Non"
    0,                         // invalid: zero
    0x2047_4942,               // invalid: "BIG "
    0x2d2d_2d2d,               // invalid: "----"
];
const TYPES: [u32; 6] = [0, 1, 512, 4, 5, 33];

#[derive(Clone, Debug)]
enum Op {
    Alloc { tag: usize, size: u64, ty: usize },
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TAGS.len(), prop_oneof![4 => 0u64..600, 2 => 600u64..4100, 1 => 4060u64..70_000], 0..TYPES.len())
            .prop_map(|(tag, size, ty)| Op::Alloc { tag, size, ty }),
        4 => any::<usize>().prop_map(Op::Free),
    ]
}

/// (outstanding allocs, bytes) per (tag, pool)
type Sums = BTreeMap<(u32, PoolKind), (i64, u64)>;

fn check(mem: &Memory, pool: &Pool) {
    let l = pool.layout();
    // tracker in memory
    let mut from_memory: Sums = BTreeMap::new();
    for e in read_tracker(mem, l.track_table, l.track_entries).unwrap() {
        let k = e.tag.to_u32();
        assert!(
            PoolTag::from_u32(k).is_valid_for_alloc(),
            "invalid tag {k:#x} was counted"
        );
        assert_eq!(k & 0x8000_0000, 0, "tracker keys have bit 31 masked");
        let np = (
            i64::from(e.nonpaged_allocs) - i64::from(e.nonpaged_frees),
            e.nonpaged_bytes,
        );
        let p = (
            i64::from(e.paged_allocs) - i64::from(e.paged_frees),
            e.paged_bytes,
        );
        if np != (0, 0) {
            from_memory.insert((k, PoolKind::NonPaged), np);
        }
        if p != (0, 0) {
            from_memory.insert((k, PoolKind::Paged), p);
        }
    }
    // sum over live allocations
    let mut from_live: Sums = BTreeMap::new();
    for a in pool.live_allocations() {
        let e = from_live
            .entry((a.tag.unprotected().to_u32(), a.kind))
            .or_default();
        e.0 += 1;
        e.1 += a.charged;
    }
    assert_eq!(from_memory, from_live);

    // headers
    let mut pages: BTreeSet<u64> = BTreeSet::new();
    for a in pool.live_allocations() {
        if a.big {
            assert_eq!(a.addr.0 % PAGE_SIZE, 0);
            assert_eq!(a.charged, a.requested.div_ceil(PAGE_SIZE) * PAGE_SIZE);
            continue;
        }
        let hdr = a.addr.0 - pool_header::SIZE;
        let mut h = [0u8; 16];
        mem.read(VirtAddr(hdr), &mut h).unwrap();
        let units = u64::from(h[pool_header::BLOCK_SIZE as usize]);
        assert_eq!(units << 4, a.charged, "BlockSize");
        assert_eq!(a.charged, (a.requested + 0x1f) >> 4 << 4);
        assert_eq!(
            u32::from_le_bytes(h[4..8].try_into().unwrap()),
            a.tag.to_u32(),
            "tag"
        );
        assert_eq!(
            h[pool_header::POOL_TYPE as usize],
            a.pool_type.header_value(),
            "PoolType"
        );
        assert_eq!(hdr % 16, 0);
        assert!(
            hdr % PAGE_SIZE + a.charged <= PAGE_SIZE,
            "block crosses a page"
        );
        pages.insert(hdr & !(PAGE_SIZE - 1));
    }
    // PreviousSize chain in every page holding a live block reaches every live block
    let live_hdrs: BTreeSet<u64> = pool
        .live_allocations()
        .filter(|a| !a.big)
        .map(|a| a.addr.0 - 16)
        .collect();
    let mut reached = BTreeSet::new();
    for page in pages {
        let mut off = 0u64;
        let mut prev = 0u8;
        while off < PAGE_SIZE {
            let mut h = [0u8; 4];
            mem.read(VirtAddr(page + off), &mut h).unwrap();
            let units = h[pool_header::BLOCK_SIZE as usize];
            if units == 0 {
                break; // the unused tail of the page being carved
            }
            assert_eq!(
                h[pool_header::PREVIOUS_SIZE as usize],
                prev,
                "PreviousSize at {:#x}",
                page + off
            );
            reached.insert(page + off);
            prev = units;
            off += u64::from(units) << 4;
        }
        assert!(off <= PAGE_SIZE);
    }
    assert!(
        live_hdrs.is_subset(&reached),
        "some live blocks are not on their page's chain"
    );
    // big-page table entries of live big blocks
    for a in pool.live_allocations().filter(|a| a.big) {
        let mut found = false;
        for i in 0..l.big_entries {
            let e = l.big_table.0 + i * big_page::SIZE;
            if mem.read_u64(VirtAddr(e + big_page::VA)).unwrap() == a.addr.0 {
                assert_eq!(
                    mem.read_u32(VirtAddr(e + big_page::KEY)).unwrap(),
                    a.tag.to_u32()
                );
                assert_eq!(
                    mem.read_u64(VirtAddr(e + big_page::NUMBER_OF_BYTES))
                        .unwrap(),
                    a.requested
                );
                found = true;
                break;
            }
        }
        assert!(found, "big block {} not in the big-page table", a.addr);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn tracker_equals_live_sum_and_headers_are_consistent(ops in proptest::collection::vec(op(), 1..250)) {
        let mut mem = Memory::new();
        let mut layout = PoolLayout::standard();
        layout.big_entries = 512;
        let mut pool = Pool::new(&mut mem, layout).unwrap();
        let mut live: Vec<VirtAddr> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { tag, size, ty } => {
                    let tag = PoolTag::from_u32(TAGS[tag]);
                    match pool.allocate(&mut mem, PoolType(TYPES[ty]), size, tag) {
                        Ok(a) => {
                            prop_assert!(tag.is_valid_for_alloc());
                            live.push(a);
                        }
                        Err(PoolError::InvalidTag(t)) => prop_assert!(!t.is_valid_for_alloc()),
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let a = live.swap_remove(i % live.len());
                    let expect = pool.live_allocation(a).unwrap().tag;
                    prop_assert_eq!(pool.free(&mut mem, a).unwrap(), expect);
                    prop_assert!(pool.free(&mut mem, a).is_err(), "double free refused");
                }
                Op::Free(_) => {}
            }
        }
        check(&mem, &pool);
    }
}

#[test]
fn freed_small_blocks_are_marked_free_and_reused() {
    let mut mem = Memory::new();
    let mut pool = Pool::new(&mut mem, PoolLayout::standard()).unwrap();
    let tag = PoolTag::new(*b"Test");
    let a = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 100, tag)
        .unwrap();
    let b = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 100, tag)
        .unwrap();
    assert_eq!(
        b.0 - a.0,
        128,
        "16-byte units, header included: (100+31)>>4 = 8 units"
    );
    pool.free(&mut mem, a).unwrap();
    let mut t = [0u8; 1];
    mem.read(VirtAddr(a.0 - 16 + pool_header::POOL_TYPE), &mut t)
        .unwrap();
    assert_eq!(t[0], 0, "free blocks have PoolType 0");
    let c = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 90, PoolTag::new(*b"Othr"))
        .unwrap();
    assert_eq!(c, a, "the freed block is reused");
    // a paged block lands in the paged range, a big one is page-aligned
    let p = pool.allocate(&mut mem, PoolType::PAGED, 100, tag).unwrap();
    assert!(
        p.0 >= pool.layout().paged_small.0
            && p.0 < pool.layout().paged_small.0 + pool.layout().small_size
    );
    let big = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 4064, tag)
        .unwrap();
    assert_eq!(big.0 % PAGE_SIZE, 0);
    assert_eq!(pool.live_allocation(big).unwrap().charged, 4096);
    let small = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 4063, tag)
        .unwrap();
    assert_eq!(pool.live_allocation(small).unwrap().charged, 4080);
    check(&mem, &pool);
}

#[test]
fn a_free_is_charged_to_the_tag_in_the_header() {
    let mut mem = Memory::new();
    let mut pool = Pool::new(&mut mem, PoolLayout::standard()).unwrap();
    let a = pool
        .allocate(&mut mem, PoolType::NON_PAGED, 100, PoolTag::new(*b"Leak"))
        .unwrap();
    // a debugger rewrites the header's tag: the free is charged to the new tag
    mem.write(VirtAddr(a.0 - 16 + pool_header::POOL_TAG), b"Lea9")
        .unwrap();
    assert_eq!(pool.free(&mut mem, a).unwrap(), PoolTag::new(*b"Lea9"));
    let l = pool.layout();
    let t = read_tracker(&mem, l.track_table, l.track_entries).unwrap();
    let leak = t.iter().find(|e| e.tag == PoolTag::new(*b"Leak")).unwrap();
    let lea9 = t.iter().find(|e| e.tag == PoolTag::new(*b"Lea9")).unwrap();
    assert_eq!(
        (
            leak.nonpaged_allocs,
            leak.nonpaged_frees,
            leak.nonpaged_bytes
        ),
        (1, 0, 128)
    );
    assert_eq!(
        (
            lea9.nonpaged_allocs,
            lea9.nonpaged_frees,
            lea9.nonpaged_bytes
        ),
        (0, 1, 0u64.wrapping_sub(128))
    );
}

#[test]
fn invalid_tags_are_refused_and_count_nothing() {
    let mut mem = Memory::new();
    let mut pool = Pool::new(&mut mem, PoolLayout::standard()).unwrap();
    for raw in [
        0u32,
        u32::from_le_bytes(*b"BIG "),
        u32::from_le_bytes(*b"-_- "),
    ] {
        let e = pool
            .allocate(&mut mem, PoolType::NON_PAGED, 64, PoolTag::from_u32(raw))
            .unwrap_err();
        assert_eq!(e, PoolError::InvalidTag(PoolTag::from_u32(raw)));
    }
    let l = pool.layout();
    assert!(
        read_tracker(&mem, l.track_table, l.track_entries)
            .unwrap()
            .is_empty()
    );
    assert_eq!(pool.live_allocations().count(), 0);
}

/// The tracker entry of `tag` (found by its key).
fn entry(mem: &Memory, pool: &Pool, tag: PoolTag) -> (u32, u32, u64, u32, u32, u64) {
    let l = pool.layout();
    let t = read_tracker(mem, l.track_table, l.track_entries).unwrap();
    let e = t.iter().find(|e| e.tag == tag).unwrap();
    (
        e.nonpaged_allocs,
        e.nonpaged_frees,
        e.nonpaged_bytes,
        e.paged_allocs,
        e.paged_frees,
        e.paged_bytes,
    )
}

#[test]
fn tracker_entries_across_a_page_boundary_are_charged() {
    // Tags whose tracker entry's nonpaged or paged fields cross a page of the table.
    let layout = PoolLayout::standard();
    let crosses = |k: u32| {
        let at = tracker::hash(k, layout.track_entries) * tracker::SIZE;
        [
            (tracker::NON_PAGED_ALLOCS, tracker::NON_PAGED_BYTES + 8),
            (tracker::PAGED_ALLOCS, tracker::PAGED_BYTES + 8),
        ]
        .iter()
        .any(|&(lo, hi)| (at + lo) / PAGE_SIZE != (at + hi - 1) / PAGE_SIZE)
    };
    let tags: Vec<PoolTag> = (b'A'..=b'Z')
        .flat_map(|a| (b'a'..=b'z').map(move |b| PoolTag::new([a, b, b'g', b'T'])))
        .filter(|t| crosses(t.to_u32()))
        .take(4)
        .collect();
    assert_eq!(tags.len(), 4);
    let mut mem = Memory::new();
    let mut pool = Pool::new(&mut mem, layout).unwrap();
    for &tag in &tags {
        let mut blocks = Vec::new();
        for (i, ty) in [PoolType::NON_PAGED, PoolType::PAGED, PoolType::NON_PAGED]
            .into_iter()
            .enumerate()
        {
            blocks.push(
                pool.allocate(&mut mem, ty, 100 * (i as u64 + 1), tag)
                    .unwrap(),
            );
        }
        assert_eq!(entry(&mem, &pool, tag), (2, 0, 128 + 320, 1, 0, 224));
        for b in blocks {
            pool.free(&mut mem, b).unwrap();
        }
        assert_eq!(entry(&mem, &pool, tag), (2, 2, 0, 1, 1, 0));
    }
    check(&mem, &pool);
}

#[test]
fn a_cloned_pool_and_memory_go_their_own_ways() {
    let mut mem = Memory::new();
    let mut pool = Pool::new(&mut mem, PoolLayout::standard()).unwrap();
    let tag = PoolTag::new(*b"Leak");
    let mut mine: Vec<VirtAddr> = (0..40)
        .map(|i| {
            pool.allocate(&mut mem, PoolType::NON_PAGED, 64 + 97 * i, tag)
                .unwrap()
        })
        .collect();
    let (mut mem2, mut pool2) = (mem.clone(), pool.clone());
    let mut theirs = mine.clone();
    // Each side materialises other pages (at the same slab indexes), then frees and
    // reallocates what both share.
    for i in 0..60 {
        mine.push(
            pool.allocate(&mut mem, PoolType::PAGED, 2000 + i, tag)
                .unwrap(),
        );
        theirs.push(
            pool2
                .allocate(
                    &mut mem2,
                    PoolType::NON_PAGED,
                    3000 + i,
                    PoolTag::new(*b"Othr"),
                )
                .unwrap(),
        );
    }
    for (a, b) in mine.iter().zip(&theirs).take(40) {
        assert_eq!(a, b);
        pool.free(&mut mem, *a).unwrap();
        pool2.free(&mut mem2, *b).unwrap();
    }
    check(&mem, &pool);
    check(&mem2, &pool2);
    let paged: u64 = (0..60).map(|i| ((2000 + i + 31) >> 4) << 4).sum();
    assert_eq!(entry(&mem, &pool, tag), (40, 40, 0, 60, 0, paged));
    assert_eq!(entry(&mem2, &pool2, tag), (40, 40, 0, 0, 0, 0));
    let other: u64 = (0..60).map(|i| ((3000 + i + 31) >> 4) << 4).sum();
    assert_eq!(
        entry(&mem2, &pool2, PoolTag::new(*b"Othr")),
        (60, 0, other, 0, 0, 0)
    );
    // The pages each side materialised after the clone (at the same slab indexes) hold
    // that side's headers, and read as zeros on the other side.
    let tag_at = |m: &Memory, a: VirtAddr| {
        let mut t = [0u8; 4];
        m.read(VirtAddr(a.0 - 16 + pool_header::POOL_TAG), &mut t)
            .unwrap();
        t
    };
    for (a, b) in mine.iter().zip(&theirs).skip(40) {
        assert_eq!((tag_at(&mem, *a), tag_at(&mem2, *a)), (*b"Leak", [0; 4]));
        assert_eq!((tag_at(&mem2, *b), tag_at(&mem, *b)), (*b"Othr", [0; 4]));
    }
}
