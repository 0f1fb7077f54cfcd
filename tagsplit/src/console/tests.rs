use super::*;
use crate::target::walk_module_list;
use crate::testkit::*;

fn run(t: &mut dyn DebugTarget, c: &mut Console, cmd: &str) -> String {
    c.execute(t, cmd)
}

#[test]
fn seed_commands_on_the_fake() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let out = run(
        &mut t,
        &mut c,
        r#"!for_each_module s -a @#Base @#End "Leak""#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "fffff880`0496e3aa  4c 65 61 6b 3b c1 0f 42-c1 41 8d 49 fd 8b d0 ff  Leak;..B.A.I...."
    );
    assert_eq!(
        lines[1],
        "fffff880`0496e621  4c 65 61 6b 3b c1 0f 42-c1 33 c9 8b d0 ff 15 cc  Leak;..B.3......"
    );
    assert_eq!(run(&mut t, &mut c, "eb fffff880`0496e3aa+3 31"), "");
    assert_eq!(run(&mut t, &mut c, "eb fffff880`0496e621+3 32"), "");
    assert_eq!(
        run(&mut t, &mut c, "dc fffff880`0496e3aa l1"),
        "fffff880`0496e3aa  3161654c                             Lea1\n"
    );
    assert_eq!(
        run(&mut t, &mut c, "dc fffff880`0496e621 l1"),
        "fffff880`0496e621  3261654c                             Lea2\n"
    );
}

#[test]
fn lm_and_module_walk_agree() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let out = run(&mut t, &mut c, "lm");
    assert!(out.starts_with("start             end                 module name\n"));
    assert!(
        out.contains("fffff880`0496d000 fffff880`04974000   myfault    (deferred)\n"),
        "{out}"
    );
    let walked = walk_module_list(&mut t, VirtAddr(LIST_HEAD)).unwrap();
    assert_eq!(walked, t.modules);
    let one = run(&mut t, &mut c, "lm a fffff880`0496e621");
    assert_eq!(one.lines().count(), 2);
    assert!(one.contains("myfault"));
    let m = run(&mut t, &mut c, "lm m nt*");
    assert!(m.contains("ntoskrnl") && !m.contains("myfault"));
}

#[test]
fn unassemble_shows_the_site() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let out = run(&mut t, &mut c, "u fffff880`0496e3a8 l2");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("fffff880`0496e3a8 41b84c65616b    mov     r8d,6B61654Ch")
    );
    assert_eq!(
        lines.next(),
        Some("fffff880`0496e3ae 3bc1            cmp     eax,ecx")
    );
}

#[test]
fn poolused_rows_and_total() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let out = run(&mut t, &mut c, "!poolused /t5 2");
    assert!(out.starts_with("   Sorting by NonPaged Pool Consumed\n\n               NonPaged                  Paged\n Tag     Allocs         Used     Allocs         Used\n\n"), "{out}");
    assert!(
        out.contains(
            " EtwB        94       945136          0            0\tEtw Buffer, Binary: nt!etw\n"
        ),
        "{out}"
    );
    assert!(out.contains(" Leak         1         4096          0            0\tUNKNOWN pooltag 'Leak', please update pooltag.txt\n"));
    assert!(
        out.ends_with("\n TOTAL        95       949232          0            0\n"),
        "{out}"
    );
    let one = run(&mut t, &mut c, "!poolused 2 Lea?");
    assert!(one.contains("Leak") && !one.contains("EtwB"));
}

#[test]
fn go_runs_the_target() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    run(&mut t, &mut c, "eb fffff880`0496e621+3 32");
    let out = run(&mut t, &mut c, "g 0n100");
    assert!(out.contains("Break instruction exception"));
    let used = run(&mut t, &mut c, "!poolused 2");
    assert!(used.contains(" Lea2        10     10240000"), "{used}");
}

#[test]
fn errors_are_windbg_like() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    assert_eq!(
        run(&mut t, &mut c, "frobnicate"),
        "       ^ Syntax error in 'frobnicate'\n"
    );
    assert_eq!(
        run(&mut t, &mut c, "db zzzz"),
        "Couldn't resolve error at 'zzzz'\n"
    );
    assert_eq!(
        run(&mut t, &mut c, "eb 10 31"),
        "Memory access error at '10 31'\n"
    );
    assert!(run(&mut t, &mut c, "db 10 l2").contains("?? ??"));
    assert_eq!(run(&mut t, &mut c, "!nosuch"), "No export nosuch found\n");
    assert!(run(&mut t, &mut c, "s -a 0 L?10000000000 \"x").contains("Syntax error"));
}

#[test]
fn expressions() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    assert_eq!(
        c.eval(&mut t, "fffff880`0496e621+3").unwrap(),
        0xfffff880_0496e624
    );
    assert_eq!(
        c.eval(&mut t, "myfault+0x1621").unwrap(),
        0xfffff880_0496e621
    );
    assert_eq!(c.eval(&mut t, "0n10-2").unwrap(), 8);
    assert_eq!(c.eval(&mut t, "nt!PoolTrackTable").unwrap(), TRACK_PTR);
    assert_eq!(
        run(&mut t, &mut c, "? 0n16"),
        "Evaluate expression: 16 = 00000000`00000010\n"
    );
}

