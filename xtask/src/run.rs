//! `cargo xtask run [--release] -- ARGS...`: builds, then replaces itself with
//! `sipfilter ARGS...` (e.g. `cargo xtask run -- attach eth0`).

use std::{ffi::OsString, process::Command};

use anyhow::{Result, bail};

use crate::{build, exec, is_root};

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Arguments for sipfilter, after `--`.
    #[arg(last = true)]
    args: Vec<OsString>,
}

pub fn main(args: Args) -> Result<()> {
    // Checked before building: loading XDP programs and pinning maps fail without root, and
    // failing after a long build with a kernel EPERM would be the less helpful order.
    if !is_root() {
        bail!(
            "`cargo xtask run` must run as root: sipfilter loads eBPF programs and attaches them \
             to interfaces (try `sudo -E cargo xtask run -- ...`)"
        );
    }
    build::main(&build::Args {
        release: args.release,
    })?;
    let bin = build::sipfilter_bin(args.release)?;
    exec(Command::new(bin).args(args.args))
}
