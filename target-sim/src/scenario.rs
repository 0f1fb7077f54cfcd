//! Scenarios: which drivers are loaded, where their pool-using code sites are, what each
//! site does on the virtual clock, and the background pool load. Written as TOML (serde)
//! or taken from the built-ins ([`Scenario::builtin`]).
//!
//! ```toml
//! name = "tiny"
//! seed = 7
//! boot_ticks = 4
//! run_ticks = 100
//!
//! [[modules]]
//! name = "leaky.sys"
//! base = "fffff880`04000000"        # optional; a string (or 0x...) since TOML ints are i64
//!
//! [[modules.sites]]
//! kind = "alloc"                    # alloc | free | lookaside | decoy-text | decoy-compare | decoy-global
//! tag = "Leak"
//! pool = "nonpaged"                 # nonpaged | paged | nonpaged-nx | a POOL_TYPE number
//! size = 1024000
//! every = 4                         # allocate when tick % every == phase
//! phase = 0
//! count = 1                         # allocations each time it fires
//! # free_after = 10                 # freed that many ticks later; absent = leaked
//!
//! [[background]]                    # allocated once at boot, never freed
//! tag = "File"
//! pool = "nonpaged"
//! size = 400
//! count = 1000
//! ```

use serde::{Deserialize, Deserializer, Serialize};

use crate::SimError;
pub use crate::image::{AllocStyle, CompareStyle};
use crate::pool::PoolType;
use crate::types::{PoolTag, VirtAddr};

/// Most modules a scenario may load (real Windows 10 machines load 250-350).
pub const MAX_MODULES: usize = 4096;
/// Largest `size` of one module.
pub const MAX_MODULE_SIZE: u64 = 1 << 28;
/// Most bytes of module images a scenario may lay out in total: the sum over modules of
/// the larger of `size` and the code the sites need (the highest `rva`, plus room for each
/// site). Bounds the host memory a scenario's images can take (filled code, or `int3`
/// padding up to a site's `rva`) whatever the module count.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// Most bytes of `.text` that modules with `fill` may fill with code in total (host memory:
/// 4,096 drivers of 64 KiB).
pub const MAX_FILLED_BYTES: u64 = 256 << 20;
/// Most sites one module may have.
pub const MAX_SITES_PER_MODULE: usize = 512;
/// Most background entries.
pub const MAX_BACKGROUND: usize = 4096;
/// Most background allocations in total.
pub const MAX_BACKGROUND_ALLOCS: u64 = 1_000_000;
/// Most allocations a site makes each time it fires.
pub const MAX_COUNT: u32 = 10_000;
/// Largest single allocation.
pub const MAX_SIZE: u64 = 1 << 30;
/// Most boot ticks.
pub const MAX_BOOT_TICKS: u64 = 1_000_000;
/// Most host bytes of small pool blocks that boot may touch (background plus sites).
pub const MAX_BOOT_SMALL_BYTES: u64 = 256 << 20;
/// Most allocations the sites may make during boot (bounds the work and memory of
/// [`Machine::boot`](crate::machine::Machine::boot)).
pub const MAX_BOOT_ALLOCS: u64 = 2_000_000;

/// What kind of code a site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteKindSpec {
    /// `mov r8d, tag` then `call [ExAllocatePoolWithTag]`.
    Alloc,
    /// `mov edx, tag` then `call [ExFreePoolWithTag]` (code only).
    Free,
    /// `mov dword ptr [rsp+28h], tag` then `call [ExInitializeNPagedLookasideList]`; the
    /// list captures the tag when the driver loads, later allocations from it use that.
    Lookaside,
    /// The tag as text in `.rdata`.
    DecoyText,
    /// A `cmp` against the tag.
    DecoyCompare,
    /// A `.data` global holding the tag, loaded with `mov r8d, [rip+x]` for an allocation.
    DecoyGlobal,
}

/// A pool type written as `"nonpaged"`, `"paged"`, `"nonpaged-nx"` or a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PoolSpec(pub PoolType);

impl<'de> Deserialize<'de> for PoolSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u32),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(PoolSpec(PoolType(n))),
            Raw::Name(s) => match s.as_str() {
                "nonpaged" => Ok(PoolSpec(PoolType::NON_PAGED)),
                "paged" => Ok(PoolSpec(PoolType::PAGED)),
                "nonpaged-nx" => Ok(PoolSpec(PoolType::NON_PAGED_NX)),
                other => Err(serde::de::Error::custom(format!(
                    "unknown pool type {other:?}"
                ))),
            },
        }
    }
}

