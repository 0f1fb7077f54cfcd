#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `--pcap FILE` and `--log-packets FILE` from the command line: a `part4` split over
//! KDCOM and over KDNET recorded as pcapng that `tagsplit decode` dissects (and, where
//! installed, `tshark`/`capinfos` read without complaint); `demo --via gdb` logged in
//! gdb's format; the options refused, plainly, where they do not apply.
//!
//! The Wireshark checks are skipped with a notice when `tshark` is not installed, unless
//! `CI=true`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{serve, tagsplit, wait_for};
use tagsplit_protocol::gdb::Command as Rsp;
use tagsplit_protocol::gdb::transcript::parse_log;

/// part4's two allocation sites with the tag `Leak` (the article's addresses).
const SITES: [&str; 2] = ["0xfffff8800496e3aa", "0xfffff8800496e621"];

/// `tagsplit run --target TARGET --tag Leak --pcap FILE`; `before` runs once the run has
/// started, with its stderr lines. Returns stdout.
fn run_recorded(
    target: &str,
    pcap: &Path,
    before: impl FnOnce(&std::sync::mpsc::Receiver<String>),
) -> String {
    let journal = pcap.with_extension("journal.json");
    let args = [
        "run",
        "--target",
        target,
        "--tag",
        "Leak",
        "--journal",
        journal.to_str().unwrap(),
        "--pcap",
        pcap.to_str().unwrap(),
    ];
    String::from_utf8(common::run_watching(&args, before).0).unwrap()
}

