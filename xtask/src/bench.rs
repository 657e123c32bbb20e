//! `cargo xtask bench [--json] [-- ARGS...]`: runs the datapath benchmark binary
//! `sipfilter-bench` (from the `sipfilter-tests` package) in release mode, with its exit status.
//!
//! `cargo xtask bench flood [ARGS...]`: the flood lab's comparison of no filter, iptables,
//! nftables and sipfilter (`sipfilter-lab bench ARGS...`, see `docs/lab.md`).

use anyhow::Result;

use crate::{cargo, exec, lab, setup};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    what: Option<What>,
    /// Ask the benchmark for machine-readable JSON output.
    #[arg(long)]
    json: bool,
    /// Further arguments for sipfilter-bench, after `--`.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(clap::Subcommand)]
enum What {
    /// The flood comparison: no filter, iptables, nftables, sipfilter driver and skb mode
    /// under the same flood (`--runs`, `--duration`, `--scenario`, ...; `--help` lists them).
    Flood(FloodArgs),
}

#[derive(clap::Args)]
struct FloodArgs {
    /// Arguments for `sipfilter-lab bench`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn main(args: Args) -> Result<()> {
    if let Some(What::Flood(flood)) = args.what {
        let mut lab_args = vec!["bench".to_owned()];
        lab_args.extend(flood.args);
        return lab::run_lab_binary(&lab_args);
    }
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
