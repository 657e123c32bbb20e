//! End to end: the daemon behind `sipfilter attach`, driven through its CLI (`allow`, `deny`,
//! `remove`, `unban`, `list`, `stats`, `status`, `reload`), its signals, its state file, its
//! ban engine, its host-name resolution (against a DNS responder the test runs) and its
//! Prometheus endpoint (scraped by a real Prometheus), with real UDP traffic from the client
//! namespace to listeners in the server namespace, where the filter is attached (`veth-s`).
//!
//! Each test owns its namespaces (`Topology`), pin directory, control socket and state file
//! (`PinDir`), policy files, daemons, DNS responder and Prometheus, all removed or stopped (by
//! pid) by guards, also when the test fails. Every traffic loop is bounded in count, and every
//! wait in time. No test resolves a name through real DNS or touches the root namespace.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sipfilter_common::{Reason, stats};
use sipfilter_tests::daemon::{Daemon, PinDir, PolicyFile, kernel_has_tcx, sipfilter_bin};
use sipfilter_tests::dns::DnsServer;
use sipfilter_tests::e2e::{
    FAMILIES, Family, TempDir, grew, legit_register, receive, rfc3339_seconds, run_bounded,
    scanner_options, send_burst, unix_now, wait_until,
};
use sipfilter_tests::udp::{udp_listener, udp_socket};
use sipfilter_tests::{NetNs, Topology, require_bpf};

/// How long the daemon may take to load, apply the policy and attach.
const READY: Duration = Duration::from_secs(15);
/// How long to wait for traffic that should arrive (returns as soon as it has).
const ARRIVE: Duration = Duration::from_secs(3);
/// How long to wait for traffic that should NOT arrive (always waited in full).
const SETTLE: Duration = Duration::from_millis(700);
/// How long a daemon may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);
/// How long a one-shot CLI command may run before the watchdog kills it.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

const SIP_PORT: u16 = 5060;
const OTHER_PORT: u16 = 9999;
const IAX_PORT: u16 = 4569;
const IFACE: &str = Topology::SERVER_IF;

/// The ban engine off, so the traffic a test sends bans nobody unless the test wants it to.
const NO_BANS: &str = "[bans]\nenabled = false\n";
/// REGISTER rate limit off, so bursts of legitimate REGISTERs all pass.
const NO_RATE: &str = "[rate_limit]\nregister = \"off\"\n";
/// The metrics endpoint off (it would bind inside the server namespace anyway).
const NO_METRICS: &str = "[daemon]\nmetrics = \"off\"\n";

/// A key `[scanners]` does not have (it is `user_agents`), on line 3.
const UNKNOWN_KEY: &str = "[scanners]\nmode = \"enforce\"\nuser_agent = [\"friendly-scanner\"]\n";

// ----------------------------------------------------------------------------------------------
// Helpers

/// A policy file with `body`, and the metrics endpoint off unless `body` has a `[daemon]`
/// section of its own.
fn policy(tag: &str, body: &str) -> PolicyFile {
    let text = if body.contains("[daemon]") {
        body.to_owned()
    } else {
        format!("{body}\n{NO_METRICS}")
    };
    PolicyFile::new(tag, &text)
}

/// A topology and a pin directory for one test; the pin dir drops (detach --all) before the
/// namespaces do. Declare daemons after it, so they are stopped first.
struct Setup {
    pins: PinDir,
    topo: Topology,
}

fn setup(tag: &str) -> Setup {
    let topo = Topology::new(tag).expect("building the client/server topology");
    Setup {
        pins: PinDir::new(tag),
        topo,
    }
}

impl Setup {
    fn server(&self) -> &NetNs {
        &self.topo.server
    }

    fn client(&self) -> &NetNs {
        &self.topo.client
    }

    /// Starts `attach veth-s --config FILE extra...` and waits until it filters.
    fn start(&self, policy: &PolicyFile, extra: &[&str]) -> Daemon {
        let mut args = vec![IFACE, "--config", policy.arg()];
        args.extend_from_slice(extra);
        let mut daemon =
            Daemon::attach(self.server(), &self.pins, &args).expect("starting sipfilter attach");
        daemon.wait_ready(READY).expect("sipfilter attach ready");
        daemon
    }

    /// `sipfilter --pin-dir DIR --socket SOCKET args...`, bounded by a watchdog; also returns
    /// the instant the process was seen to exit.
    fn cli_timed(&self, args: &[&str]) -> (Output, Instant) {
        let mut command = sipfilter_command();
        command.args(self.pins.global_args(None)).args(args);
        run_bounded(
            command,
            &format!("sipfilter {}", args.join(" ")),
            CLI_TIMEOUT,
        )
        .unwrap_or_else(|err| panic!("{err}"))
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_timed(args).0
    }

    /// Runs a command that must succeed and returns its stdout.
    #[track_caller]
    fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`sipfilter {}` failed ({}): {}",
            args.join(" "),
            output.status,
            stderr(&output)
        );
        stdout(&output)
    }

    /// Runs `args... --json` and parses its output.
    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let text = self.cli_ok(&full);
        serde_json::from_str(&text).unwrap_or_else(|err| {
            panic!("`sipfilter {}`: not JSON ({err}):\n{text}", full.join(" "))
        })
    }

    /// `list [which] --json` as rows.
    #[track_caller]
    fn list(&self, which: Option<&str>) -> Vec<Value> {
        let mut args = vec!["list"];
        args.extend(which);
        match self.json(&args) {
            Value::Array(rows) => rows,
            other => panic!("list --json is not an array: {other}"),
        }
    }

    fn counters(&self) -> Vec<u64> {
        self.pins.counters().expect("pinned counters")
    }

    /// `ip -n SERVER link show veth-s`.
    fn link_show(&self) -> String {
        let output = self
            .server()
            .ip(&["link", "show", "dev", IFACE])
            .expect("ip link show");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits up to 3 s for the XDP program on veth-s to come or go.
    fn wait_xdp(&self, attached: bool) -> bool {
        wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
            self.link_show().contains("prog/xdp") == attached
        })
    }

    /// Sends `payloads` over UDP from the client's `family` address to the server's `port` and
    /// returns what the listener received within `wait` (returns early once all arrived).
    fn udp_within(
        &self,
        family: Family,
        port: u16,
        payloads: &[Vec<u8>],
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        let to = family.server_at(port);
        let listener = udp_listener(self.server(), to).expect("UDP listener");
        let socket =
            udp_socket(self.client(), SocketAddr::new(family.client(), 0)).expect("UDP socket");
        send_burst(&socket, to, payloads);
        let mut received = receive(&listener, payloads.len(), wait);
        if received.len() == payloads.len() {
            received.extend(receive(&listener, 1, Duration::from_millis(50)));
        }
        received
    }

    /// All of `payloads` should arrive.
    fn udp(&self, family: Family, port: u16, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.udp_within(family, port, payloads, ARRIVE)
    }

    /// Some of `payloads` should be dropped: waits [`SETTLE`] for them.
    fn udp_expect_drops(&self, family: Family, port: u16, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.udp_within(family, port, payloads, SETTLE)
    }

    /// A prober from the client's `family` address to the server's `port`.
    fn prober(&self, family: Family, port: u16) -> Prober {
        Prober::new(self, family.client(), family.server_at(port))
    }
}

