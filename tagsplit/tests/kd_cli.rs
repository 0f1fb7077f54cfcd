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

use std::process::{Child, Command, Stdio};

fn bin() -> Command {
    common::bin()
}

/// A port that was free a moment ago.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str]) -> Server {
    let child = bin()
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server(child)
}

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

/// Waits until the KDCOM server accepts connections (the probe attaches and leaves).
fn wait_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("server on port {port} did not come up");
}

fn run_json(target: &str) -> serde_json::Value {
    let journal = std::env::temp_dir().join(format!(
        "tagsplit-kdcli-{}-{}.journal.json",
        std::process::id(),
        target.len()
    ));
    let out = bin()
        .args([
            "run",
            "--target",
            target,
            "--tag",
            "Leak",
            "--json",
            "--stats",
            "--journal",
        ])
        .arg(&journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !target.starts_with("sim:") {
        assert!(
            stderr.contains("round trips"),
            "--stats prints the wire counters: {stderr}"
        );
    }
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["target"] = serde_json::Value::Null;
    v
}

#[test]
fn run_over_kdcom_and_kdnet_equals_in_process() {
    let want = run_json("sim:part4");
    let port = free_port(false);
    let _server = serve(&[
        "--scenario",
        "part4",
        "--kdcom",
        &format!("127.0.0.1:{port}"),
    ]);
    wait_listening(port);
    assert_eq!(run_json(&format!("kdcom:127.0.0.1:{port}")), want);

    let port = free_port(true);
    let _server = serve(&[
        "--scenario",
        "part4",
        "--kdnet",
        &format!("127.0.0.1:{port}"),
        "--key",
        "1.2.3.4",
    ]);
    assert_eq!(
        run_json(&format!(
            "kdnet:port={port},key=1.2.3.4,host=127.0.0.1,timeout=20"
        )),
        want
    );
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
        assert!(text.contains("[wire: "), "{via}: --stats");
        assert!(text.contains("0 retransmissions"));
        assert_eq!(strip(&text), sim, "{via}");
    }
}
