//! `cargo xtask test [--no-apt] [--no-kernels] [-- CARGO_TEST_ARGS...]`: full setup, a build so
//! the `sipfilter` binary exists for the integration tests, then `cargo test --workspace` with
//! `SIPFILTER_BIN` pointing at it, then the datapath's tests on other kernels
//! (`cargo xtask kernels`), and a final `N passed, N failed` summary of both.
//!
//! Tests that need root or BPF decide for themselves (and fail under `CI=true`); the
//! environment is passed through untouched.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cargo, check, kernels, setup, spawn};

#[derive(clap::Args)]
pub struct Args {
    /// Skip installing Debian packages (tests that need them will fail or skip).
    #[arg(long)]
    no_apt: bool,
    /// Skip the runs on Debian's kernels in qemu (`cargo xtask kernels`), which take about ten
    /// minutes.
    #[arg(long)]
    no_kernels: bool,
    /// Extra arguments for `cargo test`, after `--`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn main(args: &Args) -> Result<()> {
    setup::main(&setup::Args {
        no_apt: args.no_apt,
    })?;
    build::cargo_build(false)?;
    let bin = build::sipfilter_bin(false)?;

    let mut cmd = cargo();
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(&args.cargo_args)
        .env("SIPFILTER_BIN", &bin)
        .stdout(Stdio::piped());
    let mut child = spawn(&mut cmd)?;
    let stdout = child.stdout.take().context("cargo test stdout")?;

    let (mut passed, mut failed) = (0, 0);
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        writeln!(out, "{line}")?;
        // Flushed per line: test logs are read live in CI, and interleave with cargo's stderr.
        out.flush()?;
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    // The kernels' runs are reported even when a test here failed: a failure on one kernel
    // only says more with the others beside it.
    let kernels = if args.no_kernels {
        Ok((0, 0))
    } else {
        kernels::run_all(&bin)
    };
    if let Ok((p, f)) = kernels {
        passed += p;
        failed += f;
    }

    println!("{passed} passed, {failed} failed");
    // Shown here when cargo test's own failure is what ends the run.
    if let Err(error) = &kernels
        && !status.success()
    {
        eprintln!("error: {error:#}");
    }
    check(&cmd, status)?;
    kernels?;
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Counts from libtest's summary, e.g.
/// `test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; ...`.
pub fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |what: &str| {
        rest.split(';').find_map(|part| {
            // The first part carries the verdict too: "ok. 12 passed".
            match part.split_whitespace().collect::<Vec<_>>().as_slice() {
                [.., n, word] if *word == what => n.parse::<u64>().ok(),
                _ => None,
            }
        })
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_libtest_summaries() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                  finished in 0.01s";
        assert_eq!(parse_result(ok), Some((12, 0)));
        let bad = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_result(bad), Some((3, 2)));
        assert_eq!(parse_result("running 3 tests"), None);
        assert_eq!(parse_result("test foo ... ok"), None);
    }
}
