//! The scale measurement: a whole tag split of generated `scale:N:S` kernels
//! ([`tagsplit_target_sim::builtins::scale`]) in process and over loopback GDB, KDNET and
//! KDCOM, with wall time per phase, round trips and bytes on the wire; rendered as a
//! Markdown table and an SVG plot. `cargo run --release -p tagsplit-benches --bin scale`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tagsplit::VirtAddr;
use tagsplit::split::{Phase, Split, SplitOptions};
use tagsplit::target::kd::{KdTarget, KdTransport};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{
    DebugTarget, Interrupt, KernelInfo, ModuleInfo, RunFor, StopReason, TargetError, WireStats,
};
use tagsplit_target_sim::builtins::{SCALE_TAG, scale};
use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::scenario::{ModuleSpec, Scenario};
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};

/// The KDNET key of the loopback runs.
const KEY: &str = "tagsplit.scale.kdnet.key";

/// Where a split runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    /// `SimTarget`: the simulator in this process, no wire.
    Sim,
    /// Our GDB stub over loopback TCP.
    Gdb,
    /// Our KD stub over loopback KDNET (UDP).
    Kdnet,
    /// Our KD stub over loopback KDCOM (TCP).
    Kdcom,
}

impl Backend {
    /// Every backend, in table order.
    pub const ALL: [Backend; 4] = [Backend::Sim, Backend::Gdb, Backend::Kdnet, Backend::Kdcom];

    /// `sim`, `gdb`, `kdnet`, `kdcom`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Gdb => "gdb",
            Backend::Kdnet => "kdnet",
            Backend::Kdcom => "kdcom",
        }
    }
}

/// One measured split.
#[derive(Clone, Debug)]
pub struct Row {
    /// Where it ran.
    pub backend: Backend,
    /// Drivers in the kernel (nt not counted).
    pub modules: usize,
    /// Allocation sites sharing the tag.
    pub sites: usize,
    /// Bytes of module images (`SizeOfImage` summed over the drivers).
    pub image_bytes: u64,
    /// Booting the machine and attaching (not part of the split).
    pub setup: Duration,
    /// The whole split, `Split::run`.
    pub split: Duration,
    /// Time and round trips per phase of the split (`surveying`, `patching`, ...).
    pub phases: BTreeMap<&'static str, (Duration, u64)>,
    /// Wire counters of the split alone (`None` in process).
    pub wire: Option<WireStats>,
    /// Whether the split named exactly the leaking site and restored every patch.
    pub correct: bool,
}

/// Errors of a measurement, as text.
pub type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

/// A target for `backend` serving `scenario`, and the GDB stub that serves it (kept
/// alive as long as the target).
fn open(
    backend: Backend,
    scenario: &Scenario,
) -> Result<(Box<dyn DebugTarget>, Option<GdbStubHandle>), Error> {
    Ok(match backend {
        Backend::Sim => (Box::new(SimTarget::boot(scenario).map_err(err)?), None),
        Backend::Gdb => {
            let stub = tagsplit::target::gdb::serve_scenario(
                scenario,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                None,
                StubFeatures::FULL,
            )
            .map_err(err)?;
            let target = tagsplit::target::open(&format!("gdb://{}", stub.addr())).map_err(err)?;
            (target, Some(stub))
        }
        Backend::Kdnet | Backend::Kdcom => {
            let transport = if backend == Backend::Kdnet {
                KdTransport::Kdnet(KEY.parse().map_err(err)?)
            } else {
                KdTransport::Kdcom
            };
            (
                Box::new(KdTarget::serve_scenario(scenario, transport).map_err(err)?),
                None,
            )
        }
    })
}

/// The immediates of the leaking allocation sites (ground truth from a local boot).
fn leaking_sites(scenario: &Scenario) -> Result<Vec<VirtAddr>, Error> {
    let m = Machine::boot(scenario).map_err(err)?;
    Ok(m.sites()
        .into_iter()
        .filter(|s| s.kind == SiteKind::Alloc && s.leaks)
        .map(|s| s.imm)
        .collect())
}

/// Forwards to a target and keeps its latest wire counters where a phase callback can
/// read them while the split holds the target.
struct Tap<'t> {
    inner: &'t mut dyn DebugTarget,
    round_trips: Rc<Cell<u64>>,
}

impl Tap<'_> {
    fn note<R>(&mut self, r: R) -> R {
        if let Some(s) = self.inner.stats() {
            self.round_trips.set(s.round_trips);
        }
        r
    }
}

