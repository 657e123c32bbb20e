//! The real `sipfilter` binary under test: a [`Daemon`] guard for the foreground `attach`, a
//! [`PinDir`] guard for its private pin directory, a [`PolicyFile`] guard for policy files, and
//! [`sipfilter`] for one-shot commands (`check`, `detach`).
//!
//! The binary runs in the root mount namespace (so its pins land on the host's bpffs, where the
//! test can read them) but inside a test's network namespace (`--netns`). Every process started
//! here is stopped by its pid, and every pin directory and file is removed when its guard drops,
//! also while a test unwinds from a panic.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::NetNs;

/// The log line `attach` writes once the filter is attached and the policy applied.
pub const READY_LINE: &str = "filtering with";

/// How long a one-shot command may run before it is killed (they take milliseconds).
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Distinguishes policy files of one process.
static FILES: AtomicU32 = AtomicU32::new(0);

/// Whether this kernel has TCX (6.6 and later), where the egress watcher is a TCX link; older
/// kernels get a tc filter.
pub fn kernel_has_tcx() -> bool {
    aya::util::KernelVersion::current().expect("kernel version")
        >= aya::util::KernelVersion::new(6, 6, 0)
}

/// The `sipfilter` binary: `$SIPFILTER_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/debug/sipfilter`. Panics with instructions when neither exists.
pub fn sipfilter_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SIPFILTER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SIPFILTER_BIN={} is not a file; build it with `cargo build -p sipfilter`",
            path.display()
        );
        return path;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sipfilter");
    assert!(
        path.is_file(),
        "the sipfilter binary is missing: set SIPFILTER_BIN, or run `cargo build -p sipfilter` \
         first (looked for {})",
        path.display()
    );
    path
}

/// A `sipfilter` command with a clean environment for the options the tests pass explicitly.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(sipfilter_bin());
    command
        .args(args)
        .env_remove("SIPFILTER_LOG")
        .env_remove("SIPFILTER_PIN_DIR")
        .env_remove("SIPFILTER_SOCKET")
        .stdin(Stdio::null());
    command
}

