//! End to end with the real fail2ban (Debian's `fail2ban` package): `contrib/fail2ban/` makes
//! fail2ban's log-based detection feed sipfilter's enforcement. Each test runs a sipfilter daemon
//! in its own namespaces (as `tests/tests/daemon.rs` does) and its own `fail2ban-server` in the
//! foreground, with a private configuration tree in a temporary directory (its own socket, pid
//! file, database and log): the shipped action and jail, fail2ban's stock `asterisk` filter, and
//! Asterisk security-log lines the test appends. What fail2ban did is checked through
//! `sipfilter list --json`, the datapath's counters and real UDP traffic from the client
//! namespace to the server namespace, where the filter is attached.
//!
//! Every process is stopped by its pid and every file removed by guards, also when a test fails:
//! fail2ban first (`fail2ban-client stop`, then SIGKILL), then the daemon, the pins and the
//! namespaces. Addresses are documentation addresses, and fail2ban resolves no names
//! (`usedns = no`, `ignoreself = false`). Every wait is bounded.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sipfilter_common::Reason;
use sipfilter_tests::daemon::{Daemon, PinDir, PolicyFile, sipfilter_bin};
use sipfilter_tests::e2e::{
    Family, TempDir, grew, rfc3339_seconds, run_bounded, unix_now, wait_until,
};
use sipfilter_tests::udp::{udp_listener, udp_socket};
use sipfilter_tests::{Topology, require_bpf};

/// How long the daemon may take to load, apply the policy and attach.
const READY: Duration = Duration::from_secs(15);
/// How long fail2ban may take to start its jails.
const F2B_READY: Duration = Duration::from_secs(30);
/// From appending the log lines to the deny entry (fail2ban polls its logs every second).
const BAN_WAIT: Duration = Duration::from_secs(20);
/// How long to wait for traffic that should arrive (returns as soon as it has).
const ARRIVE: Duration = Duration::from_secs(3);
/// How long to wait for traffic that should NOT arrive (always waited in full).
const SETTLE: Duration = Duration::from_millis(700);
/// How long a one-shot command (`fail2ban-client`, `fail2ban-regex`) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long fail2ban may take to exit after `fail2ban-client stop`.
const STOP: Duration = Duration::from_secs(15);

/// Where the probes go: any port, a deny drops everything from the source.
const PROBE_PORT: u16 = 9999;
const IFACE: &str = Topology::SERVER_IF;

/// The daemon's own ban engine off (only fail2ban bans here), metrics off.
const POLICY: &str = "[bans]\nenabled = false\n\n[daemon]\nmetrics = \"off\"\n";

/// The shipped jail (`contrib/fail2ban/jail.d/asterisk-sipfilter.conf`), whose action is
/// `sipfilter[name=asterisk]`.
const JAIL: &str = "asterisk-sipfilter";
/// Failures that ban (the tests set `maxretry`).
const MAXRETRY: usize = 3;
/// The ban time the tests give the shipped jail.
const HOUR: i64 = 3600;

const FAIL2BAN_SERVER: &str = "/usr/bin/fail2ban-server";
const FAIL2BAN_CLIENT: &str = "/usr/bin/fail2ban-client";
const FAIL2BAN_REGEX: &str = "/usr/bin/fail2ban-regex";
/// The stock filter shipped by Debian's fail2ban, and the file it includes.
const STOCK_FILTERS: &str = "/etc/fail2ban/filter.d";

// ----------------------------------------------------------------------------------------------
// Helpers

