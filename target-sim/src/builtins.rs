//! Built-in scenarios that are easier to write in code than in TOML.

use crate::pool::PoolType;
use crate::scenario::{
    AllocStyle, BackgroundSpec, CallerSpec, CompareStyle, ModuleSpec, PoolSpec, Scenario,
    SiteKindSpec, SiteSpec,
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
    s.background = background(&[
        (b"Ddk1", PoolType::NON_PAGED, 64, 10),
        (b"File", PoolType::NON_PAGED, 200, 500),
        (b"Thre", PoolType::NON_PAGED, 1160, 80),
        (b"MmSt", PoolType::PAGED, 20480, 40),
        (b"CM31", PoolType::PAGED, 4096, 60),
        (b"Ntff", PoolType::PAGED, 1040, 200),
    ]);
    s
}

/// The tag the `wrapper` scenario's helper allocates under.
pub const WRAPPER_TAG: PoolTag = PoolTag::new(*b"Wrap");

/// The caller of the `wrapper` scenario's helper that leaks: its module and name.
pub const WRAPPER_LEAKER: (&str, &str) = ("netfilt.sys", "FilterReceive");

/// `wrapper`: one allocation site serves five callers. `bufpool.sys` exports an
/// allocation helper, `AllocBuffer(size)` (`mov edx, ecx; mov ecx, 0; mov r8d, 'Wrap';
/// call [ExAllocatePoolWithTag]`), and a free site with the tag; three of its own
/// functions call the helper (`call rel32`), and two of `netfilt.sys`'s (through a
/// pointer to it in netfilt's `.data`, as an import). Each caller allocates on its own
/// clock; all but one free their buffers a few ticks later: `netfilt.sys`'s
/// `FilterReceive` ([`WRAPPER_LEAKER`]) never does. A tag split finds one allocation site
/// (the helper) and can say no more; the call stacks of its allocations name the caller.
pub fn wrapper() -> Scenario {
    let mut s = Scenario::new("wrapper");
    s.description =
        "one allocation helper, AllocBuffer(size), tags every buffer 'Wrap' for five callers in two drivers; one caller leaks".into();
    s.seed = 5;
    s.boot_ticks = 6;
    s.run_ticks = 400;
    let caller =
        |module: &str, name: &str, size: u64, every: u64, phase: u64, free_after| CallerSpec {
            module: module.into(),
            name: name.into(),
            size,
            every,
            phase,
            count: 1,
            free_after,
        };
    let (leak_module, leak_name) = WRAPPER_LEAKER;
    let mut helper = SiteSpec::new(SiteKindSpec::Alloc, WRAPPER_TAG);
    helper.style = AllocStyle::Helper;
    helper.callers = vec![
        caller("bufpool.sys", "ReadComplete", 512, 1, 0, Some(3)),
        caller("bufpool.sys", "WriteComplete", 256, 2, 1, Some(2)),
        caller("bufpool.sys", "QueryBuffers", 128, 3, 2, Some(4)),
        caller(leak_module, "FilterSend", 384, 2, 0, Some(3)),
        caller(leak_module, leak_name, 4096, 2, 1, None),
    ];
    let mut bufpool = ModuleSpec::new("bufpool.sys");
    bufpool.sites.push(helper);
    bufpool
        .sites
        .push(SiteSpec::new(SiteKindSpec::Free, WRAPPER_TAG));
    s.modules = vec![bufpool, ModuleSpec::new(leak_module)];
    s.background = background(&[
        (b"File", PoolType::NON_PAGED, 200, 300),
        (b"Thre", PoolType::NON_PAGED, 1160, 40),
        (b"Ntff", PoolType::PAGED, 1040, 100),
    ]);
    s
}

/// Background entries from (tag, pool type, bytes, count).
fn background(entries: &[(&[u8; 4], PoolType, u64, u64)]) -> Vec<BackgroundSpec> {
    entries
        .iter()
        .map(|&(tag, pool, size, count)| BackgroundSpec {
            tag: PoolTag::new(*tag),
            pool: PoolSpec(pool),
            size,
            count,
        })
        .collect()
}

/// The tag the sites of a [`scale`] kernel share.
pub const SCALE_TAG: PoolTag = PoolTag::new(*b"Gsc ");

