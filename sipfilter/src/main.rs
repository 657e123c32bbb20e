//! The `sipfilter` command: parses the command line, sets up logging and the network namespace,
//! runs one subcommand, and reports any error once, with its causes, before exiting.
//!
//! Exit codes: 0 success, 1 the command failed (the message says why), 2 bad usage.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    // `sipfilter list | head` should end quietly, as other Unix tools do, not panic on EPIPE.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = cli::Cli::parse();
    env_logger::Builder::new()
        .filter_level(match cli.verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        })
        .parse_env("SIPFILTER_LOG")
        .format_target(false)
        .init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sipfilter: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
