//! `cargo xtask kernels`: runs the datapath's own tests on the kernels PBXs run on, each booted
//! from its Debian package in qemu.
//!
//! The host runs the whole suite on its own kernel. The verifier and the attach interfaces
//! differ between kernels (TCX exists from 6.6, and 6.1's verifier tracks ranges less closely
//! than 6.12's), and a filter that its host's kernel refuses protects nothing, so the same test
//! binaries run again
//! inside a guest for each kernel in [`KERNELS`]: the `BPF_PROG_TEST_RUN` tables in full (every
//! program verified and every verdict checked on that kernel) and the end-to-end tests that
//! attach the real binary to a veth pair and send traffic through it.
//!
//! The guest is qemu with software emulation (nested KVM does not boot on these VMs) and no
//! network device: its namespaces and veth pairs exist only inside it. Its root file system is
//! an initramfs built here from busybox, iproute2, the binaries under test and the libraries
//! they link; its init script runs the tests and powers off, and its console is the serial line
//! read here.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build, capture, cargo, check, run, setup, spawn, test::parse_result};

/// A kernel to test on: the Debian metapackage that depends on its current image.
struct Kernel {
    metapackage: &'static str,
    /// Who runs it.
    used_by: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        metapackage: "linux-image-amd64",
        used_by: "6.1, Debian 12's own kernel (FreePBX 17, VitalPBX 4 and others run on Debian 12)",
    },
    Kernel {
        metapackage: "linux-image-6.12-amd64",
        used_by: "6.12, the series of Debian 13, offered to Debian 12 too",
    },
];

/// The test binaries of the `tests` crate that run in each guest, with the tests to run (all
/// when empty). The end-to-end tests are those that attach and send traffic; the rest of
/// `attach` checks the command line and the policy, which the kernel does not change.
const GUEST_TESTS: &[(&str, &[&str])] = &[
    ("datapath", &[]),
    ("egress", &[]),
    (
        "attach",
        &[
            "scanner_user_agent_dropped_legit_register_passes",
            "denied_ipv6_source_dropped_on_every_port",
            "register_rate_limit_admits_exactly_the_burst",
            "sip_over_tcp_scanner_dropped_legit_passes",
            "filter_survives_daemon_and_is_taken_over_then_detached",
            "egress_watcher_counts_answers_without_a_daemon_until_detached",
            "jumbo_link_auto_falls_back_to_skb_and_filters_4k_messages",
        ],
    ),
];

/// The kernel modules the tests need (built as modules by Debian).
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

/// How long one guest may run before it is stopped and its kernel reported as failed (under
/// software emulation a guest takes 4 to 6 minutes).
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// Lines the guest's init prints for this side to read.
const MARK: &str = "sipfilter-guest:";

#[derive(clap::Args)]
pub struct Args {
    /// Skip installing Debian packages.
    #[arg(long)]
    no_apt: bool,
}

pub fn main(args: &Args) -> Result<()> {
    setup::main(&setup::Args {
        no_apt: args.no_apt,
    })?;
    build::cargo_build(false)?;
    let (passed, failed) = run_all(&build::sipfilter_bin(false)?)?;
    println!("{passed} passed, {failed} failed");
    ensure!(failed == 0, "{failed} tests failed");
    Ok(())
}