/// An address as `sipfilter list` shows a host entry: with its prefix length.
fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC (Asterisk's `dateformat = %F %T`; the jails read it as UTC).
fn utc_stamp(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `n` Asterisk security-log lines of failed authentication from `ip`, of the kinds the stock
/// `asterisk` filter knows (res_security_log events, chan_sip and chan_pjsip notices), stamped
/// now.
fn failure_lines(ip: IpAddr, n: usize) -> Vec<String> {
    let (tag, local, remote) = match ip {
        IpAddr::V4(_) => ("IPV4", Family::V4.server(), format!("{ip}:5060")),
        IpAddr::V6(_) => ("IPV6", Family::V6.server(), format!("[{ip}]:5060")),
    };
    let now = unix_now();
    let stamp = utc_stamp(now);
    (0..n)
        .map(|i| match i % 4 {
            0 => format!(
                "[{stamp}] SECURITY[1234] res_security_log.c: SecurityEvent=\"InvalidPassword\",\
                 EventTV=\"{now}-0{i}\",Severity=\"Error\",Service=\"SIP\",EventVersion=\"2\",\
                 AccountID=\"10{i}\",SessionID=\"0x7f-{i}\",\
                 LocalAddress=\"{tag}/UDP/{local}/5060\",RemoteAddress=\"{tag}/UDP/{ip}/5060\",\
                 Challenge=\"1a2b3c{i}\",ReceivedChallenge=\"1a2b3c{i}\",ReceivedHash=\"ffee{i}\""
            ),
            1 => format!(
                "[{stamp}] NOTICE[1234] chan_sip.c: Registration from \
                 '\"10{i}\" <sip:10{i}@{}>' failed for '{remote}' - Wrong password",
                uri_host(local)
            ),
            2 => format!(
                "[{stamp}] SECURITY[1234] res_security_log.c: \
                 SecurityEvent=\"ChallengeResponseFailed\",EventTV=\"{now}-0{i}\",\
                 Severity=\"Error\",Service=\"PJSIP\",EventVersion=\"1\",AccountID=\"10{i}\",\
                 SessionID=\"0x7f-{i}\",LocalAddress=\"{tag}/UDP/{local}/5060\",\
                 RemoteAddress=\"{tag}/UDP/{ip}/5060\",Challenge=\"1a2b\",Response=\"c3d4\",\
                 ExpectedResponse=\"\""
            ),
            _ => format!(
                "[{stamp}] NOTICE[1234] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from \
                 '<sip:10{i}@{}>' failed for '{remote}' (callid: f2b-{i}@{}) - Failed to \
                 authenticate",
                uri_host(local),
                uri_host(ip)
            ),
        })
        .collect()
}

fn uri_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => ip.to_string(),
        IpAddr::V6(_) => format!("[{ip}]"),
    }
}

/// The row of `rows` for the host entry of `ip` in the deny list.
fn deny_row(rows: &[Value], ip: IpAddr) -> Option<Value> {
    let address = host_net(ip);
    rows.iter()
        .find(|row| row["kind"] == "deny" && row["address"] == address.as_str())
        .cloned()
}

