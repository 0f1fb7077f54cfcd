#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Every committed corpus file (`fuzz/corpus/<target>/`) and every past finding
//! (`fuzz/regressions/<target>/`) replayed through its target's body, on stable, one test
//! per target; and the fuzz crate checked against [`TARGETS`] so no target is left out of
//! either driver.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use tagsplit_fuzz_targets::{TARGETS, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files in `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs every file under `fuzz/<kind>/<name>/` through the target; returns how many ran.
/// Fails naming each input that panicked.
fn replay(kind: &str, name: &str) -> usize {
    let run = target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let inputs = files(&fuzz_dir().join(kind).join(name));
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap();
            catch_unwind(AssertUnwindSafe(|| run(&data))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{name}: these inputs panic: {failed:#?}");
    inputs.len()
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let corpus = replay("corpus", stringify!($name));
                assert!(corpus > 0, "fuzz/corpus/{} is empty", stringify!($name));
                replay("regressions", stringify!($name));
            }
        )*
        /// The targets this file replays, to check against [`TARGETS`].
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay_tests!(
    capture_decode,
    console_command,
    gdb_client_session,
    gdb_command,
    gdb_decoder,
    gdb_remotelog,
    gdb_server_session,
    gdb_stub,
    gdb_stub_commands,
    kd_payload,
    kd_session,
    kd_stream,
    kd_stub,
    kdnet_open,
    pooltag_parse,
    scenario_toml,
    unwind,
);

#[test]
fn every_target_is_replayed_built_and_seeded() {
    let listed: BTreeSet<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let replayed: BTreeSet<&str> = REPLAYED.iter().copied().collect();
    assert_eq!(listed, replayed, "TARGETS and the replay tests differ");

    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let bins: BTreeSet<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "tagsplit-fuzz")
        .collect();
    assert_eq!(
        listed, bins,
        "TARGETS and fuzz/Cargo.toml's [[bin]]s differ"
    );

    for name in &listed {
        let src = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("tagsplit_fuzz_targets::{name}::run(data)")),
            "fuzz/fuzz_targets/{name}.rs does not call its body"
        );
    }
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz_dir().join(kind))
            .into_iter()
            .flatten()
        {
            let dir = dir.unwrap().file_name();
            let dir = dir.to_string_lossy();
            assert!(
                listed.contains(dir.as_ref()),
                "fuzz/{kind}/{dir} has no target"
            );
        }
    }
}

#[test]
fn the_committed_corpora_hold_at_least_fifty_files() {
    let total: usize = TARGETS
        .iter()
        .map(|(n, _)| files(&fuzz_dir().join("corpus").join(n)).len())
        .sum();
    assert!(total >= 50, "only {total} corpus files");
}
