#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Scenario TOML: parsing, defaults, validation errors, round trips.

use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::pool::PoolType;
use tagsplit_target_sim::scenario::{Scenario, SiteKindSpec};
use tagsplit_target_sim::{PoolTag, SimError, VirtAddr};

const TINY: &str = r#"
name = "tiny"
seed = 7
boot_ticks = 4
run_ticks = 40

[[modules]]
name = "leaky.sys"
base = "fffff880`04000000"

[[modules.sites]]
kind = "alloc"
tag = "Leak"
pool = "nonpaged"
size = 1024000
every = 4

[[modules.sites]]
kind = "alloc"
tag = "Leak"
pool = "paged"
size = 100
free_after = 3

[[modules.sites]]
kind = "free"
tag = "Leak"

[[modules.sites]]
kind = "decoy-text"
tag = "Leak"
text = "Leak detected"

[[modules.sites]]
kind = "decoy-compare"
tag = "Leak"
compare = "eax"

[[modules.sites]]
kind = "decoy-global"
tag = "Leak"
pool = 1
size = 64
count = 0

[[modules.sites]]
kind = "lookaside"
tag = "Leak"
size = 256
every = 2
free_after = 1

[[background]]
tag = "Cc"
size = 10
count = 3
"#;

#[test]
fn tiny_scenario_parses_with_defaults_and_boots() {
    let s = Scenario::from_toml(TINY).unwrap();
    assert_eq!(
        (s.name(), s.default_run_ticks(), s.seed, s.boot_ticks),
        ("tiny", 40, 7, 4)
    );
    let m0 = &s.modules[0];
    assert_eq!(m0.base, Some(VirtAddr(0xfffff880_04000000)));
    assert_eq!(m0.sites[0].count, 1);
    assert_eq!(m0.sites[0].every, 4);
    assert_eq!(m0.sites[1].pool.0, PoolType::PAGED);
    assert_eq!(m0.sites[5].pool.0, PoolType(1));
    assert_eq!(m0.sites[5].kind, SiteKindSpec::DecoyGlobal);
    assert_eq!(s.background[0].tag, PoolTag::new(*b"Cc  "));
    let m = Machine::boot(&s).unwrap();
    assert_eq!(m.tick(), 4);
    let kinds: Vec<SiteKind> = m.sites().iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        [
            SiteKind::Alloc,
            SiteKind::Alloc,
            SiteKind::Free,
            SiteKind::DecoyText,
            SiteKind::DecoyCompare,
            SiteKind::DecoyGlobal,
            SiteKind::LookasideInit
        ]
    );
    let sites = m.sites();
    assert!(sites[0].leaks && !sites[1].leaks && !sites[2].leaks && !sites[5].leaks);
    assert!(!sites[5].allocates);
    let module = &m.modules()[1];
    assert_eq!(
        (module.name.as_str(), module.base),
        ("leaky.sys", VirtAddr(0xfffff880_04000000))
    );
    assert_eq!(module.path, "\\SystemRoot\\system32\\drivers\\leaky.sys");
    let hits = m.search(
        module.base,
        module.base.saturating_add(module.size),
        b"Leak",
        100,
    );
    assert_eq!(
        hits.len(),
        8,
        "two allocs, the free, the text, the cmp, the global, the lookaside init and its list header"
    );
}

#[test]
fn round_trip_through_toml() {
    for name in Scenario::builtin_names() {
        let s = Scenario::builtin(name).unwrap();
        let text = s.to_toml().unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s, "{name}");
    }
    assert!(Scenario::builtin("nope").is_none());
}

fn err(text: &str) -> String {
    match Scenario::from_toml(text) {
        Err(SimError::Scenario(m)) => m,
        other => panic!("expected a scenario error, got {other:?}"),
    }
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let syntax = err("name = ");
    assert!(syntax.contains("line 1"), "{syntax}");
    assert!(err("nme = \"x\"").contains("unknown field"));
    assert!(err("name = \"\"").contains("name"));
    let base = "name = \"x\"\n[[modules]]\nname = \"a.sys\"\n";
    assert!(err(&format!("{base}base = \"fffff880`04000001\"\n")).contains("canonical page"));
    assert!(err(&format!("{base}base = \"zz\"\n")).contains("bad address"));
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\nevery = 0\n"
        ))
        .contains("every")
    );
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\nevery = 2\nphase = 2\n"
        ))
        .contains("phase")
    );
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\ncount = 100000\n"
        ))
        .contains("count")
    );
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leakage\"\n"
        ))
        .contains("tag")
    );
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"jump\"\ntag = \"Leak\"\n"
        ))
        .contains("variant")
    );
    assert!(
        err(&format!(
            "{base}[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\npool = \"huge\"\n"
        ))
        .contains("pool")
    );
    assert!(
        err("name = \"x\"\n[[background]]\ntag = \"BIG\"\nsize = 1\ncount = 1\n")
            .contains("valid pool tag")
    );
    assert!(
        err("name = \"x\"\n[[background]]\ntag = \"Ab\"\nsize = 1\ncount = 100000000\n")
            .contains("background")
    );
    assert!(err("name = \"x\"\n[[modules]]\nname = \"ntoskrnl.exe\"\n").contains("ntoskrnl"));
}