/// Parses an address written as `fffff880`0496d000`, `0xfffff8800496d000` or a number.
fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<VirtAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }
    let v = match Option::<Raw>::deserialize(d)? {
        None => return Ok(None),
        Some(Raw::Num(n)) => n,
        Some(Raw::Text(s)) => {
            parse_addr(&s).ok_or_else(|| serde::de::Error::custom(format!("bad address {s:?}")))?
        }
    };
    Ok(Some(VirtAddr(v)))
}

fn ser_addr<S: serde::Serializer>(a: &Option<VirtAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_str(&a.to_string()),
        None => s.serialize_none(),
    }
}

/// Parses `fffff880`0496d000` or `0x...` (hex either way).
pub fn parse_addr(s: &str) -> Option<u64> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|&c| c != '`')
        .collect();
    if t.is_empty() || t.len() > 16 {
        return None;
    }
    u64::from_str_radix(&t, 16).ok()
}

fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn default_run() -> u64 {
    100
}

/// One code site in a module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// What the site is.
    pub kind: SiteKindSpec,
    /// The tag in the code (or text, or global).
    pub tag: PoolTag,
    /// For `alloc`: put the `mov r8d` at this RVA (default: next free code).
    #[serde(default)]
    pub rva: Option<u64>,
    /// For `alloc`: the code around `mov r8d`.
    #[serde(default)]
    pub style: AllocStyle,
    /// For `decoy-compare`: `cmp ecx` or `cmp eax`.
    #[serde(default)]
    pub compare: CompareStyle,
    /// For `decoy-text`: the text (must contain the tag; default `"<tag> pool corrupted"`).
    #[serde(default)]
    pub text: Option<String>,
    /// Pool type allocated.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Bytes per allocation.
    #[serde(default)]
    pub size: u64,
    /// If set, each allocation's size is drawn uniformly from `size..=size_max`.
    #[serde(default)]
    pub size_max: Option<u64>,
    /// Fires when `tick % every == phase`.
    #[serde(default = "one")]
    pub every: u64,
    /// See `every`.
    #[serde(default)]
    pub phase: u64,
    /// Allocations each time it fires (0 = code only).
    #[serde(default = "one_u32")]
    pub count: u32,
    /// Each allocation is freed this many ticks later; `None` = leaked.
    #[serde(default)]
    pub free_after: Option<u64>,
    /// For `alloc` with `style = "helper"`: the functions that call this helper
    /// (`AllocBuffer(size)`), each allocating on its own clock through it. A site with
    /// callers does not allocate by itself (its `size`, `every`, `phase`, `count` and
    /// `free_after` are not used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<CallerSpec>,
}

/// Most callers one helper site may have.
pub const MAX_CALLERS: usize = 64;

/// A function that allocates through an allocation helper ([`SiteSpec::callers`]): it
/// passes `size` in `ecx` and calls the helper, from the helper's module (`call rel32`)
/// or from a module loaded after it (`call [rip+slot]`, through a pointer to the helper
/// in its own `.data`, as an imported function). Its driver's worker thread calls it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSpec {
    /// The module the caller is in: the helper's or one listed after it.
    pub module: String,
    /// The caller's name in its module's export directory (`ReadCompletion`).
    pub name: String,
    /// Bytes per allocation.
    pub size: u64,
    /// Fires when `tick % every == phase`.
    #[serde(default = "one")]
    pub every: u64,
    /// See `every`.
    #[serde(default)]
    pub phase: u64,
    /// Allocations each time it fires.
    #[serde(default = "one_u32")]
    pub count: u32,
    /// Each allocation is freed this many ticks later; `None` = leaked.
    #[serde(default)]
    pub free_after: Option<u64>,
}

impl SiteSpec {
    /// A site of `kind` with `tag` and defaults for everything else.
    pub fn new(kind: SiteKindSpec, tag: PoolTag) -> SiteSpec {
        SiteSpec {
            kind,
            tag,
            rva: None,
            style: AllocStyle::Plain,
            compare: CompareStyle::Ecx,
            text: None,
            pool: PoolSpec(PoolType::NON_PAGED),
            size: 0,
            size_max: None,
            every: 1,
            phase: 0,
            count: 1,
            free_after: None,
            callers: Vec::new(),
        }
    }

    /// Whether the site allocates on the clock (by itself, or through its callers).
    pub fn allocates(&self) -> bool {
        if !self.callers.is_empty() {
            return self.kind == SiteKindSpec::Alloc && self.callers.iter().any(|c| c.count > 0);
        }
        matches!(
            self.kind,
            SiteKindSpec::Alloc | SiteKindSpec::Lookaside | SiteKindSpec::DecoyGlobal
        ) && self.count > 0
    }

