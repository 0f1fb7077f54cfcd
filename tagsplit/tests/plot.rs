//! Leak against load as a picture: a split of `part4` drawn as SVG, in the library and
//! through `tagsplit run --plot`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use tagsplit::PoolTag;
use tagsplit::split::{Split, SplitOptions, Verdict};
use tagsplit::target::sim::SimTarget;

/// The points of the thick data line drawn in `stroke` (legend swatches are 1 px wide).
fn data_line(svg: &str, stroke: &str) -> Vec<(i64, i64)> {
    let line = svg
        .split("<polyline")
        .skip(1)
        .map(|p| p.split('>').next().unwrap())
        .find(|p| p.contains(&format!("stroke=\"{stroke}\"")) && !p.contains("stroke-width=\"1\""))
        .unwrap_or_else(|| panic!("no data line in {stroke}"));
    let points = line.split("points=\"").nth(1).unwrap();
    points
        .split('"')
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

#[test]
fn the_leak_climbs_and_the_load_levels_off() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let report = Split::new(&mut t, PoolTag::new(*b"Leak"), SplitOptions::default())
        .run()
        .unwrap();
    let svg = tagsplit::plot::render_svg(&report).unwrap();
    let leak = report
        .sites
        .iter()
        .find(|s| s.verdict == Verdict::Leak)
        .unwrap();
    let load = report
        .sites
        .iter()
        .find(|s| s.verdict == Verdict::Load)
        .unwrap();
    assert!(svg.contains(&tagsplit::plot::label(leak)), "{svg}");
    assert!(svg.contains(&tagsplit::plot::label(load)));
    assert!(tagsplit::plot::label(leak).ends_with("LEAK"));

    // One point per sample (baseline included), left to right.
    let red = data_line(&svg, "#C81E1E");
    let blue = data_line(&svg, "#1E5AC8");
    assert_eq!(red.len(), leak.samples.len());
    assert_eq!(blue.len(), load.samples.len());
    assert!(red.windows(2).all(|w| w[0].0 < w[1].0));
    // SVG's y grows downwards: the leak climbs at every sample, the load stays where it
    // was after the first interval.
    assert!(red.windows(2).all(|w| w[1].1 < w[0].1), "{red:?}");
    assert!(blue[1..].windows(2).all(|w| w[0].1 == w[1].1), "{blue:?}");
    assert!(red.last().unwrap().1 < blue.last().unwrap().1);
}

#[test]
fn run_writes_the_plot_it_is_asked_for() {
    let dir = common::temp_dir("plot");
    let path = dir.join("split.svg");
    let out = common::tagsplit(&[
        "run",
        "--target",
        "sim:part4",
        "--tag",
        "Leak",
        "--journal",
        dir.join("j.json").to_str().unwrap(),
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("Lea2") && svg.contains("LEAK"));

    // A plot that cannot be written is an error, after the split has restored.
    let out = common::tagsplit(&[
        "run",
        "--target",
        "sim:part4",
        "--tag",
        "Leak",
        "--journal",
        dir.join("j2.json").to_str().unwrap(),
        "--plot",
        dir.join("no/such/dir/split.svg").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writing the plot"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 of 2 patches restored"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
