#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! `tagsplit decode` from the command line.

mod common;

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/captures/kdnet-win10-10586-key-8.8.8.8.pcapng.gz"
);

fn tagsplit(args: &[&str]) -> std::process::Output {
    assert!(
        std::path::Path::new(CAPTURE).exists(),
        "capture missing: {CAPTURE}"
    );
    common::tagsplit(args)
}

#[test]
fn decode_text_json_and_wrong_key() {
    let out = tagsplit(&["decode", CAPTURE, "--key", "8.8.8.8"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("authenticated 955, not 0"));
    assert!(
        text.contains("data key: 6bd91c57bd6a551ad30b509c05c0c95b32cc5e47a0866907eaf0b1583384f660")
    );

    let out = tagsplit(&["decode", CAPTURE, "--key", "8.8.8.8", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["totals"]["by_type"]["KD_STATE_MANIPULATE"], 187);

    let out = tagsplit(&["decode", CAPTURE, "--key", "1.2.3.4"]);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing is printed as data with a wrong key"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("authenticates"));
}
