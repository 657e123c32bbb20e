//! `cargo xtask build [--release]`: makes sure the eBPF toolchain is in place, then builds the
//! workspace's default members (the eBPF objects are built by sipfilter's build script).

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{capture, cargo, run, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn main(args: &Args) -> Result<()> {
    setup::toolchain()?;
    cargo_build(args.release)
}

/// `cargo build` of the default members, without the toolchain checks.
pub fn cargo_build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// The freshly built `sipfilter` binary. Asks cargo where its target directory is, since
/// `CARGO_TARGET_DIR` or a config file may have moved it away from `./target`.
pub fn sipfilter_bin(release: bool) -> Result<PathBuf> {
    let bin = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("sipfilter");
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or a config file may move it from `./target`).
pub fn target_dir() -> Result<PathBuf> {
    let metadata = capture(cargo().args(["metadata", "--format-version=1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` reported no target_directory")?;
    Ok(PathBuf::from(target_dir))
}
