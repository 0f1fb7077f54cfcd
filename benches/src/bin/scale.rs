//! The scale measurement: whole tag splits of generated kernels of 10, 100 and 1,000
//! drivers in process and over loopback GDB, KDNET and KDCOM. Prints a Markdown table and
//! writes it to `benches/scale.md`, with a plot in `benches/scale.svg`.
//!
//! ```sh
//! cargo run --release -p tagsplit-benches --bin scale            # 10, 100, 1000 modules
//! cargo run --release -p tagsplit-benches --bin scale -- 10:20   # other kernels (N:S ...)
//! ```

use std::path::PathBuf;

use tagsplit_benches::scale::{Backend, Row, markdown, measure, plot};

/// Splits per kernel and backend; the table shows the one with the median wall time.
const REPEATS: usize = 3;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kernels: Vec<(usize, usize)> = if args.is_empty() {
        vec![(10, 20), (100, 200), (1000, 500)]
    } else {
        args.iter()
            .map(|a| {
                let (n, s) = a.split_once(':').ok_or(format!("{a:?}: expected N:S"))?;
                Ok((
                    n.parse().map_err(|e| format!("{a:?}: {e}"))?,
                    s.parse().map_err(|e| format!("{a:?}: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?
    };
    // One throwaway split first, so the first row does not pay the process's warm-up.
    measure(Backend::Sim, 10, 20)?;
    let mut rows: Vec<Row> = Vec::new();
    for &(modules, sites) in &kernels {
        for backend in Backend::ALL {
            // The median of a few runs: the machine is shared, one run can be unlucky.
            let mut runs = (0..REPEATS)
                .map(|_| measure(backend, modules, sites))
                .collect::<Result<Vec<Row>, String>>()?;
            runs.sort_by_key(|r| r.split);
            let r = runs.swap_remove(REPEATS / 2);
            eprintln!(
                "{:>5} {:>4} modules {:>3} sites: {:.3} s (setup {:.3} s) {:?} {}",
                backend.name(),
                modules,
                sites,
                r.split.as_secs_f64(),
                r.setup.as_secs_f64(),
                r.phases,
                r.wire.map(|w| w.to_string()).unwrap_or_default(),
            );
            rows.push(r);
        }
    }
    rows.sort_by_key(|r| (r.backend, r.modules));
    let table = markdown(&rows);
    print!("{table}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let md = format!(
        "Made by `cargo run --release -p tagsplit-benches --bin scale`: a whole tag split of \
         generated `scale:N:S` kernels (N drivers of 64 KiB on average with real code, S \
         allocation sites sharing `Gsc `, one leaking; 8 samples of 32 ticks) in process and \
         over loopback GDB, KDNET and KDCOM on {}. Times in ms; wire counters of the split \
         alone (attach and boot not included); each row the median of {REPEATS} splits. Each phase: ms (round trips). Plot: \
         `scale.svg` (KDNET and KDCOM make the same round trips: their lines overlap).\n\n{table}",
        machine()
    );
    std::fs::write(dir.join("scale.md"), md).map_err(|e| e.to_string())?;
    plot(&rows, &dir.join("scale.svg"))?;
    eprintln!(
        "wrote {} and {}",
        dir.join("scale.md").display(),
        dir.join("scale.svg").display()
    );
    Ok(())
}

/// `N cores, MODEL` from /proc/cpuinfo, as far as it says.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("an unknown CPU", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores ({model})")
}