/// `sipfilter list --json` of the test's daemon.
#[track_caller]
fn list(pins: &PinDir) -> Vec<Value> {
    let output = pins.command(None, &["list", "--json"]);
    assert!(
        output.status.success(),
        "sipfilter list --json failed: {}",
        text(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!(
            "sipfilter list --json: not an array ({other:?}):\n{}",
            text(&output.stdout)
        ),
    }
}

/// Runs a sipfilter command against the test's daemon that must succeed.
#[track_caller]
fn sipfilter_ok(pins: &PinDir, args: &[&str]) {
    let output = pins.command(None, args);
    assert!(
        output.status.success(),
        "`sipfilter {}` failed: {}",
        args.join(" "),
        text(&output.stderr)
    );
}

/// Numbered datagrams from one client address to the server's [`PROBE_PORT`].
struct Prober {
    listener: UdpSocket,
    socket: UdpSocket,
    to: SocketAddr,
    next: usize,
}

impl Prober {
    fn new(topo: &Topology, family: Family) -> Prober {
        let to = SocketAddr::new(family.server(), PROBE_PORT);
        Prober {
            listener: udp_listener(&topo.server, to).expect("probe listener"),
            socket: udp_socket(&topo.client, SocketAddr::new(family.client(), 0))
                .expect("probe socket"),
            to,
            next: 0,
        }
    }

    /// Sends `count` probes, back to back; returns their numbers.
    fn send(&mut self, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| {
                let id = self.next;
                self.next += 1;
                let payload = format!("probe {id}");
                loop {
                    match self.socket.send_to(payload.as_bytes(), self.to) {
                        Ok(_) => break,
                        Err(err) if err.kind() == ErrorKind::Interrupted => {}
                        Err(err) => panic!("sending probe {id} to {}: {err}", self.to),
                    }
                }
                id
            })
            .collect()
    }

    /// Probe numbers that arrive within `wait`, stopping early once `last` has.
    fn collect(&self, last: Option<usize>, wait: Duration) -> Vec<usize> {
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 2048];
        let mut ids = Vec::new();
        // Bounded by the deadline and by count.
        while ids.len() < 10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.listener
                .set_read_timeout(Some(left))
                .expect("read timeout");
            match self.listener.recv_from(&mut buffer) {
                Ok((len, _)) => {
                    let id = std::str::from_utf8(&buffer[..len])
                        .ok()
                        .and_then(|s| s.strip_prefix("probe "))
                        .and_then(|s| s.parse().ok());
                    if let Some(id) = id {
                        ids.push(id);
                        if Some(id) == last {
                            break;
                        }
                    }
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!("receiving probes: {err}"),
            }
        }
        ids
    }

    /// One probe, which should arrive.
    fn passes(&mut self) -> bool {
        let id = self.send(1)[0];
        self.collect(Some(id), ARRIVE).contains(&id)
    }
}

// ----------------------------------------------------------------------------------------------
// fail2ban

/// A jail of the test's fail2ban, each reading its own log file. [`JAIL`] is the shipped one;
/// the others are declared by the test, with the same filter and action.
#[derive(Clone, Copy, Debug)]
struct Jail {
    name: &'static str,
    bantime: &'static str,
}

impl Jail {
    /// The comment the action gives the jail's deny entries.
    fn comment(&self) -> String {
        if self.name == JAIL {
            "fail2ban asterisk".to_owned()
        } else {
            format!("fail2ban {}", self.name)
        }
    }
}

/// A `fail2ban-server -f` started by the test, with a private configuration tree under `dir`;
/// stopped with `fail2ban-client stop`, then killed by its pid, on drop.
struct Fail2ban {
    child: Option<Child>,
    conf: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    server_out: PathBuf,
    dir: PathBuf,
}

