#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The seed's Part 4 session, step by step, through the Machine API; `!poolused` is
//! computed only from memory, starting at the KDBG block.

use tagsplit_target_sim::layout::{kdbg, tracker};
use tagsplit_target_sim::machine::Machine;
use tagsplit_target_sim::scenario::Scenario;
use tagsplit_target_sim::{PoolTag, VirtAddr};

fn u32_at(m: &Machine, a: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read(VirtAddr(a), &mut b).unwrap();
    u32::from_le_bytes(b)
}
fn u64_at(m: &Machine, a: u64) -> u64 {
    let mut b = [0u8; 8];
    m.read(VirtAddr(a), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// (tag, nonpaged outstanding allocs, nonpaged bytes, paged outstanding allocs, paged bytes)
type Row = (String, i64, u64, i64, u64);

/// `!poolused 2` computed from the tracker table found through KDBG.
fn poolused_from_memory(m: &Machine) -> Vec<Row> {
    let k = m.kernel().kdbg.0;
    let mut tag = [0u8; 4];
    m.read(VirtAddr(k + kdbg::OWNER_TAG_OFFSET), &mut tag)
        .unwrap();
    assert_eq!(tag, kdbg::OWNER_TAG);
    let table = u64_at(m, u64_at(m, k + kdbg::POOL_TRACK_TABLE));
    let entries = u64_at(m, u64_at(m, k + kdbg::POOL_TRACK_TABLE_SIZE));
    assert!(entries > 0 && entries < 1 << 20);
    let mut rows = Vec::new();
    for i in 0..entries {
        let e = table + i * tracker::SIZE;
        let key = u32_at(m, e + tracker::KEY);
        if key == 0 {
            continue;
        }
        let npa = u32_at(m, e + tracker::NON_PAGED_ALLOCS) as i64;
        let npf = u32_at(m, e + tracker::NON_PAGED_FREES) as i64;
        let pa = u32_at(m, e + tracker::PAGED_ALLOCS) as i64;
        let pf = u32_at(m, e + tracker::PAGED_FREES) as i64;
        let npb = u64_at(m, e + tracker::NON_PAGED_BYTES);
        let pb = u64_at(m, e + tracker::PAGED_BYTES);
        rows.push((
            PoolTag::from_u32(key).to_string(),
            npa - npf,
            npb,
            pa - pf,
            pb,
        ));
    }
    rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    rows
}

#[test]
fn seed_steps_give_the_seed_table() {
    let scenario = Scenario::builtin("part4").unwrap();
    let mut m = Machine::boot(&scenario).unwrap();
    // !for_each_module s -a @#Base @#End "Leak"
    let mut hits = Vec::new();
    for module in m.modules() {
        hits.extend(m.search(
            module.base,
            module.base.saturating_add(module.size),
            b"Leak",
            100,
        ));
    }
    assert_eq!(
        hits,
        vec![VirtAddr(0xfffff880_0496e3aa), VirtAddr(0xfffff880_0496e621)]
    );
    let mut b = [0u8; 16];
    m.read(hits[0], &mut b).unwrap();
    assert_eq!(
        b,
        [
            0x4c, 0x65, 0x61, 0x6b, 0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x41, 0x8d, 0x49, 0xfd, 0x8b,
            0xd0, 0xff
        ]
    );
    m.read(hits[1], &mut b).unwrap();
    assert_eq!(
        b,
        [
            0x4c, 0x65, 0x61, 0x6b, 0x3b, 0xc1, 0x0f, 0x42, 0xc1, 0x33, 0xc9, 0x8b, 0xd0, 0xff,
            0x15, 0xcc
        ]
    );
    // eb fffff880`0496e3aa+3 31 ; eb fffff880`0496e621+3 32
    m.write(VirtAddr(0xfffff880_0496e3aa + 3), &[0x31]).unwrap();
    m.write(VirtAddr(0xfffff880_0496e621 + 3), &[0x32]).unwrap();
    assert_eq!(u32_at(&m, 0xfffff880_0496e3aa), 0x3161654c);
    assert_eq!(u32_at(&m, 0xfffff880_0496e621), 0x3261654c);
    // g
    let out = m.run(scenario.default_run_ticks());
    assert_eq!(out.ticks_run, scenario.default_run_ticks());
    assert!(out.stop.is_none());
    // !poolused /t5 2
    let rows = poolused_from_memory(&m);
    let top: Vec<Row> = rows.iter().take(5).cloned().collect();
    let expect = |t: &str, a, b, c, d| (t.to_string(), a, b, c, d);
    assert_eq!(
        top,
        vec![
            expect("Lea2", 257, 263168000, 0, 0),
            expect("nVsC", 664, 1531552, 0, 0),
            expect("netv", 4369, 1172224, 1, 144),
            expect("Leak", 1, 1024000, 0, 0),
            expect("EtwB", 94, 945136, 4, 163840),
        ]
    );
    let total = rows.iter().fold((0i64, 0u64, 0i64, 0u64), |t, r| {
        (t.0 + r.1, t.1 + r.2, t.2 + r.3, t.3 + r.4)
    });
    assert_eq!(total, (41296, 281814544, 44077, 68102368));
}
