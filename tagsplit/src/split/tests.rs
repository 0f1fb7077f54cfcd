use super::*;
use crate::testkit::*;

#[test]
fn fake_kernel_split_finds_the_leak() {
    let mut t = fake_kernel();
    let opts = SplitOptions {
        run: Some(RunFor::Ticks(800)),
        samples: 8,
        ..SplitOptions::default()
    };
    let report = Split::new(&mut t, PoolTag::new(*b"Leak"), opts)
        .run()
        .unwrap();
    let kinds: Vec<(u64, HitKind)> = report
        .hits
        .iter()
        .map(|h| (h.address.get(), h.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (SITE1, HitKind::Allocation),
            (SITE2, HitKind::Allocation),
            (FREE_SITE, HitKind::Free),
            (RDATA_TAG, HitKind::Data)
        ]
    );
    let leaks: Vec<&SiteResult> = report.leaks().collect();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].hit.address.get(), SITE2);
    assert_eq!(leaks[0].new_tag, PoolTag::new(*b"Lea2"));
    assert_eq!(
        leaks[0].patched_instruction.as_deref(),
        Some("mov r8d,3261654Ch")
    );
    assert_eq!(leaks[0].hit.location(), "myfault.sys+0x1621");
    assert!(report.restore.complete());
    let mut b = [0u8; 4];
    t.read_memory(VirtAddr(SITE2), &mut b).unwrap();
    assert_eq!(&b, b"Leak");
    let text = report.to_text();
    assert!(
        text.contains("LEAK: Lea2  myfault.sys+0x1621  mov r8d,3261654Ch"),
        "{text}"
    );
    assert!(text.contains("load: Lea1  myfault.sys+0x13aa"), "{text}");
}

#[test]
fn judge_rule() {
    let u = |b: u64, a: u32| TagUsage {
        np_bytes: b,
        np_allocs: a,
        ..TagUsage::default()
    };
    assert_eq!(
        judge(&[u(0, 0), u(10, 1), u(20, 2), u(30, 3)]),
        Verdict::Leak
    );
    assert_eq!(
        judge(&[u(0, 0), u(10, 5), u(10, 9), u(10, 12), u(10, 15)]),
        Verdict::Load
    );
    assert_eq!(judge(&[u(0, 0), u(0, 0), u(0, 0)]), Verdict::Idle);
    assert_eq!(judge(&[u(0, 0), u(10, 1)]), Verdict::Leak);
}

#[test]
fn protected_tags_are_found_and_keep_their_bit() {
    let mut t = fake_kernel();
    // Site 1 allocates with PROTECTED_POOL set: its 4th byte is 'k' | 0x80.
    t.write_memory(VirtAddr(SITE1 + 3), &[b'k' | 0x80]).unwrap();
    let hits = survey(&mut t, PoolTag::new(*b"Leak")).unwrap();
    let h = hits.iter().find(|h| h.address.get() == SITE1).unwrap();
    assert!(h.tag.is_protected());
    assert_eq!(h.kind, HitKind::Allocation);
    let opts = SplitOptions {
        run: Some(RunFor::Ticks(100)),
        samples: 2,
        ..SplitOptions::default()
    };
    let report = Split::new(&mut t, PoolTag::new(*b"Leak"), opts)
        .run()
        .unwrap();
    let s1 = report
        .sites
        .iter()
        .find(|s| s.hit.address.get() == SITE1)
        .unwrap();
    assert!(s1.new_tag.is_protected());
    assert_eq!(s1.new_tag.unprotected(), PoolTag::new(*b"Lea1"));
    let s2 = report
        .sites
        .iter()
        .find(|s| s.hit.address.get() == SITE2)
        .unwrap();
    assert!(!s2.new_tag.is_protected());
    let mut b = [0u8; 4];
    t.read_memory(VirtAddr(SITE1), &mut b).unwrap();
    assert_eq!(b, [b'L', b'e', b'a', b'k' | 0x80]);
}