impl Fail2ban {
    /// Writes the configuration (the shipped action and jail, the stock filter, `jails`
    /// reading `<dir>/<jail>.log`, the action pointed at the test's daemon and binary) and
    /// starts fail2ban; returns once every jail runs.
    fn start(dir: &TempDir, pins: &PinDir, jails: &[Jail]) -> Fail2ban {
        for program in [FAIL2BAN_SERVER, FAIL2BAN_CLIENT, FAIL2BAN_REGEX] {
            assert!(
                Path::new(program).exists(),
                "{program} is needed (Debian package `fail2ban`)"
            );
        }
        let dir = dir.path();
        let conf = dir.join("conf");
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/fail2ban");
        for sub in ["action.d", "filter.d", "jail.d"] {
            fs::create_dir_all(conf.join(sub)).expect("creating the fail2ban configuration");
        }
        let copy = |from: &Path, to: &Path| {
            fs::copy(from, to).unwrap_or_else(|err| {
                panic!("copying {} to {}: {err}", from.display(), to.display())
            });
        };
        copy(
            &contrib.join("action.d/sipfilter.conf"),
            &conf.join("action.d/sipfilter.conf"),
        );
        copy(
            &contrib.join("jail.d/asterisk-sipfilter.conf"),
            &conf.join("jail.d/asterisk-sipfilter.conf"),
        );
        for filter in ["asterisk.conf", "common.conf"] {
            copy(
                &Path::new(STOCK_FILTERS).join(filter),
                &conf.join("filter.d").join(filter),
            );
        }

        let socket = dir.join("fail2ban.sock");
        let log = dir.join("fail2ban.log");
        let write = |path: PathBuf, contents: String| {
            fs::write(&path, contents)
                .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        };
        write(
            conf.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = DEBUG\nlogtarget = {}\nsyslogsocket = auto\n\
                 socket = {}\npidfile = {}\ndbfile = {}\ndbpurgeage = 1d\nallowipv6 = auto\n",
                log.display(),
                socket.display(),
                dir.join("fail2ban.pid").display(),
                dir.join("fail2ban.sqlite3").display(),
            ),
        );
        // No names resolved (not even the host's own, which ignoreself would look up), the
        // log's times read as UTC, the log file polled (no inotify or systemd surprises).
        write(
            conf.join("jail.conf"),
            "[DEFAULT]\nusedns = no\nignoreself = false\nlogtimezone = UTC\nbackend = polling\n\
             findtime = 10m\n"
                .to_owned(),
        );
        // The way docs/fail2ban.md tells an operator to point the action elsewhere.
        let bin = fs::canonicalize(sipfilter_bin()).expect("the sipfilter binary's path");
        write(
            conf.join("action.d/sipfilter.local"),
            format!(
                "[Init]\nsocket = {}\nsipfilter = {}\nstartwait = 5\n",
                pins.socket().display(),
                bin.display()
            ),
        );
        let mut local = String::new();
        for jail in jails {
            let logpath = dir.join(format!("{}.log", jail.name));
            File::create(&logpath).expect("creating a jail's log file");
            let common = format!(
                "logpath = {}\nbackend = polling\nmaxretry = {MAXRETRY}\nbantime = {}\n",
                logpath.display(),
                jail.bantime
            );
            if jail.name == JAIL {
                // The shipped jail, with the test's log file and numbers.
                write(
                    conf.join("jail.d/asterisk-sipfilter.local"),
                    format!("[{JAIL}]\n{common}"),
                );
            } else {
                local.push_str(&format!(
                    "[{}]\nenabled = true\nfilter = asterisk\n{common}action = sipfilter[name={}]\n\n",
                    jail.name, jail.name
                ));
            }
        }
        write(conf.join("jail.local"), local);

        let server_out = dir.join("fail2ban-server.out");
        let out = File::create(&server_out).expect("creating fail2ban-server's output file");
        let err = out.try_clone().expect("cloning a file handle");
        let child = Command::new(FAIL2BAN_SERVER)
            .arg("-f")
            .arg("-x")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-p")
            .arg(dir.join("fail2ban.pid"))
            .env("PYTHONNOUSERSITE", "1")
            .env_remove("SIPFILTER_LOG")
            .env_remove("SIPFILTER_PIN_DIR")
            .env_remove("SIPFILTER_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting fail2ban-server");
        // From here on the guard stops it, also if a wait below fails.
        let mut f2b = Fail2ban {
            child: Some(child),
            conf,
            socket,
            log,
            server_out,
            dir: dir.to_owned(),
        };
        for jail in jails {
            // The server's own status, not the jail's: asking for a jail that is not loaded yet
            // makes fail2ban log an ERROR, which the tests count.
            let started = wait_until(F2B_READY, Duration::from_millis(200), || {
                f2b.exited().is_some()
                    || f2b.client(&["status"]).is_ok_and(|output| {
                        output.status.success()
                            && String::from_utf8_lossy(&output.stdout)
                                .lines()
                                .filter(|line| line.contains("Jail list:"))
                                .flat_map(|line| line.split([':', ',', ' ', '\t']))
                                .any(|name| name == jail.name)
                    })
            });
            assert!(
                started && f2b.exited().is_none(),
                "fail2ban did not start jail {} within {F2B_READY:?}:\n{}",
                jail.name,
                f2b.logs()
            );
        }
        f2b
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// `fail2ban-client -c CONF -s SOCKET args...`.
    fn client(&self, args: &[&str]) -> Result<Output, String> {
        let mut command = Command::new(FAIL2BAN_CLIENT);
        command
            .arg("-c")
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .env("PYTHONNOUSERSITE", "1");
        run_bounded(
            command,
            &format!("fail2ban-client {}", args.join(" ")),
            COMMAND_TIMEOUT,
        )
        .map(|(output, _)| output)
    }

