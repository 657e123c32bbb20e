//! A PBX lab inside test namespaces: Debian's Kamailio as a digest-authenticating registrar
//! ([`Kamailio`], configured by `lab/kamailio/`), a legitimate user agent (the real [`Baresip`],
//! and [`SipClient`], a small RFC 2617 digest client in Rust for precise request/response
//! checks), and the sipvicious attackers ([`svwar`], [`svcrack`], [`svmap`]).
//!
//! Every external program runs inside a namespace the test created (`ip netns exec`), in a
//! process group of its own, under coreutils `timeout` (so it ends even if the test process is
//! killed before its guards drop), and is stopped by its pid/process group when its guard drops,
//! also while a test unwinds from a panic. Each guard owns a private directory under the system
//! temp dir (config, user table, logs) that it deletes when it drops.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use md5::{Digest, Md5};

use crate::netns::NetNs;

/// To user of the OPTIONS probes [`Kamailio::start`] sends while waiting for the registrar;
/// [`Kamailio::requests_seen`] leaves them out.
pub const PROBE_USER: &str = "sflab-probe";

/// How long a [`Kamailio`] may live unless started with [`Kamailio::start_for`]. The `timeout`
/// wrapper ends it after this even if nothing else does.
pub const KAMAILIO_LIFETIME: Duration = Duration::from_secs(600);

/// How long [`Kamailio::start`] waits for the first answer to an OPTIONS probe.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Grace between SIGTERM and SIGKILL, both for our own stop and for the `timeout` wrapper.
/// Kamailio stops its workers one by one; with a dozen lab tests running at once on two cores
/// that took more than 5 s once, and `timeout` then SIGKILLs its whole process group, itself
/// included, which reads as a failed stop. Kamailio's own limit is 60 s (`exit_timeout`).
const KILL_GRACE: Duration = Duration::from_secs(20);

/// Upper bounds on what one attacker run may be asked to do.
pub const MAX_EXTENSIONS: usize = 1000;
pub const MAX_PASSWORDS: usize = 1000;
pub const MAX_TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Distinguishes private directories of one process.
static DIRS: AtomicU32 = AtomicU32::new(0);
/// Distinguishes Call-IDs, tags and branches of one process.
static IDS: AtomicU32 = AtomicU32::new(0);

/// `lab/kamailio/` in the source tree: `kamailio.cfg` and the `db/` table templates.
pub fn kamailio_lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/kamailio")
}

/// True while `pid` exists and is not a zombie (an exited process nobody reaped yet).
pub fn process_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|(state, _)| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Pids of the live processes in process group `pgid`.
pub fn process_group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat_fields(&stat)
                        .map(|(state, pgrp)| pgrp == pgid && state != "Z" && state != "X")
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// State and process group from `/proc/PID/stat` (`pid (comm) state ppid pgrp ...`, where comm
/// may contain spaces and parentheses, hence the search for the last `)`).
fn stat_fields(stat: &str) -> Option<(&str, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// A private directory, `<tmp>/sipfilter-lab-<pid>-<n>-<tag>`, deleted with everything in it
/// when the guard drops. Directories of test processes that died without dropping theirs are
/// deleted the first time this process creates one.
#[derive(Debug)]
pub struct LabDir {
    path: PathBuf,
}

impl LabDir {
    pub fn new(tag: &str) -> Result<LabDir> {
        static STALE: Once = Once::new();
        STALE.call_once(remove_stale_dirs);
        let path = std::env::temp_dir().join(format!(
            "sipfilter-lab-{}-{}-{tag}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let dir = LabDir { path };
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {err}", self.path.display());
        }
    }
}

fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("sipfilter-lab-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A program started by this module in a namespace, leader of its own process group, under
/// `timeout`. Dropping the guard stops the whole group (SIGTERM to the leader, then SIGKILL to
/// the group) and reaps the leader.
#[derive(Debug)]
pub struct LabProcess {
    child: Option<Child>,
    pid: u32,
    what: String,
}

impl LabProcess {
    /// Runs `timeout --kill-after=20 LIFETIME args...` in `ns` with stdin closed and stdout and
    /// stderr going to the given files (the same file for both when the paths are equal).
    pub fn spawn(
        ns: &NetNs,
        args: &[&str],
        lifetime: Duration,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<LabProcess> {
        ensure!(!args.is_empty(), "spawn needs a command");
        let seconds = lifetime.as_secs().max(1).to_string();
        let kill_after = format!("--kill-after={}", KILL_GRACE.as_secs());
        let what = format!(
            "ip netns exec {} timeout {kill_after} {seconds} {}",
            ns.name(),
            args.join(" ")
        );
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let out = open(stdout)?;
        let err = if stdout == stderr {
            out.try_clone()?
        } else {
            open(stderr)?
        };
        // `ip netns exec` and `timeout` both exec in place, so the child's pid is timeout's,
        // and process_group(0) makes that the group every later process of the run is in.
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "timeout", &kill_after, &seconds])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(LabProcess {
            pid: child.id(),
            child: Some(child),
            what,
        })
    }

    /// The group leader (the `timeout` wrapper); also the process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The live processes of the run: the wrapper and everything it started.
    pub fn pids(&self) -> Vec<u32> {
        process_group_members(self.pid)
    }

    /// The exit status if the leader has exited.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("`{}` was already reaped", self.what),
        }
    }

    /// Waits up to `timeout` for the leader to exit by itself.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the run to end by itself, then stops it. Returns the status
    /// and whether it had to be stopped.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, bool)> {
        match self.wait_timeout(timeout)? {
            Some(status) => {
                self.reap_group(status)?;
                Ok((status, false))
            }
            None => Ok((self.terminate()?, true)),
        }
    }

    /// SIGTERM to the leader (`timeout` passes it on to the whole group), SIGKILL to the group
    /// after [`KILL_GRACE`], then reaps the leader and kills any straggler of the group.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            self.reap_group(status)?;
            return Ok(status);
        }
        signal(self.pid as i32, libc::SIGTERM);
        let status = match self.wait_timeout(KILL_GRACE)? {
            Some(status) => status,
            None => {
                eprintln!("warning: `{}` ignored SIGTERM; killing it", self.what);
                signal(-(self.pid as i32), libc::SIGKILL);
                self.child.as_mut().expect("child present").wait()?
            }
        };
        self.reap_group(status)?;
        Ok(status)
    }

    /// After the leader exited: forget the child and make sure no member of its group lives
    /// on. The group id cannot be reused by an unrelated process while any member exists.
    fn reap_group(&mut self, status: ExitStatus) -> Result<()> {
        self.child = None;
        let deadline = Instant::now() + KILL_GRACE;
        loop {
            let left = process_group_members(self.pid);
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                signal(-(self.pid as i32), libc::SIGKILL);
                thread::sleep(Duration::from_millis(50));
                let left = process_group_members(self.pid);
                ensure!(
                    left.is_empty(),
                    "`{}` exited ({status}) but left processes {left:?}",
                    self.what
                );
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.terminate()
        {
            eprintln!("warning: stopping `{}`: {err:#}", self.what);
        }
    }
}