impl DebugTarget for Tap<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read_memory(&mut self, addr: VirtAddr, buf: &mut [u8]) -> Result<usize, TargetError> {
        let r = self.inner.read_memory(addr, buf);
        self.note(r)
    }
    fn write_memory(&mut self, addr: VirtAddr, data: &[u8]) -> Result<usize, TargetError> {
        let r = self.inner.write_memory(addr, data);
        self.note(r)
    }
    fn kernel_info(&mut self) -> Result<KernelInfo, TargetError> {
        let r = self.inner.kernel_info();
        self.note(r)
    }
    fn modules(&mut self) -> Result<Vec<ModuleInfo>, TargetError> {
        let r = self.inner.modules();
        self.note(r)
    }
    fn search_memory(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        pattern: &[u8],
        max_hits: usize,
    ) -> Result<Vec<VirtAddr>, TargetError> {
        let r = self.inner.search_memory(start, end, pattern, max_hits);
        self.note(r)
    }
    fn run(&mut self, how_long: RunFor) -> Result<StopReason, TargetError> {
        let r = self.inner.run(how_long);
        self.note(r)
    }
    fn set_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let r = self.inner.set_breakpoint(addr);
        self.note(r)
    }
    fn clear_breakpoint(&mut self, addr: VirtAddr) -> Result<(), TargetError> {
        let r = self.inner.clear_breakpoint(addr);
        self.note(r)
    }
    fn set_interrupt(&mut self, interrupt: Option<Interrupt>) {
        self.inner.set_interrupt(interrupt);
    }
    fn stats(&self) -> Option<WireStats> {
        self.inner.stats()
    }
    fn default_run(&self) -> RunFor {
        self.inner.default_run()
    }
}

fn minus(a: WireStats, b: WireStats) -> WireStats {
    WireStats {
        packets_sent: a.packets_sent.saturating_sub(b.packets_sent),
        packets_received: a.packets_received.saturating_sub(b.packets_received),
        bytes_sent: a.bytes_sent.saturating_sub(b.bytes_sent),
        bytes_received: a.bytes_received.saturating_sub(b.bytes_received),
        round_trips: a.round_trips.saturating_sub(b.round_trips),
        retransmissions: a.retransmissions.saturating_sub(b.retransmissions),
    }
}

/// Runs one whole split of `scale:modules:sites` on `backend`.
pub fn measure(backend: Backend, modules: usize, sites: usize) -> Result<Row, Error> {
    let scenario = scale(modules, sites).ok_or_else(|| format!("no scale:{modules}:{sites}"))?;
    let truth = leaking_sites(&scenario)?;
    let started = Instant::now();
    let (mut target, stub) = open(backend, &scenario)?;
    let setup = started.elapsed();
    let before = target.stats();
    // Per phase: time and round trips so far; the open phase: name, start, round trips.
    type Phases = BTreeMap<&'static str, (Duration, u64)>;
    type Open = Option<(&'static str, Instant, u64)>;
    let phases: Rc<RefCell<Phases>> = Rc::default();
    let last: Rc<RefCell<Open>> = Rc::default();
    let trips = Rc::new(Cell::new(before.map_or(0, |s| s.round_trips)));
    let close = {
        let (p, l, t) = (Rc::clone(&phases), Rc::clone(&last), Rc::clone(&trips));
        move |next: Option<&'static str>| {
            let now = Instant::now();
            let open = match next {
                Some(name) => l.borrow_mut().replace((name, now, t.get())),
                None => l.borrow_mut().take(),
            };
            if let Some((name, since, from)) = open {
                let mut phases = p.borrow_mut();
                let slot = phases.entry(name).or_default();
                slot.0 += now - since;
                slot.1 += t.get().saturating_sub(from);
            }
        }
    };
    let started = Instant::now();
    let mut tap = Tap {
        inner: target.as_mut(),
        round_trips: Rc::clone(&trips),
    };
    let on_phase = close.clone();
    let report = Split::new(&mut tap, SCALE_TAG, SplitOptions::default())
        .on_phase(move |phase: Phase| on_phase(Some(phase.name())))
        .run()
        .map_err(err)?;
    let split = started.elapsed();
    close(None);
    let wire = target.stats().map(|s| minus(s, before.unwrap_or_default()));
    let found: Vec<VirtAddr> = report.leaks().map(|s| s.hit.address).collect();
    drop(target);
    drop(stub);
    let phases = phases.borrow().clone();
    Ok(Row {
        backend,
        modules,
        sites,
        image_bytes: scenario.modules.iter().map(ModuleSpec::image_bytes).sum(),
        setup,
        split,
        phases,
        wire,
        correct: found == truth && report.restore.complete(),
    })
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// The rows as a Markdown table: times in ms, each phase with its round trips in
/// parentheses (survey: module list, search and classification, and the first tracker
/// snapshot; patch: journal and patches; run; sample: tracker snapshots; restore).
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | modules | sites | images | split wall time | survey | patch | run | sample | restore | round trips | bytes sent | bytes received | verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let phase = |names: &[&str]| {
            let (t, n) = names
                .iter()
                .filter_map(|n| r.phases.get(n))
                .fold((Duration::ZERO, 0), |(t, n), (dt, dn)| (t + *dt, n + dn));
            match r.wire {
                Some(_) => format!("{} ({n})", ms(t)),
                None => ms(t),
            }
        };
        let wire =
            |f: fn(&WireStats) -> u64| r.wire.as_ref().map_or("—".into(), |w| f(w).to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} MiB | {} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend.name(),
            r.modules,
            r.sites,
            r.image_bytes as f64 / f64::from(1u32 << 20),
            ms(r.split),
            phase(&["checking", "surveying"]),
            phase(&["journalling", "patching"]),
            phase(&["running"]),
            phase(&["sampling"]),
            phase(&["restoring"]),
            wire(|w| w.round_trips),
            wire(|w| w.bytes_sent),
            wire(|w| w.bytes_received),
            if r.correct { "right" } else { "WRONG" },
        );
    }
    s
}

