//! The in-process simulator backend: [`SimTarget`] over a [`Machine`], no wire.

use std::time::Duration;

use tagsplit_target_sim::machine::{Machine, SimStop};
use tagsplit_target_sim::scenario::Scenario;

use super::{
    BoxedTarget, DebugTarget, Interrupt, KernelInfo, ModuleInfo, OpenError, RunFor, StopReason,
    TargetError, X64Registers,
};
use crate::VirtAddr;

pub use super::TICKS_PER_MS;

/// A [`DebugTarget`] over a simulated machine in this process.
#[derive(Clone, Debug)]
pub struct SimTarget {
    machine: Machine,
    spec: String,
    default_ticks: u64,
    interrupt: Option<Interrupt>,
}

/// Ticks a [`SimTarget`] runs between looks at its interrupt flag.
const INTERRUPT_CHECK_TICKS: u64 = 256;

impl SimTarget {
    /// Boots `scenario`.
    pub fn boot(scenario: &Scenario) -> Result<SimTarget, TargetError> {
        let machine = Machine::boot(scenario)
            .map_err(|e| TargetError::BadKernelData(format!("simulator failed to boot: {e}")))?;
        Ok(SimTarget {
            machine,
            spec: format!("sim:{}", scenario.name()),
            default_ticks: scenario.default_run_ticks(),
            interrupt: None,
        })
    }

    /// Boots a built-in scenario (`part4`, `many-sites`).
    pub fn builtin(name: &str) -> Option<SimTarget> {
        SimTarget::boot(&Scenario::builtin(name)?).ok()
    }

    /// The machine (ground truth, for tests).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The machine, writable.
    pub fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// Wraps an already booted machine; a bare `g` runs `default_ticks`.
    pub fn from_machine(machine: Machine, default_ticks: u64) -> SimTarget {
        let spec = format!("sim:{}", machine.name());
        SimTarget {
            machine,
            spec,
            default_ticks,
            interrupt: None,
        }
    }

    /// The machine, back.
    pub fn into_machine(self) -> Machine {
        self.machine
    }
}

/// Opens `sim:NAME` (a built-in) or `sim:FILE.toml`.
pub(crate) fn open(rest: &str, options: &super::OpenOptions) -> Result<BoxedTarget, OpenError> {
    options.check(&format!("sim:{rest}"), super::record::TargetKind::Sim)?;
    let bad = |reason: String| OpenError::Bad {
        spec: format!("sim:{rest}"),
        reason,
    };
    let scenario = if let Some(s) = Scenario::builtin(rest) {
        s
    } else if rest.ends_with(".toml") {
        let text = std::fs::read_to_string(rest).map_err(|e| bad(e.to_string()))?;
        Scenario::from_toml(&text).map_err(|e| bad(e.to_string()))?
    } else {
        return Err(bad(format!(
            "no built-in scenario {rest:?} (built-ins: {}) and not a .toml file",
            Scenario::builtin_names().join(", ")
        )));
    };
    let mut t = SimTarget::boot(&scenario)?;
    if !Scenario::builtin_names().contains(&rest) {
        t.spec = format!("sim:{rest}");
    }
    Ok(Box::new(t))
}

/// A [`DebugTarget`] view of a machine someone else owns (e.g. a wire stub running the
/// console for `monitor` commands): `MachineRef::new(&mut machine, ticks)`.
pub struct MachineRef<'m> {
    machine: &'m mut Machine,
    default_ticks: u64,
}

impl<'m> MachineRef<'m> {
    /// A view of `machine`; a bare `g` runs `default_ticks`.
    pub fn new(machine: &'m mut Machine, default_ticks: u64) -> MachineRef<'m> {
        MachineRef {
            machine,
            default_ticks,
        }
    }
}

impl DebugTarget for MachineRef<'_> {
    fn describe(&self) -> String {
        format!("sim:{}", self.machine.name())
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        match self.machine.read(addr, buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => Ok(e.done.min(buf.len())),
        }
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        match self.machine.write(addr, data) {
            Ok(()) => Ok(data.len()),
            Err(e) => Ok(e.done.min(data.len())),
        }
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        let k = self.machine.kernel();
        Ok(KernelInfo {
            kern_base: k.kern_base,
            ps_loaded_module_list: k.ps_loaded_module_list,
            kdbg: Some(k.kdbg),
        })
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        Ok(self
            .machine
            .modules()
            .into_iter()
            .map(|m| ModuleInfo {
                name: m.name,
                path: m.path,
                base: m.base,
                size: m.size,
            })
            .collect())
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        Ok(self.machine.search(start, end, pattern, max_hits))
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        let ticks = match how_long {
            RunFor::Ticks(n) => n,
            RunFor::Time(d) => ticks_for(d),
        };
        let out = self.machine.run(ticks);
        Ok(match out.stop {
            None => StopReason::BreakIn,
            Some(SimStop::Breakpoint(a)) => StopReason::Breakpoint(a),
            // The `int 3` of the kernel's `PoolHitTag` check (see `crate::hittag`).
            Some(SimStop::PoolHitTag { at, .. }) => StopReason::BreakInstruction(at),
            Some(other) => StopReason::Other(format!("{other:?}")),
        })
    }

    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.machine.set_breakpoint(addr);
        Ok(())
    }

    /// The machine's current thread context ([`Machine::context`]): at a stop, the
    /// registers of the thread that stopped.
    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        Ok(*self.machine.context())
    }

    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.machine.clear_breakpoint(addr);
        Ok(())
    }

    fn default_run(&self) -> RunFor {
        RunFor::Ticks(self.default_ticks)
    }
}

impl SimTarget {
    /// A borrowed view (the trait implementation lives on [`MachineRef`]).
    fn view(&mut self) -> MachineRef<'_> {
        MachineRef::new(&mut self.machine, self.default_ticks)
    }
}

impl DebugTarget for SimTarget {
    fn describe(&self) -> String {
        self.spec.clone()
    }

    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        self.view().read_memory(addr, buf)
    }

    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        self.view().write_memory(addr, data)
    }

    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        self.view().kernel_info()
    }

    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        self.view().modules()
    }

    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        self.view().search_memory(start, end, pattern, max_hits)
    }

    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        let Some(interrupt) = self.interrupt.clone() else {
            return self.view().run(how_long);
        };
        // In slices, so that a set flag stops the run within a slice (after at least one,
        // as a break-in into a running machine would).
        let mut left = match how_long {
            RunFor::Ticks(n) => n,
            RunFor::Time(d) => ticks_for(d),
        };
        loop {
            let slice = left.min(INTERRUPT_CHECK_TICKS);
            left -= slice;
            let stop = self.view().run(RunFor::Ticks(slice))?;
            if interrupt.is_set() {
                return Err(TargetError::Interrupted);
            }
            if stop != StopReason::BreakIn || left == 0 {
                return Ok(stop);
            }
        }
    }

    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.interrupt = interrupt;
    }

    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.view().set_breakpoint(addr)
    }

    fn registers(&mut self) -> Result<X64Registers, TargetError> {
        self.view().registers()
    }

    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        self.view().clear_breakpoint(addr)
    }

    fn default_run(&self) -> RunFor {
        RunFor::Ticks(self.default_ticks)
    }
}

/// A wall-clock duration in ticks (see [`TICKS_PER_MS`]).
pub fn ticks_for(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(TICKS_PER_MS)
}
