//! The `tagsplit` command line: see `tagsplit --help`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Signals are handled from the start (see `cli::signals`): the handler must know the
    // main thread, and a signal before any patch exits at once.
    cli::signals::install();
    let result = cli::Cli::parse().command.execute();
    let code = match cli::signals::received() {
        // Stopped by a signal: the conventional 128 + its number, whatever happened.
        Some(sig) => std::process::ExitCode::from(cli::signals::exit_code(sig)),
        None if result.is_ok() => std::process::ExitCode::SUCCESS,
        None => std::process::ExitCode::FAILURE,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
    }
    code
}