/// Runs [`GUEST_TESTS`] on every kernel of [`KERNELS`] with `sipfilter` as the binary under
/// test; returns the tests passed and failed. An error means a guest did not run to its end.
pub fn run_all(sipfilter: &Path) -> Result<(u64, u64)> {
    let binaries = test_binaries()?;
    let cache = build::target_dir()?.join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let (mut passed, mut failed) = (0, 0);
    let mut current = BTreeSet::new();
    for kernel in KERNELS {
        println!("== kernel {}: {}", kernel.metapackage, kernel.used_by);
        let image = fetch(&cache, kernel.metapackage)?;
        let initrd = initramfs(&cache, &image, sipfilter, &binaries)?;
        let (p, f) = boot(&cache, &image, &initrd)?;
        passed += p;
        failed += f;
        current.insert(image.package);
    }
    // What kernels an update of the metapackages replaced left: up to half a gigabyte each.
    for entry in fs::read_dir(&cache)?.filter_map(|entry| entry.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let package = name.split(".initrd.gz").next().unwrap_or(&name);
        let package = package.strip_suffix(".log").unwrap_or(package);
        if name.starts_with("linux-image-") && !current.contains(package) {
            let path = entry.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok((passed, failed))
}

/// Builds the `tests` crate's test binaries of [`GUEST_TESTS`] and returns their paths by name.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "sipfilter-tests",
        "--no-run",
        "--message-format=json",
    ]);
    for (name, _) in GUEST_TESTS {
        cmd.args(["--test", name]);
    }
    let out = capture(&mut cmd)?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["target"]["kind"][0] != "test" {
            continue;
        }
        if let (Some(name), Some(path)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    for (name, _) in GUEST_TESTS {
        ensure!(
            found.iter().any(|(found, _)| found == name),
            "cargo built no test binary `{name}`"
        );
    }
    Ok(found)
}

/// An unpacked kernel package: its image and its modules.
struct Image {
    package: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// Downloads and unpacks the image package `metapackage` depends on, unless it is in `cache`.
fn fetch(cache: &Path, metapackage: &str) -> Result<Image> {
    let depends = capture(Command::new("apt-cache").args(["depends", metapackage]))?;
    let package = image_package(&depends)
        .with_context(|| format!("`apt-cache depends {metapackage}` names no linux-image"))?;
    let unpacked = cache.join(&package);
    if !unpacked.join("boot").is_dir() {
        let download = cache.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        run(Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&download))?;
        let deb = fs::read_dir(&download)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        let _ = fs::remove_dir_all(&unpacked);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::remove_dir_all(&download)?;
    }
    let vmlinuz = only_entry(&unpacked.join("boot"), "vmlinuz-")?;
    let modules = only_entry(&unpacked.join("lib/modules"), "")?;
    Ok(Image {
        package,
        vmlinuz,
        modules,
    })
}

/// The image package in `apt-cache depends` output: its first `Depends: linux-image-...`.
fn image_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends: ")?;
        name.starts_with("linux-image-").then(|| name.to_owned())
    })
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(prefix))
        });
    let first = found
        .next()
        .with_context(|| format!("nothing named {prefix}* in {}", dir.display()))?;
    ensure!(
        found.next().is_none(),
        "more than one {prefix}* in {}",
        dir.display()
    );
    Ok(first)
}

/// Builds the guest's initramfs for `image` and returns its path.
fn initramfs(
    cache: &Path,
    image: &Image,
    sipfilter: &Path,
    binaries: &[(String, PathBuf)],
) -> Result<PathBuf> {
    let root = cache.join(format!("{}-root", image.package));
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin",
        "usr/local/bin",
        "tests",
        "modules",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    let mut executables = vec![
        install(Path::new("/bin/busybox"), &root.join("bin/busybox"), false)?,
        install(sipfilter, &root.join("bin/sipfilter"), true)?,
    ];
    for tool in ["ip", "tc"] {
        let path = which(tool)?;
        executables.push(install(
            &path,
            &root.join("usr/local/bin").join(tool),
            false,
        )?);
    }
    for (name, path) in binaries {
        executables.push(install(path, &root.join("tests").join(name), true)?);
    }
    for library in libraries(&executables)? {
        let target = root.join(
            library
                .strip_prefix("/")
                .expect("ldd prints absolute paths"),
        );
        fs::create_dir_all(target.parent().expect("a library path has a parent"))?;
        // Followed, not copied as a link: the link's target is not in the image.
        fs::copy(&library, &target).with_context(|| format!("copying {}", library.display()))?;
    }
    for module in MODULES {
        let source = find_module(&image.modules, module)?;
        let target = root.join("modules").join(format!("{module}.ko"));
        if source.extension().is_some_and(|ext| ext == "xz") {
            // busybox's insmod takes no compressed module.
            let output = fs::File::create(&target)?;
            run(Command::new("xz")
                .arg("-dc")
                .arg(&source)
                .stdout(Stdio::from(output)))?;
        } else {
            fs::copy(&source, &target)?;
        }
    }
    let init = root.join("init");
    fs::write(&init, init_script())?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    let initrd = cache.join(format!("{}.initrd.gz", image.package));
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    )))?;
    fs::remove_dir_all(&root)?;
    Ok(initrd)
}

