//! Built-in scenarios that are easier to write in code than in TOML.

use crate::pool::PoolType;
use crate::scenario::{
    BackgroundSpec, CompareStyle, ModuleSpec, PoolSpec, Scenario, SiteKindSpec, SiteSpec,
};
use crate::types::PoolTag;

/// The tag the `many-sites` scenario's drivers share.
pub const SHARED_TAG: PoolTag = PoolTag::new(*b"Ddk ");

/// `many-sites`: four vendor drivers with 70 allocation sites that all use `Ddk `, two of
/// which leak (site 23 in `vstor.sys` and site 61 in `vfs.sys`, counting from 0 over all
/// allocation sites), plus free sites, a lookaside-list init site, and every decoy kind
/// (the tag as text in `.rdata`, `cmp ecx`/`cmp eax` against it, and a global holding it).
/// `Ddk1` is already in use (background), so a tag chooser must skip it.
pub fn many_sites() -> Scenario {
    let mut s = Scenario::new("many-sites");
    s.description =
        "70 allocation sites sharing the tag 'Ddk ' in four drivers, two of them leaking, with free sites, a lookaside list and decoys".into();
    s.seed = 70;
    s.boot_ticks = 10;
    s.run_ticks = 600;
    let modules = [
        ("vnet.sys", 18usize),
        ("vstor.sys", 18),
        ("vusb.sys", 17),
        ("vfs.sys", 17),
    ];
    let leaking = [23usize, 61];
    let mut n = 0usize;
    for (mi, (name, count)) in modules.iter().enumerate() {
        let mut m = ModuleSpec::new(name);
        m.size = Some(0x8000);
        for i in 0..*count {
            let mut site = SiteSpec::new(SiteKindSpec::Alloc, SHARED_TAG);
            site.pool = PoolSpec(if n % 3 == 2 {
                PoolType::PAGED
            } else {
                PoolType::NON_PAGED
            });
            site.size = 48 + ((n as u64 * 37) % 400);
            site.every = 1 + (n as u64 % 5);
            site.phase = (n as u64 * 3) % site.every;
            site.count = 1 + (n as u32 % 2);
            site.free_after = if leaking.contains(&n) {
                None
            } else {
                Some(2 + (n as u64 % 7))
            };
            if leaking.contains(&n) {
                site.size = 512;
                site.every = 2;
                site.phase = 0;
                site.count = 1;
            }
            m.sites.push(site);
            n += 1;
            // a free site after every third allocation site
            if i % 3 == 0 {
                m.sites.push(SiteSpec::new(SiteKindSpec::Free, SHARED_TAG));
            }
        }
        match mi {
            0 => {
                let mut la = SiteSpec::new(SiteKindSpec::Lookaside, SHARED_TAG);
                la.size = 256;
                la.every = 3;
                la.free_after = Some(4);
                m.sites.push(la);
                let mut text = SiteSpec::new(SiteKindSpec::DecoyText, SHARED_TAG);
                text.text = Some("Ddk pool allocation failed".into());
                m.sites.push(text);
            }
            1 => {
                m.sites
                    .push(SiteSpec::new(SiteKindSpec::DecoyCompare, SHARED_TAG));
                let mut eax = SiteSpec::new(SiteKindSpec::DecoyCompare, SHARED_TAG);
                eax.compare = CompareStyle::Eax;
                m.sites.push(eax);
            }
            2 => {
                let mut g = SiteSpec::new(SiteKindSpec::DecoyGlobal, SHARED_TAG);
                g.size = 96;
                g.every = 2;
                g.free_after = Some(3);
                m.sites.push(g);
            }
            _ => {
                let mut text = SiteSpec::new(SiteKindSpec::DecoyText, SHARED_TAG);
                text.text = Some("vfs: Ddk block list corrupted\n".into());
                m.sites.push(text);
            }
        }
        s.modules.push(m);
    }
    let bg = |tag: &[u8; 4], pool: PoolType, size: u64, count: u64| BackgroundSpec {
        tag: PoolTag::new(*tag),
        pool: PoolSpec(pool),
        size,
        count,
    };
    s.background = vec![
        bg(b"Ddk1", PoolType::NON_PAGED, 64, 10),
        bg(b"File", PoolType::NON_PAGED, 200, 500),
        bg(b"Thre", PoolType::NON_PAGED, 1160, 80),
        bg(b"MmSt", PoolType::PAGED, 20480, 40),
        bg(b"CM31", PoolType::PAGED, 4096, 60),
        bg(b"Ntff", PoolType::PAGED, 1040, 200),
    ];
    s
}