    /// A `fail2ban-client` command that must succeed: its stdout.
    #[track_caller]
    fn client_ok(&self, args: &[&str]) -> String {
        let output = self.client(args).unwrap_or_else(|err| panic!("{err}"));
        assert!(
            output.status.success(),
            "`fail2ban-client {}` failed ({}): {}{}\n{}",
            args.join(" "),
            output.status,
            text(&output.stdout),
            text(&output.stderr),
            self.logs()
        );
        text(&output.stdout)
    }

    /// Appends `lines` to the log `jail` reads.
    fn append(&self, jail: &str, lines: &[String]) {
        let path = self.dir.join(format!("{jail}.log"));
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
        let mut bytes = lines.join("\n");
        bytes.push('\n');
        file.write_all(bytes.as_bytes())
            .unwrap_or_else(|err| panic!("appending to {}: {err}", path.display()));
    }

    /// fail2ban's log.
    fn log(&self) -> String {
        fs::read(&self.log).map(|b| text(&b)).unwrap_or_default()
    }

    /// fail2ban's log and the server's own output, to show when something fails.
    fn logs(&self) -> String {
        let out = fs::read(&self.server_out)
            .map(|b| text(&b))
            .unwrap_or_default();
        format!(
            "--- fail2ban log ---\n{}\n--- fail2ban-server output ---\n{out}",
            self.log()
        )
    }

    /// The `ERROR`/`CRITICAL` lines of fail2ban's log.
    fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("]: ERROR") || line.contains("]: CRITICAL"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `jail` has banned `ip` and its actions have run: the jail logs
    /// `[jail] Ban IP` before it runs them and `Banned N / M, K ticket(s) in 'jail'` after.
    #[track_caller]
    fn wait_banned(&self, jail: &str, ip: IpAddr) {
        let ban = format!("[{jail}] Ban {ip}");
        let done = format!("ticket(s) in '{jail}'");
        let finished = wait_until(BAN_WAIT, Duration::from_millis(100), || {
            let log = self.log();
            log.find(&ban).is_some_and(|at| {
                log[at..]
                    .lines()
                    .any(|line| line.contains("Banned ") && line.contains(&done))
            })
        });
        assert!(
            finished,
            "fail2ban's {jail} did not ban {ip} within {BAN_WAIT:?}:\n{}",
            self.logs()
        );
    }

    /// `fail2ban-client set JAIL unbanip IP`: the unban actions have run when it returns.
    #[track_caller]
    fn unban(&self, jail: &str, ip: IpAddr) {
        let answer = self.client_ok(&["set", jail, "unbanip", &ip.to_string()]);
        assert_eq!(answer.trim(), "1", "{jail} unbanned {ip}: {answer}");
    }

    /// Stops fail2ban (`fail2ban-client stop`, which unbans everything first), killing it by
    /// pid if it does not exit within [`STOP`]. Returns whether it exited by itself.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        match self.client(&["stop"]) {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: fail2ban-client stop failed ({}): {}",
                output.status,
                text(&output.stderr)
            ),
            Err(err) => eprintln!("warning: {err}"),
        }
        let deadline = Instant::now() + STOP;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!(
                        "warning: fail2ban-server (pid {}) did not stop within {STOP:?}; killing it",
                        child.id()
                    );
                    // Our own child, not yet reaped: the pid is still its.
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Namespaces, pins, the daemon and a temporary directory for fail2ban. Fields drop in order:
/// the daemon is killed before the pins are detached and the namespaces deleted. Start
/// fail2ban after this (so it is stopped first, while the daemon still answers its unbans).
struct Setup {
    _daemon: Daemon,
    _policy: PolicyFile,
    pins: PinDir,
    topo: Topology,
    dir: TempDir,
}