    /// Whether some of the site's allocations are never freed.
    pub fn leaks(&self) -> bool {
        if !self.callers.is_empty() {
            return self
                .callers
                .iter()
                .any(|c| c.count > 0 && c.free_after.is_none());
        }
        self.allocates() && self.free_after.is_none()
    }

    /// The clocks the site allocates on: (size, every, count), its own or its callers'.
    fn clocks(&self) -> Vec<(u64, u64, u32)> {
        if self.callers.is_empty() {
            vec![(
                self.size_max.unwrap_or(self.size).max(self.size),
                self.every,
                self.count,
            )]
        } else {
            self.callers
                .iter()
                .map(|c| (c.size, c.every, c.count))
                .collect()
        }
    }
}

/// One loaded module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// `BaseDllName`, e.g. `myfault.sys`.
    pub name: String,
    /// `FullDllName` (default `\SystemRoot\system32\drivers\<name>`).
    #[serde(default)]
    pub path: Option<String>,
    /// Image base (default: after the previous driver).
    #[serde(default, deserialize_with = "de_addr", serialize_with = "ser_addr")]
    pub base: Option<VirtAddr>,
    /// Minimum `SizeOfImage`.
    #[serde(default)]
    pub size: Option<u64>,
    /// COFF `TimeDateStamp`.
    #[serde(default)]
    pub timestamp: Option<u32>,
    /// The pool-using code sites.
    #[serde(default)]
    pub sites: Vec<SiteSpec>,
    /// Fill `.text` up to `size` with real code (small functions that call nt) instead of
    /// leaving the rest of the section never written (reading as zeros). Costs host memory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fill: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Room counted per site in [`ModuleSpec::image_bytes`]: the longest site code, rounded up.
const SITE_BYTES: u64 = 64;

impl ModuleSpec {
    /// A module called `name` with no sites.
    pub fn new(name: &str) -> ModuleSpec {
        ModuleSpec {
            name: name.to_owned(),
            path: None,
            base: None,
            size: None,
            timestamp: None,
            sites: Vec::new(),
            fill: false,
        }
    }

    /// The bytes of image this module lays out at most, as [`MAX_IMAGE_BYTES`] counts
    /// them: the larger of `size` and the headers plus the code and text the sites need.
    pub fn image_bytes(&self) -> u64 {
        let highest_rva = self.sites.iter().filter_map(|s| s.rva).max().unwrap_or(0);
        let sites = self.sites.iter().fold(0u64, |t, s| {
            let text = s.text.as_ref().map_or(0, |x| x.len() as u64);
            // A helper's callers (counted here wherever they are: the sum is the same).
            let callers = (s.callers.len() as u64).saturating_mul(SITE_BYTES);
            t.saturating_add(SITE_BYTES)
                .saturating_add(text)
                .saturating_add(callers)
        });
        let code = highest_rva.saturating_add(sites).saturating_add(0x4000);
        self.size.unwrap_or(0).max(code)
    }
}

/// Allocations made once at boot and never freed (the rest of the system's pool use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundSpec {
    /// Tag.
    pub tag: PoolTag,
    /// Pool type.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Bytes per allocation.
    pub size: u64,
    /// Number of allocations.
    pub count: u64,
}

/// A complete scenario; see the module docs for the TOML form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name (`part4`).
    pub name: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Seed of the deterministic random generator.
    #[serde(default)]
    pub seed: u64,
    /// Ticks run by [`Machine::boot`](crate::machine::Machine::boot).
    #[serde(default)]
    pub boot_ticks: u64,
    /// What a bare `g` runs.
    #[serde(default = "default_run")]
    pub run_ticks: u64,
    /// Modules after `ntoskrnl.exe`, in load order.
    #[serde(default)]
    pub modules: Vec<ModuleSpec>,
    /// Boot-time allocations that stay.
    #[serde(default)]
    pub background: Vec<BackgroundSpec>,
}

/// The names of the built-in scenarios.
const BUILTINS: &[&str] = &["part4", "many-sites", "wrapper", "scale:10:20"];

