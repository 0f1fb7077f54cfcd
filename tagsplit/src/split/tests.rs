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