fn setup(tag: &str) -> Setup {
    let topo = Topology::new(tag).expect("building the client/server topology");
    let pins = PinDir::new(tag);
    let policy = PolicyFile::new(tag, POLICY);
    let mut daemon = Daemon::attach(&topo.server, &pins, &[IFACE, "--config", policy.arg()])
        .expect("starting sipfilter attach");
    daemon.wait_ready(READY).expect("sipfilter attach ready");
    Setup {
        _daemon: daemon,
        _policy: policy,
        pins,
        topo,
        // Not `tag` alone: that is the name of the pin directory's run directory.
        dir: TempDir::new(&format!("{tag}etc")),
    }
}

/// Checks that the stock filter finds `ip` in each of `lines` (so a failure further on is the
/// action's, not the test's log lines').
#[track_caller]
fn assert_stock_filter_matches(dir: &TempDir, lines: &[String], ip: IpAddr) {
    let path = dir.path().join("regex-check.log");
    fs::write(&path, lines.join("\n") + "\n").expect("writing the lines to check");
    let mut command = Command::new(FAIL2BAN_REGEX);
    command
        .arg("--print-all-matched")
        .arg(&path)
        .arg(Path::new(STOCK_FILTERS).join("asterisk.conf"))
        .env("PYTHONNOUSERSITE", "1");
    let (output, _) =
        run_bounded(command, "fail2ban-regex", COMMAND_TIMEOUT).expect("fail2ban-regex");
    let report = text(&output.stdout);
    let n = lines.len();
    assert!(
        output.status.success() && report.contains(&format!("{n} matched, 0 missed")),
        "fail2ban's stock asterisk filter does not match all {n} lines for {ip}:\n{report}{}",
        text(&output.stderr)
    );
    let _ = fs::remove_file(&path);
}

// ----------------------------------------------------------------------------------------------
// Tests

/// Failed authentications in Asterisk's security log → fail2ban bans → a CLI deny entry with
/// fail2ban's comment and a kernel-side expiry of the ban time → the datapath drops the source
/// (counted as Denylisted); `fail2ban-client ... unbanip` removes the entry and traffic passes.
/// IPv4 and IPv6.
#[test]
fn fail2ban_bans_are_enforced_in_xdp_and_lifted() {
    if !require_bpf("fail2ban_bans_are_enforced_in_xdp_and_lifted") {
        return;
    }
    let setup = setup("f2b");
    let pins = &setup.pins;
    for family in [Family::V4, Family::V6] {
        assert_stock_filter_matches(
            &setup.dir,
            &failure_lines(family.client(), MAXRETRY),
            family.client(),
        );
    }
    let jail = Jail {
        name: JAIL,
        bantime: "1h",
    };
    let f2b = Fail2ban::start(&setup.dir, pins, &[jail]);

    for family in [Family::V4, Family::V6] {
        let ip = family.client();
        let mut probe = Prober::new(&setup.topo, family);
        assert!(probe.passes(), "{ip}: a probe arrives before any ban");
        assert!(deny_row(&list(pins), ip).is_none(), "{ip}: not denied yet");

        let written = unix_now();
        f2b.append(JAIL, &failure_lines(ip, MAXRETRY));
        let mut entry = None;
        let appeared = wait_until(BAN_WAIT, Duration::from_millis(100), || {
            entry = deny_row(&list(pins), ip);
            entry.is_some()
        });
        let seen = unix_now();
        assert!(
            appeared,
            "{ip}: no deny entry within {BAN_WAIT:?} of {MAXRETRY} failures; rows: {:#?}\n{}",
            list(pins),
            f2b.logs()
        );
        let entry = entry.expect("checked");
        println!(
            "{ip}: banned through fail2ban within {} s: {entry}",
            seen - written
        );
        assert_eq!(entry["origin"], "cli", "{entry:#}");
        assert_eq!(entry["comment"], jail.comment().as_str(), "{entry:#}");
        let comment = entry["comment"].as_str().unwrap_or_default();
        assert!(comment.contains("fail2ban"), "{entry:#}");
        let expires = rfc3339_seconds(
            entry["expires"]
                .as_str()
                .unwrap_or_else(|| panic!("{ip}: the entry has an expiry: {entry:#}")),
        );
        assert!(
            (written + HOUR - 1..=seen + HOUR + 1).contains(&expires),
            "{ip}: expires {} should be the 1 h ban time after the ban ({written}..{seen}): \
             {entry:#}",
            entry["expires"]
        );
        let status = f2b.client_ok(&["status", JAIL]);
        assert!(
            status.contains(&ip.to_string()),
            "fail2ban lists {ip} as banned:\n{status}"
        );

        // The datapath drops the source, and counts it.
        let before = pins.counters().expect("counters");
        let ids = probe.send(4);
        let arrived = probe.collect(None, SETTLE);
        assert!(
            arrived.is_empty(),
            "{ip}: probes {arrived:?} of {ids:?} arrived while banned"
        );
        let after = pins.counters().expect("counters");
        assert_eq!(
            grew(&before, &after, Reason::Denylisted),
            4,
            "{ip}: Denylisted counts the four probes"
        );

        // fail2ban lifts the ban: the entry goes, traffic passes again.
        f2b.unban(JAIL, ip);
        let rows = list(pins);
        assert!(
            deny_row(&rows, ip).is_none(),
            "{ip}: still denied after fail2ban's unban: {rows:#?}\n{}",
            f2b.logs()
        );
        assert!(probe.passes(), "{ip}: a probe arrives after the unban");
    }
    assert!(
        list(pins).is_empty(),
        "nothing left listed: {:#?}",
        list(pins)
    );
    let errors = f2b.errors();
    assert!(errors.is_empty(), "fail2ban logged errors: {errors:#?}");
}

