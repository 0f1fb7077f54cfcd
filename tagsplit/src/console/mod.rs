//! A WinDbg-style command console over any [`DebugTarget`].
//!
//! [`Console::execute`] takes one command line (several commands may be separated by `;`
//! outside quotes) and returns the text WinDbg would print. It reads the target only
//! through the trait, so it works the same on the simulator, a GDB stub or a KD target.
//!
//! Supported: `lm [a ADDR] [m PATTERN]`, `s -a|-b|-w|-d|-q`, `eb`/`ed`/`eq`,
//! `db`/`dc`/`dd`/`dq`, `u`, `!for_each_module`, `!poolused`, `!poolfind`, `!pool`, `g`,
//! `r`, `k`/`kb`/`kn` (stacks unwound by [`crate::stack::Unwinder`]),
//! `bp`/`bl`/`bc`/`bd`/`be`, `ln`, `? EXPR`, `help`. Addresses use WinDbg's MASM syntax:
//! hex by default, backtick separators, `0x`/`0n`/`0t`/`0y` prefixes, `+`/`-`, module
//! names (`nt` for the kernel), the `nt!` names the `KDBG` block holds
//! ([`crate::symbols`]: `nt!PoolHitTag`, `nt!ExAllocatePoolWithTag`, ...; a name this
//! kernel cannot resolve is reported as such, and a raw address works instead), and
//! `L`/`L?` counts.
//!
//! ```
//! use tagsplit::console::Console;
//! use tagsplit::target::flat::FlatTarget;
//! use tagsplit::VirtAddr;
//!
//! let mut target = FlatTarget::new();
//! target.memory.map(VirtAddr(0x1000), b"Leak;..B".to_vec());
//! let mut console = Console::new();
//! assert_eq!(
//!     console.execute(&mut target, "dc 1000 l1"),
//!     "00000000`00001000  6b61654c                             Leak\n"
//! );
//! ```

mod debug;
mod expr;
mod memory;
mod poolcmds;

use std::fmt::Write as _;

use crate::VirtAddr;
use crate::pooltag::PoolTagDb;
use crate::target::observe::{Observed, Observer};
use crate::target::{DebugTarget, ModuleInfo, TargetError};

/// The prompt WinDbg shows on processor 0 of a kernel target.
pub const PROMPT: &str = "0: kd> ";

/// Why a command failed; rendered as WinDbg's error text.
#[derive(Debug)]
pub(crate) enum CmdError {
    /// `^ Syntax error in '<command>'`.
    Syntax,
    /// `Couldn't resolve error at '<text>'`.
    Resolve(String),
    /// `Memory access error at '<text>'`.
    Memory(String),
    /// Any other message, printed as is.
    Msg(String),
}

impl From<TargetError> for CmdError {
    fn from(e: TargetError) -> Self {
        CmdError::Msg(format!("error: {e}"))
    }
}

type CmdResult = Result<(), CmdError>;

/// What [`Console::run`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The text WinDbg would print, errors included.
    pub output: String,
    /// The commands that failed, in order.
    pub failed: Vec<Failure>,
    /// The connection to the target was lost (its error): the command that met it
    /// failed, and the console runs no command after it.
    pub link_lost: Option<String>,
}

/// A command that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The command.
    pub command: String,
    /// Its error, as printed.
    pub message: String,
}

/// The console: the pooltag database and the little state WinDbg keeps between commands.
pub struct Console {
    pooltag: PoolTagDb,
    /// Where a bare `db`/`dc`/`dd` continues.
    next_display: Option<VirtAddr>,
    /// Where a bare `u` continues.
    next_unassemble: Option<VirtAddr>,
    /// Nesting depth of `!for_each_module` (bounded).
    depth: u8,
    /// Set once the connection to the target is lost (its error).
    link_lost: Option<String>,
    /// Breakpoints set with `bp` (at most [`debug::MAX_BREAKPOINTS`]).
    breakpoints: Vec<debug::ConsoleBreakpoint>,
    /// The unwinder and the `nt!` names of the target in use.
    target_state: debug::TargetState,
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

/// A whitespace-separated argument; quoted strings keep their spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Arg {
    /// The text (without quotes when quoted).
    pub text: String,
    /// Whether it was written in double quotes.
    pub quoted: bool,
}

/// Splits arguments on whitespace; `"..."` is one argument.
pub(crate) fn split_args(s: &str) -> Result<Vec<Arg>, CmdError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            let mut text = String::new();
            let mut closed = false;
            for c in chars.by_ref() {
                if c == '"' {
                    closed = true;
                    break;
                }
                text.push(c);
            }
            if !closed {
                return Err(CmdError::Syntax);
            }
            out.push(Arg { text, quoted: true });
        } else {
            let mut text = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                text.push(c);
                chars.next();
            }
            out.push(Arg {
                text,
                quoted: false,
            });
        }
    }
    Ok(out)
}

