//! The seed's Part 4 workflow as console commands, and the transcript they produce.

use crate::console::{Console, PROMPT};
use crate::target::DebugTarget;

/// The commands of the seed article, in order (`g` runs the target's default length).
pub const SEED_COMMANDS: [&str; 7] = [
    r#"!for_each_module s -a @#Base @#End "Leak""#,
    "eb fffff880`0496e3aa+3 31",
    "eb fffff880`0496e621+3 32",
    "dc fffff880`0496e3aa l1",
    "dc fffff880`0496e621 l1",
    "g",
    "!poolused /t5 2",
];

/// Part 5 by hand on `part4` (NTDebugging's "Troubleshooting Pool Leaks Part 5"): the
/// winning site of Part 4 gets its split tag `Lea2`, `nt!PoolHitTag` is set to it, the
/// machine runs to the first break (an allocation of `Lea2`), `k` shows who allocates;
/// then `nt!PoolHitTag` and the site are put back.
pub const PART5_COMMANDS: [&str; 6] = [
    "eb myfault+0x1621+3 32",
    "ed nt!PoolHitTag 3261654c",
    "g",
    "k",
    "ed nt!PoolHitTag ffffff0f",
    "eb myfault+0x1621+3 6b",
];

/// Breaks the demo's automated Part 5 takes.
pub const PART5_BREAKS: usize = 20;

/// Runs `commands` in `console` on `target` and returns the `kd>` transcript: each
/// command after the prompt, then its output.
pub fn transcript(
    target: &mut dyn DebugTarget,
    console: &mut Console,
    commands: &[&str],
) -> String {
    let mut out = String::new();
    for cmd in commands {
        out.push_str(PROMPT);
        out.push_str(cmd);
        out.push('\n');
        out.push_str(&console.execute(target, cmd));
    }
    out
}