/// `sipfilter` with a clean environment for the options the tests pass explicitly.
fn sipfilter_command() -> Command {
    let mut command = Command::new(sipfilter_bin());
    command
        .env_remove("SIPFILTER_LOG")
        .env_remove("SIPFILTER_PIN_DIR")
        .env_remove("SIPFILTER_SOCKET");
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One datagram at a time from a fixed client address to a fixed server port, each numbered,
/// so a test can tell which probe got through and when it was sent.
struct Prober {
    listener: UdpSocket,
    socket: UdpSocket,
    to: SocketAddr,
    sent: Vec<Instant>,
    /// Probes that arrived while another was waited for (late or unexpected arrivals).
    stray: Vec<usize>,
}

impl Prober {
    fn new(setup: &Setup, from: IpAddr, to: SocketAddr) -> Prober {
        Prober {
            listener: udp_listener(setup.server(), to).expect("probe listener"),
            socket: udp_socket(setup.client(), SocketAddr::new(from, 0)).expect("probe socket"),
            to,
            sent: Vec::new(),
            stray: Vec::new(),
        }
    }

    /// Sends the next probe; returns its number and when it was sent.
    fn send(&mut self) -> (usize, Instant) {
        self.send_with(None)
    }

    /// Sends the next probe from `socket` (another source), or from the prober's own.
    fn send_with(&mut self, socket: Option<&UdpSocket>) -> (usize, Instant) {
        let id = self.sent.len();
        let payload = format!("probe {id}");
        let socket = socket.unwrap_or(&self.socket);
        loop {
            match socket.send_to(payload.as_bytes(), self.to) {
                Ok(_) => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!("sending probe {id} to {}: {err}", self.to),
            }
        }
        let at = Instant::now();
        self.sent.push(at);
        (id, at)
    }

    /// Probe numbers that arrive within `wait`, stopping early once `wanted` has.
    fn collect(&mut self, wanted: Option<usize>, wait: Duration) -> Vec<usize> {
        let mut ids = Vec::new();
        for datagram in receive_until(&self.listener, wait, |data| {
            wanted.is_some() && parse_probe(data) == wanted
        }) {
            if let Some(id) = parse_probe(&datagram) {
                ids.push(id);
            }
        }
        ids
    }

    /// Sends a probe and waits up to `wait` for it: true when it arrived.
    fn check(&mut self, wait: Duration) -> bool {
        self.check_with(None, wait)
    }

    /// [`Prober::check`] from `socket` (another source), or from the prober's own.
    fn check_with(&mut self, socket: Option<&UdpSocket>, wait: Duration) -> bool {
        let (id, _) = self.send_with(socket);
        let ids = self.collect(Some(id), wait);
        self.stray.extend(ids.iter().filter(|&&got| got != id));
        ids.contains(&id)
    }

    fn passes(&mut self) -> bool {
        self.check(ARRIVE)
    }

    fn dropped(&mut self) -> bool {
        !self.check(SETTLE)
    }
}

fn parse_probe(data: &[u8]) -> Option<usize> {
    std::str::from_utf8(data)
        .ok()?
        .strip_prefix("probe ")?
        .parse()
        .ok()
}

/// Receives datagrams until `timeout` passes or `last` says the one just received ends it.
fn receive_until(
    listener: &UdpSocket,
    timeout: Duration,
    mut last: impl FnMut(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65_536];
    let mut datagrams = Vec::new();
    // Bounded by the deadline and, against a flood, by count.
    while datagrams.len() < 100_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        listener.set_read_timeout(Some(left)).expect("read timeout");
        match listener.recv_from(&mut buffer) {
            Ok((len, _)) => {
                let data = buffer[..len].to_vec();
                let done = last(&data);
                datagrams.push(data);
                if done {
                    break;
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("receiving UDP: {err}"),
        }
    }
    datagrams
}

fn registers(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| legit_register(&format!("{tag}-{i}")))
        .collect()
}

fn scanners(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| scanner_options(&format!("{tag}-{i}")))
        .collect()
}

fn datagrams(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("not sip {tag} {i}").into_bytes())
        .collect()
}

/// The row of `rows` whose `address` is `address` (and, if given, whose `kind` is `kind`).
fn row<'a>(rows: &'a [Value], address: &str, kind: Option<&str>) -> Option<&'a Value> {
    rows.iter()
        .find(|row| row["address"] == address && kind.is_none_or(|kind| row["kind"] == kind))
}

/// A free TCP port on 127.0.0.1 inside `ns`.
fn free_port(ns: &NetNs) -> u16 {
    ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .expect("a free port on the namespace's loopback")
        .port()
}