/// kill(2), ignoring "no such process": the target has already gone, which is the goal.
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; pids come from processes we started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The end of a log for error messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// `192.0.2.2` or `[2001:db8::2]`: the host part of a SIP URI.
pub fn uri_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Rejects what the db_text format or a SIP URI user part could not carry literally.
fn check_credential(what: &str, value: &str) -> Result<()> {
    ensure!(
        !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b":\\@<>;\"".contains(&b)),
        "{what} {value:?} must be printable ASCII without ':', '\\\\', '@', '<', '>', ';' or quotes"
    );
    Ok(())
}

/// Kamailio as a registrar in a test namespace. Stopped (the whole process group) and its
/// directory removed when the guard drops.
#[derive(Debug)]
pub struct Kamailio {
    // Declared before `dir`: the process stops before its files are deleted.
    process: LabProcess,
    dir: LabDir,
    listen: SocketAddr,
    log: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio in `ns`, listening on UDP and TCP `listen` only, with `users` (extension,
    /// password) as the only subscribers, and returns once it answers an OPTIONS. `listen`
    /// must be an address of `ns`.
    pub fn start(ns: &NetNs, listen: SocketAddr, users: &[(&str, &str)]) -> Result<Kamailio> {
        Self::start_for(ns, listen, users, KAMAILIO_LIFETIME)
    }

    /// [`Kamailio::start`] with a different upper bound on its lifetime.
    pub fn start_for(
        ns: &NetNs,
        listen: SocketAddr,
        users: &[(&str, &str)],
        lifetime: Duration,
    ) -> Result<Kamailio> {
        let dir = LabDir::new("kamailio")?;
        let source = kamailio_lab_dir();
        let cfg = dir.path().join("kamailio.cfg");
        fs::copy(source.join("kamailio.cfg"), &cfg)
            .with_context(|| format!("cannot copy {}/kamailio.cfg", source.display()))?;
        let db = dir.path().join("db");
        fs::create_dir(&db)?;
        for table in ["version", "subscriber"] {
            fs::copy(source.join("db").join(table), db.join(table))
                .with_context(|| format!("cannot copy {}/db/{table}", source.display()))?;
        }
        let mut rows = String::new();
        for (id, (user, password)) in users.iter().enumerate() {
            check_credential("user", user)?;
            check_credential("password", password)?;
            // id:username:domain:password:ha1:ha1b -- domain and the HA1 columns stay empty
            // (NULL): auth_db hashes the plain password with the realm of each request.
            rows.push_str(&format!("{}:{user}::{password}::\n", id + 1));
        }
        let mut subscriber = fs::read_to_string(db.join("subscriber"))?;
        if !subscriber.ends_with('\n') {
            subscriber.push('\n');
        }
        subscriber.push_str(&rows);
        fs::write(db.join("subscriber"), subscriber)?;
        let run = dir.path().join("run");
        fs::create_dir(&run)?;
        let log = dir.path().join("kamailio.log");

        let path = |p: &Path| p.to_str().map(str::to_owned).context("non-UTF-8 temp path");
        let (cfg, run_dir, db_dir, work) =
            (path(&cfg)?, path(&run)?, path(&db)?, path(dir.path())?);
        let pid_file = format!("{run_dir}/kamailio.pid");
        let listen_addr = format!("LISTEN_ADDR={}", uri_host(listen.ip()));
        let listen_port = format!("LISTEN_PORT={}", listen.port());
        let db_url = format!("DBURL=\"text://{db_dir}\"");
        let args = [
            "kamailio",
            "-DD", // stay in the foreground: no daemon outside our process group
            "-E",  // log to stderr, which is the log file
            "-f",
            &cfg,
            "-Y",
            &run_dir,
            "-P",
            &pid_file,
            "-w",
            &work,
            "-m",
            "32",
            "-M",
            "8",
            "-A",
            &listen_addr,
            "-A",
            &listen_port,
            "-A",
            &db_url,
        ];
        let process = LabProcess::spawn(ns, &args, lifetime, &log, &log)?;
        let mut kamailio = Kamailio {
            process,
            dir,
            listen,
            log,
        };
        kamailio.wait_ready(ns)?;
        Ok(kamailio)
    }

    fn wait_ready(&mut self, ns: &NetNs) -> Result<()> {
        // The wildcard address, so that a listen address the namespace lacks shows up as
        // Kamailio failing to bind (reported with its log) rather than as a probe error.
        let any: IpAddr = match self.listen {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let probe = SipClient::bind(ns, SocketAddr::new(any, 0), self.listen)?
            .with_timeout(Duration::from_millis(300));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_status()? {
                bail!(
                    "kamailio exited ({status}) before answering OPTIONS:\n{}",
                    tail(&self.log(), 30)
                );
            }
            match probe.options_to(PROBE_USER) {
                Ok(response) if response.code == 200 => return Ok(()),
                Ok(response) => bail!(
                    "kamailio answered the OPTIONS probe with {} {}",
                    response.code,
                    response.reason
                ),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(err) => {
                    return Err(err.context(format!(
                        "kamailio did not answer OPTIONS within {STARTUP_TIMEOUT:?}:\n{}",
                        tail(&self.log(), 30)
                    )));
                }
            }
        }
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The `timeout` wrapper; Kamailio's main process is its child.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Every live process of this Kamailio: the wrapper, the main process and its workers.
    pub fn pids(&self) -> Vec<u32> {
        self.process.pids()
    }

    /// The private directory (config copy, `db/`, `run/`, `kamailio.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything Kamailio logged so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The requests that reached the script and the final answers it gave, from the
    /// `SFLAB-REQ`/`SFLAB-RESP` log lines, without the startup probes.
    pub fn requests_seen(&self) -> Result<SeenLog> {
        SeenLog::parse(&self.log())
    }

    /// Stops Kamailio (SIGTERM, then SIGKILL to the group after [`KILL_GRACE`]) and removes its
    /// directory. Returns the exit status of the wrapper, which is Kamailio's own unless it had
    /// to be killed, and its log up to the end, read before the directory goes (what it said
    /// while shutting down explains a stop that did not end well).
    pub fn stop(mut self) -> Result<(ExitStatus, String)> {
        let status = self.process.terminate()?;
        Ok((status, self.log()))
    }
}

/// A request as Kamailio logged it on arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub source: SocketAddr,
    pub proto: String,
    /// The To user, as sent by the peer (attacker-controlled).
    pub to_user: String,
}

/// A final answer of the script: a SIP code (`401`, `404`...), `relay` for a forwarded request
/// or `sanity` for one `sanity_check` rejected itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedResponse {
    pub method: String,
    pub source: SocketAddr,
    pub code: String,
    pub to_user: String,
}

