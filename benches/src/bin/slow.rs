//! Splits over slow links: the `part4` split and generated kernels over GDB, KDNET and
//! KDCOM through an in-process relay (`tagsplit::relay`) that adds latency and paces
//! bytes, one table per link, each row checked (verdict and restore). Writes
//! `benches/slow.md`.
//!
//! ```sh
//! cargo run --release -p tagsplit-benches --bin slow           # every link and kernel
//! cargo run --release -p tagsplit-benches --bin slow -- part4  # part4 only
//! SLOW_PHASES=1 cargo run --release -p tagsplit-benches --bin slow  # and every row by phase
//! ```

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tagsplit::PoolTag;
use tagsplit::split::traffic::table;
use tagsplit_benches::scale::{Backend, Row, measure_over};
use tagsplit_protocol::impair::Impairment;
use tagsplit_protocol::rto::SERIAL_115200;
use tagsplit_target_sim::builtins::{SCALE_TAG, scale};
use tagsplit_target_sim::scenario::Scenario;

/// A link: its name, the impairment of each direction (`None`: straight loopback), and
/// the kernels measured over it.
struct Link {
    name: &'static str,
    impairment: Option<Impairment>,
    kernels: &'static [Kernel],
    backends: &'static [Backend],
}

/// A kernel to split, and the goal of issue 13 for it on a link, if any.
#[derive(Clone, Copy)]
struct Kernel {
    name: &'static str,
    /// `(modules, sites)` of a `scale:N:S` kernel; `None` for `part4`.
    scale: Option<(usize, usize)>,
}

const PART4: Kernel = Kernel {
    name: "part4",
    scale: None,
};
const SCALE_250: Kernel = Kernel {
    name: "scale:250:125",
    scale: Some((250, 125)),
};
const SCALE_1000: Kernel = Kernel {
    name: "scale:1000:500",
    scale: Some((1000, 500)),
};
const NETWORK: [Backend; 3] = [Backend::Gdb, Backend::Kdnet, Backend::Kdcom];

/// Latency each way for a round trip of `ms` milliseconds.
fn round_trip(ms: f64) -> Impairment {
    Impairment::default().with_delay(Duration::from_secs_f64(ms / 2000.0))
}

fn links() -> Vec<Link> {
    vec![
        Link {
            name: "loopback",
            impairment: None,
            kernels: &[PART4, SCALE_250, SCALE_1000],
            backends: &NETWORK,
        },
        Link {
            name: "1 ms round trip (0.5 ms each way)",
            impairment: Some(round_trip(1.0)),
            kernels: &[PART4, SCALE_250, SCALE_1000],
            backends: &NETWORK,
        },
        Link {
            name: "10 ms round trip (5 ms each way)",
            impairment: Some(round_trip(10.0)),
            kernels: &[PART4, SCALE_250],
            backends: &NETWORK,
        },
        Link {
            name: "115,200 baud (11,520 bytes/s each way, 1 ms round trip)",
            impairment: Some(round_trip(1.0).with_rate(SERIAL_115200)),
            kernels: &[PART4],
            backends: &[Backend::Kdcom, Backend::Gdb],
        },
    ]
}

/// Issue 13's goal for `kernel` over `backend` on the link named `link`, in seconds.
fn goal(link: &str, backend: Backend, kernel: &str) -> Option<f64> {
    match (link.split(' ').next(), kernel) {
        (Some("115,200"), "part4") if backend == Backend::Kdcom => Some(10.0),
        (Some("1"), "part4") if backend != Backend::Kdcom => Some(0.5),
        (Some("1"), "scale:250:125") => Some(2.0),
        (Some("10"), "scale:250:125") => Some(10.0),
        (Some("1"), "scale:1000:500") => Some(5.0),
        _ => None,
    }
}

fn scenario(k: Kernel) -> Result<(Scenario, PoolTag), String> {
    match k.scale {
        None => Ok((
            Scenario::builtin("part4").ok_or("no part4")?,
            PoolTag::new(*b"Leak"),
        )),
        Some((n, s)) => Ok((scale(n, s).ok_or("no scale kernel")?, SCALE_TAG)),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut md = String::new();
    let mut serial_phases = None;
    for link in links() {
        let _ = writeln!(
            md,
            "### {}\n\n| backend | kernel | split | round trips | bytes sent | bytes received | sent again | verdict and restore | goal |\n|---|---|---:|---:|---:|---:|---:|---|---|",
            link.name
        );
        for kernel in link.kernels {
            if !only.is_empty() && !only.iter().any(|o| o == kernel.name) {
                continue;
            }
            let (sc, tag) = scenario(*kernel)?;
            for &backend in link.backends {
                let r: Row = measure_over(backend, &sc, tag, link.impairment.as_ref())?;
                let w = r.wire.unwrap_or_default();
                let secs = r.split.as_secs_f64();
                let goal = goal(link.name, backend, kernel.name).map_or(String::new(), |g| {
                    format!(
                        "under {g} s: {}",
                        if secs < g && r.correct {
                            "**holds**"
                        } else {
                            "**misses**"
                        }
                    )
                });
                eprintln!(
                    "{:<12} {:<6} {:<15} {:>8.3} s  {}  {}",
                    link.name.split(' ').take(2).collect::<Vec<_>>().join(" "),
                    backend.name(),
                    kernel.name,
                    secs,
                    w,
                    goal
                );
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.3} s | {} | {} | {} | {} | {} | {} |",
                    backend.name(),
                    kernel.name,
                    secs,
                    w.round_trips,
                    w.bytes_sent,
                    w.bytes_received,
                    w.retransmissions,
                    if r.correct { "right" } else { "WRONG" },
                    goal
                );
                if std::env::var_os("SLOW_PHASES").is_some() {
                    eprint!("{}", table(&r.phases));
                }
                if link.name.starts_with("115,200") && backend == Backend::Kdcom {
                    serial_phases = Some(table(&r.phases));
                }
            }
        }
        md.push('\n');
    }
    if let Some(t) = serial_phases {
        let _ = writeln!(
            md,
            "`part4` over KDCOM at 115,200 baud, by phase (`run --stats` prints the same):\n\n```text\n{t}```"
        );
    }
    print!("{md}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slow.md");
    std::fs::write(&path, &md).map_err(|e| e.to_string())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
