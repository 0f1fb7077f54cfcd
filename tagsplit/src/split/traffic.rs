//! Where a split's bytes and time go: wire traffic and wall time per phase (`run --stats`,
//! the benches).
//!
//! A [`PhaseMeter`] wraps the target ([`PhaseMeter::wrap`]): after every call it notes the
//! backend's [`WireStats`], so when the split reports its next [`Phase`]
//! ([`PhaseMeter::on_phase`]) the phase just ended is charged exactly what crossed the
//! wire during it. The phases are `connect` (recorded by the caller,
//! [`PhaseMeter::record`]), `survey` (checking journals, the module list, the searches and
//! classification, choosing the new tags), `patch` (the journal, the patches), `sample 0`
//! (the baseline) and `sample 1`… (each slice the target runs and the sample after it),
//! and `restore`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Phase;
use crate::target::observe::{Observed, Observer};
use crate::target::{DebugTarget, TargetError, WireStats};

/// Traffic and time of one phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseTraffic {
    /// `connect`, `survey`, `patch`, `sample N`, `restore`.
    pub phase: String,
    /// What crossed the wire during the phase (zero in process).
    pub wire: WireStats,
    /// Wall time.
    pub time: Duration,
}

/// What a [`PhaseMeter`] knows now, for a progress display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterNow {
    /// The phase under way.
    pub phase: String,
    /// Wire counters since the meter began (connecting included when recorded).
    pub wire: WireStats,
    /// Samples taken so far, the baseline included.
    pub samples_done: u32,
    /// Samples the split takes, the baseline included (0 until sampling is planned).
    pub samples_total: u32,
    /// An estimate of the time left: the remaining samples at the mean time of those
    /// taken after the baseline, plus a restore as long as the patching was; `None`
    /// before the first sample after the baseline.
    pub eta: Option<Duration>,
    /// With `run --stacks`: the `PoolHitTag` breaks taken so far.
    pub breaks_done: u64,
    /// With `run --stacks`: the breaks wanted (0 until the stacks are collected).
    pub breaks_total: u64,
}

type Watcher = Box<dyn FnMut(&MeterNow)>;

#[derive(Default)]
struct State {
    rows: Vec<PhaseTraffic>,
    open: Option<(String, Instant, WireStats)>,
    latest: WireStats,
    /// What [`PhaseMeter::record`] charged.
    recorded: WireStats,
    /// The backend's counters when it was wrapped.
    at_wrap: WireStats,
    samples_done: u32,
    samples_total: u32,
    breaks_done: u64,
    breaks_total: u64,
    observer: Option<Watcher>,
}

impl State {
    fn now(&self) -> MeterNow {
        let time_of = |prefix: &str| -> (Duration, u32) {
            self.rows
                .iter()
                .filter(|r| r.phase.starts_with(prefix) && r.phase != "sample 0")
                .fold((Duration::ZERO, 0), |(t, n), r| (t + r.time, n + 1))
        };
        let (sampled, n) = time_of("sample ");
        let (patch, _) = time_of("patch");
        let left = self.samples_total.saturating_sub(self.samples_done);
        let eta = (n > 0 && self.samples_total > 0)
            .then(|| (sampled / n).saturating_mul(left).saturating_add(patch));
        MeterNow {
            phase: self
                .open
                .as_ref()
                .map_or_else(String::new, |(p, _, _)| p.clone()),
            wire: self.latest,
            samples_done: self.samples_done,
            samples_total: self.samples_total,
            eta,
            breaks_done: self.breaks_done,
            breaks_total: self.breaks_total,
        }
    }

    fn notify(&mut self) {
        let now = self.now();
        if let Some(f) = self.observer.as_mut() {
            f(&now);
        }
    }

    fn close(&mut self, at: Instant) {
        if let Some((phase, since, from)) = self.open.take() {
            let wire = minus(self.latest, from);
            match self.rows.last_mut() {
                Some(last) if last.phase == phase => {
                    last.wire = plus(last.wire, wire);
                    last.time += at.saturating_duration_since(since);
                }
                _ => self.rows.push(PhaseTraffic {
                    phase,
                    wire,
                    time: at.saturating_duration_since(since),
                }),
            }
        }
    }
}

