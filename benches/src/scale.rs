//! The scale measurement: a whole tag split of generated `scale:N:S` kernels
//! ([`tagsplit_target_sim::builtins::scale`]) in process and over loopback GDB, KDNET and
//! KDCOM, with wall time per phase, round trips and bytes on the wire; rendered as a
//! Markdown table and an SVG plot. `cargo run --release -p tagsplit-benches --bin scale`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tagsplit::relay::{Relay, RelayConfig};
use tagsplit::split::traffic::{PhaseMeter, PhaseTraffic, plus};
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::kd::{KdTarget, KdTransport, KdnetListener};
use tagsplit::target::sim::SimTarget;
use tagsplit::target::{DebugTarget, WireStats};
use tagsplit::{PoolTag, VirtAddr};
use tagsplit_protocol::impair::Impairment;
use tagsplit_protocol::kdnet::Key;
use tagsplit_target_sim::builtins::{SCALE_TAG, scale};
use tagsplit_target_sim::machine::{Machine, SiteKind};
use tagsplit_target_sim::scenario::{ModuleSpec, Scenario};
use tagsplit_target_sim::server::gdb::{GdbStubHandle, StubFeatures};
use tagsplit_target_sim::server::kd::{KdStub, KdStubHandle, KdStubOptions};

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
    /// Traffic and time per phase of the split (`survey`, `patch`, `sample N`, ...).
    pub phases: Vec<PhaseTraffic>,
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