/// `GET path` from 127.0.0.1:`port` inside `ns` (HTTP/1.0, 5 s in all): status and body.
fn http_get(ns: &NetNs, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16_384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || response.len() > 16 << 20 {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "the answer did not end in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(len) => response.extend_from_slice(&chunk[..len]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Percent-encodes a URL query value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `signal` to the daemon (our unreaped child).
fn signal(daemon: &Daemon, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(daemon.pid()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not yet reaped (the guard reaps it): no pid reuse.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

// ----------------------------------------------------------------------------------------------
// 1. A CLI deny takes effect before the command returns

#[test]
fn cli_deny_takes_effect_at_once_and_remove_undoes_it() {
    if !require_bpf("cli_deny_takes_effect_at_once_and_remove_undoes_it") {
        return;
    }
    let setup = setup("clideny");
    let policy = policy("clideny", NO_BANS);
    let _daemon = setup.start(&policy, &[]);
    let cases = [
        (Family::V4, "192.0.2.1"),
        (Family::V6, "2001:db8::1"),
        (Family::V4, "192.0.2.0/24"),
        (Family::V6, "2001:db8::/64"),
    ];
    for (family, target) in cases {
        let mut probe = setup.prober(family, OTHER_PORT);
        assert!(
            probe.passes(),
            "{target}: before the deny, the probe arrives"
        );

        let before = setup.counters();
        let (output, returned) = setup.cli_timed(&["deny", target]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "deny {target}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).contains("denied"), "{}", stdout(&output));
        // The first probe goes out at once; three more follow within 100 ms.
        let (first, sent_at) = probe.send();
        let gap = sent_at.duration_since(returned);
        println!("deny {target}: first probe sent {gap:?} after the command returned");
        for offset_ms in [25, 50, 100] {
            let due = returned + Duration::from_millis(offset_ms);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            probe.send();
        }
        let arrived = probe.collect(None, SETTLE);
        assert!(
            gap <= Duration::from_millis(100),
            "{target}: the first probe went out {gap:?} after the return"
        );
        assert!(
            !arrived.contains(&first),
            "{target}: the first probe, sent {gap:?} after `deny` returned, arrived"
        );
        assert!(
            arrived.is_empty(),
            "{target}: probes sent within 100 ms of the return arrived: {arrived:?} \
             (first sent {gap:?} after)"
        );
        let after = setup.counters();
        assert_eq!(
            grew(&before, &after, Reason::Denylisted),
            4,
            "{target}: Denylisted counts the four probes"
        );
        if !target.contains('/') {
            // The other family of the client is another source.
            let other = if family == Family::V4 {
                Family::V6
            } else {
                Family::V4
            };
            let mut control = setup.prober(other, OTHER_PORT);
            assert!(
                control.passes(),
                "{target}: the client's {other:?} address passes"
            );
        }

        let (output, returned) = setup.cli_timed(&["remove", target]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "remove {target}: {}",
            stderr(&output)
        );
        let (id, sent_at) = probe.send();
        let gap = sent_at.duration_since(returned);
        let arrived = probe.collect(Some(id), ARRIVE);
        println!("remove {target}: probe sent {gap:?} after the command returned");
        assert!(
            arrived.contains(&id),
            "{target}: a probe sent {gap:?} after `remove` returned did not arrive"
        );
        assert!(setup.list(None).is_empty(), "{target}: nothing left listed");
    }
}

// ----------------------------------------------------------------------------------------------
// 2. TTL entries expire in the kernel, also while no daemon runs

#[test]
fn ttl_entry_expires_in_the_kernel_without_a_daemon() {
    if !require_bpf("ttl_entry_expires_in_the_kernel_without_a_daemon") {
        return;
    }
    const TTL: Duration = Duration::from_secs(2);
    let setup = setup("ttl");
    let policy = policy("ttl", NO_BANS);
    let mut daemon = setup.start(&policy, &[]);
    let mut probes: Vec<(Family, Prober)> = FAMILIES
        .iter()
        .map(|&family| (family, setup.prober(family, OTHER_PORT)))
        .collect();
    for (family, probe) in &mut probes {
        assert!(probe.passes(), "{family:?}: before the deny");
    }

    let (output, added) = setup.cli_timed(&["deny", "192.0.2.1", "--ttl", "2s"]);
    assert!(output.status.success(), "deny --ttl: {}", stderr(&output));
    let output = setup.cli(&["deny", "2001:db8::1", "--ttl", "2s"]);
    assert!(output.status.success(), "deny --ttl: {}", stderr(&output));
    let added_unix = unix_now();
    for (family, probe) in &mut probes {
        let (id, _) = probe.send();
        assert!(
            !probe
                .collect(Some(id), Duration::from_millis(300))
                .contains(&id),
            "{family:?}: dropped right after the deny"
        );
    }

    let rows = setup.list(None);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for family in FAMILIES {
        let entry = row(&rows, &family.client_net(), Some("deny"))
            .unwrap_or_else(|| panic!("{family:?} entry listed: {rows:#?}"));
        assert_eq!(entry["origin"], "cli", "{entry}");
        assert_eq!(entry["kind"], "deny", "{entry}");
        let expires = entry["expires"]
            .as_str()
            .unwrap_or_else(|| panic!("expires is a string: {entry}"));
        let seconds = rfc3339_seconds(expires);
        assert!(
            (added_unix + 1..=added_unix + 3).contains(&seconds),
            "expires {expires} is about 2 s after {added_unix}: {entry}"
        );
    }

    // Stop the daemon at once: from now on only the kernel can end the entries.
    assert_eq!(daemon.stop(STOP).expect("SIGTERM").code(), Some(0));
    let stopped = added.elapsed();
    assert!(
        stopped < Duration::from_millis(1500),
        "stopping took too long to test expiry without a daemon ({stopped:?} after the deny)"
    );
    for (family, probe) in &mut probes {
        let (id, _) = probe.send();
        assert!(
            !probe
                .collect(Some(id), Duration::from_millis(200))
                .contains(&id),
            "{family:?}: still dropped with the daemon gone, before the TTL"
        );
    }
    // Probe every 100 ms (bounded) until the kernel lets traffic through again.
    for (family, probe) in &mut probes {
        let deadline = added + TTL + Duration::from_secs(3);
        let passed = loop {
            let (id, sent) = probe.send();
            if probe
                .collect(Some(id), Duration::from_millis(100))
                .contains(&id)
            {
                break Some(sent.duration_since(added));
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        let passed = passed.unwrap_or_else(|| {
            panic!(
                "{family:?}: still dropped {:?} after a 2 s TTL",
                added.elapsed()
            )
        });
        println!("{family:?}: the first probe through was sent {passed:?} after the deny");
        assert!(
            passed >= TTL - Duration::from_millis(100),
            "{family:?}: traffic passed {passed:?} after a deny with a 2 s TTL"
        );
        assert!(
            probe.stray.is_empty(),
            "{family:?}: probes sent before the expiry arrived: {:?}",
            probe.stray
        );
    }

    // A new daemon forgets the expired entries.
    let _daemon = setup.start(&policy, &[]);
    let rows = setup.list(None);
    assert!(rows.is_empty(), "expired entries still listed: {rows:#?}");
    for (family, probe) in &mut probes {
        assert!(probe.passes(), "{family:?}: passes with the new daemon");
    }
}

// ----------------------------------------------------------------------------------------------
// 3. A restart keeps CLI entries and bans

#[test]
fn restart_keeps_entries_and_bans() {
    if !require_bpf("restart_keeps_entries_and_bans") {
        return;
    }
    let setup = setup("keep");
    let policy = policy(
        "keep",
        &format!("{NO_RATE}\n[bans]\nmax_failures = 1\nban_time = \"1h\"\n"),
    );
    let mut daemon = setup.start(&policy, &[]);
    setup.cli_ok(&["allow", "198.51.100.7", "--comment", "x"]);
    setup.cli_ok(&["deny", "203.0.113.9/32"]);
    let got = setup.udp_expect_drops(Family::V4, SIP_PORT, &[scanner_options("keep")]);
    assert!(got.is_empty(), "the scanner OPTIONS arrived");
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            row(&setup.list(Some("bans")), "192.0.2.1/32", Some("ban")).is_some()
        }),
        "no ban of the scanner; log:\n{}",
        daemon.log()
    );
    let wanted = |rows: &[Value]| -> Vec<Value> {
        [
            ("198.51.100.7/32", "allow"),
            ("203.0.113.9/32", "deny"),
            ("192.0.2.1/32", "ban"),
        ]
        .iter()
        .map(|(address, kind)| {
            row(rows, address, Some(kind))
                .unwrap_or_else(|| panic!("{kind} {address} listed: {rows:#?}"))
                .clone()
        })
        .collect()
    };
    let before = wanted(&setup.list(None));
    assert_eq!(before[0]["comment"], "x", "{:#}", before[0]);
    assert_eq!(before[0]["origin"], "cli");
    assert!(before[0]["expires"].is_null());
    assert_eq!(before[1]["origin"], "cli");
    assert_eq!(before[2]["origin"], "ban_engine");
    assert_eq!(before[2]["reason"], "scanner");
    let since = rfc3339_seconds(before[2]["since"].as_str().expect("since"));
    let until = rfc3339_seconds(before[2]["expires"].as_str().expect("expires"));
    assert_eq!(until - since, 3600, "a 1 h ban: {:#}", before[2]);

    let mut probe = setup.prober(Family::V4, OTHER_PORT);
    assert!(probe.dropped(), "the banned client is dropped");

    // A plain restart with the same state file (and pins).
    assert_eq!(daemon.stop(STOP).expect("SIGTERM").code(), Some(0));
    let mut daemon = setup.start(&policy, &[]);
    assert!(
        daemon
            .log()
            .contains("restored 2 entries, 1 bans and 0 learned sources"),
        "{}",
        daemon.log()
    );
    let after = wanted(&setup.list(None));
    assert_eq!(after, before, "the entries and the ban survive the restart");
    let counters = setup.counters();
    assert!(probe.dropped(), "the ban still drops the client");
    assert_eq!(grew(&counters, &setup.counters(), Reason::Banned), 1);

    // As after a reboot: the filter and its maps gone, only the state file left. The new
    // daemon must put the entries and the ban back into fresh maps.
    setup.cli_ok(&["detach", "--all"]);
    daemon
        .wait_exit(STOP)
        .expect("the daemon stops after detach --all");
    assert!(setup.wait_xdp(false), "{}", setup.link_show());
    let _daemon = setup.start(&policy, &[]);
    let after = wanted(&setup.list(None));
    assert_eq!(after, before, "the entries and the ban survive fresh maps");
    let status = setup.json(&["status"]);
    let entries = |map: &str| {
        status["maps"]
            .as_array()
            .and_then(|maps| maps.iter().find(|m| m["map"] == map))
            .map(|m| m["entries"].clone())
            .unwrap_or_else(|| panic!("{map} in status: {status:#}"))
    };
    assert_eq!(entries("SF_ALLOW4"), 1, "{status:#}");
    assert_eq!(entries("SF_DENY4"), 1, "{status:#}");
    assert_eq!(entries("SF_BANS"), 1, "{status:#}");
    let counters = setup.counters();
    assert!(probe.dropped(), "the restored ban drops the client");
    assert_eq!(grew(&counters, &setup.counters(), Reason::Banned), 1);
}

// ----------------------------------------------------------------------------------------------
// 4. A corrupt state file is moved aside

#[test]
fn corrupt_state_file_is_moved_aside() {
    if !require_bpf("corrupt_state_file_is_moved_aside") {
        return;
    }
    const GARBAGE: &str = "this is not a state file {{{\n";
    let setup = setup("corrupt");
    let state = setup.pins.state_file();
    fs::write(&state, GARBAGE).expect("writing garbage into the state file");
    let policy = policy(
        "corrupt",
        &format!("[sources]\ndeny = [\"2001:db8::1\"]\n\n{NO_BANS}"),
    );
    let mut daemon = setup.start(&policy, &[]);
    daemon
        .wait_for_log("moved it aside", ARRIVE)
        .expect("the daemon says it moved the file aside");
    let log = daemon.log();
    assert!(
        log.contains(&format!("state file {}", state.display())) && log.contains(".corrupt-"),
        "the log names the file and where it went:\n{log}"
    );
    let dir = state.parent().expect("run dir");
    let name = state
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let moved: Vec<PathBuf> = fs::read_dir(dir)
        .expect("run dir")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
        })
        .collect();
    assert_eq!(moved.len(), 1, "one {name}.corrupt-* in {}", dir.display());
    assert_eq!(
        fs::read_to_string(&moved[0]).expect("the moved file"),
        GARBAGE,
        "the evidence is kept as it was"
    );
    assert!(log.contains(&moved[0].display().to_string()), "{log}");

    // The policy applies, and so do new CLI entries, which are saved to a good file again.
    assert!(
        setup.prober(Family::V6, OTHER_PORT).dropped(),
        "policy deny"
    );
    let mut v4 = setup.prober(Family::V4, OTHER_PORT);
    assert!(v4.passes(), "IPv4 is not denied");
    setup.cli_ok(&["deny", "192.0.2.1"]);
    assert!(v4.dropped(), "CLI deny");
    let saved: Value =
        serde_json::from_slice(&fs::read(&state).expect("a new state file")).expect("JSON");
    assert_eq!(saved["version"], 1, "{saved:#}");
    assert_eq!(saved["entries"][0]["target"], "192.0.2.1/32", "{saved:#}");
}

// ----------------------------------------------------------------------------------------------
// 5. Bad CLI input

#[test]
fn bad_cli_input_is_refused_with_a_clear_message() {
    if !require_bpf("bad_cli_input_is_refused_with_a_clear_message") {
        return;
    }
    let setup = setup("badcli");
    let policy = policy("badcli", NO_BANS);
    let _daemon = setup.start(&policy, &[]);
    // (arguments, exit code, what the message must say)
    let cases: [(&[&str], i32, &[&str]); 9] = [
        (
            &["deny", "192.0.2.0/33"],
            1,
            &["\"192.0.2.0/33\"", "not an address or CIDR"],
        ),
        (
            &["deny", "300.1.1.1"],
            1,
            &["\"300.1.1.1\"", "not an address or CIDR"],
        ),
        (
            &["deny", "192.0.2.1/24"],
            1,
            &["host bits", "did you mean \"192.0.2.0/24\""],
        ),
        (
            &["deny", "example.com"],
            1,
            &["\"example.com\"", "not an address or CIDR"],
        ),
        (
            &["allow", "--ttl", "0s", "192.0.2.1"],
            2,
            &["--ttl", "must be between 1s and 10 years"],
        ),
        (
            &["allow", "--ttl", "banana", "192.0.2.1"],
            2,
            &["--ttl", "banana", "e.g. 30m"],
        ),
        (&["frobnicate"], 2, &["frobnicate"]),
        (
            &["unban", "192.0.2.77"],
            1,
            &["192.0.2.77/32 is not banned"],
        ),
        (
            &["remove", "192.0.2.78"],
            1,
            &["no CLI entry, learned trust or ban for 192.0.2.78"],
        ),
    ];
    for (args, code, needles) in cases {
        let output = setup.cli(args);
        let message = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "`sipfilter {}` exits {code}: {message}",
            args.join(" ")
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "`sipfilter {}`: the message says {needle:?}: {message}",
                args.join(" ")
            );
        }
        assert!(
            output.stdout.is_empty(),
            "`sipfilter {}` printed: {}",
            args.join(" "),
            stdout(&output)
        );
    }
    assert!(setup.list(None).is_empty(), "nothing was added");

    // No daemon behind the socket: nothing there, then a stale socket file.
    let idle = PinDir::new("badclinone");
    let socket = idle.socket();
    let commands: [&[&str]; 8] = [
        &["list"],
        &["deny", "192.0.2.1"],
        &["allow", "198.51.100.1"],
        &["remove", "192.0.2.1"],
        &["unban", "192.0.2.1"],
        &["stats"],
        &["status"],
        &["reload"],
    ];
    for stale in [false, true] {
        if stale {
            drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
            assert!(socket.exists());
        }
        for args in commands {
            let output = idle.command(None, args);
            let message = stderr(&output);
            assert_eq!(
                output.status.code(),
                Some(1),
                "`sipfilter {}` without a daemon (stale socket: {stale}): {message}",
                args.join(" ")
            );
            assert!(
                message.contains("no sipfilter daemon is running")
                    && message.contains(&socket.display().to_string()),
                "`sipfilter {}` (stale socket: {stale}): {message}",
                args.join(" ")
            );
        }
    }
    let _ = fs::remove_file(&socket);
}