#[test]
fn search_kinds() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let b = run(&mut t, &mut c, "s -b fffff880`0496d000 L7000 4c 65 61 6b");
    assert_eq!(b.lines().count(), 4, "{b}"); // two alloc sites, the free site, .rdata text
    // -d reports aligned hits only: of the four, only the .rdata string is dword-aligned.
    let d = run(&mut t, &mut c, "s -d fffff880`0496d000 L7000 6b61654c");
    assert_eq!(
        d,
        "fffff880`04970010  6b61654c 74656420 65746365 00000064\n"
    );
    let a = run(
        &mut t,
        &mut c,
        "s -1a fffff880`0496d000 fffff880`04973fff \"Leak\"",
    );
    assert_eq!(a.lines().next(), Some("fffff880`0496e3aa"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn random_commands_never_panic(cmd in "[ -~]{0,60}") {
        let mut t = fake_kernel();
        let mut c = Console::new();
        let _ = c.execute(&mut t, &cmd);
    }

    #[test]
    fn random_commands_with_known_words_never_panic(
        word in proptest::sample::select(vec!["db", "dc", "dd", "dq", "eb", "ed", "s -a", "s -b", "s -d", "u", "lm", "lm a", "!poolused", "!poolfind", "!pool", "g", "?", "!for_each_module", "!for_each_module s -a @#Base @#End"]),
        args in "[ 0-9a-fA-FlL`+\\-?x\"*]{0,40}",
    ) {
        let mut t = fake_kernel();
        let mut c = Console::new();
        let _ = c.execute(&mut t, &format!("{word} {args}"));
    }
}

#[test]
fn for_each_module_aliases_and_quoted_commands() {
    let mut t = fake_kernel();
    let mut c = Console::new();
    let out = run(&mut t, &mut c, r#"!for_each_module "? @#Base; ? @#Size""#);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("= fffff880`0496d000"));
    assert!(out.contains("Evaluate expression: 28672 = 00000000`00007000"));
    let names = run(&mut t, &mut c, "!for_each_module lm m @#ModuleName");
    assert_eq!(names.matches("(deferred)").count(), 2);
    assert_eq!(
        split_commands(r#"a; b "c; d"; e"#),
        vec!["a", r#" b "c; d""#, " e"]
    );
}

#[test]
fn tab_completes_commands_first_and_module_names_after() {
    let modules = vec![
        "myfault".to_owned(),
        "msisadrv".to_owned(),
        "ntoskrnl".to_owned(),
    ];
    assert_eq!(completions("db", 2, &modules), (0, vec!["db".to_owned()]));
    assert_eq!(
        completions("!pool", 5, &modules),
        (
            0,
            vec![
                "!pool".to_owned(),
                "!poolfind".to_owned(),
                "!poolused".to_owned()
            ]
        )
    );
    assert_eq!(
        completions("db M", 4, &modules),
        (3, vec!["msisadrv".to_owned(), "myfault".to_owned()])
    );
    assert_eq!(
        completions("db myfault+10; d", 16, &modules),
        (
            15,
            vec![
                "db".to_owned(),
                "dc".to_owned(),
                "dd".to_owned(),
                "dq".to_owned()
            ]
        )
    );
    assert_eq!(
        completions("u nto+1", 5, &modules),
        (2, vec!["ntoskrnl".to_owned()])
    );
    assert_eq!(completions("lm x", 4, &modules), (3, vec![]));
    // A cursor past the end or inside a multi-byte character completes nothing odd.
    assert_eq!(completions("dbé", 3, &modules).1, Vec::<String>::new());
    assert_eq!(completions("", 99, &modules).1.len(), COMMANDS.len());
}

#[test]
fn nt_names_a_kernel_does_not_resolve_are_named_and_raw_addresses_work() {
    let mut t = fake_kernel();
    // A block the size of Windows 7's KDDEBUGGER_DATA64: none of the simulator's
    // extension fields, so no nt!PoolHitTag without symbols.
    t.write_memory(
        VirtAddr(KDBG + tagsplit_protocol::nt::layout::kdbg::SIZE_OFFSET),
        &0x340u32.to_le_bytes(),
    )
    .unwrap();
    let mut c = Console::new();
    let out = c.run(&mut t, "dc nt!PoolHitTag l1");
    assert_eq!(out.failed.len(), 1);
    assert!(
        out.output.contains("cannot resolve nt!PoolHitTag")
            && out
                .output
                .contains("without the simulator's extension field at 0x348")
            && out.output.contains("give the address instead"),
        "{}",
        out.output
    );
    let out = c.run(&mut t, "ed nt!PoolHitTag 3261654c");
    assert!(
        out.output.contains("cannot resolve nt!PoolHitTag"),
        "{}",
        out.output
    );
    // The raw address works (here: a dword of the fake's data).
    let raw = TRACK_SIZE_VAR;
    assert_eq!(run(&mut t, &mut c, &format!("ed {raw:x} 3261654c")), "");
    assert_eq!(
        run(&mut t, &mut c, &format!("dc {raw:x} l1")),
        format!(
            "{}  3261654c                             Lea2\n",
            VirtAddr(raw)
        )
    );
    // A Windows field still resolves.
    assert_eq!(
        run(&mut t, &mut c, "? nt!PsLoadedModuleList"),
        format!(
            "Evaluate expression: {} = {}\n",
            LIST_HEAD as i64,
            VirtAddr(LIST_HEAD)
        )
    );
    // No registers on a memory image: said, not guessed.
    let out = c.run(&mut t, "r");
    assert!(
        out.output.contains("unsupported by this target: registers"),
        "{}",
        out.output
    );
}