impl Scenario {
    /// An empty scenario called `name` (no modules beyond nt, 100 run ticks).
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.to_owned(),
            description: String::new(),
            seed: 0,
            boot_ticks: 0,
            run_ticks: default_run(),
            modules: Vec::new(),
            background: Vec::new(),
        }
    }

    /// A built-in scenario: `part4` (the seed's machine), `many-sites` (70 allocation
    /// sites sharing one tag, free sites, a lookaside site and every decoy), `wrapper`
    /// (one allocation helper serving five callers in two drivers, one of them leaking:
    /// [`builtins::wrapper`](crate::builtins::wrapper)), or
    /// `scale:N:S` (a generated kernel of N drivers and S allocation sites sharing one
    /// tag, one leaking: [`builtins::scale`](crate::builtins::scale)).
    pub fn builtin(name: &str) -> Option<Scenario> {
        match name {
            "part4" => Scenario::from_toml(PART4_TOML).ok(),
            "many-sites" => Some(crate::builtins::many_sites()),
            "wrapper" => Some(crate::builtins::wrapper()),
            _ => crate::builtins::scale_from_name(name),
        }
    }

    /// The names [`Scenario::builtin`] lists (`scale:N:S` takes any N and S in range;
    /// one small instance is listed).
    pub fn builtin_names() -> &'static [&'static str] {
        BUILTINS
    }

    /// Parses and validates a TOML scenario.
    pub fn from_toml(text: &str) -> Result<Scenario, SimError> {
        if text.len() > 1 << 20 {
            return Err(SimError::Scenario("scenario text too long".into()));
        }
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The scenario as TOML.
    pub fn to_toml(&self) -> Result<String, SimError> {
        toml::to_string(self).map_err(|e| SimError::Scenario(e.to_string()))
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a bare `g` runs, in ticks.
    pub fn default_run_ticks(&self) -> u64 {
        self.run_ticks
    }

    /// Checks the limits and the consistency of every field.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Scenario(m));
        if self.name.is_empty() || self.name.len() > 64 {
            return bad("name must be 1-64 characters".into());
        }
        if self.modules.len() > MAX_MODULES {
            return bad(format!("more than {MAX_MODULES} modules"));
        }
        if self.boot_ticks > MAX_BOOT_TICKS {
            return bad(format!("boot_ticks above {MAX_BOOT_TICKS}"));
        }
        if self.background.len() > MAX_BACKGROUND {
            return bad(format!("more than {MAX_BACKGROUND} background entries"));
        }
        let mut total = 0u64;
        for b in &self.background {
            total = total.saturating_add(b.count);
            if b.size > MAX_SIZE {
                return bad(format!("background {} size too large", b.tag));
            }
            if !printable(b.tag) || !b.tag.is_valid_for_alloc() {
                return bad(format!(
                    "background tag {:?} is not a valid pool tag",
                    b.tag.to_string()
                ));
            }
        }
        if total > MAX_BACKGROUND_ALLOCS {
            return bad(format!(
                "more than {MAX_BACKGROUND_ALLOCS} background allocations"
            ));
        }
        let small = |size: u64| if size >= 4064 { 0 } else { size + 0x1f };
        let mut small_bytes = self.background.iter().fold(0u64, |t, b| {
            t.saturating_add(b.count.saturating_mul(small(b.size)))
        });
        let mut boot_allocs = 0u64;
        for m in &self.modules {
            for (size, every, count) in m
                .sites
                .iter()
                .filter(|x| x.allocates())
                .flat_map(SiteSpec::clocks)
            {
                let firings = self.boot_ticks / every.max(1) + 1;
                let n = firings.saturating_mul(u64::from(count));
                boot_allocs = boot_allocs.saturating_add(n);
                small_bytes = small_bytes.saturating_add(n.saturating_mul(small(size)));
            }
        }
        if small_bytes > MAX_BOOT_SMALL_BYTES {
            return bad(format!(
                "boot would touch more than {MAX_BOOT_SMALL_BYTES} bytes of small pool blocks"
            ));
        }
        if boot_allocs > MAX_BOOT_ALLOCS {
            return bad(format!(
                "the sites would make more than {MAX_BOOT_ALLOCS} allocations during boot"
            ));
        }
        let image_bytes = self
            .modules
            .iter()
            .fold(0u64, |t, m| t.saturating_add(m.image_bytes()));
        if image_bytes > MAX_IMAGE_BYTES {
            return bad(format!(
                "the modules would lay out more than {MAX_IMAGE_BYTES} bytes of images"
            ));
        }
        let filled = self
            .modules
            .iter()
            .filter(|m| m.fill)
            .fold(0u64, |t, m| t.saturating_add(m.size.unwrap_or(0)));
        if filled > MAX_FILLED_BYTES {
            return bad(format!(
                "modules with fill would fill more than {MAX_FILLED_BYTES} bytes with code"
            ));
        }
        for (mi, m) in self.modules.iter().enumerate() {
            if m.name.is_empty()
                || m.name.len() > 128
                || m.path.as_ref().is_some_and(|p| p.len() > 512)
            {
                return bad("module names must be 1-128 characters (paths up to 512)".into());
            }
            if m.name.eq_ignore_ascii_case("ntoskrnl.exe") {
                return bad("ntoskrnl.exe is always loaded first; do not list it".into());
            }
            if m.sites.len() > MAX_SITES_PER_MODULE {
                return bad(format!(
                    "{}: more than {MAX_SITES_PER_MODULE} sites",
                    m.name
                ));
            }
            if let Some(b) = m.base
                && (b.0 & 0xfff != 0 || !b.is_canonical())
            {
                return bad(format!(
                    "{}: base {b} is not a canonical page address",
                    m.name
                ));
            }
            let stacks = crate::machine::KERNEL_STACKS.0
                ..crate::machine::KERNEL_STACKS.0
                    + MAX_MODULES as u64 * crate::machine::KERNEL_STACK_STRIDE;
            if let Some(b) = m.base
                && stacks.contains(&b.0)
            {
                return bad(format!(
                    "{}: base {b} is in the kernel stacks' region",
                    m.name
                ));
            }
            if m.size.is_some_and(|s| s > MAX_MODULE_SIZE) {
                return bad(format!("{}: size too large", m.name));
            }
            for s in &m.sites {
                if !printable(s.tag) {
                    return bad(format!(
                        "{}: tag {:?} must be printable ASCII",
                        m.name,
                        s.tag.to_string()
                    ));
                }
                if s.every == 0 || s.phase >= s.every {
                    return bad(format!(
                        "{}: site {}: need every >= 1 and phase < every",
                        m.name, s.tag
                    ));
                }
                if s.count > MAX_COUNT {
                    return bad(format!(
                        "{}: site {}: count above {MAX_COUNT}",
                        m.name, s.tag
                    ));
                }
                if s.size > MAX_SIZE || s.size_max.is_some_and(|x| x > MAX_SIZE || x < s.size) {
                    return bad(format!("{}: site {}: bad size", m.name, s.tag));
                }
                if s.size > u64::from(u32::MAX) {
                    return bad(format!(
                        "{}: site {}: size does not fit an imm32",
                        m.name, s.tag
                    ));
                }
                if s.rva.is_some_and(|r| !(0x1000..0x100_0000).contains(&r)) {
                    return bad(format!("{}: site {}: rva out of range", m.name, s.tag));
                }
                if s.text.as_ref().is_some_and(|t| t.len() > 256) {
                    return bad(format!("{}: site {}: text too long", m.name, s.tag));
                }
                if s.free_after == Some(0) {
                    return bad(format!(
                        "{}: site {}: free_after must be at least 1",
                        m.name, s.tag
                    ));
                }
                self.validate_callers(mi, s)?;
            }
        }
        Ok(())
    }

    /// Checks the callers of the site `s` of module `mi`.
    fn validate_callers(&self, mi: usize, s: &SiteSpec) -> Result<(), SimError> {
        let Some(m) = self.modules.get(mi) else {
            return Ok(());
        };
        let bad = |what: String| {
            Err(SimError::Scenario(format!(
                "{}: site {}: {what}",
                m.name, s.tag
            )))
        };
        if s.callers.is_empty() {
            return Ok(());
        }
        if s.kind != SiteKindSpec::Alloc || s.style != AllocStyle::Helper {
            return bad("only an alloc site of style \"helper\" has callers".into());
        }
        if s.callers.len() > MAX_CALLERS {
            return bad(format!("more than {MAX_CALLERS} callers"));
        }
        for c in &s.callers {
            let later = self
                .modules
                .iter()
                .skip(mi)
                .any(|x| x.name.eq_ignore_ascii_case(&c.module));
            if !later {
                return bad(format!(
                    "caller {}: module {:?} is neither the helper's nor loaded after it",
                    c.name, c.module
                ));
            }
            if c.name.is_empty()
                || c.name.len() > 64
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return bad("caller names are 1-64 letters, digits or _".into());
            }
            if c.every == 0 || c.phase >= c.every || c.count > MAX_COUNT || c.free_after == Some(0)
            {
                return bad(format!(
                    "caller {}: need every >= 1, phase < every, count <= {MAX_COUNT}, free_after >= 1",
                    c.name
                ));
            }
            if c.size == 0 || c.size > u64::from(u32::MAX) || c.size > MAX_SIZE {
                return bad(format!("caller {}: bad size", c.name));
            }
        }
        Ok(())
    }
}

/// Whether every byte of the tag is printable ASCII (0x20-0x7e), as Windows requires.
fn printable(t: PoolTag) -> bool {
    t.bytes().iter().all(|b| (0x20..0x7f).contains(b))
}

/// The TOML of the built-in `part4` scenario.
pub const PART4_TOML: &str = include_str!("scenarios/part4.toml");
