//! `cargo xtask`: the project's own automation (toolchain and lab setup, build, run, test,
//! tests on other kernels, benchmark, flood lab, lint), so a fresh machine needs nothing but rustup and this repository.
//!
//! External commands go through the helpers below ([`run`], or [`capture`], [`exec`],
//! [`spawn`] + [`check`] where the output matters): they echo the command and, on failure,
//! report the whole command line so a CI log points at the culprit. [`probe`] is the silent
//! exception, for checks whose failure is an answer rather than an error.

mod bench;
mod build;
mod kernels;
mod lab;
mod lint;
mod run;
mod setup;
mod test;

use std::{
    ffi::OsStr,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test sipfilter"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks: nightly rust-src, bpf-linker, Debian lab packages.
    Setup(setup::Args),
    /// Check the eBPF toolchain, then build the workspace's default members.
    Build(build::Args),
    /// Build, then run `sipfilter` with the given arguments (as root).
    Run(run::Args),
    /// Set up everything, build, then run the whole test suite (here, then on Debian's kernels).
    Test(test::Args),
    /// Run the datapath's tests on Debian's 6.1 and 6.12 kernels, each booted in qemu.
    Kernels(kernels::Args),
    /// Run the datapath benchmark (`sipfilter-bench`), or `bench flood`: the flood comparison.
    Bench(bench::Args),
    /// Build the flood lab (attacker, user, PBX with Kamailio, sipfilter) until Ctrl-C.
    Lab(lab::Args),
    /// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace.
    Lint,
}

fn main() -> ExitCode {
    // Printed by hand: anyhow's `Termination` adds a backtrace whenever RUST_BACKTRACE is set,
    // which buries the one line (the failed command) a CI log reader needs.
    if let Err(err) = dispatch(Cli::parse().command) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn dispatch(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup(args) => setup::main(&args),
        Cmd::Build(args) => build::main(&args),
        Cmd::Run(args) => run::main(args),
        Cmd::Test(args) => test::main(&args),
        Cmd::Kernels(args) => kernels::main(&args),
        Cmd::Bench(args) => bench::main(args),
        Cmd::Lab(args) => lab::main(&args),
        Cmd::Lint => lint::main(),
    }
}

/// The workspace root; commands run from there so `rust-toolchain.toml` and the workspace apply
/// whatever directory `cargo xtask` was started from.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// A `cargo` command in the workspace root. `$CARGO` is the cargo that started xtask, so a
/// `cargo +toolchain xtask` keeps using that toolchain.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd` with inherited stdio; an error names the whole command line.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = spawn(cmd)?.wait().with_context(|| describe(cmd))?;
    check(cmd, status)
}

/// Runs `cmd` and returns its stdout (stderr is passed through, so failures explain themselves).
pub fn capture(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    check(cmd, output.status)?;
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}`: non-UTF-8 output", describe(cmd)))
}

/// For questions whose "no" is a failing exit (is it installed? does it run?): stdout on
/// success, `None` on any failure, nothing echoed.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Replaces xtask with `cmd`, so signals, stdin and the exit status belong to the real program
/// (a daemon stopped with Ctrl-C, a benchmark's verdict).
pub fn exec(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Spawns `cmd` after echoing it; callers that stream its output wait and [`check`] themselves.
pub fn spawn(cmd: &mut Command) -> Result<std::process::Child> {
    echo(cmd);
    cmd.spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Turns a failed exit into an error that shows the command line.
pub fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

fn echo(cmd: &Command) {
    // stderr, so it interleaves correctly with cargo's own progress lines.
    eprintln!("+ {}", describe(cmd));
    let _ = std::io::stderr().flush();
}

/// The command as a shell line, with the environment it sets, so it can be pasted to reproduce.
pub fn describe(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(k, v)| {
        let v = v?;
        Some(format!("{}={}", k.to_string_lossy(), quote(v)))
    });
    let words = std::iter::once(quote(cmd.get_program())).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether we run with the effective uid 0 (BPF, apt-get and interface attachment need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$HOME`, which holds the bpf-linker build record and the LLVM symlinks.
pub fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_what_the_shell_would_split() {
        let mut cmd = Command::new("dpkg-query");
        cmd.env("A", "b c").args(["-W", "-f=${Status}", "it's"]);
        assert_eq!(
            describe(&cmd),
            r"A='b c' dpkg-query -W '-f=${Status}' 'it'\''s'"
        );
    }
}