/// What Kamailio's log says reached it, in arrival order.
#[derive(Clone, Debug, Default)]
pub struct SeenLog {
    pub requests: Vec<LoggedRequest>,
    pub responses: Vec<LoggedResponse>,
}

impl SeenLog {
    pub fn parse(log: &str) -> Result<SeenLog> {
        let mut seen = SeenLog::default();
        for line in log.lines() {
            if let Some(rest) = marker_rest(line, "SFLAB-REQ ") {
                let fields = log_fields(rest)?;
                let request = LoggedRequest {
                    method: fields.get("method")?,
                    source: fields.source()?,
                    proto: fields.get("proto")?,
                    to_user: fields.to_user.clone(),
                };
                if request.to_user != PROBE_USER {
                    seen.requests.push(request);
                }
            } else if let Some(rest) = marker_rest(line, "SFLAB-RESP ") {
                let fields = log_fields(rest)?;
                let response = LoggedResponse {
                    method: fields.get("method")?,
                    source: fields.source()?,
                    code: fields.get("code")?,
                    to_user: fields.to_user.clone(),
                };
                if response.to_user != PROBE_USER {
                    seen.responses.push(response);
                }
            }
        }
        Ok(seen)
    }

    /// Requests with `method`, from anywhere.
    pub fn count(&self, method: &str) -> usize {
        self.requests.iter().filter(|r| r.method == method).count()
    }

