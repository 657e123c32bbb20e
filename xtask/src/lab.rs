//! `cargo xtask lab [--demo] [-- ARGS...]`: the flood lab (attacker, user and PBX namespaces,
//! Kamailio, sipfilter on the PBX's interface), built and torn down by the `sipfilter-lab`
//! binary of the `sipfilter-tests` package. Also the runner of `cargo xtask bench flood`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, cargo, exec, is_root, run, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Run a short attack against the protected PBX and print what sipfilter did, then exit.
    #[arg(long)]
    demo: bool,
    /// Further arguments for `sipfilter-lab lab`, after `--` (e.g. `--max-seconds 600`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn main(args: &Args) -> Result<()> {
    let mut lab_args = vec!["lab".to_owned()];
    if args.demo {
        lab_args.push("--demo".to_owned());
    }
    lab_args.extend(args.args.iter().cloned());
    run_lab_binary(&lab_args)
}

/// Builds `sipfilter` and `sipfilter-lab` (release), then replaces xtask with
/// `sipfilter-lab ARGS...`, so Ctrl-C reaches the lab driver itself, which tears the lab down.
pub fn run_lab_binary(lab_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the flood lab creates network namespaces and loads XDP programs: run it as root");
    }
    setup::toolchain()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "sipfilter",
        "-p",
        "sipfilter-tests",
        "--bin",
        "sipfilter",
        "--bin",
        "sipfilter-lab",
    ]))?;
    let sipfilter = build::sipfilter_bin(true)?;
    let lab = sipfilter.with_file_name("sipfilter-lab");
    // exec: the driver's signals and exit status are the command's.
    exec(
        Command::new(&lab)
            .args(lab_args)
            .env("SIPFILTER_BIN", &sipfilter),
    )
}
