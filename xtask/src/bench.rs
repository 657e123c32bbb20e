//! `cargo xtask bench [--json] [-- ARGS...]`: runs the datapath benchmark binary
//! `sipfilter-bench` (from the `sipfilter-tests` package) in release mode, with its exit status.

use anyhow::Result;

use crate::{cargo, exec, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Ask the benchmark for machine-readable JSON output.
    #[arg(long)]
    json: bool,
    /// Further arguments for sipfilter-bench, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn main(args: Args) -> Result<()> {
    setup::toolchain()?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "sipfilter-tests",
        "--bin",
        "sipfilter-bench",
        "--",
    ]);
    if args.json {
        cmd.arg("--json");
    }
    // exec: the benchmark's own exit status (a regression verdict) becomes ours unchanged.
    exec(cmd.args(args.args))
}