    /// Requests with `method` from `ip`.
    pub fn count_from(&self, method: &str, ip: IpAddr) -> usize {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.source.ip() == ip)
            .count()
    }

    /// Request counts by (method, source address).
    pub fn by_method_and_source(&self) -> BTreeMap<(String, IpAddr), usize> {
        let mut counts = BTreeMap::new();
        for request in &self.requests {
            *counts
                .entry((request.method.clone(), request.source.ip()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Final answers with `code` to requests with `method`.
    pub fn responses_with(&self, method: &str, code: &str) -> usize {
        self.responses
            .iter()
            .filter(|r| r.method == method && r.code == code)
            .count()
    }
}

fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

struct LogFields {
    fields: BTreeMap<String, String>,
    to_user: String,
}

impl LogFields {
    fn get(&self, key: &str) -> Result<String> {
        self.fields
            .get(key)
            .cloned()
            .with_context(|| format!("log line without {key}="))
    }

    fn source(&self) -> Result<SocketAddr> {
        let ip: IpAddr = self.get("src_ip")?.parse().context("bad src_ip")?;
        let port: u16 = self.get("src_port")?.parse().context("bad src_port")?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// `k=v k=v ... to=REST`: the To user comes last because it is whatever the peer sent.
fn log_fields(rest: &str) -> Result<LogFields> {
    let (head, to_user) = match rest.find(" to=") {
        Some(at) => (&rest[..at], rest[at + 4..].to_owned()),
        None => (rest, String::new()),
    };
    let mut fields = BTreeMap::new();
    for word in head.split_whitespace() {
        let (key, value) = word
            .split_once('=')
            .with_context(|| format!("bad log field {word:?} in {rest:?}"))?;
        fields.insert(key.to_owned(), value.to_owned());
    }
    Ok(LogFields { fields, to_user })
}

// ------------------------------------------------------------------------------------------
// A small SIP user agent client with RFC 2617 digest authentication.

/// A SIP response as received.
#[derive(Clone, Debug)]
pub struct SipResponse {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl SipResponse {
    /// The first header called `name` (case-insensitive, compact forms understood).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A SIP request as received, with where it came from.
#[derive(Clone, Debug)]
pub struct SipRequest {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub source: SocketAddr,
    pub raw: String,
}

impl SipRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The outcome of [`SipClient::register`]: the challenge (when there was one) and the final
/// answer.
#[derive(Clone, Debug)]
pub struct Registration {
    pub challenge: Option<SipResponse>,
    pub response: SipResponse,
}

impl Registration {
    pub fn code(&self) -> u16 {
        self.response.code
    }
}

fn canonical_header(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    match lower.as_str() {
        "i" => "call-id",
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        _ => return lower,
    }
    .to_owned()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = canonical_header(name);
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// Start line and headers (names canonicalised) of a SIP message.
fn parse_message(text: &str) -> Result<(String, Vec<(String, String)>)> {
    let head = text.split("\r\n\r\n").next().unwrap_or(text);
    let mut lines = head.split("\r\n");
    let start = lines.next().context("empty SIP message")?.to_owned();
    let mut headers = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.push((canonical_header(name), value.trim().to_owned()));
        }
    }
    Ok((start, headers))
}

fn parse_response(text: &str) -> Result<SipResponse> {
    let (start, headers) = parse_message(text)?;
    let mut parts = start.splitn(3, ' ');
    ensure!(
        parts.next() == Some("SIP/2.0"),
        "not a SIP response: {start:?}"
    );
    let code = parts
        .next()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {start:?}"))?;
    Ok(SipResponse {
        code,
        reason: parts.next().unwrap_or_default().to_owned(),
        headers,
        raw: text.to_owned(),
    })
}

/// A digest challenge from a `WWW-Authenticate`/`Proxy-Authenticate` header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    pub algorithm: Option<String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Result<Challenge> {
        let rest = header
            .trim()
            .strip_prefix("Digest")
            .with_context(|| format!("not a digest challenge: {header:?}"))?;
        let mut challenge = Challenge::default();
        for (key, value) in auth_params(rest) {
            match key.to_ascii_lowercase().as_str() {
                "realm" => challenge.realm = value,
                "nonce" => challenge.nonce = value,
                "opaque" => challenge.opaque = Some(value),
                "qop" => challenge.qop = Some(value),
                "algorithm" => challenge.algorithm = Some(value),
                _ => {}
            }
        }
        ensure!(
            !challenge.nonce.is_empty(),
            "challenge without nonce: {header:?}"
        );
        Ok(challenge)
    }
}

/// `key=value, key="quoted, value"` pairs.
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_owned();
        if key.is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        params.push((key, value));
    }
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The RFC 2617 `response` value: with `qop=auth` when `qop` gives (nc, cnonce), else the
/// RFC 2069 form. MD5 only.
pub fn digest_response(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The `Authorization` header value answering `challenge`.
pub fn authorization(
    challenge: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Result<String> {
    if let Some(algorithm) = &challenge.algorithm {
        ensure!(
            algorithm.eq_ignore_ascii_case("MD5"),
            "unsupported digest algorithm {algorithm}"
        );
    }
    let use_qop = challenge
        .qop
        .as_deref()
        .is_some_and(|qop| qop.split(',').any(|q| q.trim() == "auth"));
    let cnonce = unique("c");
    let nc = "00000001";
    let response = digest_response(
        user,
        &challenge.realm,
        password,
        method,
        uri,
        &challenge.nonce,
        use_qop.then_some((nc, cnonce.as_str())),
    );
    let mut value = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5",
        challenge.realm, challenge.nonce
    );
    if use_qop {
        value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Ok(value)
}

/// A token unique within this process and very likely across processes.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    let hash = md5_hex(&format!("{}-{n}-{nanos}", std::process::id()));
    format!("{prefix}{}", &hash[..16])
}

/// What [`SipClient::head`] needs to start a request.
struct Head<'a> {
    method: &'a str,
    uri: &'a str,
    from_user: &'a str,
    /// The whole To header value.
    to: &'a str,
    call_id: &'a str,
    cseq: u32,
    branch: &'a str,
    tag: &'a str,
}

/// A SIP user agent on one UDP socket inside a namespace, talking to one server. Requests are
/// retransmitted like RFC 3261 timer A (0.5 s, 1 s, 2 s...) until the timeout (5 s unless
/// [`SipClient::with_timeout`]).
#[derive(Debug)]
pub struct SipClient {
    socket: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
}

impl SipClient {
    /// Binds `local` (port 0 picks one) in `ns`.
    pub fn bind(ns: &NetNs, local: SocketAddr, server: SocketAddr) -> Result<SipClient> {
        let socket = ns
            .run(|| UdpSocket::bind(local))
            .with_context(|| format!("cannot bind {local} in {}", ns.name()))?;
        let local = socket.local_addr()?;
        Ok(SipClient {
            socket,
            local,
            server,
            timeout: Duration::from_secs(5),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> SipClient {
        self.timeout = timeout;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn server_host(&self) -> String {
        uri_host(self.server.ip())
    }

    fn local_hostport(&self) -> String {
        format!("{}:{}", uri_host(self.local.ip()), self.local.port())
    }

    /// Request line and the common headers from Via to User-Agent.
    fn head(&self, head: &Head<'_>) -> String {
        let Head {
            method,
            uri,
            from_user,
            to,
            call_id,
            cseq,
            branch,
            tag,
        } = head;
        format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{from_user}@{}>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             User-Agent: sipfilter-lab-client\r\n",
            self.local_hostport(),
            self.server_host()
        )
    }

    /// `<sip:USER@SERVER>`, a To header without tag.
    fn to(&self, user: &str) -> String {
        format!("<sip:{user}@{}>", self.server_host())
    }

    /// OPTIONS to the server itself (`sip:SERVER`).
    pub fn options(&self) -> Result<SipResponse> {
        self.options_uri(&format!("sip:{}", self.server_host()), "lab")
    }

    /// OPTIONS to `sip:USER@SERVER`.
    pub fn options_to(&self, user: &str) -> Result<SipResponse> {
        self.options_uri(&format!("sip:{user}@{}", self.server_host()), user)
    }

    fn options_uri(&self, uri: &str, to_user: &str) -> Result<SipResponse> {
        let call_id = unique("o");
        let branch = unique("z9hG4bK");
        let mut request = self.head(&Head {
            method: "OPTIONS",
            uri,
            from_user: "lab",
            to: &self.to(to_user),
            call_id: &call_id,
            cseq: 1,
            branch: &branch,
            tag: &unique("t"),
        });
        request.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
        self.transaction(&request, &call_id, "1 OPTIONS")
    }

    /// Registers `user` for 300 s: REGISTER, and if challenged (401), REGISTER again with
    /// digest credentials. The final answer is the registrar's verdict: 200 for the right
    /// password, 403 for a wrong one, 404 for an unknown user.
    pub fn register(&self, user: &str, password: &str) -> Result<Registration> {
        self.register_with_expires(user, password, 300)
    }

    /// [`SipClient::register`] with another expiry; 0 removes the binding.
    pub fn register_with_expires(
        &self,
        user: &str,
        password: &str,
        expires: u32,
    ) -> Result<Registration> {
        let uri = format!("sip:{}", self.server_host());
        let call_id = unique("r");
        let tag = unique("t");
        let build = |cseq: u32, authorization: Option<&str>| {
            let mut request = self.head(&Head {
                method: "REGISTER",
                uri: &uri,
                from_user: user,
                to: &self.to(user),
                call_id: &call_id,
                cseq,
                branch: &unique("z9hG4bK"),
                tag: &tag,
            });
            request.push_str(&format!(
                "Contact: <sip:{user}@{}>\r\nExpires: {expires}\r\n",
                self.local_hostport()
            ));
            if let Some(authorization) = authorization {
                request.push_str(&format!("Authorization: {authorization}\r\n"));
            }
            request.push_str("Content-Length: 0\r\n\r\n");
            request
        };
        let first = self.transaction(&build(1, None), &call_id, "1 REGISTER")?;
        if first.code != 401 {
            return Ok(Registration {
                challenge: None,
                response: first,
            });
        }
        let header = first
            .header("www-authenticate")
            .context("401 without WWW-Authenticate")?;
        let challenge = Challenge::parse(header)?;
        let credentials = authorization(&challenge, user, password, "REGISTER", &uri)?;
        let response = self.transaction(&build(2, Some(&credentials)), &call_id, "2 REGISTER")?;
        Ok(Registration {
            challenge: Some(first),
            response,
        })
    }

    /// Calls `to_user` as `from_user` (no authentication; the lab registrar does not ask for
    /// it on INVITE) and returns the final answer. A non-2xx answer is acknowledged; after a
    /// 2xx (nothing in the lab answers calls yet) the caller owns the dialog.
    pub fn invite(&self, from_user: &str, to_user: &str) -> Result<SipResponse> {
        let uri = format!("sip:{to_user}@{}", self.server_host());
        let call_id = unique("i");
        let branch = unique("z9hG4bK");
        let tag = unique("t");
        let (family, ip) = match self.local.ip() {
            IpAddr::V4(v4) => ("IP4", v4.to_string()),
            IpAddr::V6(v6) => ("IP6", v6.to_string()),
        };
        let sdp = format!(
            "v=0\r\no=- 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let mut head = Head {
            method: "INVITE",
            uri: &uri,
            from_user,
            to: &self.to(to_user),
            call_id: &call_id,
            cseq: 1,
            branch: &branch,
            tag: &tag,
        };
        let mut request = self.head(&head);
        request.push_str(&format!(
            "Contact: <sip:{from_user}@{}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            self.local_hostport(),
            sdp.len()
        ));
        let response = self.transaction(&request, &call_id, "1 INVITE")?;
        if response.code >= 300 {
            // The ACK of a non-2xx answer belongs to the INVITE transaction: same branch,
            // To with the answer's tag.
            head.method = "ACK";
            head.to = response.header("to").context("answer without To")?;
            let mut ack = self.head(&head);
            ack.push_str("Content-Length: 0\r\n\r\n");
            self.socket.send_to(ack.as_bytes(), self.server)?;
        }
        Ok(response)
    }

    /// Waits up to `timeout` for a request (e.g. an INVITE the registrar relays to this
    /// client's registered contact). Responses arriving meanwhile are dropped.
    pub fn recv_request(&self, timeout: Duration) -> Result<SipRequest> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "no SIP request within {timeout:?}");
            self.socket.set_read_timeout(Some(left))?;
            let (len, source) = match self.socket.recv_from(&mut buf) {
                Ok(received) => received,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if text.starts_with("SIP/2.0 ") {
                continue;
            }
            let (start, headers) = parse_message(&text)?;
            let mut parts = start.split(' ');
            let (Some(method), Some(uri)) = (parts.next(), parts.next()) else {
                bail!("bad request line {start:?}");
            };
            return Ok(SipRequest {
                method: method.to_owned(),
                uri: uri.to_owned(),
                headers,
                source,
                raw: text,
            });
        }
    }

    /// Answers `request` with `code reason` (no body), back to where it came from.
    pub fn respond(&self, request: &SipRequest, code: u16, reason: &str) -> Result<()> {
        let mut response = format!("SIP/2.0 {code} {reason}\r\n");
        for (name, value) in &request.headers {
            if name == "via" {
                response.push_str(&format!("Via: {value}\r\n"));
            }
        }
        let field = |name: &str| {
            request
                .header(name)
                .with_context(|| format!("request without {name}"))
        };
        let mut to = field("to")?.to_owned();
        if !to.contains(";tag=") {
            to.push_str(&format!(";tag={}", unique("t")));
        }
        response.push_str(&format!(
            "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            field("from")?,
            field("call-id")?,
            field("cseq")?
        ));
        self.socket.send_to(response.as_bytes(), request.source)?;
        Ok(())
    }

    /// Sends `request` and returns the first final response with its Call-ID and CSeq,
    /// retransmitting while none arrives.
    fn transaction(&self, request: &str, call_id: &str, cseq: &str) -> Result<SipResponse> {
        let deadline = Instant::now() + self.timeout;
        let mut interval = Duration::from_millis(500);
        let mut next_send = Instant::now();
        let mut provisional = false;
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no final answer from {} within {:?} to:\n{request}",
                    self.server,
                    self.timeout
                );
            }
            // RFC 3261: a provisional answer stops retransmissions of an INVITE.
            if now >= next_send && !provisional {
                self.socket.send_to(request.as_bytes(), self.server)?;
                next_send = now + interval;
                interval = (interval * 2).min(Duration::from_secs(4));
            }
            let wait = if provisional {
                deadline - now
            } else {
                next_send.min(deadline).saturating_duration_since(now)
            };
            self.socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            let len = match self.socket.recv_from(&mut buf) {
                Ok((len, _)) => len,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let Ok(response) = parse_response(&String::from_utf8_lossy(&buf[..len])) else {
                continue;
            };
            if response.header("call-id") != Some(call_id) || response.header("cseq") != Some(cseq)
            {
                continue;
            }
            if response.code < 200 {
                provisional = true;
                continue;
            }
            return Ok(response);
        }
    }
}

// ------------------------------------------------------------------------------------------
// sipvicious, bounded.

/// One bounded run of an external tool.
#[derive(Debug)]
pub struct ToolRun {
    /// What ran inside the namespace (without the `ip netns exec` / `timeout` wrapper).
    pub command: Vec<String>,
    pub status: ExitStatus,
    /// Ended by a timeout (ours or the `timeout` wrapper's) rather than by itself.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The run's process group (already ended), for leftover checks.
    pub pgid: u32,
}

impl ToolRun {
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }
}

/// Runs `args` in `ns` for at most `timeout` (then SIGTERM, SIGKILL 5 s later) and collects
/// its output.
pub fn run_tool(ns: &NetNs, args: &[&str], timeout: Duration) -> Result<ToolRun> {
    ensure!(
        timeout <= MAX_TOOL_TIMEOUT,
        "tool timeout {timeout:?} above {MAX_TOOL_TIMEOUT:?}"
    );
    let dir = LabDir::new("tool")?;
    run_tool_in(ns, args, timeout, &dir)
}

fn run_tool_in(ns: &NetNs, args: &[&str], timeout: Duration, dir: &LabDir) -> Result<ToolRun> {
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    let started = Instant::now();
    let process = LabProcess::spawn(ns, args, timeout, &stdout, &stderr)?;
    let pgid = process.pid();
    // The wrapper sends SIGTERM at `timeout`; ours is only the backstop.
    let (status, killed) = process.finish(timeout + KILL_GRACE + Duration::from_secs(2))?;
    Ok(ToolRun {
        command: args.iter().map(|a| (*a).to_owned()).collect(),
        timed_out: killed || status.code() == Some(124),
        status,
        stdout: read_lossy(&stdout),
        stderr: read_lossy(&stderr),
        elapsed: started.elapsed(),
        pgid,
    })
}

/// Rows of a sipvicious result table (`| a | b |`), without the header row.
pub fn parse_table(output: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = output
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.trim()
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect();
    if !rows.is_empty() {
        rows.remove(0);
    }
    rows
}

/// Port, source and family options common to the sipvicious tools. `-b` is honoured by svmap
/// only (svwar and svcrack 0.3.3 parse it but bind to the wildcard address); a test namespace
/// has one address per family, so the source is determined either way. `-x` (the address put
/// in Via) is given for IPv4 only: sipvicious writes an IPv6 one without brackets, which
/// Kamailio rejects as unparseable; without it the Via holds whatever the namespace's host name
/// resolves to, and Kamailio answers to the packet's source (rport) anyway.
fn target_args(target: SocketAddr, source: IpAddr) -> Vec<String> {
    let mut args = vec![
        "-p".to_owned(),
        target.port().to_string(),
        "-b".to_owned(),
        source.to_string(),
    ];
    if target.is_ipv6() {
        args.push("-6".to_owned());
    } else {
        args.extend(["-x".to_owned(), source.to_string()]);
    }
    args
}

/// An svwar extension scan and what it found.
#[derive(Debug)]
pub struct SvwarRun {
    pub run: ToolRun,
    /// Extension -> `reqauth` / `noauth` / `weird`.
    pub found: BTreeMap<String, String>,
}

/// `svwar -e LO-HI --maximumtime 5 -p PORT -b SOURCE (-x SOURCE | -6) HOST` in `ns`: REGISTER
/// for each extension from `SOURCE:5060` (or the next free port), then waits 3 s for late
/// answers.
pub fn svwar(
    ns: &NetNs,
    target: SocketAddr,
    source: IpAddr,
    extensions: RangeInclusive<u32>,
    timeout: Duration,
) -> Result<SvwarRun> {
    let count = extensions.clone().count();
    ensure!(
        (1..=MAX_EXTENSIONS).contains(&count),
        "svwar range {extensions:?} must hold 1..={MAX_EXTENSIONS} extensions"
    );
    let mut args = vec![
        "svwar".to_owned(),
        format!("-e{}-{}", extensions.start(), extensions.end()),
        "--maximumtime".to_owned(),
        "5".to_owned(),
    ];
    args.extend(target_args(target, source));
    args.push(target.ip().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_tool(ns, &args, timeout)?;
    let found = parse_table(&run.stdout)
        .into_iter()
        .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.clone())))
        .collect();
    Ok(SvwarRun { run, found })
}