/// How the action shares sipfilter's single deny entry per address: a permanent ban
/// (bantime = -1) is a deny without expiry; an unban of an entry already removed by hand is
/// quietly done; the operator's own deny is never replaced or removed; between jails the longer
/// ban owns the entry and the shorter one's unban leaves it alone; stopping fail2ban lifts its
/// bans (and only its). IPv4 and IPv6.
#[test]
fn fail2ban_action_shares_entries_and_unbans_idempotently() {
    if !require_bpf("fail2ban_action_shares_entries_and_unbans_idempotently") {
        return;
    }
    let setup = setup("f2bown");
    let pins = &setup.pins;
    let hour = Jail {
        name: JAIL,
        bantime: "1h",
    };
    let day = Jail {
        name: "asterisk-day",
        bantime: "1d",
    };
    let forever = Jail {
        name: "asterisk-forever",
        bantime: "-1",
    };
    let mut f2b = Fail2ban::start(&setup.dir, pins, &[hour, day, forever]);
    let ban = |jail: &Jail, ip: IpAddr| {
        f2b.append(jail.name, &failure_lines(ip, MAXRETRY));
        f2b.wait_banned(jail.name, ip);
    };
    let entry = |ip: IpAddr| deny_row(&list(pins), ip);
    let expires_in = |row: &Value| -> Option<i64> {
        row["expires"]
            .as_str()
            .map(|text| rfc3339_seconds(text) - unix_now())
    };
    #[track_caller]
    fn assert_owner(row: &Option<Value>, comment: &str, what: &str) {
        let row = row
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the deny entry is gone"));
        assert_eq!(row["origin"], "cli", "{what}: {row:#}");
        assert_eq!(row["comment"], comment, "{what}: {row:#}");
    }

    // 1. A permanent ban: no --ttl. The operator then removes it by hand; fail2ban's unban
    //    of the missing entry succeeds without an error.
    let permanent: IpAddr = "198.51.100.10".parse().expect("address");
    ban(&forever, permanent);
    let row = entry(permanent);
    assert_owner(&row, &forever.comment(), "permanent ban");
    assert!(
        row.as_ref().is_some_and(|row| row["expires"].is_null()),
        "a permanent ban has no expiry: {row:#?}"
    );
    sipfilter_ok(pins, &["remove", &permanent.to_string()]);
    f2b.unban(forever.name, permanent);
    assert!(entry(permanent).is_none());
    let errors = f2b.errors();
    assert!(
        errors.is_empty(),
        "an unban of an entry already removed logged errors: {errors:#?}"
    );

    // 2. The operator's own permanent deny survives fail2ban's ban and unban of the address.
    let manual: IpAddr = "198.51.100.11".parse().expect("address");
    sipfilter_ok(
        pins,
        &["deny", &manual.to_string(), "--comment", "hand-made"],
    );
    ban(&hour, manual);
    let row = entry(manual);
    assert_owner(
        &row,
        "hand-made",
        "the operator's deny after fail2ban's ban",
    );
    assert!(
        row.as_ref().is_some_and(|row| row["expires"].is_null()),
        "still permanent: {row:#?}"
    );
    f2b.unban(hour.name, manual);
    assert_owner(
        &entry(manual),
        "hand-made",
        "the operator's deny after fail2ban's unban",
    );

    // 3. Jails sharing an address (IPv6): a longer ban takes the entry over, the shorter one's
    //    unban leaves it; a permanent one takes it over from both.
    let shared: IpAddr = "2001:db8:f2b::7".parse().expect("address");
    ban(&hour, shared);
    let row = entry(shared);
    assert_owner(&row, &hour.comment(), "1 h ban");
    let left = row.as_ref().and_then(expires_in);
    assert!(
        left.is_some_and(|left| (HOUR - 30..=HOUR + 1).contains(&left)),
        "1 h ban: {row:#?}"
    );
    ban(&day, shared);
    let row = entry(shared);
    assert_owner(&row, &day.comment(), "1 d ban over a 1 h one");
    let left = row.as_ref().and_then(expires_in);
    assert!(
        left.is_some_and(|left| (24 * HOUR - 30..=24 * HOUR + 1).contains(&left)),
        "1 d ban: {row:#?}"
    );
    f2b.unban(hour.name, shared);
    assert_owner(&entry(shared), &day.comment(), "after the 1 h jail's unban");
    ban(&forever, shared);
    let row = entry(shared);
    assert_owner(&row, &forever.comment(), "permanent ban over a 1 d one");
    assert!(row.as_ref().is_some_and(|row| row["expires"].is_null()));
    f2b.unban(day.name, shared);
    assert_owner(
        &entry(shared),
        &forever.comment(),
        "after the 1 d jail's unban",
    );
    f2b.unban(forever.name, shared);
    assert!(
        entry(shared).is_none(),
        "the owner's unban removes the entry"
    );

    // 4. A shorter ban does not cut a longer one short (IPv4).
    let longer: IpAddr = "198.51.100.12".parse().expect("address");
    ban(&day, longer);
    ban(&hour, longer);
    let row = entry(longer);
    assert_owner(&row, &day.comment(), "1 h ban after a 1 d one");
    let left = row.as_ref().and_then(expires_in);
    assert!(
        left.is_some_and(|left| left > 23 * HOUR),
        "still the 1 d expiry: {row:#?}"
    );
    f2b.unban(hour.name, longer);
    assert_owner(&entry(longer), &day.comment(), "after the 1 h jail's unban");

    // 5. Stopping fail2ban lifts its bans (it unbans every address first), and only its.
    let errors = f2b.errors();
    assert!(errors.is_empty(), "fail2ban logged errors: {errors:#?}");
    assert!(f2b.stop(), "fail2ban stops by itself");
    let rows = list(pins);
    assert!(
        deny_row(&rows, longer).is_none(),
        "fail2ban's ban is lifted when it stops: {rows:#?}\n{}",
        f2b.logs()
    );
    assert_owner(
        &deny_row(&rows, manual),
        "hand-made",
        "the operator's deny after fail2ban stopped",
    );
    assert_eq!(
        rows.len(),
        1,
        "only the operator's entry is left: {rows:#?}"
    );
    let errors = f2b.errors();
    assert!(errors.is_empty(), "fail2ban logged errors: {errors:#?}");
}