/// Copies an executable into the image; `strip` drops its debug information, which would
/// otherwise make the test binaries a hundred megabytes each (the guest holds its image in RAM).
fn install(source: &Path, target: &Path, strip: bool) -> Result<PathBuf> {
    fs::copy(source, target).with_context(|| format!("copying {}", source.display()))?;
    if strip {
        run(Command::new("strip").arg("--strip-debug").arg(target))?;
    }
    Ok(source.to_owned())
}

fn which(tool: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
        .with_context(|| format!("`{tool}` is not installed (iproute2)"))
}

/// The shared libraries `executables` load, as `ldd` finds them on this machine (the guest runs
/// the same Debian userland).
fn libraries(executables: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    for executable in executables {
        // A static binary (busybox) makes ldd fail: it links nothing.
        let Ok(output) = Command::new("ldd").arg(executable).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let path = line.split_whitespace().find(|word| word.starts_with('/'));
            if let Some(path) = path {
                found.insert(PathBuf::from(path));
            }
        }
    }
    Ok(found)
}

fn find_module(dir: &Path, module: &str) -> Result<PathBuf> {
    let names = [format!("{module}.ko"), format!("{module}.ko.xz")];
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)?.filter_map(|entry| entry.ok()) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if names
                .iter()
                .any(|name| path.file_name() == Some(name.as_ref()))
            {
                return Ok(path);
            }
        }
    }
    bail!("module {module} not found under {}", dir.display())
}

/// The guest's init: mounts what the tests need, loads the modules, runs [`GUEST_TESTS`] one
/// thread at a time (as root, with `CI=true`, so a test that cannot run fails) and powers off.
/// A daemon takes 7 to 20 s to load its programs under emulation, so the tests wait 8 times
/// as long for it as on real hardware.
/// `ip` and `tc` are called by path: busybox's shell prefers its own applets of those names.
fn init_script() -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /var /root && ln -s /run /var/run\n\
         export PATH=/usr/local/bin:/bin HOME=/root CI=true SIPFILTER_BIN=/bin/sipfilter\n\
         export SIPFILTER_TEST_LOAD_SLOWDOWN=8\n",
    );
    for module in MODULES {
        script.push_str(&format!(
            "insmod /modules/{module}.ko || echo '{MARK} insmod {module} failed'\n"
        ));
    }
    script.push_str(&format!(
        "/usr/local/bin/ip link set lo up\n\
         echo \"{MARK} kernel $(uname -r)\"\n\
         cd /tmp\n"
    ));
    for (name, tests) in GUEST_TESTS {
        let filter = if tests.is_empty() {
            String::new()
        } else {
            format!(" --exact {}", tests.join(" "))
        };
        script.push_str(&format!(
            "/tests/{name} --test-threads=1{filter} 2>&1\necho \"{MARK} {name} exit $?\"\n"
        ));
    }
    script.push_str(&format!("echo '{MARK} done'\npoweroff -f\n"));
    script
}

