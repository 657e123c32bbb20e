//! Builds the eBPF datapath (`sipfilter-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and bpf-linker, and leaves the objects in `OUT_DIR` for `include_bytes_aligned!`.
//!
//! Not aya-build: we build for `-Ctarget-cpu=v3` (32-bit jumps, atomic adds), which aya-build's
//! fixed RUSTFLAGS do not allow. (bpf-linker's `+allows-misaligned-mem-access` is deliberately
//! not used: LLVM then merges byte stores into misaligned stack stores, which the verifier
//! refuses.)
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

const EBPF_PACKAGE: &str = "sipfilter-ebpf";
/// Binaries of the eBPF package: the datapath, the trivial program the benchmark compares with
/// and the flood lab's frame source.
const EBPF_BINS: &[&str] = &["sipfilter", "xdp-pass", "xdp-flood"];

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("..").join(EBPF_PACKAGE);
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed=../sipfilter-common");
    println!("cargo:rerun-if-env-changed=SIPFILTER_SKIP_EBPF");

    // For hosts that only check or lint userspace: empty objects, which fail to load at run time.
    if env::var_os("SIPFILTER_SKIP_EBPF").is_some_and(|v| v == "1") {
        println!("cargo:warning=SIPFILTER_SKIP_EBPF=1: the eBPF objects are empty placeholders");
        for bin in EBPF_BINS {
            fs::write(out_dir.join(bin), [])?;
        }
        return Ok(());
    }

    let linker = which::which("bpf-linker").context(
        "bpf-linker is not installed: run `cargo xtask setup` (it builds bpf-linker against the \
         nightly toolchain's LLVM, see ../shared/TOOLCHAIN.md)",
    )?;
    println!("cargo:rerun-if-changed={}", linker.display());

    let target_dir = out_dir.join("ebpf-target");
    let rustflags = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&ebpf_dir)
        .args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let output = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF datapath failed ({}); if the nightly toolchain or bpf-linker is \
             missing, run `cargo xtask setup`",
            output.status
        );
    }
    for bin in EBPF_BINS {
        let built = target_dir.join("bpfel-unknown-none/release").join(bin);
        fs::copy(&built, out_dir.join(bin))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    Ok(())
}
