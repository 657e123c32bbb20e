//! `cargo xtask setup`: installs, idempotently, what a fresh Debian 12 machine lacks to build
//! and test sipfilter. Each step prints (on stderr, so `bench --json` keeps stdout to its JSON) `ok: ...` when already satisfied, `installing: ...`
//! otherwise. See ../shared/TOOLCHAIN.md for why the toolchain steps look the way they do.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{OpenOptionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{capture, cargo, home, is_root, probe, run};

/// Packages the tests and labs use: `ip`/netns and veth, `bpftool` to inspect loaded programs,
/// packet capture, NIC offload control, and real SIP peers and attackers (kamailio registrar,
/// sipvicious scanner, baresip user agent) plus the prometheus scraper and fail2ban that the
/// integration labs talk to, and the firewalls the flood lab compares sipfilter with (iptables
/// with ipset, nftables; only ever used inside lab namespaces, and nftables' service, whose
/// config flushes the ruleset, is never started), and what `cargo xtask kernels` boots other
/// kernels with (qemu, busybox for the guest's shell, xz for compressed modules, binutils'
/// `strip`). All names checked with `apt-cache policy` on Debian 12 (bookworm).
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "tcpdump",
    "ethtool",
    "kamailio",
    "kamailio-extra-modules",
    "sipvicious",
    "baresip-core",
    "prometheus",
    "fail2ban",
    "iptables",
    "ipset",
    "nftables",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "binutils",
];

/// Daemons some of [`PACKAGES`] ship; none may be left running by the install.
const DAEMONS: &[&str] = &["kamailio", "prometheus", "fail2ban-server"];

/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before starting a service.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

#[derive(clap::Args)]
pub struct Args {
    /// Skip the Debian packages (toolchain steps only).
    #[arg(long)]
    pub no_apt: bool,
}

pub fn main(args: &Args) -> Result<()> {
    toolchain()?;
    if args.no_apt {
        eprintln!("skipped: Debian packages (--no-apt)");
        Ok(())
    } else {
        packages()
    }
}

/// The steps the eBPF build needs; cheap when everything is present, so `build` runs them too.
pub fn toolchain() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the `nightly` toolchain is required for the eBPF build (rustup toolchain list)",
    )?;
    Ok(PathBuf::from(out.trim()))
}

/// `-Z build-std=core` compiles core for bpfel-unknown-none from the nightly's sources.
fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("ok: rust-src for nightly");
        return Ok(());
    }
    eprintln!("installing: rust-src for nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link the same LLVM that emits the nightly's bitcode, and Debian's LLVM is far
/// too old, so it is built against the libLLVM inside the nightly toolchain. A file records which
/// libLLVM the installed binary was built for, so a nightly update (new LLVM) triggers a rebuild.
fn bpf_linker(sysroot: &Path) -> Result<()> {
    let so = nightly_libllvm(&sysroot.join("lib"))?;
    let so_name = file_name(&so)?;
    let major = llvm_major(&so_name)?;

    let prefix = home()?.join(".cache/sipfilter-llvm");
    let record = prefix.join("built-for");
    let version = probe(Command::new("bpf-linker").arg("--version"));
    let built_for = fs::read_to_string(&record).ok();
    let built_for = built_for.as_deref().map(str::trim);
    let reason = match (&version, built_for) {
        (Some(v), Some(b)) if b == so_name => {
            eprintln!("ok: {} (built for {so_name})", v.trim());
            return Ok(());
        }
        (None, _) => "not installed or does not run".to_owned(),
        (Some(_), None) => format!("no record of its LLVM in {}", record.display()),
        (Some(_), Some(b)) => format!("built for {b}"),
    };
    eprintln!("installing: bpf-linker against {so_name} (llvm-{major}; {reason})");

    // A stale record must not survive a failed rebuild.
    removed(fs::remove_file(&record), &record)?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // libLLVM.so for the linker at build time; the soname for bpf-linker's rpath at run time.
    let links = [lib.join("libLLVM.so"), lib.join(&so_name)];
    for link in &links {
        replace_symlink(&so, link)?;
    }
    // Links to an older nightly's libLLVM would be picked up by llvm-sys instead of the new one.
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        if file_name(&path)?.starts_with("libLLVM") && !links.contains(&path) {
            removed(fs::remove_file(&path), &path)?;
        }
    }

    // A fresh target directory every time: cached artifacts (a shared CARGO_TARGET_DIR) can keep
    // a previous nightly's libLLVM soname linked in when cargo sees nothing else change.
    let target = prefix.join("target");
    removed(fs::remove_dir_all(&target), &target)?;
    // --force: the same bpf-linker version may already be installed, built for another LLVM.
    run(cargo()
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--target-dir")
        .arg(&target)
        .env("LLVM_PREFIX", &prefix)
        .stdin(Stdio::null()))?;
    removed(fs::remove_dir_all(&target), &target)?;
    let Some(v) = probe(Command::new("bpf-linker").arg("--version")) else {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails: is cargo's bin directory \
             (~/.cargo/bin) on PATH?"
        );
    };
    fs::write(&record, format!("{so_name}\n"))
        .with_context(|| format!("writing {}", record.display()))?;
    eprintln!("ok: {} (built for {so_name})", v.trim());
    Ok(())
}