/// Counts a split's traffic and time per phase (see the [module](self) docs).
#[derive(Clone, Default)]
pub struct PhaseMeter {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for PhaseMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseMeter")
            .field("rows", &self.state.borrow().rows)
            .finish()
    }
}

impl PhaseMeter {
    /// A meter with nothing recorded.
    pub fn new() -> PhaseMeter {
        PhaseMeter::default()
    }

    /// Charges a phase that happened before the target could be wrapped (`connect`:
    /// the traffic and time of opening it).
    pub fn record(&self, phase: &str, wire: WireStats, time: Duration) {
        let mut s = self.state.borrow_mut();
        s.rows.push(PhaseTraffic {
            phase: phase.to_owned(),
            wire,
            time,
        });
        s.recorded = plus(s.recorded, wire);
        s.latest = plus(s.latest, wire);
    }

    /// Calls `f` whenever the counters, the phase or the samples change (a progress
    /// bar). It must not call back into the meter.
    pub fn observe(&self, f: impl FnMut(&MeterNow) + 'static) {
        self.state.borrow_mut().observer = Some(Box::new(f));
    }

    /// Wraps `target` so that every call notes its counters. The backend's counters are
    /// taken as they stand now: what it counted before (connecting) belongs to a phase
    /// [`record`](Self::record)ed already.
    pub fn wrap<'t>(&self, target: &'t mut dyn DebugTarget) -> Metered<'t> {
        let at_wrap = target.stats().unwrap_or_default();
        {
            let mut s = self.state.borrow_mut();
            s.at_wrap = at_wrap;
            s.latest = s.recorded;
        }
        Observed::new(
            target,
            Meter {
                state: Rc::clone(&self.state),
            },
        )
    }

    /// The phase hook for [`Split::on_phase`](super::Split::on_phase): starts the
    /// phase's row (a slice the target runs and the sample after it share one).
    pub fn on_phase(&self) -> impl FnMut(Phase) + 'static {
        let state = Rc::clone(&self.state);
        move |phase| {
            let name = match phase {
                Phase::Checking | Phase::Surveying => "survey".to_owned(),
                Phase::Journalling | Phase::Patching { .. } => "patch".to_owned(),
                // Before slice `sample`: the baseline and `sample - 1` samples are taken.
                Phase::Running { sample, total } | Phase::Sampling { sample, total } => {
                    let mut s = state.borrow_mut();
                    s.samples_total = total.saturating_add(1);
                    s.samples_done = sample;
                    format!("sample {sample}")
                }
                Phase::Breaking { done, wanted } => {
                    let mut s = state.borrow_mut();
                    s.samples_done = s.samples_total;
                    s.breaks_done = done;
                    s.breaks_total = wanted;
                    "stacks".to_owned()
                }
                Phase::Restoring => {
                    let mut s = state.borrow_mut();
                    s.samples_done = s.samples_total;
                    "restore".to_owned()
                }
            };
            let mut s = state.borrow_mut();
            let at = Instant::now();
            if s.open.as_ref().is_some_and(|(p, _, _)| *p == name) {
                if matches!(phase, Phase::Breaking { .. }) {
                    s.notify();
                }
                return;
            }
            s.close(at);
            let latest = s.latest;
            s.open = Some((name, at, latest));
            s.notify();
        }
    }

    /// Ends the phase under way and returns every phase's row, in order.
    pub fn finish(&self) -> Vec<PhaseTraffic> {
        let mut s = self.state.borrow_mut();
        s.close(Instant::now());
        s.rows.clone()
    }
}