/// The plot: split wall time and round trips against module count, one line per backend.
pub fn plot(rows: &[Row], path: &std::path::Path) -> Result<(), Error> {
    use plotters::prelude::*;

    let colors = [BLACK, RED, BLUE, RGBColor(230, 140, 0)];
    let mut kernels: Vec<(usize, usize)> = rows.iter().map(|r| (r.modules, r.sites)).collect();
    kernels.sort_unstable();
    kernels.dedup();
    let sites: Vec<String> = kernels.iter().map(|(_, s)| s.to_string()).collect();
    let x_desc = format!("modules (sites: {})", sites.join(", "));
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let max_modules = rows.iter().map(|r| r.modules).max().unwrap_or(1) as f64;
    let min_modules = rows.iter().map(|r| r.modules).min().unwrap_or(1) as f64;
    let x = (min_modules * 0.8)..(max_modules * 1.25);
    let series = |b: Backend, f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.backend == b)
            .filter_map(|r| Some((r.modules as f64, f(r)?)))
            .collect()
    };
    type Pick = dyn Fn(&Row) -> Option<f64>;
    let time: &Pick = &|r| Some((r.split.as_secs_f64() * 1000.0).max(0.1));
    let trips: &Pick = &|r| r.wire.map(|w| w.round_trips.max(1) as f64);
    for (area, pick, title, unit) in [
        (&left, time, "Whole split: wall time", "milliseconds"),
        (&right, trips, "Whole split: round trips", "round trips"),
    ] {
        let ys: Vec<f64> = rows.iter().filter_map(pick).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1e9);
        let hi = ys.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x.clone().log_scale(), ((lo * 0.5)..(hi * 2.0)).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .x_desc(x_desc.as_str())
            .y_desc(unit)
            .draw()
            .map_err(err)?;
        for (i, b) in Backend::ALL.into_iter().enumerate() {
            let points = series(b, pick);
            if points.is_empty() {
                continue;
            }
            let color = colors.get(i).copied().unwrap_or(BLACK);
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(b.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The smallest kernel over every backend: the verdict is right and the table and the
    /// plot render (no timing is asserted).
    #[test]
    fn smallest_kernel_over_every_backend() {
        let rows: Vec<Row> = Backend::ALL
            .into_iter()
            .map(|b| measure(b, 10, 20).unwrap())
            .collect();
        for r in &rows {
            assert!(r.correct, "{:?}", r.backend);
            assert_eq!(r.wire.is_some(), r.backend != Backend::Sim);
        }
        let table = markdown(&rows);
        assert_eq!(table.lines().count(), 6);
        assert!(!table.contains("WRONG"));
        let path = std::env::temp_dir().join(format!("tagsplit-scale-{}.svg", std::process::id()));
        plot(&rows, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg") && svg.contains("kdnet"));
    }
}