// ----------------------------------------------------------------------------------------------
// 6. Reload

#[test]
fn reload_refuses_a_bad_policy_and_applies_a_good_one() {
    if !require_bpf("reload_refuses_a_bad_policy_and_applies_a_good_one") {
        return;
    }
    let setup = setup("reload");
    let open = format!("{NO_BANS}\n{NO_METRICS}");
    let deny =
        format!("[sources]\ndeny = [\"192.0.2.1\", \"2001:db8::1\"]\n\n{NO_BANS}\n{NO_METRICS}");
    let file = PolicyFile::new("reload", &open);
    let rewrite = |text: &str| fs::write(file.path(), text).expect("rewriting the policy");
    let mut daemon = setup.start(&file, &[]);
    let mut probes: Vec<(Family, Prober)> = FAMILIES
        .iter()
        .map(|&family| (family, setup.prober(family, OTHER_PORT)))
        .collect();
    for (family, probe) in &mut probes {
        assert!(
            probe.passes(),
            "{family:?}: the first policy lets the client in"
        );
    }

    // `reload` of a bad file: refused with key and line, and the running policy stays.
    rewrite(UNKNOWN_KEY);
    let output = setup.cli(&["reload"]);
    let message = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "reload of a bad file: {message}"
    );
    assert!(
        message.contains("scanners.user_agent"),
        "names the key: {message}"
    );
    assert!(
        message.contains(&format!("{}:3:", file.file_name())),
        "names file and line: {message}"
    );
    assert!(message.contains("the running policy stays"), "{message}");
    for (family, probe) in &mut probes {
        assert!(
            probe.passes(),
            "{family:?}: unchanged after the refused reload"
        );
    }

    // A good file that denies the client.
    rewrite(&deny);
    let output = setup.cli(&["reload"]);
    assert_eq!(output.status.code(), Some(0), "reload: {}", stderr(&output));
    assert!(stdout(&output).contains("reloaded"), "{}", stdout(&output));
    for (family, probe) in &mut probes {
        assert!(
            probe.dropped(),
            "{family:?}: the reloaded policy denies the client"
        );
    }

    // SIGHUP with a bad file: the daemon keeps running with the policy it has.
    rewrite(UNKNOWN_KEY);
    signal(&daemon, libc::SIGHUP);
    daemon
        .wait_for_log("reload refused", ARRIVE)
        .expect("the refused SIGHUP reload is logged");
    assert!(
        daemon.log().contains("scanners.user_agent"),
        "{}",
        daemon.log()
    );
    assert!(daemon.try_status().expect("status").is_none(), "still runs");
    for (family, probe) in &mut probes {
        assert!(
            probe.dropped(),
            "{family:?}: still denied after the refused SIGHUP"
        );
    }

    // SIGHUP with a good file.
    rewrite(&open);
    signal(&daemon, libc::SIGHUP);
    assert!(
        wait_until(ARRIVE, Duration::from_millis(50), || {
            setup.json(&["status"])["reloads"] == 2
        }),
        "the SIGHUP reload is counted; log:\n{}",
        daemon.log()
    );
    for (family, probe) in &mut probes {
        assert!(
            probe.passes(),
            "{family:?}: the SIGHUP reload lifted the deny"
        );
    }
    let status = setup.json(&["status"]);
    assert_eq!(status["reloads"], 2, "{status:#}");
    assert_eq!(status["reload_failures"], 2, "{status:#}");
    assert_eq!(daemon.stop(STOP).expect("SIGTERM").code(), Some(0));
}