/// The rows and their total as a table (`run --stats`).
pub fn table(rows: &[PhaseTraffic]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<10} {:>11} {:>12} {:>14} {:>8} {:>10}\n",
        "phase", "round trips", "bytes sent", "bytes received", "resends", "time"
    );
    let total = rows.iter().fold(
        PhaseTraffic {
            phase: "total".into(),
            wire: WireStats::default(),
            time: Duration::ZERO,
        },
        |t, r| PhaseTraffic {
            phase: t.phase,
            wire: plus(t.wire, r.wire),
            time: t.time + r.time,
        },
    );
    for r in rows.iter().chain(std::iter::once(&total)) {
        let _ = writeln!(
            out,
            "{:<10} {:>11} {:>12} {:>14} {:>8} {:>8.3} s",
            r.phase,
            r.wire.round_trips,
            r.wire.bytes_sent,
            r.wire.bytes_received,
            r.wire.retransmissions,
            r.time.as_secs_f64()
        );
    }
    out
}

/// A target whose every call is metered ([`PhaseMeter::wrap`]).
pub type Metered<'t> = Observed<'t, Meter>;

/// What a [`Metered`] target tells its [`PhaseMeter`] after each call: the backend's
/// counters.
pub struct Meter {
    state: Rc<RefCell<State>>,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter").finish_non_exhaustive()
    }
}

impl Observer for Meter {
    fn after(&mut self, target: &dyn DebugTarget, _: Option<&TargetError>) {
        if let Some(w) = target.stats() {
            let mut s = self.state.borrow_mut();
            let latest = plus(s.recorded, minus(w, s.at_wrap));
            if latest != s.latest {
                s.latest = latest;
                s.notify();
            }
        }
    }
}

/// `a - b`, field by field (never below zero).
pub fn minus(a: WireStats, b: WireStats) -> WireStats {
    WireStats {
        packets_sent: a.packets_sent.saturating_sub(b.packets_sent),
        packets_received: a.packets_received.saturating_sub(b.packets_received),
        bytes_sent: a.bytes_sent.saturating_sub(b.bytes_sent),
        bytes_received: a.bytes_received.saturating_sub(b.bytes_received),
        round_trips: a.round_trips.saturating_sub(b.round_trips),
        retransmissions: a.retransmissions.saturating_sub(b.retransmissions),
    }
}

/// `a + b`, field by field (saturating).
pub fn plus(a: WireStats, b: WireStats) -> WireStats {
    WireStats {
        packets_sent: a.packets_sent.saturating_add(b.packets_sent),
        packets_received: a.packets_received.saturating_add(b.packets_received),
        bytes_sent: a.bytes_sent.saturating_add(b.bytes_sent),
        bytes_received: a.bytes_received.saturating_add(b.bytes_received),
        round_trips: a.round_trips.saturating_add(b.round_trips),
        retransmissions: a.retransmissions.saturating_add(b.retransmissions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolTag;
    use crate::split::{Split, SplitOptions};
    use crate::testkit::fake_kernel;

    #[test]
    fn every_phase_gets_a_row_in_order() {
        let mut t = fake_kernel();
        let meter = PhaseMeter::new();
        meter.record("connect", WireStats::default(), Duration::ZERO);
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s2 = Rc::clone(&seen);
        meter.observe(move |now| s2.borrow_mut().push(now.clone()));
        let mut metered = meter.wrap(&mut t);
        let options = SplitOptions {
            samples: 3,
            ..SplitOptions::default()
        };
        let report = Split::new(&mut metered, PoolTag::new(*b"Leak"), options)
            .on_phase(meter.on_phase())
            .run()
            .unwrap();
        assert!(report.restore.complete());
        let rows = meter.finish();
        let names: Vec<&str> = rows.iter().map(|r| r.phase.as_str()).collect();
        assert_eq!(
            names,
            [
                "connect", "survey", "patch", "sample 0", "sample 1", "sample 2", "sample 3",
                "restore"
            ]
        );
        let last = seen.borrow().last().cloned().unwrap();
        assert_eq!((last.samples_done, last.samples_total), (4, 4));
        assert!(seen.borrow().iter().any(|n| n.eta.is_some()));
        assert!(table(&rows).contains("total"));
    }
}