/// `tagsplit decode FILE [--key K]`: the text and the JSON report.
fn decode(pcap: &Path, key: Option<&str>) -> (String, serde_json::Value) {
    let mut args = vec!["decode".to_string(), pcap.display().to_string()];
    if let Some(k) = key {
        args.extend(["--key".to_string(), k.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = tagsplit(&args);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let mut json_args = args.clone();
    json_args.push("--json");
    let json = tagsplit(&json_args);
    assert!(json.status.success());
    (
        String::from_utf8(text.stdout).unwrap(),
        serde_json::from_slice(&json.stdout).unwrap(),
    )
}

/// What every recorded split must show: the file is pcapng, every KD packet's checksum
/// holds, and the state-manipulate traffic of the split is there, requests (status
/// pending, 0x103) and replies (status 0) of both patches' writes and reads.
fn check_split_capture(text: &str, report: &serde_json::Value) {
    assert_eq!(report["format"], "pcapng");
    let totals = &report["totals"];
    assert_eq!(totals["bad_checksums"], 0, "{totals}");
    assert!(totals["by_type"]["KD_STATE_MANIPULATE"].as_u64().unwrap() > 100);
    for api in [
        "ReadVirtualMemory",
        "WriteVirtualMemory",
        "SearchMemory",
        "GetVersion",
    ] {
        assert!(
            totals["by_api"][api].as_u64().unwrap_or(0) >= 2,
            "{api}: {totals}"
        );
    }
    for site in SITES {
        for (what, status) in [
            ("WriteVirtualMemory", "0x103"),
            ("WriteVirtualMemory", "0x0"),
            ("ReadVirtualMemory", "0x103"),
            ("ReadVirtualMemory", "0x0"),
        ] {
            let want = format!("{what}(0x31");
            let at = format!("status={status} address={site}");
            assert!(
                text.lines().any(|l| l.contains(&want) && l.contains(&at)),
                "no {what} with {at} in the decode"
            );
        }
    }
}

/// Wireshark's own reader on the file: `capinfos` sees pcapng with Ethernet frames and
/// as many packets as we decoded; `tshark` dissects every frame as `proto` (udp, tcp)
/// and its TCP analysis finds nothing wrong (no lost segments, retransmissions or
/// out-of-order data: the sequence numbers add up).
fn check_with_wireshark(pcap: &Path, proto: &str, frames: u64) {
    if !common::have_tool_with("tshark", "-v", "the Wireshark check of --pcap files") {
        return;
    }
    let run = |cmd: &str, args: &[&str]| -> String {
        let out = Command::new(cmd)
            .args(args)
            .arg(pcap)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd} {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let info = run("capinfos", &["-t", "-E", "-c"]);
    assert!(info.contains("pcapng"), "{info}");
    assert!(info.contains("Ethernet"), "{info}");
    assert!(info.contains(&format!("{frames}")), "{info}");
    let protocols = run("tshark", &["-T", "fields", "-e", "frame.protocols", "-r"]);
    assert_eq!(protocols.lines().count() as u64, frames);
    let want = format!("eth:ethertype:ip:{proto}");
    assert!(
        protocols.lines().all(|l| l.starts_with(&want)),
        "not all {want}: {protocols}"
    );
    let problems = run(
        "tshark",
        &[
            "-Y",
            "tcp.analysis.flags && !tcp.analysis.window_update",
            "-r",
        ],
    );
    assert!(
        problems.trim().is_empty(),
        "tshark's TCP analysis: {problems}"
    );
}

#[test]
fn a_split_over_kdcom_recorded_with_pcap_decodes() {
    let dir = common::temp_dir("pcap-kdcom");
    let pcap = dir.join("kdcom.pcapng");
    let (_server, addr) = serve(
        &["--scenario", "part4", "--kdcom", "127.0.0.1:0"],
        "over KDCOM (TCP) on ",
    );
    let out = run_recorded(&format!("kdcom:{addr}"), &pcap, |_| {});
    assert!(out.contains("2 sites patched"), "{out}");
    let (text, report) = decode(&pcap, None);
    check_split_capture(&text, &report);
    // The stream between our port and the stub's, both ways.
    assert!(text.contains(&format!("-> {addr} ")), "{text}");
    assert!(text.contains(&format!("tcp {addr} -> ")));
    let frames = report["totals"]["frames"].as_u64().unwrap();
    check_with_wireshark(&pcap, "tcp", frames);
}

#[test]
fn a_split_over_kdnet_recorded_with_pcap_decodes() {
    let dir = common::temp_dir("pcap-kdnet");
    let pcap = dir.join("kdnet.pcapng");
    let mut server = None;
    let mut host = String::new();
    let out = run_recorded(
        "kdnet:port=0,key=1.2.3.4,host=127.0.0.1,timeout=60",
        &pcap,
        |err| {
            host = wait_for(err, "waiting for a KDNET target on ");
            server = Some(serve(
                &["--scenario", "part4", "--kdnet", &host, "--key", "1.2.3.4"],
                "over KDNET from ",
            ));
        },
    );
    let (_server, stub) = server.unwrap();
    let stub = stub.trim_end_matches(',');
    assert!(out.contains("2 sites patched"), "{out}");
    let (text, report) = decode(&pcap, Some("1.2.3.4"));
    check_split_capture(&text, &report);
    // Every datagram authenticates with the key: the handshake is in the file.
    let totals = &report["totals"];
    assert_eq!(totals["datagrams"], totals["authenticated"], "{totals}");
    assert!(totals["pokes"].as_u64().unwrap() >= 1, "{totals}");
    // The real addresses and ports: the stub's socket and our listener.
    let first = &report["datagrams"][0];
    assert_eq!(first["src"], serde_json::json!(stub));
    assert_eq!(first["dst"], serde_json::json!(host));
    let frames = report["totals"]["frames"].as_u64().unwrap();
    check_with_wireshark(&pcap, "udp", frames);
    // Without the key, nothing is shown as data.
    let wrong = tagsplit(&["decode", &pcap.display().to_string(), "--key", "9.9.9.9"]);
    assert!(!wrong.status.success());
}

#[test]
fn the_stub_records_kdcom_too_and_both_ends_see_the_same_packets() {
    let dir = common::temp_dir("pcap-stub");
    let (ours, theirs) = (dir.join("client.pcapng"), dir.join("stub.pcapng"));
    let (server, addr) = serve(
        &[
            "--scenario",
            "part4",
            "--kdcom",
            "127.0.0.1:0",
            "--pcap",
            theirs.to_str().unwrap(),
        ],
        "over KDCOM (TCP) on ",
    );
    run_recorded(&format!("kdcom:{addr}"), &ours, |_| {});
    drop(server);
    let (_, a) = decode(&ours, None);
    let (_, b) = decode(&theirs, None);
    // Per direction (the two ends may interleave the directions differently), the same
    // packets in the same order.
    let per_direction = |r: &serde_json::Value| -> std::collections::BTreeMap<String, Vec<String>> {
        let mut m = std::collections::BTreeMap::<String, Vec<String>>::new();
        for p in r["packets"].as_array().unwrap() {
            m.entry(p["transport"].as_str().unwrap().to_string())
                .or_default()
                .push(p["summary"].as_str().unwrap().to_string());
        }
        m
    };
    let (a, b) = (per_direction(&a), per_direction(&b));
    assert_eq!(a.len(), 2, "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (flow, ours) in &a {
        let theirs = &b[flow];
        assert!(ours.len() > 100, "{flow}");
        // What one end sent after the other stopped reading (a packet sent again to a
        // debugger that has left) is only in that end's file.
        let n = ours.len().min(theirs.len());
        assert!(n > 100, "{flow}: {} vs {}", ours.len(), theirs.len());
        assert_eq!(
            ours[..n],
            theirs[..n],
            "{flow}: the two ends saw different packets"
        );
    }
}

/// `tagsplit demo --via VIA OPTION DIR/FILE` (its plot in DIR too), which must succeed;
/// returns the recording's path.
fn demo(via: &str, option: &str, dir: &str, file: &str) -> std::path::PathBuf {
    let dir = common::temp_dir(dir);
    let path = dir.join(file);
    let plot = dir.join("demo.svg");
    let args = [
        "demo",
        "--via",
        via,
        option,
        path.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    let out = tagsplit(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[test]
fn demo_via_gdb_logs_every_session_in_gdbs_format() {
    let log = demo("gdb", "--log-packets", "demo-log", "demo.log");
    let bytes = std::fs::read(&log).unwrap();
    assert!(bytes.starts_with(b"\nw $qSupported:"));
    let text = String::from_utf8_lossy(&bytes);
    // Part 4 by hand, the automated split, Part 5 by hand.
    assert_eq!(text.matches("\nEnd of log\n").count(), 3, "three sessions");
    let ex = parse_log(&bytes);
    assert!(
        ex.iter()
            .filter(|e| e.command.starts_with(b"qSupported"))
            .count()
            == 3
    );
    assert!(
        ex.iter().all(|e| e.reply.is_some()),
        "every command answered"
    );
    // The split's patches, as `X` writes of the new tags, answered OK.
    for (site, byte) in [(0xfffff8800496e3ad_u64, b'1'), (0xfffff8800496e624, b'2')] {
        assert!(
            ex.iter().any(|e| matches!(
                Rsp::parse(&e.command),
                Rsp::WriteMemoryBinary { addr, data } if addr <= site && site < addr + data.len() as u64 && data[(site - addr) as usize] == byte
            ) && e.reply.as_deref() == Some(b"OK")),
            "no write of {byte} at {site:#x}"
        );
    }
}

#[test]
fn demo_via_kdcom_records_every_session_in_one_capture() {
    let pcap = demo("kdcom", "--pcap", "demo-pcap", "demo.pcapng");
    let (text, report) = decode(&pcap, None);
    check_split_capture(&text, &report);
    // Three connections (Part 4 by hand, the split, Part 5 by hand), each both ways.
    let flows: std::collections::BTreeSet<&str> = report["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["transport"].as_str().unwrap())
        .collect();
    assert_eq!(flows.len(), 6, "{flows:?}");
    // The transcript's `eb` of each site's fourth byte (request and reply); the split's
    // patch and restore of the tag (checked above).
    let writes_at = |addr: u64| {
        text.lines()
            .filter(|l| {
                l.contains("WriteVirtualMemory") && l.contains(&format!("address={addr:#x} "))
            })
            .count()
    };
    for site in SITES {
        let site = u64::from_str_radix(site.trim_start_matches("0x"), 16).unwrap();
        // (At least: a packet sent again on a loaded machine shows twice.)
        assert!(writes_at(site + 3) >= 2, "the eb at {site:#x}+3");
        assert!(writes_at(site) >= 4, "the patch and restore at {site:#x}");
    }
}

#[test]
fn options_that_do_not_apply_are_refused_plainly_before_connecting() {
    let dir = common::temp_dir("record-refused");
    let file = dir.join("never.out");
    let f = file.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "run",
                "--target",
                "kdnet:port=0,key=1.2.3.4",
                "--tag",
                "Leak",
                "--log-packets",
                f,
            ],
            "--log-packets does not apply to kdnet:port=0,key=1.2.3.4: it logs GDB remote-protocol traffic, and this is a KD target (record its traffic with --pcap FILE)",
        ),
        (
            &[
                "console",
                "--target",
                "kdcom:127.0.0.1:9",
                "-c",
                "lm",
                "--log-packets",
                f,
            ],
            "--log-packets does not apply to kdcom:127.0.0.1:9",
        ),
        (
            &[
                "console",
                "--target",
                "gdb://127.0.0.1:9",
                "-c",
                "lm",
                "--pcap",
                f,
            ],
            "--pcap does not apply to gdb://127.0.0.1:9: it records KDNET and KDCOM traffic, and this is a GDB remote-protocol target (log its packets with --log-packets FILE)",
        ),
        (
            &["console", "--target", "sim:part4", "-c", "lm", "--pcap", f],
            "--pcap does not apply to sim:part4: the simulator runs in this process and has no wire to record",
        ),
        (
            &["demo", "--via", "kdcom", "--log-packets", f],
            "--log-packets does not apply to kdcom:loopback",
        ),
        (
            &["demo", "--via", "gdb", "--pcap", f],
            "--pcap does not apply to gdb://loopback",
        ),
        (
            &["serve", "--kdcom", "127.0.0.1:0", "--log-packets", f],
            "--log-packets logs GDB remote-protocol traffic, and this serves no GDB stub",
        ),
        (
            &["serve", "--gdb", "127.0.0.1:0", "--pcap", f],
            "--pcap records KDNET and KDCOM traffic, and this serves neither",
        ),
    ];
    for (args, want) in cases {
        let out = tagsplit(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        // Refused before anything was opened: no connection error, no file.
        assert!(
            !err.contains("refused") && !err.contains("timed out"),
            "{err}"
        );
        assert!(!file.exists(), "{args:?} created the file");
    }
}
