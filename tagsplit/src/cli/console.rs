//! `tagsplit console`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use tagsplit::console::{Console, PROMPT, split_commands};

/// Arguments of `console`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The target: sim:NAME, sim:FILE.toml, gdb://HOST:PORT[?ack], kdnet:port=N,key=K, kdcom:HOST:PORT.
    #[arg(long, default_value = "sim:part4")]
    target: String,
    /// Commands to run (separated by `;`), then exit.
    #[arg(short = 'c', long = "command")]
    commands: Option<String>,
    /// A pooltag.txt file for tag descriptions.
    #[arg(long)]
    pooltag: Option<PathBuf>,
}

/// Runs the console.
pub fn execute(a: Args) -> anyhow::Result<()> {
    let mut target = super::open_target(&a.target)?;
    let mut console = Console::with_pooltag(super::load_pooltag(a.pooltag.as_deref())?);
    let mut out = std::io::stdout().lock();
    if let Some(cmds) = a.commands {
        // A batch: every command runs until the connection is lost; if any failed, the
        // batch fails with its error.
        let mut failed = Vec::new();
        let cmds: Vec<&str> = split_commands(&cmds)
            .into_iter()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        for (i, cmd) in cmds.iter().enumerate() {
            let outcome = console.run(target.as_mut(), cmd);
            write!(out, "{PROMPT}{cmd}\n{}", outcome.output)?;
            failed.extend(outcome.failed);
            if let Some(lost) = outcome.link_lost {
                out.flush()?;
                let rest = cmds.get(i + 1..).unwrap_or_default();
                for f in &failed {
                    let message = f.message.strip_prefix("error: ").unwrap_or(&f.message);
                    eprintln!("error in '{}': {message}", f.command);
                }
                anyhow::bail!(
                    "the connection to {} was lost ({lost}) in '{cmd}'; {} later command(s) not run",
                    a.target,
                    rest.len()
                );
            }
        }
        out.flush()?;
        for f in &failed {
            let message = f.message.strip_prefix("error: ").unwrap_or(&f.message);
            eprintln!("error in '{}': {message}", f.command);
        }
        if let Some(first) = failed.first() {
            anyhow::bail!(
                "{} of the batch's commands failed (first: '{}')",
                failed.len(),
                first.command
            );
        }
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        write!(out, "{PROMPT}")?;
        out.flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        let cmd = line.trim();
        if !interactive {
            writeln!(out, "{cmd}")?;
        }
        if matches!(cmd, "q" | "qq" | "quit" | "exit") {
            break;
        }
        let outcome = console.run(target.as_mut(), cmd);
        write!(out, "{}", outcome.output)?;
        if let Some(lost) = outcome.link_lost {
            out.flush()?;
            anyhow::bail!("the connection to {} was lost ({lost})", a.target);
        }
    }
    writeln!(out)?;
    Ok(())
}
