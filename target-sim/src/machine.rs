//! [`Machine`]: a booted simulated kernel — memory, modules, pool, workload and run control.

use std::collections::{BTreeMap, BTreeSet};

use crate::SimError;
use crate::image::{
    FileLayout, FrameSteps, HelperRef, ImageBuilder, Loc, SiteLocs, Step, WorkerShape,
};
use crate::kernel::{self, LdrModule, NtKernel};
use crate::layout::PAGE_SIZE;
use crate::memory::{MemError, Memory};
use crate::pool::{Pool, PoolError, PoolLayout, PoolType};
use crate::scenario::{CallerSpec, Scenario, SiteKindSpec, SiteSpec};
use crate::types::{PROTECTED_POOL, PoolTag, VirtAddr};
use crate::workload::{Actor, Cursor, FreeSchedule, SplitMix64, TagSource};
use tagsplit_protocol::nt::unwind::Reg;

/// Where drivers without an explicit base are loaded, one after another.
pub const DRIVER_BASE: VirtAddr = VirtAddr(0xfffff880_00c00000);

/// Where the kernel stacks of the drivers' worker threads are: one a module with
/// allocation sites, [`KERNEL_STACK_STRIDE`] apart, each [`KERNEL_STACK_SIZE`] bytes mapped
/// RW above an unmapped guard page.
pub const KERNEL_STACKS: VirtAddr = VirtAddr(0xfffff880_f0000000);
/// Bytes of one kernel stack (Windows x64's `KERNEL_STACK_SIZE`).
pub const KERNEL_STACK_SIZE: u64 = 0x6000;
/// Distance between two kernel stacks (the stack and its guard pages).
pub const KERNEL_STACK_STRIDE: u64 = 0x8000;

/// `GENERAL_LOOKASIDE.Type` (x64).
pub const LOOKASIDE_TYPE: u64 = 0x24;
/// `GENERAL_LOOKASIDE.Tag` (x64).
pub const LOOKASIDE_TAG: u64 = 0x28;
/// `GENERAL_LOOKASIDE.Size` (x64).
pub const LOOKASIDE_SIZE: u64 = 0x2c;
/// Size of an `NPAGED_LOOKASIDE_LIST` (x64, cache aligned).
pub const LOOKASIDE_LIST_SIZE: usize = 0x80;

/// A loaded module as the machine knows it (ground truth; a debugger reads the same from
/// the loader list in memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimModule {
    /// `BaseDllName` (`myfault.sys`).
    pub name: String,
    /// `FullDllName`.
    pub path: String,
    /// Image base.
    pub base: VirtAddr,
    /// `SizeOfImage`.
    pub size: u64,
}

/// What a site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SiteKind {
    /// `mov r8d, tag` (`41 b8`) feeding `call [ExAllocatePoolWithTag]`.
    Alloc,
    /// `mov edx, tag` (`ba`) feeding `call [ExFreePoolWithTag]`.
    Free,
    /// `mov dword ptr [rsp+28h], tag` (`c7 44 24 28`) feeding
    /// `call [ExInitializeNPagedLookasideList]`.
    LookasideInit,
    /// The tag as text in `.rdata`.
    DecoyText,
    /// `cmp ecx, tag` (`81 f9`) or `cmp eax, tag` (`3d`).
    DecoyCompare,
    /// A tag in a `.data` global, loaded by `mov r8d, [rip+x]` (`44 8b 05`) for an
    /// allocation; `imm` is the global.
    DecoyGlobal,
}

/// Ground truth about one site, for tests and for checking a tool's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SiteInfo {
    /// The module's `BaseDllName`.
    pub module: String,
    /// What the site is.
    pub kind: SiteKind,
    /// The instruction (or the string start for a text decoy).
    pub instr: VirtAddr,
    /// Address of the four tag bytes (imm32, global, or inside the string).
    pub imm: VirtAddr,
    /// Whether the site's allocations are never freed (false for non-allocating sites).
    pub leaks: bool,
    /// The `call` that consumes the tag, if any.
    pub call: Option<VirtAddr>,
    /// The tag as the scenario wrote it.
    pub tag: PoolTag,
    /// Pool type allocated.
    pub pool_type: PoolType,
    /// Bytes per allocation (lower bound if random).
    pub size: u64,
    /// Whether it allocates on the clock.
    pub allocates: bool,
}

/// Ground truth about one caller of an allocation helper ([`CallerSpec`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallerInfo {
    /// The caller's module (`BaseDllName`).
    pub module: String,
    /// Its name (exported by its module).
    pub name: String,
    /// The helper's site (index into [`Machine::sites`]).
    pub site: usize,
    /// Where the caller begins.
    pub function: VirtAddr,
    /// Its `call` of the helper.
    pub call: VirtAddr,
    /// The return address of that call: the frame above the helper in a stack of its
    /// allocations.
    pub return_address: VirtAddr,
    /// Bytes per allocation.
    pub size: u64,
    /// Whether its allocations are never freed.
    pub leaks: bool,
}

/// Where the kernel keeps what a debugger needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelAddrs {
    /// `KernBase`.
    pub kern_base: VirtAddr,
    /// `PsLoadedModuleList` (the head).
    pub ps_loaded_module_list: VirtAddr,
    /// The `KDDEBUGGER_DATA64` block.
    pub kdbg: VirtAddr,
    /// The tracker table itself (the value of `nt!PoolTrackTable`).
    pub pool_track_table: VirtAddr,
    /// Entries in the tracker table.
    pub pool_track_table_size: u64,
    /// `nt!PoolHitTag` (the variable).
    pub pool_hit_tag: VirtAddr,
    /// The big-page table itself.
    pub pool_big_page_table: VirtAddr,
    /// Entries in the big-page table.
    pub pool_big_page_table_size: u64,
}

/// The result of [`Machine::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// Ticks completed during this call.
    pub ticks_run: u64,
    /// Why it stopped early, if it did.
    pub stop: Option<SimStop>,
}

/// Why a run stopped before its ticks were done.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimStop {
    /// A breakpoint at this address (a site's tag instruction or its call, before the
    /// allocation happens, or the return address of a chain site's call of
    /// `ExAllocatePoolWithTag`, after it: `rax` is then the block).
    Breakpoint(VirtAddr),
    /// An allocation or a free charged to the tag in `nt!PoolHitTag`: the machine stopped
    /// at the `int 3` its check executes, before the block is allocated or freed, with the
    /// registers and the stack of [`AllocPoint::HitTagBreak`] (see
    /// [`Machine::context_at_allocation`] and [`Machine::context_at_free`]).
    PoolHitTag {
        /// The tag charged (as the caller passed it, or as the block's header holds it).
        tag: PoolTag,
        /// The `int 3` (`rip`): in `nt!ExAllocatePoolWithTag` or in
        /// `nt!ExFreePoolWithTag`.
        at: VirtAddr,
        /// Which of the two, with what the machine knows of it.
        op: PoolOp,
    },
}