/// Splits a line into commands at `;` outside double quotes (as WinDbg does).
pub fn split_commands(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut start = 0;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            ';' if !in_quote => {
                out.push(line.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(line.get(start..).unwrap_or_default());
    out
}

const HELP: &str = "\
Commands (WinDbg syntax; numbers are hex unless prefixed 0n):
  lm [a ADDR] [m PATTERN]         list loaded modules
  s -a|-b|-w|-d|-q RANGE PATTERN  search memory (-a \"text\", -b bytes, -d dwords)
  eb|ed|eq ADDR VALUES            write bytes / dwords / qwords
  db|dc|dd|dq [RANGE]             display memory (RANGE = ADDR [ADDR2 | L count | L?count])
  u [RANGE]                       disassemble
  !for_each_module CMD            run CMD per module with @#Base @#End @#Size @#ModuleName @#ImageName
  !poolused [/t N] [FLAGS [TAG]]  pool usage from the tracker table (flags 1 verbose, 2 by nonpaged, 4 by paged)
  !poolfind TAG [0|1]             find pool blocks with a tag (0 nonpaged, 1 paged)
  !pool ADDR                      list the pool blocks in the page of ADDR
  g [TICKS]                       run the target (bare g: the target's default run length)
  r [REG ...]                     registers (WinDbg layout), or the named ones
  k|kb|kn [COUNT]                 call stack unwound from .pdata (kb: home-space args, kn: numbered)
  bp ADDR | bl | bc|bd|be IDS|*   breakpoints on addresses, module+offset or nt! names
  ln ADDR                         the nearest name (module+offset, or nt!Name+offset)
  ? EXPR                          evaluate an expression
";

impl Console {
    /// A console with the built-in pooltag table.
    pub fn new() -> Console {
        Console::with_pooltag(PoolTagDb::builtin())
    }

    /// A console describing tags from `db`.
    pub fn with_pooltag(db: PoolTagDb) -> Console {
        Console {
            pooltag: db,
            next_display: None,
            next_unassemble: None,
            depth: 0,
            link_lost: None,
            breakpoints: Vec::new(),
            target_state: debug::TargetState::default(),
        }
    }

    /// The pooltag database in use.
    pub fn pooltag(&self) -> &PoolTagDb {
        &self.pooltag
    }

    /// Runs one line (commands separated by `;`) and returns what WinDbg would print.
    pub fn execute(&mut self, target: &mut dyn DebugTarget, line: &str) -> String {
        self.run(target, line).output
    }

    /// Runs one line (commands separated by `;`): what WinDbg would print, and which
    /// commands failed (a batch reports those and exits non-zero).
    ///
    /// Once the connection to the target is lost ([`TargetError::is_link_failure`], even
    /// where a command would have shown memory as unreadable), the command that met it
    /// fails with `connection lost: …`, [`Outcome::link_lost`] says so, and no later
    /// command runs, in this call or any later one.
    pub fn run(&mut self, target: &mut dyn DebugTarget, line: &str) -> Outcome {
        let mut outcome = Outcome::default();
        for cmd in split_commands(line) {
            let cmd = cmd.trim();
            if cmd.is_empty() {
                continue;
            }
            let out = &mut outcome.output;
            if let Some(lost) = &self.link_lost {
                let message = format!("not run: the connection to the target was lost ({lost})");
                let _ = writeln!(out, "{message}");
                outcome.failed.push(Failure {
                    command: cmd.to_owned(),
                    message,
                });
                outcome.link_lost = Some(lost.clone());
                continue;
            }
            let mut watched = Observed::new(&mut *target, LinkWatch::default());
            let before = out.len();
            let result = self.dispatch(&mut watched, cmd, out);
            let lost = watched.observer.lost;
            let result = match (result, lost) {
                (_, Some(lost)) => {
                    // What the command printed after the link went (`??` for memory that
                    // was never asked for) would mislead: drop it.
                    out.truncate(before);
                    self.link_lost = Some(lost.clone());
                    outcome.link_lost = Some(lost.clone());
                    Err(CmdError::Msg(format!("error: connection lost: {lost}")))
                }
                (result, None) => result,
            };
            let Err(e) = result else {
                continue;
            };
            let start = out.len();
            match e {
                CmdError::Syntax => {
                    let _ = writeln!(out, "{:w$}^ Syntax error in '{cmd}'", "", w = PROMPT.len());
                }
                CmdError::Resolve(at) => {
                    let _ = writeln!(out, "Couldn't resolve error at '{at}'");
                }
                CmdError::Memory(at) => {
                    let _ = writeln!(out, "Memory access error at '{at}'");
                }
                CmdError::Msg(m) => {
                    let _ = writeln!(out, "{m}");
                }
            }
            let message = out.get(start..).unwrap_or_default().trim().to_owned();
            outcome.failed.push(Failure {
                command: cmd.to_owned(),
                message,
            });
        }
        outcome
    }

    /// The connection to the target was lost (its error), if it was: see
    /// [`run`](Self::run).
    pub fn link_lost(&self) -> Option<&str> {
        self.link_lost.as_deref()
    }

    fn dispatch(&mut self, t: &mut dyn DebugTarget, cmd: &str, out: &mut String) -> CmdResult {
        // The command word: `!ext`, or letters (`db`, `lm`), or `?`.
        let (word, rest) = command_word(cmd);
        let rest = rest.trim();
        match word.to_ascii_lowercase().as_str() {
            "?" if rest.is_empty() => {
                out.push_str(HELP);
                Ok(())
            }
            "?" => {
                let v = self.eval(t, rest)?;
                let _ = writeln!(out, "Evaluate expression: {} = {}", v as i64, VirtAddr(v));
                Ok(())
            }
            "help" | ".help" => {
                out.push_str(HELP);
                Ok(())
            }
            "lm" => self.cmd_lm(t, rest, out),
            "s" => self.cmd_search(t, rest, out),
            "eb" => self.cmd_enter(t, rest, 1),
            "ed" => self.cmd_enter(t, rest, 4),
            "eq" => self.cmd_enter(t, rest, 8),
            "db" => self.cmd_display(t, rest, 1, true, out),
            "dc" => self.cmd_display(t, rest, 4, true, out),
            "dd" => self.cmd_display(t, rest, 4, false, out),
            "dq" => self.cmd_display(t, rest, 8, false, out),
            "u" => self.cmd_unassemble(t, rest, out),
            "g" => self.cmd_go(t, rest, out),
            "r" => self.cmd_registers(t, rest, out),
            w @ ("k" | "kb" | "kn") => self.cmd_stack(t, w, rest, out),
            "bp" => self.cmd_bp(t, rest, out),
            "bl" => self.cmd_bl(t, out),
            w @ ("bc" | "bd" | "be") => self.cmd_bchange(t, w, rest),
            "ln" => self.cmd_ln(t, rest, out),
            "!for_each_module" => self.cmd_for_each_module(t, rest, out),
            "!poolused" => self.cmd_poolused(t, rest, out),
            "!poolfind" => self.cmd_poolfind(t, rest, out),
            "!pool" => self.cmd_pool(t, rest, out),
            w if w.starts_with('!') => Err(CmdError::Msg(format!(
                "No export {} found",
                w.trim_start_matches('!')
            ))),
            _ => Err(CmdError::Syntax),
        }
    }

    fn cmd_go(&mut self, t: &mut dyn DebugTarget, rest: &str, out: &mut String) -> CmdResult {
        let how = if rest.is_empty() {
            t.default_run()
        } else {
            crate::target::RunFor::Ticks(self.eval(t, rest)?)
        };
        let stop = match t.run(how) {
            // Ctrl-C while it ran (the interrupt given to `set_interrupt`): broken into
            // and stopped, as WinDbg's Ctrl+Break.
            Err(TargetError::Interrupted) => crate::target::StopReason::BreakIn,
            other => other?,
        };
        match stop {
            crate::target::StopReason::BreakIn => {
                out.push_str("Break instruction exception - code 80000003 (first chance)\n");
            }
            crate::target::StopReason::BreakInstruction(a) => {
                // The target's own `int 3` (a `PoolHitTag` check): where, as WinDbg shows it.
                out.push_str("Break instruction exception - code 80000003 (first chance)\n");
                self.show_stop(t, a, out)?;
            }
            crate::target::StopReason::Breakpoint(a) => {
                match self.breakpoint_id(a) {
                    Some(id) => {
                        let _ = writeln!(out, "Breakpoint {id} hit");
                    }
                    None => {
                        let _ = writeln!(out, "Breakpoint hit at {a}");
                    }
                }
                self.show_stop(t, a, out)?;
            }
            crate::target::StopReason::Other(why) => {
                let _ = writeln!(out, "Target stopped: {why}");
            }
        }
        Ok(())
    }

    fn cmd_for_each_module(
        &mut self,
        t: &mut dyn DebugTarget,
        rest: &str,
        out: &mut String,
    ) -> CmdResult {
        let modules = t.modules()?;
        let mut inner = rest.trim();
        if inner.len() >= 2
            && inner.starts_with('"')
            && inner.ends_with('"')
            && inner.matches('"').count() == 2
        {
            inner = inner.get(1..inner.len() - 1).unwrap_or_default();
        }
        if inner.is_empty() {
            for (i, m) in modules.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{i:2}:{} {} {:<12} {}",
                    m.base,
                    m.end(),
                    m.module_name(),
                    m.path
                );
            }
            return Ok(());
        }
        if self.depth >= 2 {
            return Err(CmdError::Msg(
                "!for_each_module cannot nest this deep".into(),
            ));
        }
        self.depth += 1;
        for (i, m) in modules.iter().enumerate() {
            let cmd = inner
                .replace("@#ModuleIndex", &format!("{i:x}"))
                .replace("@#ModuleName", m.module_name())
                .replace("@#LoadedImageName", &m.path)
                .replace("@#ImageName", &m.name)
                .replace("@#Base", &m.base.to_string())
                .replace("@#End", &m.end().to_string())
                .replace("@#Size", &format!("0x{:x}", m.size));
            let text = self.execute(t, &cmd);
            out.push_str(&text);
        }
        self.depth -= 1;
        Ok(())
    }
}

/// Splits `cmd` into its command word and the rest. WinDbg lets short commands run into
/// their first argument (`s-a`, `dc1000`), so letters stop at the first non-letter.
fn command_word(cmd: &str) -> (&str, &str) {
    if let Some(rest) = cmd.strip_prefix('?') {
        return ("?", rest);
    }
    let end = if cmd.starts_with('!') {
        cmd.find(char::is_whitespace).unwrap_or(cmd.len())
    } else {
        let letters = cmd
            .find(|c: char| !c.is_ascii_alphabetic() && c != '.')
            .unwrap_or(cmd.len());
        // `dc1000` style: only for the short memory commands.
        let word = cmd.get(..letters).unwrap_or_default();
        if letters < cmd.len()
            && !cmd
                .get(letters..)
                .unwrap_or_default()
                .starts_with(char::is_whitespace)
        {
            let short = [
                "s", "db", "dc", "dd", "dq", "eb", "ed", "eq", "u", "g", "lm",
            ];
            if !short.contains(&word.to_ascii_lowercase().as_str()) {
                return (cmd, "");
            }
        }
        letters
    };
    (
        cmd.get(..end).unwrap_or(cmd),
        cmd.get(end..).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;

/// The command words the console knows, for completion (`?` and `help` aside).
pub const COMMANDS: &[&str] = &[
    "lm",
    "s",
    "eb",
    "ed",
    "eq",
    "db",
    "dc",
    "dd",
    "dq",
    "u",
    "g",
    "!for_each_module",
    "!poolused",
    "!poolfind",
    "!pool",
    "r",
    "k",
    "kb",
    "kn",
    "bp",
    "bl",
    "bc",
    "bd",
    "be",
    "ln",
    "help",
    "quit",
];

/// Completions of the word before `pos` in `line`: a command word at the start of a
/// command (after a `;`), a module name (as expressions take it: `myfault`) anywhere
/// else. Returns where the word starts and the candidates, sorted.
pub fn completions(line: &str, pos: usize, modules: &[String]) -> (usize, Vec<String>) {
    let before = line.get(..pos).unwrap_or(line);
    let start = before
        .rfind(|c: char| c.is_whitespace() || matches!(c, ';' | '+' | '-' | '(' | ')' | ','))
        .map_or(0, |i| i + 1);
    let word = before.get(start..).unwrap_or_default();
    let command_start = before
        .get(..start)
        .unwrap_or_default()
        .trim_end()
        .chars()
        .last()
        .is_none_or(|c| c == ';');
    let lower = word.to_ascii_lowercase();
    let mut found: Vec<String> = if command_start {
        COMMANDS
            .iter()
            .filter(|c| c.starts_with(&lower))
            .map(|c| (*c).to_owned())
            .collect()
    } else {
        modules
            .iter()
            .filter(|m| m.to_ascii_lowercase().starts_with(&lower))
            .cloned()
            .collect()
    };
    found.sort_unstable();
    found.dedup();
    (start, found)
}

/// The names modules go by in expressions (`myfault` for `myfault.sys`), for completion.
pub fn expression_names(modules: &[ModuleInfo]) -> Vec<String> {
    modules.iter().map(|m| m.module_name().to_owned()).collect()
}

/// Remembers the first error saying the connection is gone, however the command that
/// met it treated the error (a display shows unreadable memory as `??`).
#[derive(Debug, Default)]
struct LinkWatch {
    lost: Option<String>,
}

impl Observer for LinkWatch {
    fn after(&mut self, _: &dyn DebugTarget, error: Option<&TargetError>) {
        if let Some(e) = error
            && e.is_link_failure()
            && self.lost.is_none()
        {
            self.lost = Some(e.to_string());
        }
    }
}
