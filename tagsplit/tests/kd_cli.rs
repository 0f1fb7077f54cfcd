#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `tagsplit serve --kdnet/--kdcom` + `tagsplit run --target kdnet:/kdcom:` from the
//! command line give the same report as in process; `demo --via kdnet|kdcom`.

mod common;

use std::process::Command;
use std::sync::mpsc::Receiver;

fn bin() -> Command {
    common::bin()
}

use common::{serve, wait_for};

/// Replaces target specs (`sim:…`, `kdnet:…`, `kdcom:…`) in a line with `T`.
fn mask_targets(line: &str) -> String {
    let mut out = String::new();
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if ["sim:", "kdnet:", "kdcom:"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            out.push('T');
            if word.ends_with(':') {
                out.push(':');
            }
        } else {
            out.push_str(word);
        }
    }
    out
}

/// `tagsplit run --target TARGET --tag Leak --json --stats`; `before` runs once the run
/// has started, with its stderr lines (for a KDNET debugger, to learn its port).
fn run_json_with(target: &str, before: impl FnOnce(&Receiver<String>)) -> serde_json::Value {
    let journal = std::env::temp_dir().join(format!(
        "tagsplit-kdcli-{}-{}.journal.json",
        std::process::id(),
        target.len()
    ));
    let journal = journal.to_str().unwrap();
    let args = [
        "run",
        "--target",
        target,
        "--tag",
        "Leak",
        "--json",
        "--stats",
        "--journal",
        journal,
    ];
    let (stdout, stderr) = common::run_watching(&args, before);
    if !target.starts_with("sim:") {
        assert!(
            stderr.contains("round trips"),
            "--stats prints the wire counters: {stderr}"
        );
    }
    let mut v: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    v["target"] = serde_json::Value::Null;
    v
}

fn run_json(target: &str) -> serde_json::Value {
    run_json_with(target, |_| {})
}

#[test]
fn run_over_kdcom_and_kdnet_equals_in_process() {
    let want = run_json("sim:part4");
    // Every server binds port 0 and says where it is.
    let (_server, addr) = serve(
        &["--scenario", "part4", "--kdcom", "127.0.0.1:0"],
        "over KDCOM (TCP) on ",
    );
    assert_eq!(run_json(&format!("kdcom:{addr}")), want);

    // KDNET: the debugger binds, prints its port, and the target pokes it.
    let mut server = None;
    let got = run_json_with(
        "kdnet:port=0,key=1.2.3.4,host=127.0.0.1,timeout=60",
        |err| {
            let host = wait_for(err, "waiting for a KDNET target on ");
            server = Some(serve(
                &["--scenario", "part4", "--kdnet", &host, "--key", "1.2.3.4"],
                "over KDNET from ",
            ));
        },
    );
    assert_eq!(got, want);
    drop(server);
}

#[test]
fn demo_via_kd_transports_matches_sim() {
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                !l.starts_with("[wire") && !l.contains("demo finished") && !l.trim().is_empty()
            })
            .map(mask_targets)
            .collect()
    };
    let sim = bin().args(["demo", "--via", "sim"]).output().unwrap();
    assert!(sim.status.success());
    let sim = strip(&String::from_utf8_lossy(&sim.stdout));
    for via in ["kdnet", "kdcom"] {
        let out = bin()
            .args(["demo", "--via", via, "--stats"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{via}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The counters are printed; how many retransmissions a loaded machine needs is
        // not this test's business (the verdicts must match regardless).
        assert!(
            text.contains("[wire: ") && text.contains("retransmissions"),
            "{via}: --stats"
        );
        assert_eq!(strip(&text), sim, "{via}");
    }
}