/// What must outlive a target: the stub serving it, the relay in front of it.
#[derive(Default)]
pub struct Keep {
    gdb: Option<GdbStubHandle>,
    kd: Option<KdStubHandle>,
    relay: Option<Relay>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn relay(to: SocketAddr, udp: bool, impairment: &Impairment) -> Result<Relay, Error> {
    Relay::spawn(RelayConfig {
        listen: loopback(),
        to,
        udp,
        impairment: impairment.clone(),
        seed: 0,
    })
    .map_err(err)
}

/// A target for `backend` serving `scenario`, straight over loopback or through a relay
/// impairing both directions with `link`; and what must outlive it.
pub fn open(
    backend: Backend,
    scenario: &Scenario,
    link: Option<&Impairment>,
) -> Result<(Box<dyn DebugTarget>, Keep), Error> {
    let mut keep = Keep::default();
    let options = || KdStubOptions {
        default_run_ticks: Some(scenario.default_run_ticks()),
        ..KdStubOptions::default()
    };
    let boot = || Machine::boot(scenario).map_err(err);
    let target: Box<dyn DebugTarget> = match (backend, link) {
        (Backend::Sim, _) => Box::new(SimTarget::boot(scenario).map_err(err)?),
        (Backend::Gdb, _) => {
            let stub = tagsplit::target::gdb::serve_scenario(
                scenario,
                loopback(),
                None,
                StubFeatures::FULL,
            )
            .map_err(err)?;
            let mut addr = stub.addr();
            if let Some(l) = link {
                let r = relay(addr, false, l)?;
                addr = r.local_addr();
                keep.relay = Some(r);
            }
            keep.gdb = Some(stub);
            tagsplit::target::open(&format!("gdb://{addr}")).map_err(err)?
        }
        (Backend::Kdcom, None) => {
            Box::new(KdTarget::serve_scenario(scenario, KdTransport::Kdcom).map_err(err)?)
        }
        (Backend::Kdnet, None) => Box::new(
            KdTarget::serve_scenario(scenario, KdTransport::Kdnet(KEY.parse().map_err(err)?))
                .map_err(err)?,
        ),
        (Backend::Kdcom, Some(l)) => {
            let stub = KdStub::spawn_kdcom(boot()?, options()).map_err(err)?;
            let r = relay(stub.addr(), false, l)?;
            let target = KdTarget::connect_kdcom(r.local_addr(), PATIENCE).map_err(err)?;
            keep.kd = Some(stub);
            keep.relay = Some(r);
            Box::new(target)
        }
        (Backend::Kdnet, Some(l)) => {
            let key: Key = KEY.parse().map_err(err)?;
            let listener = KdnetListener::bind(loopback(), key).map_err(err)?;
            let r = relay(listener.local_addr().map_err(err)?, true, l)?;
            let stub = KdStub::spawn_kdnet(boot()?, r.local_addr(), key, options()).map_err(err)?;
            let target = listener.accept(PATIENCE).map_err(err)?;
            keep.kd = Some(stub);
            keep.relay = Some(r);
            Box::new(target)
        }
    };
    Ok((target, keep))
}

/// A give-up time for attaching (never a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

/// The immediates of the leaking allocation sites (ground truth from a local boot).
fn leaking_sites(scenario: &Scenario) -> Result<Vec<VirtAddr>, Error> {
    let m = Machine::boot(scenario).map_err(err)?;
    Ok(m.sites()
        .into_iter()
        .filter(|s| s.kind == SiteKind::Alloc && s.leaks)
        .map(|s| s.imm)
        .collect())
}

/// Runs one whole split of `scale:modules:sites` on `backend` over loopback.
pub fn measure(backend: Backend, modules: usize, sites: usize) -> Result<Row, Error> {
    let scenario = scale(modules, sites).ok_or_else(|| format!("no scale:{modules}:{sites}"))?;
    measure_over(backend, &scenario, SCALE_TAG, None)
}

/// Runs one whole split of `tag` on `scenario` over `backend`, through a relay impairing
/// both directions with `link` when given; checks the verdict against the simulator's
/// ground truth and that every patch was restored.
pub fn measure_over(
    backend: Backend,
    scenario: &Scenario,
    tag: PoolTag,
    link: Option<&Impairment>,
) -> Result<Row, Error> {
    let truth = leaking_sites(scenario)?;
    let started = Instant::now();
    let (mut target, keep) = open(backend, scenario, link)?;
    let setup = started.elapsed();
    let meter = PhaseMeter::new();
    let started = Instant::now();
    let mut metered = meter.wrap(target.as_mut());
    let report = Split::new(&mut metered, tag, SplitOptions::default())
        .on_phase(meter.on_phase())
        .run()
        .map_err(err)?;
    let split = started.elapsed();
    drop(metered);
    let phases = meter.finish();
    let wire = target.stats().map(|_| {
        phases
            .iter()
            .fold(WireStats::default(), |t, p| plus(t, p.wire))
    });
    let found: Vec<VirtAddr> = report.leaks().map(|s| s.hit.address).collect();
    drop(target);
    drop(keep);
    Ok(Row {
        backend,
        modules: scenario.modules.len(),
        sites: report.sites.len(),
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
/// parentheses (survey: module list, search and classification, choosing the new tags;
/// patch: journal and patches; samples: the baseline, each slice the target runs and the
/// sample after it; restore).
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| backend | modules | sites | images | split wall time | survey | patch | samples (runs included) | restore | round trips | bytes sent | bytes received | verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let phase = |names: &[&str]| {
            let (t, n) = r
                .phases
                .iter()
                .filter(|p| names.iter().any(|n| p.phase.starts_with(n)))
                .fold((Duration::ZERO, 0), |(t, n), p| {
                    (t + p.time, n + p.wire.round_trips)
                });
            match r.wire {
                Some(_) => format!("{} ({n})", ms(t)),
                None => ms(t),
            }
        };
        let wire =
            |f: fn(&WireStats) -> u64| r.wire.as_ref().map_or("—".into(), |w| f(w).to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} MiB | {} ms | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend.name(),
            r.modules,
            r.sites,
            r.image_bytes as f64 / f64::from(1u32 << 20),
            ms(r.split),
            phase(&["survey"]),
            phase(&["patch"]),
            phase(&["sample"]),
            phase(&["restore"]),
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
            tagsplit::plot::draw_line(&mut chart, points, color, 2, b.name()).map_err(err)?;
        }
        tagsplit::plot::draw_legend(&mut chart).map_err(err)?;
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