// ----------------------------------------------------------------------------------------------
// 7. Only root controls the daemon

/// `sipfilter --socket SOCKET args...` as user `nobody`.
fn as_nobody(pins: &PinDir, args: &[&str]) -> Output {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(sipfilter_bin())
        .arg("--socket")
        .arg(pins.socket())
        .args(args)
        .env_remove("SIPFILTER_LOG")
        .env_remove("SIPFILTER_PIN_DIR")
        .env_remove("SIPFILTER_SOCKET");
    run_bounded(
        command,
        &format!("setpriv ... sipfilter {}", args.join(" ")),
        CLI_TIMEOUT,
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .0
}

#[test]
fn non_root_client_is_refused() {
    if !require_bpf("non_root_client_is_refused") {
        return;
    }
    let setup = setup("nonroot");
    let policy = policy("nonroot", NO_BANS);
    let _daemon = setup.start(&policy, &[]);
    let mut id = Command::new("setpriv");
    id.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "id",
        "-u",
    ]);
    let (output, _) =
        run_bounded(id, "setpriv ... id -u", CLI_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(stdout(&output).trim(), "65534", "setpriv runs as nobody");

    // The socket is root's (0600): the connection itself is refused.
    for args in [&["list"][..], &["deny", "192.0.2.1"], &["status"]] {
        let output = as_nobody(&setup.pins, args);
        assert_ne!(output.status.code(), Some(0), "{args:?} as nobody");
        assert!(
            stderr(&output).to_lowercase().contains("permission denied"),
            "{args:?} as nobody: {}",
            stderr(&output)
        );
    }

    // Opened up by mistake: the daemon checks the peer's uid itself.
    let socket = setup.pins.socket();
    let run_dir = socket.parent().expect("run dir");
    fs::set_permissions(run_dir, fs::Permissions::from_mode(0o755)).expect("chmod run dir");
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).expect("chmod socket");
    for args in [
        &["list"][..],
        &["deny", "192.0.2.1"],
        &["deny", "2001:db8::1"],
    ] {
        let output = as_nobody(&setup.pins, args);
        assert_eq!(output.status.code(), Some(1), "{args:?} as nobody");
        assert!(
            stderr(&output).contains("permission denied: uid 65534 is not root"),
            "{args:?} as nobody: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{}", stdout(&output));
    }
    assert!(setup.list(None).is_empty(), "nobody's deny changed nothing");
    for family in FAMILIES {
        assert!(
            setup.prober(family, OTHER_PORT).passes(),
            "{family:?}: still passes"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// 8. Bans escalate; allowlisted sources are never banned

/// Waits for a ban of `address` other than one that started at `previous_since`, and returns
/// its row.
fn wait_for_ban(
    setup: &Setup,
    daemon: &Daemon,
    address: &str,
    previous_since: Option<&str>,
) -> Value {
    let mut found = None;
    let appeared = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        found = setup
            .list(Some("bans"))
            .into_iter()
            .find(|row| row["address"] == address && row["since"].as_str() != previous_since);
        found.is_some()
    });
    assert!(
        appeared,
        "no new ban of {address} (the previous one started {previous_since:?}); bans: {:#?}\nlog:\n{}",
        setup.list(Some("bans")),
        daemon.log()
    );
    found.expect("found")
}

