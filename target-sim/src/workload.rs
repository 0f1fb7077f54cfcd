//! The workload: drivers' sites running on a virtual clock.
//!
//! Every tick `t` (the first tick after boot starts is 1) first frees the blocks due at
//! `t`, then runs each allocating site in scenario order: a site fires when
//! `t % every == phase` and then makes `count` allocations. **An allocation site reads its
//! tag from the code bytes in simulated memory (its imm32) each time it runs**, so patching
//! the immediate changes the tag of every later allocation; a `decoy-global` site reads the
//! `.data` global; a lookaside list uses the tag its init site stored in the list header
//! when the driver loaded. Frees go through the pool, which charges the tag in the block's
//! header. Randomness (sizes drawn from a range, the order of background allocations) comes
//! from a [`SplitMix64`] seeded by the scenario, so the same scenario and seed give
//! byte-identical memory.

use std::collections::BTreeMap;

use crate::pool::PoolType;
use crate::types::VirtAddr;

/// The tiny deterministic generator the workload uses (SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..=hi` (`lo` if `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }
}

/// Where an actor's tag comes from, read from memory each time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagSource {
    /// The imm32 of `mov r8d, imm32` at this address.
    Imm(VirtAddr),
    /// A `.data` global.
    Global(VirtAddr),
    /// A lookaside list header's `Tag` field.
    Lookaside(VirtAddr),
}

/// A site that allocates on the clock.
#[derive(Clone, Debug)]
pub(crate) struct Actor {
    /// Index into the machine's site list.
    pub site: usize,
    /// For a helper's caller: its index among the machine's callers (its call chain).
    pub caller: Option<usize>,
    /// Where the tag is read from.
    pub tag_from: TagSource,
    /// The instruction a breakpoint can stop before.
    pub instr: VirtAddr,
    /// The call a breakpoint can stop before.
    pub call: Option<VirtAddr>,
    /// Pool type passed.
    pub pool_type: PoolType,
    /// Size (or lower bound).
    pub size: u64,
    /// Upper bound of the size, if random.
    pub size_max: Option<u64>,
    /// Period in ticks.
    pub every: u64,
    /// Phase within the period.
    pub phase: u64,
    /// Allocations per firing.
    pub count: u32,
    /// Lifetime, or leaked.
    pub free_after: Option<u64>,
}

impl Actor {
    /// Whether the actor fires at tick `t`.
    pub fn fires(&self, t: u64) -> bool {
        self.every > 0 && t % self.every == self.phase
    }
}

/// Where execution is inside the current tick, so a stop can resume exactly there.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cursor {
    /// Whether a tick is in progress.
    pub active: bool,
    /// Blocks due to be freed this tick, with the site (and caller) that allocated each.
    pub frees: Vec<(VirtAddr, usize, Option<usize>)>,
    /// Next free to do.
    pub free_idx: usize,
    /// Next actor.
    pub actor: usize,
    /// Allocations done by the current actor this tick.
    pub rep: u32,
    /// Stage of the current allocation: 0 not started, 1 at the tag instruction,
    /// 2 at the call, 3 at the `PoolHitTag` check, 4 allocate, 5 back in the caller.
    pub stage: u8,
    /// The arguments of the current allocation (pool type, size, tag) as passed to the
    /// allocator: taken when it is entered (stage 3), so that a stop at its `PoolHitTag`
    /// break, which shows the allocator's registers, does not change them.
    pub args: Option<(crate::pool::PoolType, u64, crate::types::PoolTag)>,
    /// The current free passed its `PoolHitTag` check (it stopped there, or did not
    /// need to).
    pub free_checked: bool,
    /// Skip the breakpoint check once (resuming from a breakpoint stop).
    pub skip_bp: Option<VirtAddr>,
}

/// The scheduled frees: tick -> blocks (and the site that allocated each, with the
/// helper's caller through which it did; that thread frees it), in allocation order.
pub(crate) type FreeSchedule = BTreeMap<u64, Vec<(VirtAddr, usize, Option<usize>)>>;