/// Most allocation sites a [`scale`] kernel may have (a split must find that many free
/// tags in the tag's family).
pub const SCALE_MAX_SITES: usize = 2000;

/// Which allocation site (counting from 0) of a [`scale`] kernel with `sites` sites leaks.
pub fn scale_leaking_site(sites: usize) -> usize {
    sites.saturating_mul(5) / 8
}

/// The module (counting from 0, after nt) that holds allocation site `site` of a [`scale`]
/// kernel: the sites are spread evenly over the modules.
pub fn scale_module_of(site: usize, modules: usize, sites: usize) -> usize {
    site.saturating_mul(modules) / sites.max(1)
}

/// `scale:N:S`: a kernel of `modules` drivers (`gsc0000.sys`, ...) of 16-108 KiB each
/// (64 KiB on average, `.text` filled with real code), and `sites` allocation sites that
/// share the tag [`SCALE_TAG`], spread evenly over the drivers, with a free site after
/// every tenth; exactly one site leaks ([`scale_leaking_site`]), the others free what
/// they allocate a few ticks later. Deterministic; `None` when `modules` is 0 or above
/// [`MAX_MODULES`](crate::scenario::MAX_MODULES), or `sites` is 0 or above
/// [`SCALE_MAX_SITES`].
pub fn scale(modules: usize, sites: usize) -> Option<Scenario> {
    if !(1..=crate::scenario::MAX_MODULES).contains(&modules)
        || !(1..=SCALE_MAX_SITES).contains(&sites)
    {
        return None;
    }
    let mut s = Scenario::new(&format!("scale:{modules}:{sites}"));
    s.description = format!(
        "{modules} drivers (64 KiB on average, filled with code) and {sites} allocation sites sharing '{}', one leaking",
        SCALE_TAG.to_string().trim_end()
    );
    s.seed = 1000;
    s.boot_ticks = 8;
    // Every site fires with a period dividing 32, so the 8 samples of a default split
    // (32 ticks apart) see a load site at the same phase each time: flat, never growing.
    s.run_ticks = 256;
    let leaking = scale_leaking_site(sites);
    let mut specs: Vec<ModuleSpec> = (0..modules)
        .map(|i| {
            let mut m = ModuleSpec::new(&format!("gsc{i:04}.sys"));
            m.size = Some(0x4000 + ((i as u64 * 37) % 24) * 0x1000);
            m.timestamp = Some(0x5a00_0000 + i as u32 * 0x1111);
            m.fill = true;
            m
        })
        .collect();
    for j in 0..sites {
        let Some(m) = specs.get_mut(scale_module_of(j, modules, sites)) else {
            continue;
        };
        let n = j as u64;
        let mut site = SiteSpec::new(SiteKindSpec::Alloc, SCALE_TAG);
        site.pool = PoolSpec(if j % 3 == 2 {
            PoolType::PAGED
        } else {
            PoolType::NON_PAGED
        });
        site.size = 32 + (n * 37) % 480;
        site.every = 1 << (n % 4);
        site.phase = (n * 3) % site.every;
        site.free_after = Some(1 + n % 6);
        if j == leaking {
            site.size = 256;
            site.every = 2;
            site.phase = 0;
            site.free_after = None;
        }
        m.sites.push(site);
        if j % 10 == 9 {
            m.sites.push(SiteSpec::new(SiteKindSpec::Free, SCALE_TAG));
        }
    }
    s.modules = specs;
    s.background = background(&[
        (b"File", PoolType::NON_PAGED, 200, 500),
        (b"Thre", PoolType::NON_PAGED, 1160, 80),
        (b"MmSt", PoolType::PAGED, 20480, 40),
        (b"Ntff", PoolType::PAGED, 1040, 200),
    ]);
    Some(s)
}

/// Parses `scale:N:S` into a [`scale`] kernel.
pub fn scale_from_name(name: &str) -> Option<Scenario> {
    let (n, s) = name.strip_prefix("scale:")?.split_once(':')?;
    let parse = |t: &str| {
        (!t.is_empty() && t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<usize>().ok())
            .flatten()
    };
    scale(parse(n)?, parse(s)?)
}