#[test]
fn bans_escalate_and_allowlisted_sources_are_never_banned() {
    if !require_bpf("bans_escalate_and_allowlisted_sources_are_never_banned") {
        return;
    }
    let setup = setup("escal");
    let policy = policy(
        "escal",
        &format!(
            "[sources]\nallow = [\"2001:db8::1\"]\n\n{NO_RATE}\n[bans]\nmax_failures = 1\n\
             find_time = \"1m\"\nban_time = \"2s\"\nmax_ban_time = \"1h\"\n\
             weights = {{ scanner = 1 }}\n"
        ),
    );
    let daemon = setup.start(&policy, &[]);

    // The allowlisted IPv6 address scans: everything passes and nobody is banned.
    let scans = scanners("allowed", 3);
    let got = setup.udp(Family::V6, SIP_PORT, &scans);
    assert_eq!(
        got.len(),
        scans.len(),
        "an allowlisted source skips the checks"
    );

    let mut probe = setup.prober(Family::V4, OTHER_PORT);
    let mut previous: Option<String> = None;
    for (round, seconds) in [2i64, 4, 8].into_iter().enumerate() {
        assert!(
            probe.passes(),
            "round {round}: the client passes before its scan"
        );
        let scanned = Instant::now();
        let got = setup.udp_within(
            Family::V4,
            SIP_PORT,
            &[scanner_options(&format!("escal-{round}"))],
            Duration::from_millis(200),
        );
        assert!(got.is_empty(), "round {round}: the scanner OPTIONS arrived");
        let ban = wait_for_ban(&setup, &daemon, "192.0.2.1/32", previous.as_deref());
        let since = rfc3339_seconds(ban["since"].as_str().expect("since"));
        let until = rfc3339_seconds(ban["expires"].as_str().expect("expires"));
        println!("round {round}: {ban}");
        assert_eq!(
            until - since,
            seconds,
            "round {round}: a ban of {seconds} s: {ban:#}"
        );
        assert_eq!(ban["origin"], "ban_engine", "{ban:#}");
        assert_eq!(ban["reason"], "scanner", "{ban:#}");
        previous = ban["since"].as_str().map(str::to_owned);
        if seconds == 8 {
            break;
        }
        // Wait (bounded) until the kernel ends the ban: probe every 100 ms.
        let first = probe.sent.len();
        let duration = Duration::from_secs(seconds as u64);
        let deadline = scanned + duration + Duration::from_secs(3);
        let passed = loop {
            let (id, sent) = probe.send();
            if probe
                .collect(Some(id), Duration::from_millis(100))
                .contains(&id)
            {
                break Some((id, sent.duration_since(scanned)));
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        let (id, after) = passed.unwrap_or_else(|| {
            panic!(
                "round {round}: still banned {:?} after the scan",
                scanned.elapsed()
            )
        });
        println!("round {round}: the first probe through went out {after:?} after the scan");
        assert!(
            id > first,
            "round {round}: the first probe during the ban passed"
        );
        assert!(
            after >= duration - Duration::from_millis(100),
            "round {round}: a {seconds} s ban let traffic through after {after:?}"
        );
        assert!(
            probe.stray.is_empty(),
            "late probes arrived: {:?}",
            probe.stray
        );
    }
    assert!(probe.dropped(), "banned for 8 s");

    // Allowing the client lifts its ban, and its scans ban it no more.
    setup.cli_ok(&["allow", "192.0.2.1"]);
    assert!(probe.passes(), "allowing the client lifts its ban at once");
    let scans = scanners("allowed-v4", 3);
    assert_eq!(
        setup.udp(Family::V4, SIP_PORT, &scans).len(),
        scans.len(),
        "the allowlisted client's scans pass"
    );
    thread::sleep(Duration::from_secs(1));
    let bans = setup.list(Some("bans"));
    assert!(bans.is_empty(), "no bans of allowlisted sources: {bans:#?}");
    let stats = setup.json(&["stats"]);
    assert_eq!(stats["bans"]["active"], 0, "{stats:#}");
}

// ----------------------------------------------------------------------------------------------
// 9. No gap while the daemon is replaced under a flood

#[test]
fn restart_under_flood_has_no_gap() {
    if !require_bpf("restart_under_flood_has_no_gap") {
        return;
    }
    /// At most this many datagrams, one every millisecond or so.
    const MAX_DATAGRAMS: usize = 20_000;
    /// The flood stops at the latest after this long.
    const MAX_FLOOD: Duration = Duration::from_secs(20);
    let setup = setup("flood");
    let policy = policy(
        "flood",
        &format!("[sources]\ndeny = [\"192.0.2.1\", \"2001:db8::1\"]\n\n{NO_BANS}"),
    );
    let mut daemon = setup.start(&policy, &[]);
    let to4 = Family::V4.server_at(OTHER_PORT);
    let to6 = Family::V6.server_at(OTHER_PORT);
    let listener4 = udp_listener(setup.server(), to4).expect("listener");
    let listener6 = udp_listener(setup.server(), to6).expect("listener");
    let socket4 =
        udp_socket(setup.client(), SocketAddr::new(Family::V4.client(), 0)).expect("socket");
    let socket6 =
        udp_socket(setup.client(), SocketAddr::new(Family::V6.client(), 0)).expect("socket");
    let before = setup.counters();
    let stop = AtomicBool::new(false);

    let sent = thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let started = Instant::now();
            let mut sent = 0usize;
            while sent < MAX_DATAGRAMS
                && !stop.load(Ordering::Relaxed)
                && started.elapsed() < MAX_FLOOD
            {
                let (socket, to) = if sent.is_multiple_of(2) {
                    (&socket4, to4)
                } else {
                    (&socket6, to6)
                };
                let payload = format!("flood {sent}");
                loop {
                    match socket.send_to(payload.as_bytes(), to) {
                        Ok(_) => break,
                        Err(err) if err.kind() == ErrorKind::Interrupted => {}
                        Err(err) => panic!("flood datagram {sent} to {to}: {err}"),
                    }
                }
                sent += 1;
                thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        // Stops the sender also when a step below fails.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        thread::sleep(Duration::from_millis(1500));
        daemon.kill9().expect("kill -9");
        thread::sleep(Duration::from_millis(300));
        let mut second = setup.start(&policy, &[]);
        assert!(
            second
                .log()
                .contains(&format!("{IFACE}: attached (adopted)")),
            "the new daemon adopts the pinned link:\n{}",
            second.log()
        );
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(second.stop(STOP).expect("SIGTERM").code(), Some(0));
        let third = setup.start(&policy, &[]);
        assert!(
            third
                .log()
                .contains(&format!("{IFACE}: attached (adopted)")),
            "{}",
            third.log()
        );
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("the sender thread");
        drop(third);
        sent
    });
    let received4 = receive(&listener4, 1, SETTLE);
    let received6 = receive(&listener6, 1, Duration::from_millis(100));
    // Per-CPU counters are updated as the program runs: read them once traffic has settled.
    let after = setup.counters();
    println!("flood: {sent} datagrams sent");
    assert!(sent > 2000, "the flood ran long enough: {sent} datagrams");
    assert!(
        received4.is_empty() && received6.is_empty(),
        "{} + {} denied datagrams got through during the restarts, first: {:?}",
        received4.len(),
        received6.len(),
        received4
            .first()
            .or(received6.first())
            .map(|d| String::from_utf8_lossy(d).into_owned())
    );
    assert_eq!(
        grew(&before, &after, Reason::Denylisted),
        sent as u64,
        "Denylisted counts every datagram of the flood"
    );
}

// ----------------------------------------------------------------------------------------------
// 10. Prometheus scrapes the metrics endpoint

/// A process started in a namespace whose output is read continuously (so it never blocks on
/// a full pipe); killed by its pid when the guard drops.
struct Background {
    child: sipfilter_tests::NsChild,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Background {
    fn spawn(ns: &NetNs, args: &[&str]) -> Background {
        let mut child = ns.spawn(args).expect("starting a background process");
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipes: Vec<Box<dyn Read + Send>> = [
            child
                .child_mut()
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .child_mut()
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for mut pipe in pipes {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(len) = pipe.read(&mut chunk) {
                    if len == 0 {
                        break;
                    }
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    // Keep the first MB: enough to diagnose, bounded whatever happens.
                    if log.len() < 1 << 20 {
                        log.extend_from_slice(&chunk[..len]);
                    }
                }
            });
        }
        Background { child, log }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.child_mut().try_wait(), Ok(Some(_)))
    }
}