#[test]
fn journal_is_written_before_patching() {
    struct Spy<'a> {
        inner: &'a mut crate::target::flat::FlatTarget,
        journal: std::path::PathBuf,
        seen_before_first_write: Option<bool>,
    }
    impl DebugTarget for Spy<'_> {
        fn describe(&self) -> String {
            "spy".into()
        }
        fn read_memory(&mut self, a: VirtAddr, b: &mut [u8]) -> Result<usize, TargetError> {
            self.inner.read_memory(a, b)
        }
        fn write_memory(&mut self, a: VirtAddr, d: &[u8]) -> Result<usize, TargetError> {
            if self.seen_before_first_write.is_none() {
                let j = journal::Journal::read(&self.journal).ok();
                self.seen_before_first_write = Some(j.is_some_and(|j| j.patches.len() == 2));
            }
            self.inner.write_memory(a, d)
        }
        fn kernel_info(&mut self) -> Result<crate::target::KernelInfo, TargetError> {
            self.inner.kernel_info()
        }
        fn modules(&mut self) -> Result<Vec<crate::target::ModuleInfo>, TargetError> {
            self.inner.modules()
        }
        fn search_memory(
            &mut self,
            s: VirtAddr,
            e: VirtAddr,
            p: &[u8],
            m: usize,
        ) -> Result<Vec<VirtAddr>, TargetError> {
            self.inner.search_memory(s, e, p, m)
        }
        fn run(&mut self, h: RunFor) -> Result<crate::target::StopReason, TargetError> {
            self.inner.run(h)
        }
    }
    let dir = std::env::temp_dir().join(format!("tagsplit-unit-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("j.json");
    let mut fake = fake_kernel();
    let mut spy = Spy {
        inner: &mut fake,
        journal: path.clone(),
        seen_before_first_write: None,
    };
    let opts = SplitOptions {
        run: Some(RunFor::Ticks(100)),
        samples: 2,
        journal: Some(path.clone()),
        ..SplitOptions::default()
    };
    let report = Split::new(&mut spy, PoolTag::new(*b"Leak"), opts)
        .run()
        .unwrap();
    assert_eq!(spy.seen_before_first_write, Some(true));
    assert!(report.restore.journal_removed);
    assert!(!path.exists());
}

#[test]
fn no_allocation_site_means_no_patch_and_no_run() {
    let mut t = fake_kernel();
    // EtwB appears nowhere in module memory.
    let report = Split::new(&mut t, PoolTag::new(*b"EtwB"), SplitOptions::default())
        .run()
        .unwrap();
    assert!(report.hits.is_empty() && report.sites.is_empty());
    assert_eq!(report.samples, 0);
    assert!(report.to_text().contains("no allocation site to patch"));
}

#[test]
fn wildcard_pooltag_families_are_never_chosen() {
    let db = crate::pooltag::PoolTagDb::parse(
        "Lea* - other.sys - a whole family\nLe1? - x.sys - another\n",
    );
    let tags = tags::choose(PoolTag::new(*b"Leak"), 3, |t| db.covers(t)).unwrap();
    assert_eq!(
        tags,
        vec![
            PoolTag::new(*b"Le21"),
            PoolTag::new(*b"Le22"),
            PoolTag::new(*b"Le23")
        ]
    );
    let mut t = fake_kernel();
    let opts = SplitOptions {
        run: Some(RunFor::Ticks(100)),
        samples: 2,
        pooltag: db,
        ..SplitOptions::default()
    };
    let report = Split::new(&mut t, PoolTag::new(*b"Leak"), opts)
        .run()
        .unwrap();
    let chosen: Vec<PoolTag> = report.sites.iter().map(|s| s.new_tag).collect();
    assert_eq!(chosen, vec![PoolTag::new(*b"Le21"), PoolTag::new(*b"Le22")]);
}