/// What a [`SimStop::PoolHitTag`] stopped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolOp {
    /// `ExAllocatePoolWithTag`, before it allocates: no block yet (a debugger runs to
    /// the return address and reads `rax`).
    Allocate {
        /// The pool type passed (`rdi` at the break).
        pool_type: PoolType,
        /// The size passed (`rsi` at the break).
        size: u64,
    },
    /// `ExFreePoolWithTag`, before it frees `block` (`rbx` at the break).
    Free {
        /// The block being freed.
        block: VirtAddr,
    },
}

/// Where in `nt!ExAllocatePoolWithTag` [`Machine::context_at_allocation`] (or in
/// `nt!ExFreePoolWithTag`, [`Machine::context_at_free`]) takes the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllocPoint {
    /// At its first instruction, just called: `rsp` points at the return address into the
    /// helper, `rcx`/`rdx`/`r8` are the pool type, size and tag.
    #[default]
    Entry,
    /// At the `int 3` its `PoolHitTag` check executes (where a run stops with
    /// [`SimStop::PoolHitTag`]); its prolog has run. The registers there:
    ///
    /// | break in | `rip` | `rbx` | `rsi` | `rdi` | `rax` | the block |
    /// |---|---|---|---|---|---|---|
    /// | `ExAllocatePoolWithTag` | the `int 3` | tag | size | pool type | — | not yet allocated: run to the return address (frame 1's `rip`, `[rsp+38h]`) and read `rax` |
    /// | `ExFreePoolWithTag` | the `int 3` | block | — | — | tag (from the block's `POOL_HEADER`) | `rbx` |
    ///
    /// `rcx`, `rdx`, `r8` still hold the arguments (an allocation's pool type, size and
    /// tag; a free's block and 0). The caller's `rbx`, `rsi`, `rdi` are saved on the
    /// stack (the allocator pushes all three, the free `rbx`), so
    /// the unwinder restores them.
    HitTagBreak,
}

/// The last allocation a site made on the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastAllocation {
    /// The site (index into [`Machine::sites`]).
    pub site: usize,
    /// The pool type passed.
    pub pool_type: PoolType,
    /// The size passed.
    pub size: u64,
    /// The tag passed (as the code held it).
    pub tag: PoolTag,
    /// The block (`None` when the pool refused).
    pub addr: Option<VirtAddr>,
    /// For a helper's allocation: the caller through which it was made (index into
    /// [`Machine::callers`]).
    pub caller: Option<usize>,
}

/// The last free of a block that a site allocated on the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastFree {
    /// The site that allocated the block (index into [`Machine::sites`]); its module's
    /// worker frees it.
    pub site: usize,
    /// The block.
    pub addr: VirtAddr,
    /// The tag it was charged to.
    pub tag: PoolTag,
    /// For a helper's block: the caller that allocated it (index into
    /// [`Machine::callers`]); that caller's worker thread frees it.
    pub caller: Option<usize>,
}

/// Which call chain an allocation runs through: a site's own, or a helper's caller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainKey {
    /// The site's (index into [`Machine::sites`]).
    Site(usize),
    /// The caller's (index into [`Machine::callers`]).
    Caller(usize),
}

impl ChainKey {
    /// The key of `site`'s allocations, through `caller` if any.
    fn of(site: usize, caller: Option<usize>) -> ChainKey {
        caller.map_or(ChainKey::Site(site), ChainKey::Caller)
    }
}

/// A site's call chain on its module's worker thread, as the simulator replays it.
#[derive(Clone, Debug)]
struct SiteChain {
    /// The top of the thread's kernel stack (exclusive).
    stack_top: u64,
    /// The thread routine (the module's chain entry).
    routine: VirtAddr,
    /// Its context (`rcx`): the module's `.data`.
    context: u64,
    /// Each driver function from the thread routine to the helper: its steps up to the
    /// call and the call's return address.
    frames: Vec<(Vec<Step>, VirtAddr)>,
    /// The return addresses of the worker's call of the module's free helper and of the
    /// free helper's call of `ExFreePoolWithTag`.
    free_returns: (VirtAddr, VirtAddr),
}

/// The simulated CPU's registers (what a debugger shows when the machine is stopped): the
/// protocol's target-neutral x64 register set, so the stubs take it as it is.
pub type CpuContext = tagsplit_protocol::stub::X64Registers;

/// A booted simulated machine.
#[derive(Clone, Debug)]
pub struct Machine {
    name: String,
    mem: Memory,
    pool: Pool,
    nt: NtKernel,
    modules: Vec<SimModule>,
    /// The file layout of each module's image (as `modules`), read at load.
    layouts: Vec<Option<FileLayout>>,
    /// The bytes each page of a module image held before the first debugger write to it
    /// (the images as loaded, for [`Machine::read_module_file`]).
    original_pages: BTreeMap<u64, Box<[u8]>>,
    sites: Vec<SiteInfo>,
    actors: Vec<Actor>,
    frees: FreeSchedule,
    rng: SplitMix64,
    cursor: Cursor,
    tick: u64,
    breakpoints: BTreeSet<u64>,
    ctx: CpuContext,
    failed_allocs: u64,
    chains: Vec<Option<SiteChain>>,
    /// The call chain of each helper's caller (as `callers`).
    caller_chains: Vec<SiteChain>,
    callers: Vec<CallerInfo>,
    last_alloc: Option<LastAllocation>,
    last_free: Option<LastFree>,
}

/// Names a driver's functions in its export directory, so that a debugger reading the
/// image file shows them: `DriverEntry`; each site's function by kind and its number among
/// the module's sites of that kind (`AllocSite1`, `FreeSite1`, `LookasideSite1`,
/// `GlobalAllocSite1`, `CompareTag1`); and the call chain (`WorkerRoutine`, `Worker`,
/// `FreeBuffer`). No name holds a pool tag of the built-in scenarios, so tag searches
/// find what they found before.
fn export_names(
    b: &mut ImageBuilder,
    spec: &crate::scenario::ModuleSpec,
    emitted: &[(SiteLocs, Option<Loc>)],
    chain: Option<&crate::image::ChainLocs>,
    entry: Loc,
) {
    b.export("DriverEntry", entry);
    let mut counts = [0usize; 6];
    for (s, (locs, _)) in spec.sites.iter().zip(emitted) {
        let (slot, kind) = match s.kind {
            SiteKindSpec::Alloc => (0, "AllocSite"),
            SiteKindSpec::Free => (1, "FreeSite"),
            SiteKindSpec::Lookaside => (2, "LookasideSite"),
            SiteKindSpec::DecoyGlobal => (3, "GlobalAllocSite"),
            SiteKindSpec::DecoyCompare => (4, "CompareTag"),
            SiteKindSpec::DecoyText => continue,
        };
        let Some(function) = locs.function else {
            continue;
        };
        if !s.callers.is_empty() {
            b.export("AllocBuffer", function);
            continue;
        }
        let n = counts.get_mut(slot).map_or(0, |c| {
            *c += 1;
            *c
        });
        b.export(&format!("{kind}{n}"), function);
    }
    if let Some(c) = chain {
        b.export("WorkerRoutine", c.entry);
        b.export("Worker", c.worker);
        b.export("FreeBuffer", c.free_helper);
    }
}

