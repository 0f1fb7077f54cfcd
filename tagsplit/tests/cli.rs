//! The command line, end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::tagsplit;

use std::process::Output;

/// `tagsplit run --target sim:part4 --tag Leak --journal DIR/j.json EXTRA...`; returns the
/// output and the journal path.
fn run_part4(test: &str, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let journal = common::temp_dir(test).join("j.json");
    let mut args = vec![
        "run",
        "--target",
        "sim:part4",
        "--tag",
        "Leak",
        "--journal",
        journal.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (tagsplit(&args), journal)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn run_json_names_the_leaking_site() {
    let (o, journal) = run_part4("cli-json", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let leaks: Vec<&serde_json::Value> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "leak")
        .collect();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0]["new_tag"], "Lea2");
    assert_eq!(leaks[0]["hit"]["module"], "myfault.sys");
    assert_eq!(leaks[0]["hit"]["offset"], 0x1621);
    assert_eq!(leaks[0]["patched_instruction"], "mov r8d,3261654Ch");
    assert_eq!(v["restore"]["journal_removed"], true);
    assert!(!journal.exists());
}

#[test]
fn run_text_and_options() {
    let (o, _) = run_part4("cli-text", &["--ticks", "400", "--samples", "4"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("ran 400 ticks in 4 samples"), "{text}");
    assert!(
        text.contains("LEAK: Lea2  myfault.sys+0x1621  mov r8d,3261654Ch"),
        "{text}"
    );
    // Off a terminal there is no progress bar.
    assert!(!String::from_utf8_lossy(&o.stderr).contains("samples"));
}

#[test]
fn pooltag_file_reserves_tags() {
    let file = std::env::temp_dir().join(format!("tagsplit-pooltag-{}.txt", std::process::id()));
    std::fs::write(
        &file,
        "rem test\nLea1 - x.sys - taken\nLea2 - x.sys - taken too\n",
    )
    .unwrap();
    let (o, _) = run_part4("cli-pooltag", &["--pooltag", file.to_str().unwrap()]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("LEAK: Lea4  myfault.sys+0x1621"), "{text}");
}

#[test]
fn console_batch_mode() {
    let o = tagsplit(&[
        "console",
        "--target",
        "sim:part4",
        "-c",
        "lm m myf*; dc fffff880`0496e621 l1; bogus",
    ]);
    // Every command runs; the failed one fails the batch, its error on stderr.
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error in 'bogus': ^ Syntax error in 'bogus'"),
        "{err}"
    );
    let text = stdout(&o);
    assert!(text.contains("0: kd> lm m myf*\nstart             end                 module name\nfffff880`0496d000 fffff880`04974000   myfault    (deferred)\n"), "{text}");
    assert!(text.contains("fffff880`0496e621  6b61654c                             Leak\n"));
    assert!(text.contains("^ Syntax error in 'bogus'"));
}

#[test]
fn console_reads_stdin() {
    use std::io::Write as _;
    let mut child = common::bin()
        .args(["console", "--target", "sim:part4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"? 0n10\nq\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0: kd> ? 0n10\nEvaluate expression: 10 = 00000000`0000000a\n0: kd> q"),
        "{text}"
    );
}

#[test]
fn scenarios_and_bad_targets() {
    let o = tagsplit(&["scenarios"]);
    assert!(stdout(&o).contains("sim:part4") && stdout(&o).contains("sim:many-sites"));
    let o = tagsplit(&["run", "--target", "sim:nope", "--tag", "Leak"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no built-in scenario"));
    let o = tagsplit(&["run", "--target", "gdb://127.0.0.1:1", "--tag", "Leak"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("opening target gdb://127.0.0.1:1"));
    let o = tagsplit(&["run", "--target", "kdcom:127.0.0.1:1", "--tag", "Leak"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("opening target kdcom:127.0.0.1:1"));
    let o = tagsplit(&["run", "--target", "sim:part4", "--tag", "TooLong"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad tag"));
}

#[test]
fn restore_command_uses_the_journal() {
    let dir = common::temp_dir("cli-restore");
    let journal = dir.join("j.json");
    // A journal for patches that are not (or no longer) in memory: restore finds the
    // original bytes already there and removes the journal.
    let j = r#"{"format":"tagsplit-journal","version":1,"target":"sim:part4","tag":"Leak","patches":[
        {"module":"myfault.sys","base":18446735827449335808,"offset":5665,"address":18446735827449341473,"original":"4c65616b","new":"4c656132"}]}"#;
    std::fs::write(&journal, j).unwrap();
    let restore = || {
        tagsplit(&[
            "restore",
            "--journal",
            journal.to_str().unwrap(),
            "--target",
            "sim:part4",
        ])
    };
    let o = restore();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("AlreadyOriginal"));
    assert!(!journal.exists());
    std::fs::write(&journal, "not json").unwrap();
    let o = restore();
    assert!(!o.status.success());
}

#[test]
fn stacks_names_the_leaking_caller_first() {
    let o = tagsplit(&[
        "stacks",
        "--target",
        "sim:part4",
        "--tag",
        "Leak",
        "--breaks",
        "30",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["breaks"], 30);
    assert_eq!(v["stacks"][0]["frames"][0], "myfault+0x1634");
    assert_eq!(v["stacks"][0]["frees"], 0);
    assert_eq!(v["stacks"][1]["frames"][0], "myfault+0x13bf");
    assert_eq!(v["pool_hit_tag_restored"], 0xffff_ff0f_u32);
    let text = stdout(&tagsplit(&[
        "stacks",
        "--target",
        "sim:part4",
        "--tag",
        "Leak",
        "--breaks",
        "30",
    ]));
    assert!(
        text.lines().nth(1).unwrap().starts_with("LEAKING: ")
            && text.contains("\n    myfault+0x1634\n")
            && text.ends_with("nt!PoolHitTag restored to ffffff0f\n"),
        "{text}"
    );
}

/// A journal left for a target (a split, or a stacks run that was killed) blocks
/// `stacks` on it before anything is sent, and names the restore command.
#[test]
fn stacks_refuses_a_target_with_a_journal_left() {
    use tagsplit::split::journal::{Journal, JournalStore};
    use tagsplit::target::TargetIdentity;

    let state = std::env::temp_dir().join(format!("tagsplit-test-state-{}", std::process::id()));
    let store = JournalStore::new(state.join("tagsplit"));
    let spec = "gdb://127.0.0.1:1";
    let identity = TargetIdentity::of(spec).unwrap();
    let path = store.new_path(&identity);
    Journal::new(
        spec.into(),
        Some(identity.to_string()),
        "Leak".into(),
        vec![],
    )
    .write(&path)
    .unwrap();
    let o = tagsplit(&["stacks", "--target", spec, "--tag", "Lea2"]);
    let _ = std::fs::remove_file(&path);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("left its journal")
            && err.contains("tagsplit restore --target 'gdb://127.0.0.1:1'"),
        "{err}"
    );
    assert!(!err.contains("i/o error"), "nothing was sent: {err}");
}