/// An svcrack password guessing run and what it cracked.
#[derive(Debug)]
pub struct SvcrackRun {
    pub run: ToolRun,
    /// Extension -> password.
    pub cracked: BTreeMap<String, String>,
}

/// `svcrack -u EXTENSION -d WORDLIST --maximumtime 5 -p PORT -b SOURCE (-x SOURCE | -6) HOST` in
/// `ns`, the word list holding `passwords` in order. It stops at the first password the
/// registrar accepts.
pub fn svcrack(
    ns: &NetNs,
    target: SocketAddr,
    source: IpAddr,
    extension: &str,
    passwords: &[&str],
    timeout: Duration,
) -> Result<SvcrackRun> {
    ensure!(
        (1..=MAX_PASSWORDS).contains(&passwords.len()),
        "svcrack needs 1..={MAX_PASSWORDS} passwords, got {}",
        passwords.len()
    );
    check_credential("extension", extension)?;
    ensure!(
        timeout <= MAX_TOOL_TIMEOUT,
        "tool timeout {timeout:?} above {MAX_TOOL_TIMEOUT:?}"
    );
    let dir = LabDir::new("svcrack")?;
    let wordlist = dir.path().join("words.txt");
    let mut words = String::new();
    for password in passwords {
        ensure!(
            !password.contains(['\n', '\r']),
            "password {password:?} spans lines"
        );
        words.push_str(password);
        words.push('\n');
    }
    fs::write(&wordlist, words)?;
    let wordlist = wordlist.to_str().context("non-UTF-8 temp path")?.to_owned();
    let mut args = vec![
        "svcrack".to_owned(),
        "-u".to_owned(),
        extension.to_owned(),
        "-d".to_owned(),
        wordlist,
        "--maximumtime".to_owned(),
        "5".to_owned(),
    ];
    args.extend(target_args(target, source));
    args.push(target.ip().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_tool_in(ns, &args, timeout, &dir)?;
    let cracked = parse_table(&run.stdout)
        .into_iter()
        .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.clone())))
        .collect();
    Ok(SvcrackRun { run, cracked })
}