#[test]
fn overlapping_modules_fail_to_boot() {
    let text = "name = \"x\"\n[[modules]]\nname = \"a.sys\"\nbase = \"fffff880`04000000\"\n[[modules]]\nname = \"b.sys\"\nbase = \"fffff880`04001000\"\n";
    let s = Scenario::from_toml(text).unwrap();
    assert!(matches!(Machine::boot(&s), Err(SimError::Memory(_))));
    // a site placed on top of earlier code is refused too
    let text = "name = \"x\"\n[[modules]]\nname = \"a.sys\"\n[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\nrva = 0x1100\n[[modules.sites]]\nkind = \"alloc\"\ntag = \"Leak\"\nrva = 0x1104\n";
    let s = Scenario::from_toml(text).unwrap();
    assert!(matches!(Machine::boot(&s), Err(SimError::Image(_))));
}

#[test]
fn a_site_patched_to_an_invalid_tag_fails_its_allocations() {
    let s = Scenario::from_toml(TINY).unwrap();
    let mut m = Machine::boot(&s).unwrap();
    let imm = m.sites()[1].imm;
    m.write(imm, &[0, 0, 0, 0]).unwrap();
    m.run(5);
    assert_eq!(m.failed_allocs(), 5);
}

const HELPER: &str = r#"
name = "helper"
[[modules]]
name = "a.sys"
[[modules.sites]]
kind = "alloc"
style = "helper"
tag = "Wrap"
[[modules.sites.callers]]
module = "a.sys"
name = "Near"
size = 64
free_after = 2
[[modules.sites.callers]]
module = "b.sys"
name = "Far"
size = 96
every = 2
[[modules]]
name = "b.sys"
"#;

#[test]
fn a_helper_with_callers_in_two_modules_boots_and_bad_callers_are_refused() {
    let s = Scenario::from_toml(HELPER).unwrap();
    let mut m = Machine::boot(&s).unwrap();
    let callers = m.callers();
    assert_eq!(callers.len(), 2);
    let code = |m: &Machine, at: VirtAddr| {
        let mut b = [0u8; 2];
        m.read(at, &mut b).unwrap();
        b
    };
    // In the helper's module a direct call; from the other, through a pointer.
    assert_eq!(code(&m, callers[0].call)[0], 0xe8);
    assert_eq!(code(&m, callers[1].call), [0xff, 0x15]);
    assert_eq!((callers[0].leaks, callers[1].leaks), (false, true));
    let site = &m.sites()[callers[0].site];
    assert!(site.allocates && site.leaks && site.kind == SiteKind::Alloc);
    // Both callers allocate under the helper's tag, through their own chains.
    m.run(4);
    let last = m.last_allocation().unwrap();
    assert_eq!(last.tag, PoolTag::new(*b"Wrap"));
    assert!(last.caller.is_some());
    let ctx = m
        .context_at_caller_allocation(1, 96, tagsplit_target_sim::machine::AllocPoint::Entry)
        .unwrap();
    let mut ret = [0u8; 8];
    m.read(VirtAddr(ctx.rsp), &mut ret).unwrap();
    assert_eq!(
        u64::from_le_bytes(ret),
        site.call.unwrap().get() + 6,
        "the allocator returns into the helper"
    );
    let mut up = [0u8; 8];
    m.read(VirtAddr(ctx.rsp + 8 + 0x28), &mut up).unwrap();
    assert_eq!(
        u64::from_le_bytes(up),
        callers[1].return_address.get(),
        "and the helper into its caller"
    );
    // A caller in a module loaded before the helper's, or callers of a plain site.
    let earlier = format!(
        "name = \"x\"\n[[modules]]\nname = \"b.sys\"\n{}",
        HELPER
            .trim_start()
            .trim_start_matches("name = \"helper\"\n")
            .replace("[[modules]]\nname = \"b.sys\"\n", "")
    );
    assert!(
        err(&earlier).contains("neither the helper's nor loaded after it"),
        "{}",
        err(&earlier)
    );
    assert!(err(&HELPER.replace("style = \"helper\"\n", "")).contains("helper"));
}
