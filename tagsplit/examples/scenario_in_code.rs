//! A scenario written in code (as TOML), booted in process, and split in a few lines.
//!
//! `cargo run -p tagsplit --example scenario_in_code`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use tagsplit::PoolTag;
use tagsplit::split::{Split, SplitOptions};
use tagsplit::target::sim::SimTarget;
use tagsplit_target_sim::scenario::Scenario;

const SCENARIO: &str = r#"
name = "widget"
description = "widget.sys: three sites share the tag Wdgt; the paged one leaks"
run_ticks = 600

[[modules]]
name = "widget.sys"
size = 0x6000

[[modules.sites]]          # allocates and frees: load
kind = "alloc"
tag = "Wdgt"
pool = "nonpaged"
size = 256
every = 2
free_after = 20

[[modules.sites]]          # leaks
kind = "alloc"
tag = "Wdgt"
pool = "paged"
size = 4096
every = 5

[[modules.sites]]          # the matching free: reported, never patched
kind = "free"
tag = "Wdgt"
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = Scenario::from_toml(SCENARIO)?;
    let mut target = SimTarget::boot(&scenario)?;
    let report = Split::new(&mut target, PoolTag::new(*b"Wdgt"), SplitOptions::default()).run()?;
    print!("{}", report.to_text());
    let leak = report.leaks().next().expect("one site leaks");
    assert_eq!(leak.hit.module, "widget.sys");
    Ok(())
}