/// An svmap scan of one host and the devices it reported.
#[derive(Debug)]
pub struct SvmapRun {
    pub run: ToolRun,
    /// `host:port` -> User-Agent/Server string.
    pub devices: BTreeMap<String, String>,
}

/// `svmap -p PORT -b SOURCE (-x SOURCE | -6) HOST` in `ns`: one OPTIONS to one host.
pub fn svmap(
    ns: &NetNs,
    target: SocketAddr,
    source: IpAddr,
    timeout: Duration,
) -> Result<SvmapRun> {
    let mut args = vec!["svmap".to_owned()];
    args.extend(target_args(target, source));
    args.push(target.ip().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_tool(ns, &args, timeout)?;
    let devices = parse_table(&run.stdout)
        .into_iter()
        .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.clone())))
        .collect();
    Ok(SvmapRun { run, devices })
}

// ------------------------------------------------------------------------------------------
// baresip, the real user agent.

/// How a [`Baresip`] registration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaresipRegistration {
    /// `USER@HOST: {0/UDP/v4} 200 OK ...`
    Registered,
    /// `reg: sip:USER@HOST: 403 Forbidden ...`: the code and the line.
    Failed(u16, String),
}

/// baresip registering one account with the lab registrar, running for a bounded time
/// (`-t`, and `timeout` around it). It unregisters when it quits.
#[derive(Debug)]
pub struct Baresip {
    process: LabProcess,
    dir: LabDir,
    output: PathBuf,
    user: String,
}

