//! `cargo xtask lint`: formatting and clippy over the whole workspace, warnings as errors.
//! Includes the eBPF crate, whose library also builds for the host; its kernel-only code is
//! checked for the eBPF target too, with warnings as errors (the datapath build in
//! `sipfilter/build.rs` shows that build's output only when it fails).

use std::process::Command;

use anyhow::Result;

use crate::{cargo, root, run};

pub fn main() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("rustup")
        .current_dir(root().join("sipfilter-ebpf"))
        .args(["run", "nightly", "cargo", "check", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root().join("target/ebpf-lint"))
        .env("CARGO_ENCODED_RUSTFLAGS", "-Dwarnings")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS"))
}