/// Runs `sipfilter args...` to completion (killing it after 30 s) and returns its output. The
/// caller checks the status: failing commands are half of what the tests look at.
pub fn sipfilter(args: &[&str]) -> Output {
    let shown = format!("sipfilter {}", args.join(" "));
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start `{shown}`: {err}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = match wait_with_deadline(&mut child, ONE_SHOT_TIMEOUT) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{shown}` did not finish within {ONE_SHOT_TIMEOUT:?}");
        }
        Err(err) => panic!("waiting for `{shown}`: {err}"),
    };
    // The pipes close when the process exits; give the readers a moment to reach their end.
    let text = |capture: Arc<Capture>| {
        capture.wait_closed(Duration::from_secs(2));
        capture.bytes()
    };
    Output {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    }
}

/// What a process wrote to one pipe, filled by a reader thread; waiters are woken on every
/// chunk, so a test acts on a log line the moment it is written.
#[derive(Debug, Default)]
struct Capture {
    state: Mutex<CaptureState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CaptureState {
    bytes: Vec<u8>,
    /// The pipe reached its end (the process exited, or closed it).
    closed: bool,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, CaptureState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Waits up to `timeout` until the text contains `needle` (true) or the pipe closes
    /// without it (false).
    fn wait_contains(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if String::from_utf8_lossy(&state.bytes).contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for the pipe to close.
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Reads `pipe` to its end on a thread, so the writer never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> Arc<Capture> {
    let capture = Arc::new(Capture::default());
    let shared = Arc::clone(&capture);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            let read = pipe.read(&mut chunk);
            let mut state = shared.lock();
            match read {
                Ok(0) | Err(_) => {
                    state.closed = true;
                    shared.changed.notify_all();
                    break;
                }
                Ok(len) => state.bytes.extend_from_slice(&chunk[..len]),
            }
            shared.changed.notify_all();
        }
    });
    capture
}

/// Polls `child` until it exits or `timeout` passes (`None`).
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The private places of one test's filter: a pin directory on the host's bpffs
/// (`/sys/fs/bpf/sft-<tag>-<pid>-<n>`) and a run directory (`<tmp>/sft-<tag>-<pid>-<n>/`) for the
/// daemon's control socket and state file, so a test never touches the machine's own
/// `/run/sipfilter` socket (a real daemon may answer there) or `/var/lib/sipfilter` state.
///
/// On drop, `sipfilter detach --all` (through the private socket) detaches and unpins what is
/// left, and both directories are removed if that did not.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    run_dir: PathBuf,
}

impl PinDir {
    /// Fresh directory names (the run directory is created). `tag` is ASCII letters and digits.
    pub fn new(tag: &str) -> PinDir {
        assert!(
            !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "pin dir tag {tag:?} must be ASCII letters and digits"
        );
        static STALE: Once = Once::new();
        STALE.call_once(remove_stale);
        let path = crate::datapath::private_pin_dir(tag);
        let name = path.file_name().expect("a directory name").to_owned();
        let run_dir = std::env::temp_dir().join(name);
        // Leftovers of an earlier process with our pid would confuse the test.
        let _ = fs::remove_dir_all(&path);
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", run_dir.display()));
        PinDir { path, run_dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin directory as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("pin dir paths are ASCII")
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("sipfilter.sock")
    }

    /// The daemon's state file.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }

    /// `--pin-dir DIR --socket SOCKET`, preceded by `--netns NAME` when `ns` is given: the
    /// global options every command about this filter needs.
    pub fn global_args(&self, ns: Option<&NetNs>) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(ns) = ns {
            args.extend(["--netns".to_owned(), ns.name().to_owned()]);
        }
        args.extend([
            "--pin-dir".to_owned(),
            self.arg().to_owned(),
            "--socket".to_owned(),
            path_arg(&self.socket()),
        ]);
        args
    }

    /// Runs `sipfilter <global args> args...` to completion (see [`sipfilter`]).
    pub fn command(&self, ns: Option<&NetNs>, args: &[&str]) -> Output {
        let mut full = self.global_args(ns);
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        sipfilter(&full)
    }

    /// Names of the entries in the pin directory (maps, `program`, `link-IFACE`), sorted;
    /// empty when the directory does not exist.
    pub fn entries(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// True when a link of `iface` is pinned here.
    pub fn has_link(&self, iface: &str) -> bool {
        self.path.join(format!("link-{iface}")).exists()
    }

    /// The filter's counters summed over CPUs (`sipfilter_common::stats` layout).
    pub fn counters(&self) -> Result<Vec<u64>> {
        sipfilter::datapath::pinned_counters(&self.path)
            .with_context(|| format!("reading the counters pinned under {}", self.path.display()))
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() || self.socket().exists() {
            let output = self.command(None, &["detach", "--all"]);
            if !output.status.success() {
                eprintln!(
                    "warning: detach --all --pin-dir {} failed: {}",
                    self.path.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        for dir in [&self.path, &self.run_dir] {
            if dir.exists()
                && let Err(err) = fs::remove_dir_all(dir)
            {
                eprintln!("warning: removing {}: {err}", dir.display());
            }
        }
    }
}

/// Removes what test processes that no longer run left behind (killed before their guards
/// dropped): `/sys/fs/bpf/sft-<tag>-<pid>-<n>` pin directories and `<tmp>/sft-<tag>-<pid>-<n>`
/// run directories and `.toml` policy files. Names that are not ours, and those of live
/// processes, are left alone.
fn remove_stale() {
    for parent in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.filter_map(|entry| entry.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(name.strip_suffix(".toml").unwrap_or(&name)) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(err) = removed {
                eprintln!("warning: removing stale {}: {err}", path.display());
            }
        }
    }
}

/// The pid in a name of the form `sft-<tag>-<pid>-<n>`, or `None` for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sft-")?;
    let mut fields = rest.rsplitn(3, '-');
    let counter = fields.next()?;
    let pid = fields.next()?;
    let tag = fields.next()?;
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    if !is_number(counter) || !is_number(pid) {
        return None;
    }
    pid.parse().ok()
}

/// A policy file in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
}

impl PolicyFile {
    /// Writes `toml` to `<tmp>/sft-<tag>-<pid>-<n>.toml`.
    pub fn new(tag: &str, toml: &str) -> PolicyFile {
        let path = std::env::temp_dir().join(format!(
            "sft-{tag}-{}-{}.toml",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, toml)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        PolicyFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }

    /// The file's name, as the error messages show it.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A running `sipfilter ... attach ...`, killed (by its pid) and reaped on drop. Its stderr (the
/// log) is read continuously by a thread, so the daemon never blocks on a full pipe.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: Arc<Capture>,
    what: String,
}

impl Daemon {
    /// Starts `sipfilter --netns NS --pin-dir DIR --socket SOCKET attach --state-file FILE
    /// args...` (e.g. `["veth-s", "--config", POLICY]`), with the private places of `pins`. Use
    /// [`Daemon::wait_ready`] before sending traffic.
    pub fn attach(ns: &NetNs, pins: &PinDir, args: &[&str]) -> Result<Daemon> {
        let mut full = pins.global_args(Some(ns));
        full.extend([
            "attach".to_owned(),
            "--state-file".to_owned(),
            path_arg(&pins.state_file()),
        ]);
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        Daemon::spawn(&full)
    }

    /// Starts `sipfilter args...` with stdout discarded and stderr captured.
    pub fn spawn(args: &[&str]) -> Result<Daemon> {
        let what = format!("sipfilter {}", args.join(" "));
        let mut child = command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let log = drain(child.stderr.take().expect("piped stderr"));
        Ok(Daemon {
            child: Some(child),
            status: None,
            log,
            what,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the daemon was started")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// The exit status, if the daemon has exited (and reaps it).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.status = Some(status);
        }
        Ok(self.status)
    }

    /// Waits until the log shows the filter is attached ([`READY_LINE`]). Fails, showing the
    /// log, when the daemon exits first or `timeout` passes. `timeout` is multiplied by
    /// `$SIPFILTER_TEST_LOAD_SLOWDOWN` when set: under software emulation
    /// (`cargo xtask kernels`) the verifier takes many times longer to load the programs.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let slowdown = std::env::var("SIPFILTER_TEST_LOAD_SLOWDOWN")
            .ok()
            .and_then(|factor| factor.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        self.wait_for_log(READY_LINE, timeout * slowdown)
    }

    /// Waits until the log contains `needle`, returning the moment it is written; fails if the
    /// daemon exits first or at `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        if self.log.wait_contains(needle, timeout) {
            return Ok(());
        }
        if self.log.lock().closed {
            // stderr closed: the daemon is exiting, or has.
            let status = self.wait_exit(Duration::from_secs(5))?;
            bail!(
                "`{}` exited ({status}) before logging {needle:?}; its log:\n{}",
                self.what,
                self.log()
            );
        }
        bail!(
            "`{}` did not log {needle:?} within {timeout:?}; its log:\n{}",
            self.what,
            self.log()
        );
    }

    /// Waits up to `timeout` for the daemon to exit by itself (e.g. an `attach` that must fail).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.settle_log();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` still runs after {timeout:?}; its log:\n{}",
                    self.what,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the daemon to exit; SIGKILLs it (and fails)
    /// if it does not.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// [`Daemon::stop`] with another signal (SIGINT: Ctrl-C in a terminal).
    pub fn stop_with(&mut self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        let name = signal_name(signal);
        if let Some(status) = self.try_status()? {
            bail!(
                "`{}` had already exited ({status}) before {name}; its log:\n{}",
                self.what,
                self.log()
            );
        }
        self.signal(signal)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.settle_log();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill9();
                bail!(
                    "`{}` ignored {name} for {timeout:?}; killed it. Its log:\n{}",
                    self.what,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL and reaps the daemon.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        let child = self.child.as_mut().expect("the daemon was started");
        child
            .kill()
            .with_context(|| format!("cannot kill `{}`", self.what))?;
        let status = child.wait()?;
        self.status = Some(status);
        self.settle_log();
        Ok(status)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of our own unreaped child: the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        ensure!(
            rc == 0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// After the process exited, waits briefly for the reader thread to reach the pipe's end.
    fn settle_log(&self) {
        self.log.wait_closed(Duration::from_secs(2));
    }
}

/// `SIGTERM`, `SIGINT`, ... for messages.
fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Some(mut child) = self.child.take() {
            // Fails only when the process already exited, which is what we want anyway.
            let _ = child.kill();
            if let Err(err) = child.wait() {
                eprintln!("warning: cannot reap `{}`: {err}", self.what);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_accepts_only_our_names() {
        assert_eq!(owner_pid("sft-attach1-1234-0"), Some(1234));
        assert_eq!(owner_pid("sft-dp-99-17"), Some(99));
        assert_eq!(owner_pid("sipfilter"), None);
        assert_eq!(owner_pid("sft-1234-0"), None);
        assert_eq!(owner_pid("sft-a-b-1234-0"), None);
        assert_eq!(owner_pid("sft-x-12a-0"), None);
    }
}
