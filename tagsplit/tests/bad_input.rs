#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Bad input gets a clear error that says what is wrong and where, and a non-zero exit:
//! truncated and corrupt captures, malformed scenario files, a bad KDNET key, corrupt
//! journals; unknown console commands and bad addresses get WinDbg's messages.

mod common;

use std::path::PathBuf;

use common::{tagsplit, temp_dir};
use tagsplit::console::Console;
use tagsplit::target::sim::SimTarget;

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/captures/kdnet-win10-10586-key-8.8.8.8.pcapng.gz"
);

/// Runs `tagsplit ARGS`, expects failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = tagsplit(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    err
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn truncated_and_corrupt_captures() {
    let dir = temp_dir("bad-captures");
    let whole = std::fs::read(CAPTURE).unwrap();
    let cut = write(&dir, "cut.pcapng.gz", &whole[..whole.len() / 3]);
    let err = fails(&["decode", cut.to_str().unwrap(), "--key", "8.8.8.8"]);
    assert!(err.contains("gzip"), "{err}");
    // A gzip header over garbage.
    let mut bad = whole[..10].to_vec();
    bad.extend_from_slice(&[0xff; 64]);
    let bad = write(&dir, "bad.pcapng.gz", &bad);
    let err = fails(&["decode", bad.to_str().unwrap()]);
    assert!(err.contains("gzip"), "{err}");
}

#[test]
fn malformed_scenario_files_name_the_problem() {
    let dir = temp_dir("bad-scenarios");
    let unknown = write(&dir, "unknown.toml", b"[scenario]\nname = 3\n");
    let err = fails(&[
        "run",
        "--target",
        &format!("sim:{}", unknown.display()),
        "--tag",
        "Leak",
    ]);
    assert!(
        err.contains("unknown field `scenario`") && err.contains("line 1"),
        "{err}"
    );
    let wrong_type = write(&dir, "type.toml", b"name = 3\n");
    let err = fails(&[
        "run",
        "--target",
        &format!("sim:{}", wrong_type.display()),
        "--tag",
        "Leak",
    ]);
    assert!(err.contains("name") && err.contains("line 1"), "{err}");
    let missing = dir.join("missing.toml");
    let err = fails(&[
        "console",
        "--target",
        &format!("sim:{}", missing.display()),
        "-c",
        "lm",
    ]);
    assert!(
        err.contains("missing.toml") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn a_bad_kdnet_key_is_refused_before_listening() {
    for (key, what) in [
        ("not-a-key", "four parts"),
        ("1.2.3", "four parts"),
        ("1.2.3.!", "key part \"!\" is not a base-36 number"),
    ] {
        let err = fails(&[
            "run",
            "--target",
            &format!("kdnet:port=0,key={key}"),
            "--tag",
            "Leak",
        ]);
        assert!(err.contains("key:") && err.contains(what), "{key}: {err}");
    }
}

#[test]
fn corrupt_journals_are_named_and_kept() {
    let dir = temp_dir("bad-journals");
    for (name, body, what) in [
        (
            "cut.json",
            &b"{\"format\":\"tagsplit-journal\""[..],
            "EOF while parsing",
        ),
        ("other.json", &b"{\"hello\":1}"[..], "missing field"),
        (
            "foreign.json",
            &b"{\"format\":\"x\",\"version\":1,\"target\":\"t\",\"tag\":\"Leak\",\"patches\":[]}"[..],
            "not a tagsplit journal",
        ),
    ] {
        let p = write(&dir, name, body);
        let err = fails(&[
            "restore",
            "--target",
            "sim:part4",
            "--journal",
            p.to_str().unwrap(),
        ]);
        assert!(
            err.contains(&p.display().to_string()) && err.contains(what),
            "{name}: {err}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), body, "{name} is left alone");
    }
}

#[test]
fn console_errors_are_windbg_messages() {
    let mut t = SimTarget::builtin("part4").unwrap();
    let mut c = Console::new();
    let out = c.execute(&mut t, "frobnicate");
    assert!(out.contains("Syntax error in 'frobnicate'"), "{out}");
    let out = c.execute(&mut t, "db zzz");
    assert!(out.contains("Couldn't resolve error at 'zzz'"), "{out}");
    let out = c.execute(&mut t, "db 0 l4");
    assert!(out.contains("?? ?? ?? ??"), "{out}");
}