/// Boots `image` with `initrd`, echoes its console, and returns the tests passed and failed.
fn boot(cache: &Path, image: &Image, initrd: &Path) -> Result<(u64, u64)> {
    let log_path = cache.join(format!("{}.log", image.package));
    let mut log = fs::File::create(&log_path)?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-nic", "none", "-no-reboot", "-kernel"])
        .arg(&image.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = spawn(&mut cmd)?;
    let stdout = child.stdout.take().context("qemu's console")?;
    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let finished = Arc::clone(&finished);
        let pid = child.id() as libc::pid_t;
        thread::spawn(move || {
            while started.elapsed() < GUEST_TIMEOUT {
                if finished.load(Ordering::Relaxed) {
                    return false;
                }
                thread::sleep(Duration::from_millis(200));
            }
            // SAFETY: our own child, not yet waited for, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        })
    };
    let (mut passed, mut failed) = (0, 0);
    // The failed count of the summary the running binary printed, if it printed one yet.
    let mut summary = None;
    let mut exited = Vec::new();
    let mut crashed = Vec::new();
    let mut kernel = String::from("?");
    let mut done = false;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading qemu's console")?;
        let line = line.trim_end_matches('\r');
        writeln!(log, "{line}")?;
        writeln!(out, "[{kernel}] {line}")?;
        out.flush()?;
        if let Some(said) = guest_says(line) {
            match said {
                Said::Kernel(version) => kernel = version.to_owned(),
                Said::Exit(name, code) => {
                    // A binary whose tests ran and failed has counted them; one that stopped
                    // without a summary, or failed with none failing, has not.
                    if code != "0" && summary.is_none_or(|failed| failed == 0) {
                        crashed.push(format!("{name} (exit {code})"));
                    }
                    exited.push(name.to_owned());
                    summary = None;
                }
                Said::Done => done = true,
            }
        } else if let Some((p, f)) = parse_result(line) {
            passed += p;
            failed += f;
            summary = Some(f);
        }
    }
    drop(out);
    let status = child.wait().context("waiting for qemu")?;
    finished.store(true, Ordering::Relaxed);
    let timed_out = watchdog.join().unwrap_or(false);
    ensure!(
        !timed_out,
        "kernel {kernel}: the guest ran longer than {GUEST_TIMEOUT:?}; console in {}",
        log_path.display()
    );
    check(&cmd, status)?;
    ensure!(
        done,
        "kernel {kernel}: the guest stopped before its tests ended; console in {}",
        log_path.display()
    );
    let missing: Vec<&str> = GUEST_TESTS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !exited.iter().any(|exited| exited == name))
        .collect();
    ensure!(
        missing.is_empty() && crashed.is_empty(),
        "kernel {kernel}: test binaries that did not run: {missing:?}, that stopped without \
         reporting a failed test: {crashed:?}; console in {}",
        log_path.display()
    );
    println!(
        "== kernel {kernel}: {passed} passed, {failed} failed in {:.0?}",
        started.elapsed()
    );
    Ok((passed, failed))
}

/// What a [`MARK`] line of the guest's init says.
#[derive(Debug, PartialEq, Eq)]
enum Said<'a> {
    Kernel(&'a str),
    /// A test binary ended, with its exit code.
    Exit(&'a str, &'a str),
    Done,
}

fn guest_says(line: &str) -> Option<Said<'_>> {
    // Found anywhere in the line: the first follows the firmware's terminal codes.
    let (_, said) = line.split_once(MARK)?;
    match said.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["kernel", version] => Some(Said::Kernel(version)),
        [name, "exit", code] => Some(Said::Exit(name, code)),
        ["done"] => Some(Said::Done),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_image_a_metapackage_depends_on() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            image_package(depends).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(image_package("linux-image-amd64\n  Depends: kmod\n"), None);
    }

    #[test]
    fn reads_what_the_guest_says_behind_terminal_codes() {
        let first = "Booting from ROM..\x1bc\x1b[?7l\x1b[2Jsipfilter-guest: kernel 6.1.0-56-amd64";
        assert_eq!(guest_says(first), Some(Said::Kernel("6.1.0-56-amd64")));
        assert_eq!(
            guest_says("sipfilter-guest: attach exit 101"),
            Some(Said::Exit("attach", "101"))
        );
        assert_eq!(guest_says("sipfilter-guest: done"), Some(Said::Done));
        assert_eq!(guest_says("sipfilter-guest: insmod veth failed"), None);
        assert_eq!(guest_says("test result: ok. 1 passed; 0 failed"), None);
    }

    #[test]
    fn init_runs_every_test_binary_and_says_when_it_is_done() {
        let script = init_script();
        for (name, _) in GUEST_TESTS {
            assert!(script.contains(&format!("/tests/{name} --test-threads=1")));
            assert!(script.contains(&format!("{MARK} {name} exit $?")));
        }
        assert!(script.contains("--exact scanner_user_agent_dropped_legit_register_passes "));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