/// The file layout of the image at `base`, from its headers in memory.
fn read_layout(mem: &Memory, base: VirtAddr) -> Option<FileLayout> {
    let mut headers = vec![0u8; PAGE_SIZE as usize];
    mem.read(base, &mut headers).ok()?;
    FileLayout::parse(&headers)
}

fn site_kind(k: SiteKindSpec) -> SiteKind {
    match k {
        SiteKindSpec::Alloc => SiteKind::Alloc,
        SiteKindSpec::Free => SiteKind::Free,
        SiteKindSpec::Lookaside => SiteKind::LookasideInit,
        SiteKindSpec::DecoyText => SiteKind::DecoyText,
        SiteKindSpec::DecoyCompare => SiteKind::DecoyCompare,
        SiteKindSpec::DecoyGlobal => SiteKind::DecoyGlobal,
    }
}

impl Machine {
    /// Lays out memory for `scenario` (nt, the modules and their code, the loader list,
    /// the KDBG block, the pool and its tables), makes the background allocations, and
    /// runs the scenario's boot ticks.
    pub fn boot(scenario: &Scenario) -> Result<Machine, SimError> {
        scenario.validate()?;
        let mut mem = Memory::new();
        let layout = PoolLayout::standard();
        let pool = Pool::new(&mut mem, layout)?;
        let nt = kernel::build_nt(&mut mem, &layout)?;
        let mut m = Machine {
            name: scenario.name.clone(),
            mem,
            pool,
            modules: vec![SimModule {
                name: "ntoskrnl.exe".into(),
                path: "\\SystemRoot\\system32\\ntoskrnl.exe".into(),
                base: nt.image.base,
                size: nt.image.size,
            }],
            layouts: Vec::new(),
            original_pages: BTreeMap::new(),
            sites: Vec::new(),
            actors: Vec::new(),
            frees: FreeSchedule::new(),
            rng: SplitMix64::new(scenario.seed),
            cursor: Cursor::default(),
            tick: 0,
            breakpoints: BTreeSet::new(),
            ctx: kernel_context(nt.idle.0, 0xfffff800_00b9cc00),
            nt,
            failed_allocs: 0,
            chains: Vec::new(),
            caller_chains: Vec::new(),
            callers: Vec::new(),
            last_alloc: None,
            last_free: None,
        };
        let mut ldr = vec![LdrModule {
            name: "ntoskrnl.exe".into(),
            path: "\\SystemRoot\\system32\\ntoskrnl.exe".into(),
            base: m.nt.image.base,
            size: m.nt.image.size,
            entry: m.nt.image.entry,
            checksum: m.nt.image.checksum,
            timestamp: m.nt.image.timestamp,
        }];
        m.layouts.push(read_layout(&m.mem, m.nt.image.base));
        let mut next_base = DRIVER_BASE.0;
        let mut lookaside_inits = Vec::new();
        let mut threads = 0usize;
        // Callers of helpers in modules already loaded, each waiting for its own module:
        // the helper's site, its address, the caller.
        let mut foreign: Vec<(usize, VirtAddr, CallerSpec)> = Vec::new();
        for spec in &scenario.modules {
            let base = spec.base.unwrap_or(VirtAddr(next_base));
            let mut b = ImageBuilder::new(&spec.name, base, m.nt.exports.clone());
            b.timestamp(
                spec.timestamp
                    .unwrap_or_else(|| default_timestamp(&spec.name)),
            );
            if let Some(sz) = spec.size {
                b.min_text_size(sz.saturating_sub(0x3000));
            }
            let first_site = m.sites.len();
            let mut emitted: Vec<(SiteLocs, Option<Loc>)> = Vec::new();
            for s in &spec.sites {
                emitted.push(emit_site(&mut b, s)?);
            }
            // The callers in this module of helpers: its own helpers', then those of
            // modules loaded before it (through a pointer, as an import).
            let mut here: Vec<HereCaller> = Vec::new();
            for (j, (s, (locs, _))) in spec.sites.iter().zip(&emitted).enumerate() {
                let Some(function) = locs.function else {
                    continue;
                };
                for c in s
                    .callers
                    .iter()
                    .filter(|c| c.module.eq_ignore_ascii_case(&spec.name))
                {
                    let prolog = caller_prolog(m.callers.len() + here.len());
                    let (f, call, frame) =
                        b.helper_caller(&prolog, size32(c.size), HelperRef::Local(function))?;
                    here.push(HereCaller {
                        site: first_site + j,
                        spec: c.clone(),
                        function: f,
                        call,
                        frame,
                    });
                }
            }
            for (site, at, c) in foreign
                .iter()
                .filter(|(_, _, c)| c.module.eq_ignore_ascii_case(&spec.name))
            {
                let prolog = caller_prolog(m.callers.len() + here.len());
                let (f, call, frame) =
                    b.helper_caller(&prolog, size32(c.size), HelperRef::Pointer(*at))?;
                here.push(HereCaller {
                    site: *site,
                    spec: c.clone(),
                    function: f,
                    call,
                    frame,
                });
            }
            // The worker thread: a routine and a worker that call every allocation helper
            // (a helper with callers through them).
            let own_chain = |s: &SiteSpec| {
                matches!(s.kind, SiteKindSpec::Alloc | SiteKindSpec::DecoyGlobal)
                    && s.callers.is_empty()
            };
            let mut helpers: Vec<Loc> = spec
                .sites
                .iter()
                .zip(&emitted)
                .filter(|(s, _)| own_chain(s))
                .filter_map(|(_, (locs, _))| locs.function)
                .collect();
            let direct = helpers.len();
            helpers.extend(here.iter().map(|h| h.function));
            let chain = if helpers.is_empty() {
                None
            } else {
                let shape = WorkerShape::ALL
                    .get(threads % WorkerShape::ALL.len())
                    .copied()
                    .unwrap_or(WorkerShape::Pushes);
                let stack = KERNEL_STACKS.0 + threads as u64 * KERNEL_STACK_STRIDE;
                m.mem.map(
                    VirtAddr(stack + KERNEL_STACK_STRIDE - KERNEL_STACK_SIZE),
                    KERNEL_STACK_SIZE,
                    crate::memory::Prot::RW,
                )?;
                threads += 1;
                Some((b.call_chain(shape, &helpers)?, stack + KERNEL_STACK_STRIDE))
            };
            let mut helper_index = 0usize;
            if spec.fill
                && let Some(sz) = spec.size
            {
                // Leave room for the entry point within the section's virtual size.
                b.fill_code(sz.saturating_sub(0x3000).saturating_sub(0x10))?;
            }
            b.align_text();
            b.entry_here();
            let entry = b.code(&[0x33, 0xc0, 0xc3]);
            export_names(
                &mut b,
                spec,
                &emitted,
                chain.as_ref().map(|(c, _)| c),
                entry,
            );
            for h in &here {
                b.export(&h.spec.name, h.function);
            }
            let img = b.build(&mut m.mem)?;
            for (s, (locs, list)) in spec.sites.iter().zip(emitted) {
                let info = SiteInfo {
                    module: spec.name.clone(),
                    kind: site_kind(s.kind),
                    instr: img.addr(locs.instr),
                    imm: img.addr(locs.imm),
                    leaks: s.leaks(),
                    call: locs.call.map(|c| img.addr(c)),
                    tag: s.tag,
                    pool_type: s.pool.0,
                    size: s.size,
                    allocates: s.allocates(),
                };
                let helper = own_chain(s);
                let site_chain = match (&chain, locs.call) {
                    (Some((c, top)), Some(call)) if helper => {
                        let worker_ret = c.worker_frame.returns.get(helper_index).copied();
                        helper_index += 1;
                        let entry_ret = c.entry_frame.returns.first().copied();
                        match (worker_ret, entry_ret) {
                            (Some(w), Some(e)) => Some(SiteChain {
                                stack_top: *top,
                                routine: img.addr(c.entry),
                                context: img.data.0,
                                frames: vec![
                                    (c.entry_frame.steps.clone(), img.addr(e)),
                                    (c.worker_frame.steps.clone(), img.addr(w)),
                                    // sub rsp, 28h; ...; call [ExAllocatePoolWithTag]
                                    (vec![Step::Alloc(0x28)], img.addr(call).saturating_add(6)),
                                ],
                                free_returns: (
                                    img.addr(c.free_return),
                                    img.addr(c.free_call).saturating_add(6),
                                ),
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                m.chains.push(site_chain);
                let tag_from = match s.kind {
                    SiteKindSpec::Alloc => Some(TagSource::Imm(info.imm)),
                    SiteKindSpec::DecoyGlobal => Some(TagSource::Global(info.imm)),
                    SiteKindSpec::Lookaside => {
                        let list = list.map_or(VirtAddr(0), |l| img.addr(l));
                        lookaside_inits.push((info.imm, list, s.pool.0, s.size));
                        Some(TagSource::Lookaside(VirtAddr(list.0 + LOOKASIDE_TAG)))
                    }
                    _ => None,
                };
                if let Some(tag_from) = tag_from
                    && s.allocates()
                    && s.callers.is_empty()
                {
                    m.actors.push(Actor {
                        site: m.sites.len(),
                        caller: None,
                        tag_from,
                        instr: info.instr,
                        call: info.call,
                        pool_type: s.pool.0,
                        size: s.size,
                        size_max: s.size_max,
                        every: s.every,
                        phase: s.phase,
                        count: s.count,
                        free_after: s.free_after,
                    });
                }
                // A helper's callers in later modules wait for theirs.
                if let Some(f) = locs.function {
                    foreign.extend(
                        s.callers
                            .iter()
                            .filter(|c| !c.module.eq_ignore_ascii_case(&spec.name))
                            .map(|c| (m.sites.len(), img.addr(f), c.clone())),
                    );
                }
                m.sites.push(info);
            }
            // Each caller: a chain through the worker, the caller and the helper.
            for (k, h) in here.into_iter().enumerate() {
                let Some((c, top)) = &chain else {
                    return Err(SimError::Image("callers without a worker".into()));
                };
                let (site_info, worker_ret, entry_ret, caller_ret) = match (
                    m.sites.get(h.site),
                    c.worker_frame.returns.get(direct + k),
                    c.entry_frame.returns.first(),
                    h.frame.returns.first(),
                ) {
                    (Some(i), Some(w), Some(e), Some(r)) => (i.clone(), *w, *e, *r),
                    _ => return Err(SimError::Image("caller chain incomplete".into())),
                };
                let helper_call = site_info
                    .call
                    .ok_or_else(|| SimError::Image("helper without a call".into()))?;
                let caller = m.callers.len();
                m.caller_chains.push(SiteChain {
                    stack_top: *top,
                    routine: img.addr(c.entry),
                    context: img.data.0,
                    frames: vec![
                        (c.entry_frame.steps.clone(), img.addr(entry_ret)),
                        (c.worker_frame.steps.clone(), img.addr(worker_ret)),
                        (h.frame.steps.clone(), img.addr(caller_ret)),
                        (vec![Step::Alloc(0x28)], helper_call.saturating_add(6)),
                    ],
                    free_returns: (
                        img.addr(c.free_return),
                        img.addr(c.free_call).saturating_add(6),
                    ),
                });
                m.callers.push(CallerInfo {
                    module: spec.name.clone(),
                    name: h.spec.name.clone(),
                    site: h.site,
                    function: img.addr(h.function),
                    call: img.addr(h.call),
                    return_address: img.addr(caller_ret),
                    size: h.spec.size,
                    leaks: h.spec.free_after.is_none(),
                });
                m.actors.push(Actor {
                    site: h.site,
                    caller: Some(caller),
                    tag_from: TagSource::Imm(site_info.imm),
                    instr: site_info.instr,
                    call: site_info.call,
                    pool_type: site_info.pool_type,
                    size: h.spec.size,
                    size_max: None,
                    every: h.spec.every,
                    phase: h.spec.phase,
                    count: h.spec.count,
                    free_after: h.spec.free_after,
                });
            }
            let path = spec
                .path
                .clone()
                .unwrap_or_else(|| format!("\\SystemRoot\\system32\\drivers\\{}", spec.name));
            ldr.push(LdrModule {
                name: spec.name.clone(),
                path: path.clone(),
                base: img.base,
                size: img.size,
                entry: img.entry,
                checksum: img.checksum,
                timestamp: img.timestamp,
            });
            m.modules.push(SimModule {
                name: spec.name.clone(),
                path,
                base: img.base,
                size: img.size,
            });
            m.layouts.push(read_layout(&m.mem, img.base));
            next_base = next_base.max(img.base.0.saturating_add(img.size));
        }
        kernel::write_module_list(&mut m.mem, m.nt.ps_loaded_module_list, &ldr)?;
        // DriverEntry of each module: lookaside lists capture their tag now.
        for (imm, list, pool_type, size) in lookaside_inits {
            let tag = m.mem.read_u32(imm)?;
            m.mem
                .write_u32(VirtAddr(list.0 + LOOKASIDE_TYPE), pool_type.0)?;
            m.mem.write_u32(VirtAddr(list.0 + LOOKASIDE_TAG), tag)?;
            m.mem
                .write_u32(VirtAddr(list.0 + LOOKASIDE_SIZE), size as u32)?;
        }
        // Background allocations, interleaved in a seeded order.
        let mut bg: Vec<(PoolTag, PoolType, u64)> = Vec::new();
        for b in &scenario.background {
            for _ in 0..b.count {
                bg.push((b.tag, b.pool.0, b.size));
            }
        }
        for i in (1..bg.len()).rev() {
            let j = m.rng.range(0, i as u64) as usize;
            bg.swap(i, j);
        }
        for (tag, pt, size) in bg {
            m.pool.allocate(&mut m.mem, pt, size, tag)?;
        }
        let boot = m.run(scenario.boot_ticks);
        if boot.stop.is_some() {
            return Err(SimError::Scenario("boot stopped early".into()));
        }
        Ok(m)
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads memory (see [`Memory::read`]).
    pub fn read(&self, addr: VirtAddr, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(addr, buf)
    }

    /// A debugger write: patches code too (see [`Memory::write`]). The first write to a
    /// page of a module image keeps the page's bytes as they were, for
    /// [`read_module_file`](Self::read_module_file).
    pub fn write(&mut self, addr: VirtAddr, data: &[u8]) -> Result<(), MemError> {
        if !data.is_empty() {
            let last = addr.0.saturating_add(data.len() as u64 - 1);
            let mut page = addr.0 & !(PAGE_SIZE - 1);
            while page <= last {
                self.keep_original(page);
                match page.checked_add(PAGE_SIZE) {
                    Some(next) => page = next,
                    None => break,
                }
            }
        }
        self.mem.write(addr, data)
    }

    /// Keeps the bytes of `page` (page-aligned) before its first debugger write, if it
    /// belongs to a module image.
    fn keep_original(&mut self, page: u64) {
        if self.original_pages.contains_key(&page)
            || !self
                .modules
                .iter()
                .any(|m| page >= m.base.0 && page - m.base.0 < m.size)
        {
            return;
        }
        let mut bytes = vec![0u8; PAGE_SIZE as usize].into_boxed_slice();
        if self.mem.read(VirtAddr(page), &mut bytes).is_ok() {
            self.original_pages.insert(page, bytes);
        }
    }

    /// Reads memory as it was before any debugger write to a module image (elsewhere,
    /// as it is): the images as loaded.
    fn read_original(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read(VirtAddr(addr), buf)?;
        let end = addr.saturating_add(buf.len() as u64);
        let first = addr & !(PAGE_SIZE - 1);
        for (&page, bytes) in self.original_pages.range(first..end) {
            let from = addr.max(page);
            let to = end.min(page.saturating_add(PAGE_SIZE));
            let src = bytes.get((from - page) as usize..(to - page) as usize);
            let dst = buf.get_mut((from - addr) as usize..(to - addr) as usize);
            if let (Some(src), Some(dst)) = (src, dst) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// The size of the file module `index` ([`modules`](Self::modules) order) was
    /// loaded from; `None` for no such module or one without PE headers.
    pub fn module_file_size(&self, index: usize) -> Option<u64> {
        Some(self.layouts.get(index)?.as_ref()?.file_size())
    }

    /// Reads the file module `index` was loaded from: its headers and each section's raw
    /// data as the machine loaded them, before any debugger write (patches do not show);
    /// returns how many bytes were read at `offset` into `buf` (0 at the end of the file),
    /// `None` for no such module.
    pub fn read_module_file(&self, index: usize, offset: u64, buf: &mut [u8]) -> Option<usize> {
        let layout = self.layouts.get(index)?.as_ref()?;
        let base = self.modules.get(index)?.base.0;
        let mut done = 0usize;
        while done < buf.len() {
            let Some((rva, run)) = layout.locate(offset.saturating_add(done as u64)) else {
                break;
            };
            let n = usize::try_from(run)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let dst = buf.get_mut(done..done + n)?;
            match rva {
                Some(rva) if self.read_original(base.saturating_add(rva), dst).is_ok() => {}
                _ => dst.fill(0),
            }
            done += n;
        }
        Some(done)
    }

    /// Searches memory (see [`Memory::search`]).
    pub fn search(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Vec<VirtAddr> {
        self.mem.search(start, end, pattern, max_hits)
    }

    /// The address space.
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// The pool (its host-side ground truth: live allocations).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Allocates from the pool directly, like a driver calling `ExAllocatePoolWithTag`.
    pub fn pool_alloc(
        &mut self,
        pool_type: PoolType,
        size: u64,
        tag: PoolTag,
    ) -> Result<VirtAddr, PoolError> {
        self.pool.allocate(&mut self.mem, pool_type, size, tag)
    }

    /// Frees a pool block directly; returns the tag it was charged to.
    pub fn pool_free(&mut self, addr: VirtAddr) -> Result<PoolTag, PoolError> {
        self.pool.free(&mut self.mem, addr)
    }

    /// The loaded modules in load order (nt first).
    pub fn modules(&self) -> Vec<SimModule> {
        self.modules.clone()
    }

    /// Where the kernel structures are.
    pub fn kernel(&self) -> KernelAddrs {
        let l = self.pool.layout();
        KernelAddrs {
            kern_base: self.nt.image.base,
            ps_loaded_module_list: self.nt.ps_loaded_module_list,
            kdbg: self.nt.kdbg,
            pool_track_table: l.track_table,
            pool_track_table_size: l.track_entries,
            pool_hit_tag: self.nt.pool_hit_tag,
            pool_big_page_table: l.big_table,
            pool_big_page_table_size: l.big_entries,
        }
    }

    /// Ground truth about every site, in scenario order.
    pub fn sites(&self) -> Vec<SiteInfo> {
        self.sites.clone()
    }

    /// Ticks completed since power-on (boot ticks included).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Allocations the workload attempted that the pool refused (e.g. a site patched to
    /// an invalid tag).
    pub fn failed_allocs(&self) -> u64 {
        self.failed_allocs
    }

    /// Sets a breakpoint; returns false if one was already there.
    pub fn set_breakpoint(&mut self, addr: VirtAddr) -> bool {
        self.breakpoints.insert(addr.0)
    }

    /// Clears a breakpoint; returns false if there was none.
    pub fn clear_breakpoint(&mut self, addr: VirtAddr) -> bool {
        self.breakpoints.remove(&addr.0)
    }

    /// The registers.
    pub fn context(&self) -> &CpuContext {
        &self.ctx
    }

    /// The registers, writable (at a breakpoint on a site's call, `r8` is the tag used).
    pub fn context_mut(&mut self) -> &mut CpuContext {
        &mut self.ctx
    }

    /// The last allocation a site made on the clock (not the background's).
    pub fn last_allocation(&self) -> Option<LastAllocation> {
        self.last_alloc
    }

    /// The kernel stack of the worker thread that runs `site` (index into
    /// [`Machine::sites`]): its lowest and one-past-highest address. `None` for a site
    /// that allocates through no call chain (lookaside lists, free sites, decoys).
    pub fn site_stack(&self, site: usize) -> Option<(VirtAddr, VirtAddr)> {
        let c = self.chains.get(site)?.as_ref()?;
        Some((
            VirtAddr(c.stack_top - KERNEL_STACK_SIZE),
            VirtAddr(c.stack_top),
        ))
    }

    /// The machine state at an allocation by `site` (index into [`Machine::sites`]) of
    /// `size` bytes, as the code would have left it: writes the stack of the site's worker
    /// thread into memory (from the bottom: `KiStartSystemThread`'s zero return address,
    /// `PspSystemThreadStartup`, the module's thread routine, its worker, the site's
    /// helper function, each with its pushed non-volatile registers and locals, and the
    /// return addresses just after each `call`) and returns the registers at `point` in
    /// `nt!ExAllocatePoolWithTag`: `rip`, `rsp`, the non-volatile registers as the
    /// functions set them, and the arguments `rcx` (pool type), `rdx` (size) and `r8` (the
    /// tag the code holds now). The machine's own registers ([`Machine::context`]) are not
    /// changed; set them with [`Machine::context_mut`] to show this state at a stop.
    /// Deterministic: the same site, size and point give the same stack and registers.
    /// The sites of one module share its worker thread's stack: a later call for any of
    /// them (or [`Machine::context_at_free`]) writes over it.
    pub fn context_at_allocation(
        &mut self,
        site: usize,
        size: u64,
        point: AllocPoint,
    ) -> Result<CpuContext, SimError> {
        let info = self
            .sites
            .get(site)
            .ok_or_else(|| SimError::Scenario(format!("no site {site}")))?;
        let (pool_type, tag) = (info.pool_type, self.mem.read_u32(info.imm)?);
        self.allocation_context(ChainKey::Site(site), pool_type, size, tag, point)
    }

    /// The callers of allocation helpers ([`CallerSpec`]), in load order.
    pub fn callers(&self) -> Vec<CallerInfo> {
        self.callers.clone()
    }

    /// [`Machine::context_at_allocation`] for an allocation of `size` bytes by the
    /// helper's caller `caller` (index into [`Machine::callers`]): the stack runs from
    /// the caller's thread routine through its worker, the caller and the helper.
    pub fn context_at_caller_allocation(
        &mut self,
        caller: usize,
        size: u64,
        point: AllocPoint,
    ) -> Result<CpuContext, SimError> {
        let info = self
            .callers
            .get(caller)
            .and_then(|c| self.sites.get(c.site))
            .ok_or_else(|| SimError::Scenario(format!("no caller {caller}")))?;
        let (pool_type, tag) = (info.pool_type, self.mem.read_u32(info.imm)?);
        self.allocation_context(ChainKey::Caller(caller), pool_type, size, tag, point)
    }

    /// The state at an allocation by `site` with these arguments (see
    /// [`Machine::context_at_allocation`]).
    fn allocation_context(
        &mut self,
        key: ChainKey,
        pool_type: PoolType,
        size: u64,
        tag: u32,
        point: AllocPoint,
    ) -> Result<CpuContext, SimError> {
        let mut ctx = self.chain_context(key, false)?;
        ctx.rcx = u64::from(pool_type.0);
        ctx.rdx = size;
        ctx.r8 = u64::from(tag);
        let export = self.nt.exports.first().copied();
        ctx.rip = export
            .ok_or_else(|| SimError::Image("no ExAllocatePoolWithTag".into()))?
            .0;
        if point == AllocPoint::HitTagBreak {
            let t = self.nt.threads.clone();
            replay(&mut self.mem, &mut ctx, &t.allocate_steps)?;
            ctx.rip = t.hit_break.0;
        }
        Ok(ctx)
    }

    /// The machine state at the free of `block` (charged to `tag`) by the worker thread of
    /// the module of `site` (the site that allocated it), as
    /// [`Machine::context_at_allocation`] lays it out: the thread routine, the worker, the
    /// module's free helper (`xor edx, edx; call [ExFreePoolWithTag]`), and the registers
    /// at `point` in `nt!ExFreePoolWithTag`: at its entry `rcx` is the block and `rdx` 0;
    /// at its `PoolHitTag` break `rbx` is the block and `rax` the tag (read from the
    /// block's `POOL_HEADER`).
    pub fn context_at_free(
        &mut self,
        site: usize,
        block: VirtAddr,
        tag: PoolTag,
        point: AllocPoint,
    ) -> Result<CpuContext, SimError> {
        self.free_context(ChainKey::Site(site), block, tag, point)
    }

    /// [`Machine::context_at_free`] on the thread of `key`'s chain.
    fn free_context(
        &mut self,
        key: ChainKey,
        block: VirtAddr,
        tag: PoolTag,
        point: AllocPoint,
    ) -> Result<CpuContext, SimError> {
        let mut ctx = self.chain_context(key, true)?;
        ctx.rcx = block.0;
        ctx.rdx = 0;
        let export = self.nt.exports.get(1).copied();
        ctx.rip = export
            .ok_or_else(|| SimError::Image("no ExFreePoolWithTag".into()))?
            .0;
        if point == AllocPoint::HitTagBreak {
            let t = self.nt.threads.clone();
            replay(&mut self.mem, &mut ctx, &t.free_steps)?;
            ctx.rax = u64::from(tag.to_u32());
            ctx.rip = t.free_break.0;
        }
        Ok(ctx)
    }

    /// The last free of a block a site allocated on the clock.
    pub fn last_free(&self) -> Option<LastFree> {
        self.last_free
    }

    /// [`Machine::context_at_free`] of the last free ([`Machine::last_free`]); `None`
    /// before any, or when the allocating site has no chain.
    pub fn context_at_last_free(
        &mut self,
        point: AllocPoint,
    ) -> Option<Result<CpuContext, SimError>> {
        let last = self.last_free?;
        let key = ChainKey::of(last.site, last.caller);
        self.chain(key)?;
        Some(self.free_context(key, last.addr, last.tag, point))
    }

    /// Writes the stack of `site`'s worker thread up to its call into nt (of
    /// `ExFreePoolWithTag` through the free helper when `free`, else of
    /// `ExAllocatePoolWithTag` through the site's helper); returns the registers with
    /// `rsp` at that call's return address.
    fn chain_context(&mut self, key: ChainKey, free: bool) -> Result<CpuContext, SimError> {
        let chain = self.chain(key).cloned().ok_or_else(|| {
            SimError::Scenario(format!("{key:?} allocates through no call chain"))
        })?;
        let t = self.nt.threads.clone();
        let mut ctx = kernel_context(t.ki_start_system_thread.0, chain.stack_top - 8);
        ctx.rcx = chain.routine.0;
        ctx.rdx = chain.context;
        // The bottom: KiStartSystemThread was "called" with a zero return address.
        self.mem.write_u64(VirtAddr(ctx.rsp), 0)?;
        replay(&mut self.mem, &mut ctx, &t.ki_steps)?;
        push(&mut self.mem, &mut ctx, t.ki_return.0)?;
        replay(&mut self.mem, &mut ctx, &t.psp_steps)?;
        push(&mut self.mem, &mut ctx, t.psp_return.0)?;
        let mut frames = chain.frames;
        if free {
            frames.truncate(2);
            if let Some(worker) = frames.get_mut(1) {
                worker.1 = chain.free_returns.0;
            }
            frames.push((vec![Step::Alloc(0x28)], chain.free_returns.1));
        }
        for (steps, ret) in &frames {
            replay(&mut self.mem, &mut ctx, steps)?;
            push(&mut self.mem, &mut ctx, ret.0)?;
        }
        Ok(ctx)
    }

    /// [`Machine::context_at_allocation`] of the last allocation a site made
    /// ([`Machine::last_allocation`], with the pool type, size and tag it passed); `None`
    /// before any, or when that site has no chain.
    pub fn context_at_last_allocation(
        &mut self,
        point: AllocPoint,
    ) -> Option<Result<CpuContext, SimError>> {
        let last = self.last_alloc?;
        let key = ChainKey::of(last.site, last.caller);
        self.chain(key)?;
        Some(self.allocation_context(key, last.pool_type, last.size, last.tag.to_u32(), point))
    }

    /// The call chain of `key`.
    fn chain(&self, key: ChainKey) -> Option<&SiteChain> {
        match key {
            ChainKey::Site(site) => self.chains.get(site)?.as_ref(),
            ChainKey::Caller(c) => self.caller_chains.get(c),
        }
    }

    /// A digest of all memory (equal digests = identical memory).
    pub fn digest(&self) -> u64 {
        self.mem.digest()
    }

    /// Runs the workload for `ticks` ticks, stopping early at a breakpoint or a
    /// `PoolHitTag` match. A stop leaves the current tick unfinished; the next `run`
    /// continues from exactly that point.
    pub fn run(&mut self, ticks: u64) -> RunOutcome {
        let mut done = 0;
        while done < ticks {
            if !self.cursor.active {
                let t = self.tick + 1;
                self.cursor = Cursor {
                    active: true,
                    frees: self.frees.remove(&t).unwrap_or_default(),
                    ..Cursor::default()
                };
            }
            if let Some(stop) = self.step_tick() {
                return RunOutcome {
                    ticks_run: done,
                    stop: Some(stop),
                };
            }
            self.cursor.active = false;
            self.tick += 1;
            done += 1;
        }
        self.ctx.rip = self.nt.idle.0;
        RunOutcome {
            ticks_run: done,
            stop: None,
        }
    }

    fn hit_tag_matches(&self, tag: PoolTag) -> bool {
        let hit = self.mem.read_u32(self.nt.pool_hit_tag).unwrap_or(0);
        hit != 0 && (hit & !PROTECTED_POOL) == tag.unprotected().to_u32()
    }

    /// Runs the rest of the current tick; returns a stop if one happens.
    fn step_tick(&mut self) -> Option<SimStop> {
        let t = self.tick + 1;
        while let Some((addr, site, caller)) = self.cursor.frees.get(self.cursor.free_idx).copied()
        {
            if !std::mem::replace(&mut self.cursor.free_checked, true)
                && let Some(live) = self.pool.live_allocation(addr)
                && self.hit_tag_matches(live.tag)
            {
                let tag = live.tag;
                return Some(self.stop_at_free_break(ChainKey::of(site, caller), addr, tag));
            }
            self.cursor.free_checked = false;
            self.cursor.free_idx += 1;
            match self.pool.free(&mut self.mem, addr) {
                Ok(tag) => {
                    self.last_free = Some(LastFree {
                        site,
                        addr,
                        tag,
                        caller,
                    });
                }
                Err(e) => tracing::warn!("free of {addr} failed: {e}"),
            }
        }
        while let Some(a) = self.actors.get(self.cursor.actor).cloned() {
            if a.fires(t) {
                while self.cursor.rep < a.count {
                    if let Some(stop) = self.alloc_step(&a, t) {
                        return Some(stop);
                    }
                }
            }
            self.cursor.actor += 1;
            self.cursor.rep = 0;
        }
        None
    }

    /// The stop at `ExFreePoolWithTag`'s `PoolHitTag` break for the free of `block` by
    /// the worker of `site`: the registers of [`AllocPoint::HitTagBreak`] (without a call
    /// chain: only `rip`, `rbx` the block and `rax` the tag).
    fn stop_at_free_break(&mut self, key: ChainKey, block: VirtAddr, tag: PoolTag) -> SimStop {
        let at = self.nt.threads.free_break;
        let chained = self.chain(key).is_some();
        match chained.then(|| self.free_context(key, block, tag, AllocPoint::HitTagBreak)) {
            Some(Ok(ctx)) => self.ctx = ctx,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!("free break of {key:?}: {e}");
                }
                self.ctx.rip = at.0;
                self.ctx.rbx = block.0;
                self.ctx.rax = u64::from(tag.to_u32());
            }
        }
        SimStop::PoolHitTag {
            tag,
            at,
            op: PoolOp::Free { block },
        }
    }

    /// The stop at `ExAllocatePoolWithTag`'s `PoolHitTag` break for an allocation by
    /// `site`: the registers of [`AllocPoint::HitTagBreak`] (without a call chain: only
    /// `rip`, and `rbx`, `rsi`, `rdi` the tag, size and pool type).
    fn stop_at_allocation_break(
        &mut self,
        key: ChainKey,
        (pool_type, size, tag): (PoolType, u64, PoolTag),
    ) -> SimStop {
        let at = self.nt.threads.hit_break;
        let chained = self.chain(key).is_some();
        let ctx = chained.then(|| {
            self.allocation_context(key, pool_type, size, tag.to_u32(), AllocPoint::HitTagBreak)
        });
        match ctx {
            Some(Ok(ctx)) => self.ctx = ctx,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!("allocation break of {key:?}: {e}");
                }
                self.ctx.rip = at.0;
                self.ctx.rbx = u64::from(tag.to_u32());
                self.ctx.rsi = size;
                self.ctx.rdi = u64::from(pool_type.0);
            }
        }
        SimStop::PoolHitTag {
            tag,
            at,
            op: PoolOp::Allocate { pool_type, size },
        }
    }

    /// Reads an actor's tag from memory.
    fn read_tag(&self, a: &Actor) -> u32 {
        let at = match a.tag_from {
            TagSource::Imm(x) | TagSource::Global(x) | TagSource::Lookaside(x) => x,
        };
        self.mem.read_u32(at).unwrap_or(0)
    }

    /// A breakpoint check at `addr` that stops once and lets the resumed run pass.
    fn check_bp(&mut self, addr: VirtAddr) -> Option<SimStop> {
        let skip = self.cursor.skip_bp.take();
        if self.breakpoints.contains(&addr.0) && skip != Some(addr) {
            self.cursor.skip_bp = Some(addr);
            self.ctx.rip = addr.0;
            return Some(SimStop::Breakpoint(addr));
        }
        None
    }

    /// One allocation by actor `a`, resumable at each stage.
    fn alloc_step(&mut self, a: &Actor, t: u64) -> Option<SimStop> {
        if self.cursor.stage == 0 {
            let size = match a.size_max {
                Some(hi) => self.rng.range(a.size, hi),
                None => a.size,
            };
            self.ctx.rcx = u64::from(a.pool_type.0);
            self.ctx.rdx = size;
            self.ctx.r8 = u64::from(self.read_tag(a));
            self.cursor.stage = 1;
        }
        let code_site = !matches!(a.tag_from, TagSource::Lookaside(_));
        if self.cursor.stage == 1 {
            if code_site && let Some(stop) = self.check_bp(a.instr) {
                return Some(stop);
            }
            // `mov r8d, tag` executes now: the tag is whatever the code holds.
            self.ctx.r8 = u64::from(self.read_tag(a));
            self.cursor.stage = 2;
        }
        if self.cursor.stage == 2 {
            if code_site
                && let Some(call) = a.call
                && let Some(stop) = self.check_bp(call)
            {
                return Some(stop);
            }
            self.cursor.stage = 3;
        }
        // `ExAllocatePoolWithTag` is entered with the arguments as they are now.
        let args = *self.cursor.args.get_or_insert((
            PoolType(self.ctx.rcx as u32),
            self.ctx.rdx,
            PoolTag::from_u32(self.ctx.r8 as u32),
        ));
        let (pool_type, size, tag) = args;
        if self.cursor.stage == 3 {
            self.cursor.stage = 4;
            if self.hit_tag_matches(tag) {
                return Some(self.stop_at_allocation_break(ChainKey::of(a.site, a.caller), args));
            }
        }
        if self.cursor.stage == 4 {
            let result = self.pool.allocate(&mut self.mem, pool_type, size, tag);
            self.last_alloc = Some(LastAllocation {
                site: a.site,
                pool_type,
                size,
                tag,
                addr: result.as_ref().ok().copied(),
                caller: a.caller,
            });
            match result {
                Ok(addr) => {
                    self.ctx.rax = addr.0;
                    if let Some(life) = a.free_after {
                        self.frees
                            .entry(t.saturating_add(life))
                            .or_default()
                            .push((addr, a.site, a.caller));
                    }
                }
                Err(e) => {
                    self.ctx.rax = 0;
                    self.failed_allocs += 1;
                    tracing::debug!("site {} allocation failed: {e}", a.site);
                }
            }
            self.cursor.stage = 5;
        }
        // Back in the site's helper, just after its call: a breakpoint on the return
        // address (how a debugger learns the block) stops with `rax` the block.
        let key = ChainKey::of(a.site, a.caller);
        if let Some(ret) = self.return_address(key)
            && self.breakpoints.contains(&ret.0)
            && self.cursor.skip_bp != Some(ret)
        {
            let block = self.ctx.rax;
            match self.allocation_context(key, pool_type, size, tag.to_u32(), AllocPoint::Entry) {
                Ok(mut ctx) => {
                    ctx.rsp = ctx.rsp.wrapping_add(8);
                    ctx.rax = block;
                    self.ctx = ctx;
                }
                Err(e) => tracing::warn!("return of site {}: {e}", a.site),
            }
            if let Some(stop) = self.check_bp(ret) {
                return Some(stop);
            }
        }
        self.cursor.skip_bp = None;
        self.cursor.stage = 0;
        self.cursor.args = None;
        self.cursor.rep += 1;
        None
    }

    /// Where `ExAllocatePoolWithTag` returns to in the helper of `site` (just after its
    /// `call`), for a site that allocates through a call chain.
    fn return_address(&self, key: ChainKey) -> Option<VirtAddr> {
        self.chain(key)?.frames.last().map(|(_, ret)| *ret)
    }
}

/// A helper's caller emitted in the module being built.
struct HereCaller {
    /// The helper's site (index into the machine's sites).
    site: usize,
    spec: CallerSpec,
    function: Loc,
    call: Loc,
    frame: FrameSteps,
}

/// The prolog of the `n`th caller of a helper: they take turns among shapes (pushes of
/// non-volatile registers and small stack allocations, `rsp` 16-byte aligned at the call).
fn caller_prolog(n: usize) -> Vec<Step> {
    use Reg::{R14, Rbx, Rdi, Rsi};
    match n % 4 {
        0 => vec![Step::Push(Rbx), Step::Alloc(0x20)],
        1 => vec![Step::Alloc(0x38)],
        2 => vec![Step::Push(Rsi), Step::Push(Rdi), Step::Alloc(0x28)],
        _ => vec![
            Step::Push(Rbx),
            Step::Push(Rsi),
            Step::Push(R14),
            Step::Alloc(0x40),
        ],
    }
}

/// A size as the imm32 of `mov ecx, size` (validated to fit).
fn size32(size: u64) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// A stable made-up `TimeDateStamp` for a module name.
fn default_timestamp(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    0x4a00_0000 | (h & 0x00ff_ffff)
}

/// Emits one site; returns its locations and, for a lookaside site, its list header.
fn emit_site(b: &mut ImageBuilder, s: &SiteSpec) -> Result<(SiteLocs, Option<Loc>), SimError> {
    let size32 = u32::try_from(s.size).unwrap_or(u32::MAX);
    Ok(match s.kind {
        SiteKindSpec::Alloc => (
            b.alloc_site(s.style, s.tag, s.pool.0.0, size32, s.rva)?,
            None,
        ),
        SiteKindSpec::Free => (b.free_site(s.tag)?, None),
        SiteKindSpec::Lookaside => {
            let list = b.data(&[0u8; LOOKASIDE_LIST_SIZE], 16);
            (b.lookaside_site(s.tag, size32, list)?, Some(list))
        }
        SiteKindSpec::DecoyText => {
            let text = s
                .text
                .clone()
                .unwrap_or_else(|| format!("{} pool corrupted", s.tag));
            (b.text_decoy(s.tag, &text)?, None)
        }
        SiteKindSpec::DecoyCompare => (b.compare_decoy(s.tag, s.compare), None),
        SiteKindSpec::DecoyGlobal => (b.global_alloc_site(s.tag, s.pool.0.0, size32)?, None),
    })
}

/// Kernel-mode registers at `rip` and `rsp` (interrupts on, the x64 kernel's segment
/// selectors), the others zero.
fn kernel_context(rip: u64, rsp: u64) -> CpuContext {
    CpuContext {
        rip,
        rsp,
        rflags: 0x246,
        cs: 0x10,
        ss: 0x18,
        ds: 0x2b,
        es: 0x2b,
        fs: 0x53,
        gs: 0x2b,
        ..CpuContext::default()
    }
}

/// A register of a context, by unwind number.
fn reg_mut(ctx: &mut CpuContext, r: Reg) -> &mut u64 {
    match r {
        Reg::Rax => &mut ctx.rax,
        Reg::Rcx => &mut ctx.rcx,
        Reg::Rdx => &mut ctx.rdx,
        Reg::Rbx => &mut ctx.rbx,
        Reg::Rsp => &mut ctx.rsp,
        Reg::Rbp => &mut ctx.rbp,
        Reg::Rsi => &mut ctx.rsi,
        Reg::Rdi => &mut ctx.rdi,
        Reg::R8 => &mut ctx.r8,
        Reg::R9 => &mut ctx.r9,
        Reg::R10 => &mut ctx.r10,
        Reg::R11 => &mut ctx.r11,
        Reg::R12 => &mut ctx.r12,
        Reg::R13 => &mut ctx.r13,
        Reg::R14 => &mut ctx.r14,
        Reg::R15 => &mut ctx.r15,
    }
}

/// `push value` onto the stack in memory.
fn push(mem: &mut Memory, ctx: &mut CpuContext, value: u64) -> Result<(), SimError> {
    ctx.rsp = ctx.rsp.wrapping_sub(8);
    mem.write_u64(VirtAddr(ctx.rsp), value)?;
    Ok(())
}

/// Runs a function's steps on `ctx`, the stack in memory: pushes store the register,
/// allocations leave their bytes (locals, home space) as they are.
fn replay(mem: &mut Memory, ctx: &mut CpuContext, steps: &[Step]) -> Result<(), SimError> {
    for step in steps {
        match *step {
            Step::Push(r) => {
                let v = *reg_mut(ctx, r);
                push(mem, ctx, v)?;
            }
            Step::Alloc(n) => ctx.rsp = ctx.rsp.wrapping_sub(u64::from(n)),
            Step::SetFp { reg, offset } => {
                let v = ctx.rsp.wrapping_add(u64::from(offset));
                *reg_mut(ctx, reg) = v;
            }
            Step::Mov { dst, src } => {
                let v = *reg_mut(ctx, src);
                *reg_mut(ctx, dst) = v;
            }
        }
    }
    Ok(())
}