/// Runs an instant query against Prometheus at 127.0.0.1:`port` in `ns`: the result vector.
fn prom_query(ns: &NetNs, port: u16, query: &str) -> Option<Vec<Value>> {
    let (status, body) = http_get(
        ns,
        port,
        &format!("/api/v1/query?query={}", url_encode(query)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"].as_array().cloned()
}

/// The single value of an instant query, if there is exactly one series.
fn prom_value(ns: &NetNs, port: u16, query: &str) -> Option<f64> {
    match prom_query(ns, port, query)?.as_slice() {
        [series] => series["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_the_metrics() {
    if !require_bpf("prometheus_scrapes_the_metrics") {
        return;
    }
    const N: usize = 7;
    const M: usize = 5;
    if !Path::new("/usr/bin/prometheus").exists() {
        panic!("/usr/bin/prometheus is needed (Debian package `prometheus`)");
    }
    let setup = setup("prom");
    let metrics_port = free_port(setup.server());
    let policy = policy(
        "prom",
        &format!("{NO_RATE}\n{NO_BANS}\n[daemon]\nmetrics = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let mut daemon = setup.start(&policy, &[]);
    daemon
        .wait_for_log(
            &format!("metrics on http://127.0.0.1:{metrics_port}/metrics"),
            ARRIVE,
        )
        .expect("the metrics endpoint is announced");

    let scans = scanners("prom", N);
    let legit = registers("prom", M);
    let (scans4, scans6) = scans.split_at(N / 2);
    let (legit4, legit6) = legit.split_at(M / 2);
    for (family, scans, legit) in [(Family::V4, scans4, legit4), (Family::V6, scans6, legit6)] {
        assert!(setup.udp_expect_drops(family, SIP_PORT, scans).is_empty());
        assert_eq!(setup.udp(family, SIP_PORT, legit).len(), legit.len());
    }

    // The endpoint itself, read directly.
    let (status, body) = http_get(setup.server(), metrics_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    for line in [
        format!("sipfilter_packets_total{{verdict=\"drop\",reason=\"scanner_user_agent\"}} {N}"),
        format!("sipfilter_packets_total{{verdict=\"pass\",reason=\"sip_ok\"}} {M}"),
        "# TYPE sipfilter_packets_total counter".to_owned(),
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "/metrics has {line:?}:\n{body}"
        );
    }

    // Prometheus, inside the server namespace, scraping every second.
    let dir = TempDir::new("prom");
    let config = dir.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: sipfilter\n    static_configs:\n      \
             - targets: [\"127.0.0.1:{metrics_port}\"]\n"
        ),
    )
    .expect("writing prometheus.yml");
    let tsdb = dir.path().join("tsdb");
    let prom_port = free_port(setup.server());
    let config_arg = format!("--config.file={}", config.display());
    let tsdb_arg = format!("--storage.tsdb.path={}", tsdb.display());
    let listen_arg = format!("--web.listen-address=127.0.0.1:{prom_port}");
    let mut prometheus = Background::spawn(
        setup.server(),
        &["prometheus", &config_arg, &tsdb_arg, &listen_arg],
    );

    let scanner_query = "sipfilter_packets_total{reason=\"scanner_user_agent\"}";
    let sip_ok_query = "sipfilter_packets_total{reason=\"sip_ok\"}";
    let mut last = (None, None);
    let scraped = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        if prometheus.exited() {
            return true;
        }
        last = (
            prom_value(setup.server(), prom_port, scanner_query),
            prom_value(setup.server(), prom_port, sip_ok_query),
        );
        last == (Some(N as f64), Some(M as f64))
    });
    assert!(
        !prometheus.exited(),
        "prometheus exited; its log:\n{}",
        prometheus.log()
    );
    assert!(
        scraped,
        "Prometheus did not see {N} scanner and {M} sip_ok packets within 20 s (last: {last:?}); \
         up: {:?}\nits log:\n{}",
        prom_query(setup.server(), prom_port, "up"),
        prometheus.log()
    );
    let entries = prom_query(setup.server(), prom_port, "sipfilter_list_entries")
        .expect("sipfilter_list_entries");
    assert!(!entries.is_empty(), "sipfilter_list_entries exists");
    let build = prom_query(setup.server(), prom_port, "sipfilter_build_info")
        .expect("sipfilter_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["value"][1], "1", "{build:?}");
    assert!(
        build[0]["metric"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{build:?}"
    );
    assert_eq!(
        prom_value(setup.server(), prom_port, "up{job=\"sipfilter\"}"),
        Some(1.0)
    );
    drop(prometheus);
}

// ----------------------------------------------------------------------------------------------
// 11. Host names in the allow list

#[test]
fn host_names_resolve_refresh_and_fail_softly() {
    if !require_bpf("host_names_resolve_refresh_and_fail_softly") {
        return;
    }
    let setup = setup("dns");
    // Another address on each family of the client: a source that is not allowlisted.
    let other_v4: IpAddr = "192.0.2.10".parse().expect("address");
    let other_v6: IpAddr = "2001:db8::10".parse().expect("address");
    setup
        .client()
        .addr(Topology::CLIENT_IF, "192.0.2.10/24")
        .expect("second IPv4 address");
    setup
        .client()
        .addr(Topology::CLIENT_IF, "2001:db8::10/64")
        .expect("second IPv6 address");

    let dns = DnsServer::start(
        setup.server(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        2,
    )
    .expect("DNS responder");
    dns.set("trunk.test", &[Family::V4.client(), Family::V6.client()]);
    let policy = policy(
        "dns",
        &format!("[sources]\nallow = [\"trunk.test\"]\n\n[restricted]\nudp = [4569]\n\n{NO_BANS}"),
    );
    let server_arg = dns.addr().to_string();
    let daemon = setup.start(&policy, &["--dns-server", &server_arg]);
    let started = Instant::now();
    assert!(dns.queries("trunk.test") >= 2, "A and AAAA were asked");

    let mut trunk: Vec<(Family, Prober)> = FAMILIES
        .iter()
        .map(|&family| (family, setup.prober(family, IAX_PORT)))
        .collect();
    for (family, probe) in &mut trunk {
        assert!(probe.passes(), "{family:?}: trunk.test reaches {IAX_PORT}");
    }
    // Sockets on the client's other addresses, sending to the same listeners.
    let others: Vec<(IpAddr, UdpSocket)> = [other_v4, other_v6]
        .into_iter()
        .map(|other| {
            let socket =
                udp_socket(setup.client(), SocketAddr::new(other, 0)).expect("other socket");
            (other, socket)
        })
        .collect();
    for ((other, socket), (_, probe)) in others.iter().zip(&mut trunk) {
        assert!(
            !probe.check_with(Some(socket), SETTLE),
            "{other} (not allowlisted) is kept off {IAX_PORT}"
        );
    }
    let rows = setup.list(None);
    let host = row(&rows, "trunk.test", Some("allow")).unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(host["origin"], "policy", "{host:#}");
    assert_eq!(
        host["addresses"],
        serde_json::json!(["192.0.2.1", "2001:db8::1"]),
        "{host:#}"
    );
    assert!(host["error"].is_null(), "{host:#}");

    // A name that does not resolve is kept, with its error; everything else keeps working.
    let output = setup.cli(&["allow", "ghost.test"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "allow ghost.test: {}",
        stderr(&output)
    );
    let mut ghost = None;
    assert!(
        wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
            ghost = row(&setup.list(None), "ghost.test", Some("allow")).cloned();
            ghost.as_ref().is_some_and(|row| !row["error"].is_null())
        }),
        "ghost.test is listed with an error: {ghost:?}\nlog:\n{}",
        daemon.log()
    );
    let ghost = ghost.expect("ghost row");
    assert_eq!(ghost["origin"], "cli", "{ghost:#}");
    assert_eq!(ghost["addresses"], serde_json::json!([]), "{ghost:#}");
    assert!(
        ghost["error"]
            .as_str()
            .is_some_and(|e| e.contains("NXDOMAIN")),
        "{ghost:#}"
    );
    setup.cli_ok(&["allow", "192.0.2.10"]);
    assert!(
        trunk[0].1.check_with(Some(&others[0].1), ARRIVE),
        "a CLI address entry works next to the failing name"
    );
    setup.cli_ok(&["remove", "192.0.2.10"]);
    for (family, probe) in &mut trunk {
        assert!(probe.passes(), "{family:?}: trunk.test still works");
    }
    let text = setup.cli_ok(&["list"]);
    assert!(
        text.contains("ghost.test") && text.contains("DNS:"),
        "{text}"
    );

    // The record changes: after the next refresh the client is no longer trusted.
    dns.set(
        "trunk.test",
        &[
            "198.51.100.20".parse().expect("address"),
            "2001:db8:ffff::20".parse().expect("address"),
        ],
    );
    let changed = Instant::now();
    let (v4, rest) = trunk.split_first_mut().expect("two probers");
    let refused = wait_until(Duration::from_secs(20), Duration::from_millis(0), || {
        let (id, _) = v4.1.send();
        !v4.1
            .collect(Some(id), Duration::from_millis(300))
            .contains(&id)
    });
    let elapsed = changed.elapsed();
    println!(
        "trunk.test changed {:?} after the start; the client was refused {elapsed:?} later",
        changed.duration_since(started)
    );
    assert!(
        refused,
        "the client still reaches {IAX_PORT} 20 s after trunk.test moved; log:\n{}",
        daemon.log()
    );
    assert!(v4.1.dropped(), "IPv4: refused from now on");
    assert!(rest[0].1.dropped(), "IPv6: refused as well");
    let rows = setup.list(None);
    let host = row(&rows, "trunk.test", Some("allow")).unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(
        host["addresses"],
        serde_json::json!(["198.51.100.20", "2001:db8:ffff::20"]),
        "{host:#}"
    );
    assert!(
        row(&rows, "ghost.test", Some("allow")).is_some(),
        "ghost.test is kept"
    );
}

// ----------------------------------------------------------------------------------------------
// 12. status and stats

#[test]
fn status_and_stats_report_the_filter() {
    if !require_bpf("status_and_stats_report_the_filter") {
        return;
    }
    const SCANS: usize = 6;
    const REGISTERS: usize = 4;
    const OTHER: usize = 3;
    let setup = setup("status");
    let policy = policy(
        "status",
        &format!("[rate_limit]\nregister = \"off\"\nmax_sources = 2048\n\n{NO_BANS}"),
    );
    let _daemon = setup.start(&policy, &[]);

    let status = setup.json(&["status"]);
    let tcx = kernel_has_tcx();
    assert_eq!(
        status["interfaces"],
        serde_json::json!([{
            "name": IFACE,
            "mode": "driver",
            "egress": if tcx { "tcx" } else { "tc filter" },
        }]),
        "{status:#}"
    );
    let program_id = status["program_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("program_id is a number: {status:#}"));
    let link = setup.link_show();
    assert!(
        link.contains(&format!("prog/xdp id {program_id}")),
        "ip link shows program {program_id}:\n{link}"
    );
    assert_eq!(status["policy_file"], policy.arg(), "{status:#}");
    assert_eq!(status["pin_dir"], setup.pins.arg(), "{status:#}");
    let uptime = status["uptime_seconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("uptime_seconds is a number: {status:#}"));
    assert!(uptime < 60, "{status:#}");
    rfc3339_seconds(status["started"].as_str().expect("started"));
    let maps = status["maps"].as_array().expect("maps");
    let capacity = |name: &str| {
        maps.iter()
            .find(|map| map["map"] == name)
            .unwrap_or_else(|| panic!("{name} in {status:#}"))["capacity"]
            .as_u64()
            .expect("capacity")
    };
    assert_eq!(capacity("SF_RATE"), 2048, "the policy's max_sources");
    assert_eq!(capacity("SF_BANS"), 262_144);
    assert_eq!(capacity("SF_ALLOW4"), 65_536);
    assert_eq!(status["reloads"], 0);
    assert_eq!(status["reload_failures"], 0);
    let text = setup.cli_ok(&["status"]);
    let egress = if tcx { "tcx" } else { "tc filter" };
    assert!(
        text.contains(&format!("{IFACE} (driver, egress watcher on {egress})")),
        "{text}"
    );
    assert!(
        text.contains(&format!("program id:  {program_id}")),
        "{text}"
    );

    let before = setup.json(&["stats"]);
    let counters_before = setup.counters();
    for family in FAMILIES {
        let tag = format!("{family:?}");
        assert!(
            setup
                .udp_expect_drops(family, SIP_PORT, &scanners(&tag, SCANS / 2))
                .is_empty()
        );
        assert_eq!(
            setup
                .udp(family, SIP_PORT, &registers(&tag, REGISTERS / 2))
                .len(),
            REGISTERS / 2
        );
    }
    assert_eq!(
        setup
            .udp(Family::V4, OTHER_PORT, &datagrams("status", OTHER))
            .len(),
        OTHER
    );
    let after = setup.json(&["stats"]);
    let packets = |stats: &Value, reason: &str| {
        stats["packets"][reason]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("packets.{reason} in {stats:#}"))
    };
    for (reason, verdict, sent) in [
        ("scanner_user_agent", "drop", SCANS),
        ("sip_ok", "pass", REGISTERS),
        ("denylisted", "drop", 0),
        ("banned", "drop", 0),
    ] {
        assert_eq!(
            packets(&after, reason) - packets(&before, reason),
            sent as u64,
            "stats: {reason}"
        );
        assert_eq!(after["packets"][reason]["verdict"], verdict, "{reason}");
    }
    // The client's IPv6 stack sends router solicitations now and then (ICMPv6, so
    // `unprotected`) of its own: at least the datagrams sent, and only a few more.
    let unprotected = packets(&after, "unprotected") - packets(&before, "unprotected");
    assert!(
        (OTHER as u64..=OTHER as u64 + 2).contains(&unprotected),
        "stats: unprotected grew by {unprotected} for {OTHER} datagrams"
    );
    assert_eq!(after["packets"]["unprotected"]["verdict"], "pass");
    let method = |stats: &Value, name: &str| stats["sip_messages"][name].as_u64().unwrap_or(0);
    assert_eq!(
        method(&after, "OPTIONS") - method(&before, "OPTIONS"),
        SCANS as u64
    );
    assert_eq!(
        method(&after, "REGISTER") - method(&before, "REGISTER"),
        REGISTERS as u64
    );
    // The CLI's numbers are the kernel's.
    let counters_after = setup.counters();
    assert_eq!(
        grew(&counters_before, &counters_after, Reason::ScannerUserAgent),
        SCANS as u64
    );
    assert_eq!(
        packets(&after, "scanner_user_agent"),
        counters_after[(stats::REASON_BASE + Reason::ScannerUserAgent as u32) as usize]
    );
    // Every event the datapath sent reaches the daemon.
    let mut stats_now = after.clone();
    assert!(
        wait_until(ARRIVE, Duration::from_millis(100), || {
            stats_now = setup.json(&["stats"]);
            stats_now["events"]["sent"].as_u64() == Some(SCANS as u64)
                && stats_now["events"]["received"].as_u64() == Some(SCANS as u64)
        }),
        "events: {:#}",
        stats_now["events"]
    );
    assert_eq!(stats_now["events"]["lost"], 0);
    let text = setup.cli_ok(&["stats"]);
    assert!(
        text.contains(&format!("scanner_user_agent     {SCANS}")),
        "{text}"
    );

    // Uptime advances.
    thread::sleep(Duration::from_millis(1100));
    let later = setup.json(&["status"]);
    assert!(
        later["uptime_seconds"].as_u64().expect("uptime") > uptime,
        "{later:#}"
    );
}
