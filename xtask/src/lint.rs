//! `cargo xtask lint`: formatting and clippy over the whole workspace, warnings as errors.
//! Includes the eBPF crate, whose library also builds for the host.

use anyhow::Result;

use crate::{cargo, run};

pub fn main() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