/// The nightly's shared LLVM, `libLLVM.so.<major>.<minor>-rust-<version>`.
fn nightly_libllvm(libdir: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(libdir).with_context(|| format!("reading {}", libdir.display()))? {
        let path = entry?.path();
        if file_name(&path)?.starts_with("libLLVM.so.") {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no libLLVM.so.* in {}", libdir.display()),
        _ => bail!("several libLLVM.so.* in {}: {found:?}", libdir.display()),
    }
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22, which picks bpf-linker's `llvm-22` feature.
fn llvm_major(so_name: &str) -> Result<u32> {
    so_name
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("no LLVM major version in {so_name:?}"))
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{} has no file name", path.display()))
}

/// Points `link` at `target` atomically (rename over), so a bpf-linker starting meanwhile never
/// finds its libLLVM missing.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = link.with_file_name(format!(".{}.tmp", file_name(link)?));
    removed(fs::remove_file(&tmp), &tmp)?;
    symlink(target, &tmp)
        .with_context(|| format!("linking {} -> {}", tmp.display(), target.display()))?;
    fs::rename(&tmp, link)
        .with_context(|| format!("renaming {} to {}", tmp.display(), link.display()))
}

/// The outcome of a removal, where "already gone" counts as done.
fn removed(result: std::io::Result<()>, path: &Path) -> Result<()> {
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("ok: Debian packages ({})", PACKAGES.join(" "));
        return Ok(());
    }
    eprintln!("installing: Debian packages {}", missing.join(" "));
    if !is_root() {
        bail!(
            "installing Debian packages needs root (or pass --no-apt): {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update").stdin(Stdio::null()))?;
    {
        let _guard = ForbidServiceStarts::new(Path::new(POLICY_RC_D))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null()))?;
    }
    // The policy file stops maintainer scripts; this catches a package that starts its daemon
    // some other way, so a stray listener is at least reported rather than silently left behind.
    for daemon in DAEMONS {
        if let Some(pids) = probe(Command::new("pgrep").args(["-x", daemon])) {
            eprintln!(
                "warning: {daemon} is running (pid {})",
                pids.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    // An unknown package is an error exit, i.e. not installed.
    probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Keeps package installs from starting services (kamailio, prometheus, fail2ban would listen
/// on ports the labs need) by providing a `policy-rc.d` that refuses every start, for as long as
/// it lives. A policy file that already existed belongs to the machine and is left untouched.
struct ForbidServiceStarts {
    created: Option<PathBuf>,
}

impl ForbidServiceStarts {
    fn new(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path);
        let mut file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                eprintln!("ok: {} exists, left as it is", path.display());
                return Ok(Self { created: None });
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        // Constructed before writing, so even a failed write removes the file.
        let guard = Self {
            created: Some(path.to_owned()),
        };
        use std::io::Write as _;
        file.write_all(
            b"#!/bin/sh\n# Written by `cargo xtask setup` for the duration of an apt-get install;\n\
              # safe to delete if it was left behind.\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(guard)
    }
}

impl Drop for ForbidServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.created
            && let Err(e) = fs::remove_file(path)
        {
            eprintln!("warning: could not remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_nightly_file_name() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").unwrap(),
            22
        );
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.99.0-nightly").unwrap(), 23);
        assert!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so").is_err());
    }

    #[test]
    fn policy_file_is_removed_only_when_we_created_it() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");

        let guard = ForbidServiceStarts::new(&path).unwrap();
        let script = fs::read_to_string(&path).unwrap();
        assert!(script.starts_with("#!/bin/sh") && script.ends_with("exit 101\n"));
        drop(guard);
        assert!(!path.exists());

        fs::write(&path, "exit 0\n").unwrap();
        drop(ForbidServiceStarts::new(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "exit 0\n");

        fs::remove_dir_all(&dir).unwrap();
    }
}
