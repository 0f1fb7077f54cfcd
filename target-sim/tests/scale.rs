#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The `scale:N:S` kernel generator, the module and image bounds that let it load a
//! thousand drivers while a hostile scenario still cannot take memory without bound, and
//! a golden digest of `part4` that pins the simulated machine byte for byte.

use tagsplit_target_sim::builtins::{SCALE_TAG, scale, scale_leaking_site, scale_module_of};
use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::scenario::{
    MAX_FILLED_BYTES, MAX_IMAGE_BYTES, MAX_MODULES, ModuleSpec, Scenario, SiteKindSpec, SiteSpec,
};
use tagsplit_target_sim::{SimError, VirtAddr};

#[test]
fn a_scale_kernel_validates_boots_and_has_exactly_its_sites() {
    let s = Scenario::builtin("scale:10:20").unwrap();
    assert_eq!(s, scale(10, 20).unwrap());
    assert_eq!(s.name(), "scale:10:20");
    s.validate().unwrap();
    let m = Machine::boot(&s).unwrap();
    assert_eq!(m.modules().len(), 11, "nt and 10 drivers");
    let allocs: Vec<_> = m
        .sites()
        .into_iter()
        .filter(|x| x.kind == SiteKind::Alloc)
        .collect();
    assert_eq!(allocs.len(), 20);
    let leaking: Vec<_> = allocs.iter().filter(|x| x.leaks).collect();
    assert_eq!(leaking.len(), 1);
    assert_eq!(
        leaking[0].module,
        format!(
            "gsc{:04}.sys",
            scale_module_of(scale_leaking_site(20), 10, 20)
        )
    );
    // The tag occurs exactly at the sites (20 allocation, 2 free): the filler code holds
    // no stray copy of it, nor of its first three bytes.
    let mut hits = 0;
    let mut prefix = 0;
    for md in m.modules() {
        let end = md.base.saturating_add(md.size);
        hits += m.search(md.base, end, &SCALE_TAG.bytes(), 1000).len();
        prefix += m.search(md.base, end, &SCALE_TAG.bytes()[..3], 1000).len();
    }
    assert_eq!((hits, prefix), (22, 22));
    // Filled with code: every page of a driver's .text is materialised, and holds calls.
    let d = &m.modules()[2];
    assert!(d.size > 0x8000);
    let mut text = vec![0u8; 0x1000];
    m.read(VirtAddr(d.base.0 + 0x2000), &mut text).unwrap();
    assert!(text.windows(2).filter(|w| *w == [0xff, 0x15]).count() > 50);
}

#[test]
fn scale_kernels_are_deterministic_and_sized_like_windows() {
    let a = Machine::boot(&scale(30, 40).unwrap()).unwrap();
    let b = Machine::boot(&scale(30, 40).unwrap()).unwrap();
    assert_eq!(a.digest(), b.digest());
    let s = scale(1000, 500).unwrap();
    s.validate().unwrap();
    let bytes: u64 = s.modules.iter().map(ModuleSpec::image_bytes).sum();
    assert!(
        (48 << 20..=64 << 20).contains(&bytes),
        "1,000 drivers take {bytes} bytes of images"
    );
    assert!(Scenario::builtin("scale:0:1").is_none());
    assert!(Scenario::builtin("scale:1:0").is_none());
    assert!(Scenario::builtin(&format!("scale:{}:1", MAX_MODULES + 1)).is_none());
    assert!(Scenario::builtin("scale:10").is_none());
    assert!(Scenario::builtin("scale:+1:1").is_none());
    assert!(Scenario::builtin("scale:99999999999999999999:1").is_none());
}

fn modules(n: usize, size: u64) -> Scenario {
    let mut s = Scenario::new("bounds");
    s.modules = (0..n)
        .map(|i| {
            let mut m = ModuleSpec::new(&format!("m{i}.sys"));
            m.size = Some(size);
            m
        })
        .collect();
    s
}

fn refused(s: &Scenario) -> String {
    match s.validate() {
        Err(SimError::Scenario(m)) => m,
        other => panic!("expected a scenario error, got {other:?}"),
    }
}

#[test]
fn the_module_cap_is_4096_and_images_are_bounded_in_total() {
    assert_eq!(MAX_MODULES, 4096);
    // 4096 small drivers load, and their loader list fits.
    let many = modules(MAX_MODULES, 0x4000);
    let m = Machine::boot(&many).unwrap();
    assert_eq!(m.modules().len(), MAX_MODULES + 1);
    assert!(refused(&modules(MAX_MODULES + 1, 0x4000)).contains("more than 4096 modules"));
    // Large images are fine up to the total, refused past it: however the bytes are
    // asked for (a size, or a site far into .text).
    modules(4, MAX_IMAGE_BYTES / 4).validate().unwrap();
    assert!(refused(&modules(5, MAX_IMAGE_BYTES / 4)).contains("bytes of images"));
    let mut far = modules(100, 0x4000);
    for m in &mut far.modules {
        let mut site = SiteSpec::new(SiteKindSpec::Alloc, SCALE_TAG);
        site.rva = Some(0xff_0000);
        site.count = 0;
        m.sites.push(site);
    }
    assert!(refused(&far).contains("bytes of images"));
    // Filled images cost host memory, so filling has a bound of its own.
    let mut filled = modules(8, MAX_FILLED_BYTES / 8);
    filled.validate().unwrap();
    filled.modules[0].size = Some(MAX_FILLED_BYTES / 8 + 0x1000);
    filled.validate().unwrap();
    for m in &mut filled.modules {
        m.fill = true;
    }
    assert!(refused(&filled).contains("fill"));
    // A 1,000-driver scale kernel materialises its code: a fraction of the bounds.
    let filled = Machine::boot(&scale(1000, 10).unwrap()).unwrap();
    let pages = filled.memory().materialized_pages() as u64;
    assert!(pages * 0x1000 < MAX_IMAGE_BYTES / 8, "{pages} pages");
}

/// The digest of `part4` after boot and 1,000 ticks, pinned: the pool allocator and the
/// memory may get faster, but the simulated machine stays the same byte for byte. (Pinned
/// anew when the tracker table began to hash tags as the WRK's `POOLTAG_HASH` does: the
/// same entries, in other slots; again when drivers began to reach their sites through
/// call chains with unwind data; again when every image got an export directory at the end
/// of its `.rdata`, which moved no site, hit or module; and again when the
/// `KDDEBUGGER_DATA64` block grew the `ExAllocatePoolWithTag`/`ExFreePoolWithTag` extension
/// fields: the same hits, sites and samples.)
#[test]
fn part4_digest_is_pinned() {
    let s = Scenario::builtin("part4").unwrap();
    let mut m = Machine::boot(&s).unwrap();
    m.run(1000);
    assert_eq!(m.digest(), PART4_DIGEST, "{:#x}", m.digest());
}

const PART4_DIGEST: u64 = 0x59d9_525c_11cd_a632;