impl Baresip {
    /// Starts baresip in `ns` with SIP on `local` (UDP and TCP; an address of `ns`), and the
    /// account `sip:USER@SERVER` with `password`, re-registering every 60 s. It quits by
    /// itself after `lifetime`.
    pub fn start(
        ns: &NetNs,
        local: SocketAddr,
        server: SocketAddr,
        user: &str,
        password: &str,
        lifetime: Duration,
    ) -> Result<Baresip> {
        check_credential("user", user)?;
        check_credential("password", password)?;
        let dir = LabDir::new("baresip")?;
        let ifname = interface_with(ns, local.ip())?;
        let listen = format!("{}:{}", uri_host(local.ip()), local.port());
        // Only what registration needs: the account loader, the menu (which prints the
        // registration results we parse) and a codec so the UA is complete. No audio device
        // is opened unless a call is made.
        let config = format!(
            "sip_listen\t\t{listen}\n\
             net_interface\t\t{ifname}\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\tg711.so\n\
             module_app\t\taccount.so\n\
             module_app\t\tmenu.so\n\
             audio_player\t\taufile,/dev/null\n\
             audio_source\t\taufile,/dev/null\n"
        );
        fs::write(dir.path().join("config"), config)?;
        fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:{user}@{};transport=udp>;auth_pass={password};regint=60\n",
                uri_host(server.ip())
            ),
        )?;
        fs::write(dir.path().join("contacts"), "")?;
        let output = dir.path().join("baresip.log");
        let config_dir = dir.path().to_str().context("non-UTF-8 temp path")?;
        let seconds = lifetime.as_secs().max(1).to_string();
        let family = if local.is_ipv6() { "-6" } else { "-4" };
        let args = ["baresip", family, "-f", config_dir, "-t", &seconds];
        // The wrapper's limit is a little later than -t, so baresip can unregister first.
        let process = LabProcess::spawn(
            ns,
            &args,
            lifetime + Duration::from_secs(5),
            &output,
            &output,
        )?;
        Ok(Baresip {
            process,
            dir,
            output,
            user: user.to_owned(),
        })
    }

    /// Waits up to `timeout` for the first registration result.
    pub fn registration(&mut self, timeout: Duration) -> Result<BaresipRegistration> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if let Some(result) = parse_baresip_registration(&output, &self.user) {
                return Ok(result);
            }
            if let Some(status) = self.process.try_status()? {
                bail!(
                    "baresip exited ({status}) without a registration result:\n{}",
                    tail(&output, 30)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "baresip reported no registration within {timeout:?}:\n{}",
                tail(&output, 30)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What baresip printed so far, colours removed.
    pub fn output(&self) -> String {
        strip_ansi(&read_lossy(&self.output))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.process.pids()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops baresip (it unregisters on SIGTERM) and returns its output.
    pub fn stop(mut self) -> Result<String> {
        self.process.terminate()?;
        Ok(self.output())
    }
}

/// The interface of `ns` holding `ip`.
fn interface_with(ns: &NetNs, ip: IpAddr) -> Result<String> {
    let output = ns.ip(&["-o", "addr", "show"])?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let wanted = ip.to_string();
    text.lines()
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let addr = words.get(3)?.split('/').next()?;
            (addr == wanted).then(|| words.get(1).map(|name| name.to_string()))?
        })
        .with_context(|| format!("no interface with {ip} in {}", ns.name()))
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn parse_baresip_registration(output: &str, user: &str) -> Option<BaresipRegistration> {
    let account = format!("{user}@");
    output.lines().find_map(|line| {
        let line = line.trim();
        if !line.contains(&account) {
            return None;
        }
        if line.starts_with(&account) && line.contains("} 200 ") {
            return Some(BaresipRegistration::Registered);
        }
        let rest = line.strip_prefix("reg: ")?;
        // `sip:USER@HOST: CODE REASON`: the code follows the last ": " before it.
        let code = rest
            .split(": ")
            .filter_map(|part| part.split(' ').next()?.parse::<u16>().ok())
            .last()?;
        Some(BaresipRegistration::Failed(code, line.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_rfc2617_example() {
        // RFC 2617 section 3.5.
        let response = digest_response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn parses_kamailio_challenge() {
        let challenge = Challenge::parse(
            "Digest realm=\"192.0.2.2\", nonce=\"ZmFrZSwgbm9uY2U=\", qop=\"auth\", opaque=\"o\"",
        )
        .unwrap();
        assert_eq!(challenge.realm, "192.0.2.2");
        assert_eq!(challenge.nonce, "ZmFrZSwgbm9uY2U=");
        assert_eq!(challenge.qop.as_deref(), Some("auth"));
        assert_eq!(challenge.opaque.as_deref(), Some("o"));
        assert_eq!(challenge.algorithm, None);
        let header = authorization(&challenge, "1000", "pw", "REGISTER", "sip:192.0.2.2").unwrap();
        assert!(
            header.contains("qop=auth, nc=00000001, cnonce=\""),
            "{header}"
        );
        assert!(header.contains("opaque=\"o\""), "{header}");
    }

    #[test]
    fn parses_log_lines() {
        let log = " 1(13069) NOTICE: <script>: SFLAB-REQ method=REGISTER src_ip=192.0.2.1 \
                   src_port=5060 proto=udp to=1000\n \
                   2(13070) NOTICE: <script>: SFLAB-RESP method=REGISTER src_ip=192.0.2.1 \
                   src_port=5060 code=401 to=10 00\n \
                   1(13069) NOTICE: <script>: SFLAB-REQ method=OPTIONS src_ip=2001:db8::2 \
                   src_port=41000 proto=udp to=sflab-probe\n";
        let seen = SeenLog::parse(log).unwrap();
        assert_eq!(seen.requests.len(), 1, "probe left out");
        assert_eq!(seen.requests[0].source, "192.0.2.1:5060".parse().unwrap());
        assert_eq!(seen.responses[0].code, "401");
        assert_eq!(seen.responses[0].to_user, "10 00");
        assert_eq!(seen.count_from("REGISTER", "192.0.2.1".parse().unwrap()), 1);
        assert_eq!(seen.responses_with("REGISTER", "401"), 1);
    }

    #[test]
    fn parses_sipvicious_tables() {
        let out = "+-----------+----------------+\n\
                   | Extension | Authentication |\n\
                   +===========+================+\n\
                   | 1000      | reqauth        |\n\
                   +-----------+----------------+\n\
                   | 1001      | reqauth        |\n\
                   +-----------+----------------+\n";
        assert_eq!(
            parse_table(out),
            vec![vec!["1000", "reqauth"], vec!["1001", "reqauth"]]
        );
        assert!(parse_table("WARNING:root:found nothing\n").is_empty());
    }

    #[test]
    fn parses_baresip_results() {
        let ok = "baresip is ready.\n1001@192.0.2.2: {0/UDP/v4} 200 OK (sipfilter-lab) \
                  [1 binding]\n";
        assert_eq!(
            parse_baresip_registration(ok, "1001"),
            Some(BaresipRegistration::Registered)
        );
        let bad = strip_ansi(
            "baresip is ready.\n\x1b[31mreg: sip:1001@192.0.2.2: 403 Forbidden (sipfilter-lab)\n\
             \x1b[;mua: stop all (forced=0)\n",
        );
        assert!(matches!(
            parse_baresip_registration(&bad, "1001"),
            Some(BaresipRegistration::Failed(403, _))
        ));
        assert_eq!(
            parse_baresip_registration("baresip is ready.\n", "1001"),
            None
        );
    }

    #[test]
    fn stat_fields_survive_odd_names() {
        assert_eq!(stat_fields("42 (a) b) (c) S 1 42 42 0 -1"), Some(("S", 42)));
    }
}
