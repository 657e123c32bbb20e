//! End to end: the real `sipfilter` binary attached to the server side of a veth pair
//! (`veth-s`, ingress, protecting the server namespace), with real UDP and TCP traffic from the
//! client namespace and listeners in the server namespace counting what arrives.
//!
//! Each test owns its namespaces (`Topology`), its pin directory (`PinDir`), its policy files and
//! its daemons, all removed by guards also when the test fails. Every traffic loop is bounded in
//! count, and every wait in time.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use sipfilter_common::{Reason, ResponseClass, stats};
use sipfilter_tests::daemon::{Daemon, PinDir, PolicyFile, kernel_has_tcx, sipfilter};
use sipfilter_tests::e2e::{
    FAMILIES, Family, grew, legit_register, receive, scanner_options, send_burst,
};
use sipfilter_tests::sip_messages::{register, response};
use sipfilter_tests::tcp::{accept_and_read, tcp_connect, tcp_listener, tcp_send};
use sipfilter_tests::udp::{udp_listener, udp_socket};
use sipfilter_tests::{NetNs, Topology, require_bpf};

/// How long the daemon may take to load, apply the policy and attach.
const READY: Duration = Duration::from_secs(15);
/// How long to wait for traffic that should arrive (returns as soon as it has).
const ARRIVE: Duration = Duration::from_secs(3);
/// How long to wait for traffic that should NOT arrive (always waited in full).
const SETTLE: Duration = Duration::from_millis(700);
/// Connect timeout for a TCP connection the filter is expected to stop (the SYN is dropped, so
/// the connect can only time out).
const BLOCKED_CONNECT: Duration = Duration::from_secs(1);
/// How long a daemon may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);

const SIP_PORT: u16 = 5060;
const OTHER_PORT: u16 = 9999;
const IFACE: &str = Topology::SERVER_IF;

/// The ban engine off: by default one scanner request (or a few rate-limited ones) bans the
/// source, which would drop the legitimate traffic the tests send next. Bans have a test of
/// their own.
const NO_BANS: &str = "[bans]\nenabled = false\n";

/// Scanner fingerprints on, REGISTER rate limit and bans off, so bursts of legitimate
/// REGISTERs from one source all pass.
const SCANNERS_ONLY: &str = "[rate_limit]\nregister = \"off\"\n\n[bans]\nenabled = false\n";

// ----------------------------------------------------------------------------------------------
// Helpers

/// A topology and a pin directory for one test; the pin dir drops (detach --all) before the
/// namespaces do.
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

    /// Starts `attach veth-s [--config FILE] extra...` and waits until it filters.
    fn start(&self, policy: Option<&PolicyFile>, extra: &[&str]) -> Daemon {
        let mut args = vec![IFACE];
        if let Some(policy) = policy {
            args.extend(["--config", policy.arg()]);
        }
        args.extend_from_slice(extra);
        let mut daemon =
            Daemon::attach(self.server(), &self.pins, &args).expect("starting sipfilter attach");
        daemon.wait_ready(READY).expect("sipfilter attach ready");
        daemon
    }

    /// Runs `attach` that is expected to fail, and returns its status and log.
    fn attach_fails(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut daemon =
            Daemon::attach(self.server(), &self.pins, args).expect("starting sipfilter attach");
        let status = daemon
            .wait_exit(Duration::from_secs(15))
            .expect("an attach that must fail exits by itself");
        (status.code(), daemon.log())
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

    /// True when `ip link` shows an XDP program on veth-s.
    fn xdp_attached(&self) -> bool {
        self.link_show().contains("prog/xdp")
    }

    /// Waits up to 3 s for the XDP program on veth-s to come or go: a link whose last pin was
    /// removed is released by the kernel asynchronously.
    fn wait_xdp(&self, attached: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if self.xdp_attached() == attached {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// sipfilter's egress filters that `tc filter show dev veth-s egress` lists.
    fn egress_tc_filters(&self) -> usize {
        let output = self
            .server()
            .exec(&["tc", "filter", "show", "dev", IFACE, "egress"])
            .expect("tc filter show");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains("sipfilter_egress"))
            .count()
    }

    /// Sends `n` challenges (401 to REGISTER) from the server's SIP port to the client, and
    /// checks that all arrive unchanged and that the egress watcher counted each.
    #[track_caller]
    fn answers_counted(&self, when: &str, n: usize) {
        let to = SocketAddr::new(Family::V4.client(), 5070);
        let listener = udp_listener(&self.topo.client, to).expect("UDP listener");
        let socket = udp_socket(self.server(), Family::V4.server_at(SIP_PORT)).expect("UDP socket");
        let answers: Vec<Vec<u8>> = (0..n)
            .map(|i| response(401, "Unauthorized", "REGISTER", &format!("{when}-{i}"), 1))
            .collect();
        let before = self.counters();
        send_burst(&socket, to, &answers);
        assert_same_messages(receive(&listener, n, ARRIVE), answers, when);
        let challenges = (stats::RESPONSE_BASE + ResponseClass::Challenge as u32) as usize;
        assert_eq!(
            self.counters()[challenges] - before[challenges],
            n as u64,
            "{when}: the egress watcher counts every challenge"
        );
    }

    /// Sends `payloads` over UDP from the client to the server's `port` and returns what the
    /// listener received: waits until all have arrived, or [`ARRIVE`] (use when all should).
    fn udp(&self, family: Family, port: u16, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.udp_within(family, port, payloads, ARRIVE)
    }

    /// Like [`Setup::udp`], but waits only [`SETTLE`] for what does not arrive (use when the
    /// filter is expected to drop some).
    fn udp_expect_drops(&self, family: Family, port: u16, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.udp_within(family, port, payloads, SETTLE)
    }

    fn udp_within(
        &self,
        family: Family,
        port: u16,
        payloads: &[Vec<u8>],
        wait: Duration,
    ) -> Vec<Vec<u8>> {
        let to = family.server_at(port);
        let listener = udp_listener(self.server(), to).expect("UDP listener");
        let socket = udp_socket(&self.topo.client, family.client_any_port()).expect("UDP socket");
        send_burst(&socket, to, payloads);
        let mut received = receive(&listener, payloads.len(), wait);
        if received.len() == payloads.len() {
            // Everything arrived: make sure nothing more trickles in (it cannot, but be exact).
            received.extend(receive(&listener, 1, Duration::from_millis(50)));
        }
        received
    }
}

/// `n` scanner OPTIONS and `n` legitimate REGISTERs, interleaved.
fn mixed_burst(tag: &str, n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut all = Vec::new();
    let mut legit = Vec::new();
    for i in 0..n {
        all.push(scanner_options(&format!("{tag}-{i}")));
        let message = legit_register(&format!("{tag}-{i}"));
        legit.push(message.clone());
        all.push(message);
    }
    (all, legit)
}

fn registers(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| legit_register(&format!("{tag}-{i}")))
        .collect()
}

fn datagrams(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("not sip {i}").into_bytes())
        .collect()
}

#[track_caller]
fn assert_same_messages(mut got: Vec<Vec<u8>>, mut expected: Vec<Vec<u8>>, what: &str) {
    got.sort();
    expected.sort();
    assert!(
        got == expected,
        "{what}: received {} messages, expected {}; first received: {:?}",
        got.len(),
        expected.len(),
        got.first().map(|m| String::from_utf8_lossy(m).into_owned())
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The log line saying how `iface` was attached (`veth-s: attached (driver)`, `(skb)`,
/// `(adopted)`; earlier releases wrote `attached (Driver mode)` and `took over the pinned
/// filter`), lowercased.
fn attach_line(log: &str, iface: &str) -> Option<String> {
    log.lines()
        .find(|line| {
            line.contains(&format!("{iface}: attached"))
                || line.contains(&format!("{iface}: took over"))
        })
        .map(str::to_lowercase)
}

/// The log says `iface` took over a pinned filter (rather than attaching a new link).
fn adopted(log: &str, iface: &str) -> bool {
    attach_line(log, iface)
        .is_some_and(|line| line.contains("adopted") || line.contains("took over"))
}

/// The log says `iface` was newly attached in `mode` (`driver` or `skb`).
fn attached_in(log: &str, iface: &str, mode: &str) -> bool {
    attach_line(log, iface).is_some_and(|line| !line.contains("adopted") && line.contains(mode))
}

/// Accepts one connection within `timeout` and returns whatever it delivers until the peer
/// closes or `timeout` passes; `None` when no connection came.
fn accept_and_collect(listener: &TcpListener, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break Some(stream),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break None;
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("accept: {err}"),
        }
    };
    listener.set_nonblocking(false).expect("blocking listener");
    let mut stream = stream?;
    stream.set_nonblocking(false).expect("blocking stream");
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(data);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buffer) {
            Ok(0) => return Some(data),
            Ok(len) => data.extend_from_slice(&buffer[..len]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Some(data);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("reading: {err}"),
        }
    }
}

/// Sends `message` over a new TCP connection and returns what the server read: all of it when
/// the filter passes it.
fn tcp_roundtrip(setup: &Setup, listener: &TcpListener, family: Family, message: &[u8]) -> Vec<u8> {
    let to = family.server_at(listener.local_addr().expect("bound").port());
    tcp_send(&setup.topo.client, to, message, ARRIVE).expect("sending over TCP");
    let (_, data) = accept_and_read(listener, ARRIVE).expect("the server reads the message");
    data
}

// ----------------------------------------------------------------------------------------------
// 1. Scanners dropped, legitimate traffic passes

#[test]
fn scanner_user_agent_dropped_legit_register_passes() {
    if !require_bpf("scanner_user_agent_dropped_legit_register_passes") {
        return;
    }
    const N: usize = 20;
    let setup = setup("scan");
    let policy = PolicyFile::new("scan", SCANNERS_ONLY);
    let mut daemon = setup.start(Some(&policy), &[]);
    let before = setup.counters();
    for family in FAMILIES {
        let (burst, legit) = mixed_burst(&format!("{family:?}"), N);
        let got = setup.udp_expect_drops(family, SIP_PORT, &burst);
        assert_same_messages(
            got,
            legit,
            &format!("{family:?}: only the REGISTERs arrive"),
        );
    }
    let after = setup.counters();
    assert_eq!(
        grew(&before, &after, Reason::ScannerUserAgent),
        2 * N as u64,
        "ScannerUserAgent counts every scanner OPTIONS (IPv4 and IPv6)"
    );
    assert_eq!(
        grew(&before, &after, Reason::SipOk),
        2 * N as u64,
        "SipOk counts every legitimate REGISTER (IPv4 and IPv6)"
    );
    // The drops are reported as events in the daemon's log.
    daemon
        .wait_for_log("from 192.0.2.1:", ARRIVE)
        .expect("an IPv4 drop event");
    daemon
        .wait_for_log("(scanner_user_agent)", ARRIVE)
        .expect("a scanner event");
}

// ----------------------------------------------------------------------------------------------
// 2. Deny list

#[test]
fn denied_ipv4_source_dropped_on_every_port() {
    if !require_bpf("denied_ipv4_source_dropped_on_every_port") {
        return;
    }
    const N: usize = 5;
    let setup = setup("deny4");
    let policy = PolicyFile::new(
        "deny4",
        &format!("[sources]\ndeny = [\"192.0.2.1/32\"]\n\n{NO_BANS}"),
    );
    let _daemon = setup.start(Some(&policy), &[]);
    let before = setup.counters();

    let sip = setup.udp_expect_drops(Family::V4, SIP_PORT, &registers("d4", N));
    assert!(
        sip.is_empty(),
        "{} REGISTERs from a denied source arrived",
        sip.len()
    );
    let other = setup.udp_expect_drops(Family::V4, OTHER_PORT, &datagrams(N));
    assert!(
        other.is_empty(),
        "{} datagrams to an unprotected port arrived",
        other.len()
    );
    let blocked = tcp_connect(
        &setup.topo.client,
        Family::V4.server_at(OTHER_PORT),
        BLOCKED_CONNECT,
    );
    assert!(
        blocked.is_err(),
        "a TCP connection from a denied source got through"
    );
    let after = setup.counters();
    assert!(
        grew(&before, &after, Reason::Denylisted) > 2 * N as u64,
        "Denylisted counts the REGISTERs, the datagrams and the SYN: {}",
        grew(&before, &after, Reason::Denylisted)
    );

    // Control: the client's IPv6 address is not denied.
    let regs = registers("d4v6", N);
    assert_same_messages(
        setup.udp(Family::V6, SIP_PORT, &regs),
        regs,
        "IPv6 REGISTERs (not denied)",
    );
    let data = datagrams(N);
    assert_same_messages(
        setup.udp(Family::V6, OTHER_PORT, &data),
        data,
        "IPv6 datagrams (not denied)",
    );
}

#[test]
fn denied_ipv6_source_dropped_on_every_port() {
    if !require_bpf("denied_ipv6_source_dropped_on_every_port") {
        return;
    }
    const N: usize = 5;
    let setup = setup("deny6");
    let policy = PolicyFile::new(
        "deny6",
        &format!("[sources]\ndeny = [\"2001:db8::1/128\"]\n\n{NO_BANS}"),
    );
    let _daemon = setup.start(Some(&policy), &[]);
    let before = setup.counters();

    let sip = setup.udp_expect_drops(Family::V6, SIP_PORT, &registers("d6", N));
    assert!(
        sip.is_empty(),
        "{} REGISTERs from a denied source arrived",
        sip.len()
    );
    let other = setup.udp_expect_drops(Family::V6, OTHER_PORT, &datagrams(N));
    assert!(
        other.is_empty(),
        "{} datagrams to an unprotected port arrived",
        other.len()
    );
    let after = setup.counters();
    assert_eq!(
        grew(&before, &after, Reason::Denylisted),
        2 * N as u64,
        "Denylisted counts the REGISTERs and the datagrams"
    );

    // Control: the client's IPv4 address is not denied.
    let regs = registers("d6v4", N);
    assert_same_messages(
        setup.udp(Family::V4, SIP_PORT, &regs),
        regs,
        "IPv4 REGISTERs (not denied)",
    );
    let data = datagrams(N);
    assert_same_messages(
        setup.udp(Family::V4, OTHER_PORT, &data),
        data,
        "IPv4 datagrams (not denied)",
    );
}

// ----------------------------------------------------------------------------------------------
// 3. Restricted port and allowlist

#[test]
fn restricted_tcp_port_needs_the_allowlist() {
    if !require_bpf("restricted_tcp_port_needs_the_allowlist") {
        return;
    }
    const RESTRICTED: u16 = 8080;
    let setup = setup("restr");
    let restricted = PolicyFile::new("restr", "[restricted]\ntcp = [8080]\n");
    let mut daemon = setup.start(Some(&restricted), &[]);
    let before = setup.counters();
    for family in FAMILIES {
        let guarded = tcp_listener(setup.server(), family.server_at(RESTRICTED)).expect("listener");
        let open = tcp_listener(setup.server(), family.server_at(OTHER_PORT)).expect("listener");
        let attempt = tcp_connect(
            &setup.topo.client,
            family.server_at(RESTRICTED),
            BLOCKED_CONNECT,
        );
        assert!(
            attempt.is_err(),
            "{family:?}: an untrusted source connected to restricted port {RESTRICTED}"
        );
        assert_eq!(
            tcp_roundtrip(&setup, &open, family, b"hello 9999"),
            b"hello 9999",
            "{family:?}: port {OTHER_PORT} is not restricted"
        );
        drop(guarded);
    }
    let after = setup.counters();
    assert!(
        grew(&before, &after, Reason::RestrictedPort) >= 2,
        "RestrictedPort counts the SYNs (IPv4 and IPv6): {}",
        grew(&before, &after, Reason::RestrictedPort)
    );
    assert_eq!(daemon.stop(STOP).expect("stopping").code(), Some(0));

    // The operator allowlists the client: the restricted port opens for it.
    let allowed = PolicyFile::new(
        "restr",
        "[sources]\nallow = [\"192.0.2.1\", \"2001:db8::1\"]\n\n[restricted]\ntcp = [8080]\n",
    );
    let _daemon = setup.start(Some(&allowed), &[]);
    let before = setup.counters();
    for family in FAMILIES {
        let guarded = tcp_listener(setup.server(), family.server_at(RESTRICTED)).expect("listener");
        assert_eq!(
            tcp_roundtrip(&setup, &guarded, family, b"hello 8080"),
            b"hello 8080",
            "{family:?}: an allowlisted source reaches restricted port {RESTRICTED}"
        );
    }
    let after = setup.counters();
    assert_eq!(grew(&before, &after, Reason::RestrictedPort), 0);
    assert!(grew(&before, &after, Reason::Allowlisted) >= 2);
}

// ----------------------------------------------------------------------------------------------
// 4. Rate limit

#[test]
fn register_rate_limit_admits_exactly_the_burst() {
    if !require_bpf("register_rate_limit_admits_exactly_the_burst") {
        return;
    }
    const SENT: usize = 20;
    const BURST: usize = 5;
    let setup = setup("rate");
    let policy = PolicyFile::new(
        "rate",
        &format!("[rate_limit]\nregister = {{ rate = 1, burst = 5 }}\n\n{NO_BANS}"),
    );
    let _daemon = setup.start(Some(&policy), &[]);
    for family in FAMILIES {
        let before = setup.counters();
        let burst = registers(&format!("rate{family:?}"), SENT);
        let got = setup.udp_expect_drops(family, SIP_PORT, &burst);
        assert_eq!(
            got.len(),
            BURST,
            "{family:?}: {SENT} REGISTERs back to back with burst {BURST}"
        );
        let after = setup.counters();
        assert_eq!(
            grew(&before, &after, Reason::RateRegister),
            (SENT - BURST) as u64,
            "{family:?}: RateRegister"
        );
        assert_eq!(
            grew(&before, &after, Reason::SipOk),
            BURST as u64,
            "{family:?}: SipOk"
        );
    }
}

// ----------------------------------------------------------------------------------------------
// 5. SIP over TCP

#[test]
fn sip_over_tcp_scanner_dropped_legit_passes() {
    if !require_bpf("sip_over_tcp_scanner_dropped_legit_passes") {
        return;
    }
    let setup = setup("tcp");
    // The built-in policy (SIP on TCP 5060, scanner User-Agents dropped), bans off.
    let policy = PolicyFile::new("tcp", NO_BANS);
    let _daemon = setup.start(Some(&policy), &[]);
    for family in FAMILIES {
        let before = setup.counters();
        let listener = tcp_listener(setup.server(), family.server_at(SIP_PORT)).expect("listener");
        let scanner = register(
            "100",
            "example.com",
            &format!("tcp-scan-{family:?}"),
            1,
            Some("friendly-scanner"),
            None,
        );
        tcp_send(
            &setup.topo.client,
            family.server_at(SIP_PORT),
            &scanner,
            ARRIVE,
        )
        .expect("connecting and queueing the scanner REGISTER");
        let data = accept_and_collect(&listener, Duration::from_millis(1500));
        let data = data.expect("the handshake carries no SIP message, so it passes");
        assert!(
            data.is_empty(),
            "{family:?}: {} bytes of a scanner REGISTER arrived over TCP: {:?}",
            data.len(),
            String::from_utf8_lossy(&data)
        );
        let mid = setup.counters();
        assert!(
            grew(&before, &mid, Reason::ScannerUserAgent) >= 1,
            "{family:?}: ScannerUserAgent counts the segment (and its retransmissions)"
        );

        let legit = legit_register(&format!("tcp-{family:?}"));
        assert_eq!(
            tcp_roundtrip(&setup, &listener, family, &legit),
            legit,
            "{family:?}: a normal REGISTER over TCP arrives whole"
        );
        let after = setup.counters();
        assert!(grew(&mid, &after, Reason::SipOk) >= 1, "{family:?}: SipOk");
    }
}

// ----------------------------------------------------------------------------------------------
// 6. The filter outlives the daemon; takeover; detach

#[test]
fn filter_survives_daemon_and_is_taken_over_then_detached() {
    if !require_bpf("filter_survives_daemon_and_is_taken_over_then_detached") {
        return;
    }
    const N: usize = 5;
    let setup = setup("survive");
    let scanners = PolicyFile::new("survive", SCANNERS_ONLY);
    let mut first = setup.start(Some(&scanners), &[]);
    assert!(
        attach_line(&first.log(), IFACE).is_some() && !adopted(&first.log(), IFACE),
        "first attach creates a link:\n{}",
        first.log()
    );
    // It filters while it runs (this also lets the daemon settle: SIGTERM right after the
    // readiness line is the subject of `sigterm_or_sigint_right_after_ready_stops_cleanly`).
    let (burst, legit) = mixed_burst("running", N);
    assert_same_messages(
        setup.udp_expect_drops(Family::V4, SIP_PORT, &burst),
        legit,
        "with the daemon: scanners dropped, REGISTERs pass",
    );
    let status = first.stop(STOP).expect("SIGTERM stops attach");
    assert_eq!(
        status.code(),
        Some(0),
        "attach exits 0 on SIGTERM:\n{}",
        first.log()
    );
    assert!(
        first.log().contains("the filter stays attached"),
        "{}",
        first.log()
    );

    // Nothing runs now, yet the filter does.
    assert!(
        setup.xdp_attached(),
        "ip link shows XDP after the daemon stopped:\n{}",
        setup.link_show()
    );
    assert!(setup.pins.has_link(IFACE), "{:?}", setup.pins.entries());
    let before = setup.counters();
    let (burst, legit) = mixed_burst("after-term", N);
    assert_same_messages(
        setup.udp_expect_drops(Family::V4, SIP_PORT, &burst),
        legit,
        "without a daemon: scanners dropped, REGISTERs pass",
    );
    let after = setup.counters();
    assert_eq!(grew(&before, &after, Reason::ScannerUserAgent), N as u64);

    // A new daemon with a different policy takes the pinned filter over.
    let deny = PolicyFile::new(
        "survive",
        &format!(
            "[sources]\ndeny = [\"192.0.2.1\", \"2001:db8::1\"]\n\n[rate_limit]\n\
             register = \"off\"\n\n{NO_BANS}"
        ),
    );
    let mut second = setup.start(Some(&deny), &[]);
    assert!(
        adopted(&second.log(), IFACE),
        "second attach adopts the pinned link:\n{}",
        second.log()
    );
    let before = setup.counters();
    let regs = registers("takeover", N);
    let got = setup.udp_expect_drops(Family::V4, SIP_PORT, &regs);
    assert!(
        got.is_empty(),
        "the new policy denies the client: {} arrived",
        got.len()
    );
    let after = setup.counters();
    assert_eq!(grew(&before, &after, Reason::Denylisted), N as u64);
    assert!(
        after[(stats::REASON_BASE + Reason::ScannerUserAgent as u32) as usize] >= N as u64,
        "the counters survive the takeover"
    );

    // A crash leaves the filter in place too.
    second.kill9().expect("kill -9");
    assert!(setup.xdp_attached(), "{}", setup.link_show());
    let before = setup.counters();
    let regs = registers("after-kill", N);
    let got = setup.udp_expect_drops(Family::V6, SIP_PORT, &regs);
    assert!(
        got.is_empty(),
        "still denied after kill -9: {} arrived",
        got.len()
    );
    let after = setup.counters();
    assert_eq!(grew(&before, &after, Reason::Denylisted), N as u64);

    // Detach removes the filter and the pins.
    let output = setup.pins.command(Some(setup.server()), &["detach", IFACE]);
    assert!(output.status.success(), "detach: {}", stderr(&output));
    assert!(
        setup.wait_xdp(false),
        "ip link still shows XDP after detach:\n{}",
        setup.link_show()
    );
    assert!(
        !setup.pins.path().exists() || setup.pins.entries().is_empty(),
        "pins left after detaching the last interface: {:?}",
        setup.pins.entries()
    );
    let (burst, _) = mixed_burst("detached", N);
    assert_same_messages(
        setup.udp(Family::V4, SIP_PORT, &burst),
        burst.clone(),
        "after detach everything arrives, scanners included",
    );
}

/// The egress watcher counts the answers the server sends, on TCX where the kernel has it (6.6
/// and later) and as a tc filter on older kernels; it keeps counting with no daemon, a new
/// daemon takes it over without adding a second one, and `detach` removes it.
#[test]
fn egress_watcher_counts_answers_without_a_daemon_until_detached() {
    if !require_bpf("egress_watcher_counts_answers_without_a_daemon_until_detached") {
        return;
    }
    const N: usize = 5;
    let setup = setup("answers");
    let policy = PolicyFile::new("answers", SCANNERS_ONLY);
    let tcx = kernel_has_tcx();
    let mut first = setup.start(Some(&policy), &[]);
    let tc_marker = setup.pins.path().join(format!("tc-egress-{IFACE}"));
    let tcx_pin = setup.pins.path().join(format!("egress-{IFACE}"));
    assert_eq!(
        (tcx_pin.exists(), tc_marker.exists()),
        (tcx, !tcx),
        "the watcher is a TCX link on 6.6 and later, a tc filter before: {:?}",
        setup.pins.entries()
    );
    assert_eq!(setup.egress_tc_filters(), usize::from(!tcx));
    setup.answers_counted("with the daemon", N);

    first.stop(STOP).expect("SIGTERM stops attach");
    setup.answers_counted("without a daemon", N);

    let mut second = setup.start(Some(&policy), &[]);
    assert!(adopted(&second.log(), IFACE), "{}", second.log());
    assert_eq!(
        setup.egress_tc_filters(),
        usize::from(!tcx),
        "the takeover replaced the filter, it did not add one"
    );
    setup.answers_counted("after the takeover", N);
    second.stop(STOP).expect("SIGTERM stops attach");

    let output = setup.pins.command(Some(setup.server()), &["detach", IFACE]);
    assert!(output.status.success(), "detach: {}", stderr(&output));
    assert_eq!(setup.egress_tc_filters(), 0, "detach removes the tc filter");
    if tcx {
        let attached = setup
            .server()
            .run(|| SchedClassifier::query_tcx(IFACE, TcAttachType::Egress))
            .expect("querying TCX egress");
        assert!(attached.1.is_empty(), "detach removes the TCX link");
    }
}

/// `attach` announces readiness ("filtering with ...") and a supervisor may stop it at once:
/// SIGTERM (a supervisor) and SIGINT (Ctrl-C) must then take the clean path (exit 0,
/// "stopping" logged), not kill the process, and leave the filter attached.
#[test]
fn sigterm_or_sigint_right_after_ready_stops_cleanly() {
    if !require_bpf("sigterm_or_sigint_right_after_ready_stops_cleanly") {
        return;
    }
    let setup = setup("term");
    for (round, signal) in [libc::SIGTERM, libc::SIGINT, libc::SIGTERM, libc::SIGINT]
        .into_iter()
        .enumerate()
    {
        let mut daemon =
            Daemon::attach(setup.server(), &setup.pins, &[IFACE]).expect("starting attach");
        daemon.wait_ready(READY).expect("attach ready");
        let status = daemon
            .stop_with(signal, STOP)
            .expect("the signal stops attach");
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: signal {signal} right after the readiness line ended attach with \
             {status}; its log:\n{}",
            daemon.log()
        );
        assert!(
            daemon.log().contains("the filter stays attached"),
            "round {round}: {}",
            daemon.log()
        );
        assert!(setup.xdp_attached(), "{}", setup.link_show());
    }
}

// ----------------------------------------------------------------------------------------------
// The ban engine (built-in policy): one scanner request bans its source on every port

#[test]
fn scanner_gets_its_source_banned_until_unban() {
    if !require_bpf("scanner_gets_its_source_banned_until_unban") {
        return;
    }
    const N: usize = 3;
    let setup = setup("ban");
    let mut daemon = setup.start(None, &[]);
    let regs = registers("ban-before", 1);
    assert_same_messages(
        setup.udp(Family::V4, SIP_PORT, &regs),
        regs,
        "before the scan",
    );

    let scan = vec![scanner_options("ban")];
    let got = setup.udp_expect_drops(Family::V4, SIP_PORT, &scan);
    assert!(got.is_empty(), "the scanner OPTIONS arrived");
    daemon
        .wait_for_log("(scanner_user_agent)", ARRIVE)
        .expect("the scan is reported");

    // The daemon bans the source: wait (bounded) until `list bans` shows it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let output = setup.pins.command(None, &["list", "bans"]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "list bans: {}", stderr(&output));
        if stdout.contains("192.0.2.1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ban of 192.0.2.1 after a scanner request; list bans:\n{stdout}\nlog:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let before = setup.counters();
    let sip = setup.udp_expect_drops(Family::V4, SIP_PORT, &registers("banned", N));
    assert!(
        sip.is_empty(),
        "{} REGISTERs from a banned source arrived",
        sip.len()
    );
    let other = setup.udp_expect_drops(Family::V4, OTHER_PORT, &datagrams(N));
    assert!(
        other.is_empty(),
        "{} datagrams from a banned source arrived",
        other.len()
    );
    let after = setup.counters();
    assert_eq!(
        grew(&before, &after, Reason::Banned),
        2 * N as u64,
        "Banned counts the REGISTERs and the datagrams"
    );
    // The client's IPv6 address is another source, and not banned.
    let regs = registers("ban-v6", 1);
    assert_same_messages(
        setup.udp(Family::V6, SIP_PORT, &regs),
        regs,
        "IPv6 (not banned)",
    );

    let output = setup.pins.command(None, &["unban", "192.0.2.1"]);
    assert!(output.status.success(), "unban: {}", stderr(&output));
    let regs = registers("ban-after", 1);
    assert_same_messages(setup.udp(Family::V4, SIP_PORT, &regs), regs, "after unban");
}

// ----------------------------------------------------------------------------------------------
// 7. Bad configurations are refused and change nothing

const UNKNOWN_KEY: &str = "[scanners]\nmode = \"enforce\"\nuser_agent = [\"friendly-scanner\"]\n";
const PREFIX_33: &str = "[sources]\n\ndeny = [\"192.0.2.0/33\"]\n";

/// (policy text, the key the error must name, the line it must name)
const BAD_POLICIES: [(&str, &str, usize); 2] = [
    (UNKNOWN_KEY, "scanners.user_agent", 3),
    (PREFIX_33, "sources.deny[0]", 3),
];

#[test]
fn bad_config_refused_and_nothing_attached() {
    if !require_bpf("bad_config_refused_and_nothing_attached") {
        return;
    }
    let setup = setup("badcfg");
    for (text, key, line) in BAD_POLICIES {
        let policy = PolicyFile::new("badcfg", text);
        let (code, log) = setup.attach_fails(&[IFACE, "--config", policy.arg()]);
        assert_eq!(code, Some(1), "attach with a bad policy exits 1:\n{log}");
        assert!(log.contains(key), "the error names the key {key}:\n{log}");
        assert!(
            log.contains(&format!("{}:{line}:", policy.file_name())),
            "the error names file and line {line}:\n{log}"
        );
        assert!(
            !setup.xdp_attached(),
            "XDP attached despite the bad policy:\n{}",
            setup.link_show()
        );
        assert!(
            !setup.pins.has_link(IFACE),
            "a link was pinned despite the bad policy: {:?}",
            setup.pins.entries()
        );
    }
}

#[test]
fn bad_config_leaves_running_filter_alone() {
    if !require_bpf("bad_config_leaves_running_filter_alone") {
        return;
    }
    const N: usize = 5;
    let setup = setup("badrun");
    let good = PolicyFile::new("badrun", SCANNERS_ONLY);
    let mut running = setup.start(Some(&good), &[]);
    for (text, key, _) in BAD_POLICIES {
        let policy = PolicyFile::new("badrun", text);
        let (code, log) = setup.attach_fails(&[IFACE, "--config", policy.arg()]);
        assert_eq!(code, Some(1), "attach with a bad policy exits 1:\n{log}");
        assert!(log.contains(key), "the error names the key {key}:\n{log}");
        assert!(
            !adopted(&log, IFACE),
            "a refused policy must not take the filter over:\n{log}"
        );
    }
    assert!(
        running.try_status().expect("status").is_none(),
        "the running daemon survives the refused attach:\n{}",
        running.log()
    );
    assert!(setup.xdp_attached(), "{}", setup.link_show());
    // The old policy still applies: scanners dropped, REGISTERs (rate limit off) pass.
    let before = setup.counters();
    let (burst, legit) = mixed_burst("badrun", N);
    assert_same_messages(
        setup.udp_expect_drops(Family::V4, SIP_PORT, &burst),
        legit,
        "the running filter keeps its policy",
    );
    let after = setup.counters();
    assert_eq!(grew(&before, &after, Reason::ScannerUserAgent), N as u64);
    assert_eq!(grew(&before, &after, Reason::SipOk), N as u64);
    assert_eq!(running.stop(STOP).expect("stop").code(), Some(0));
}

// ----------------------------------------------------------------------------------------------
// 8. Command-line errors

/// The examples of docs/policy.md.
const DOC_EXAMPLE: &str = r#"[sip]
udp_ports = [5060]
tcp_ports = [5060]
tls_ports = [5061]

[sources]
allow = ["198.51.100.0/24", "2001:db8:100::/48"]
deny = ["203.0.113.66/32"]
untrusted_sip = "inspect"

[rate_limit]
ipv6_prefix = 64
register = { rate = 5, burst = 10 }
invite = { rate = 2, burst = 5 }

[scanners]
user_agents = ["friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip", "sip-scan"]

[toll_fraud]
deny_prefixes = ["00", "011", "+"]

[restricted]
tcp = [22, 8080]
udp = [4569]
"#;

const DOC_MONITOR_EXAMPLE: &str = r#"[sources]
allow = ["198.51.100.0/24", "sbc.example.net"]
deny = ["203.0.113.0/24"]
deny_mode = "enforce"            # already trusted: drop

[rate_limit]
register = { rate = 0.5, burst = 4 }   # one REGISTER every two seconds after a burst of 4
invite = "off"
mode = "monitor"                 # only report sources over the rate

[toll_fraud]
deny_prefixes = ["00", "011", "+"]
mode = "monitor"                 # see which calls would be refused before refusing them

[restricted]
tcp = [22]
mode = "monitor"                 # check that only allowlisted sources reach SSH
"#;

#[test]
fn cli_errors_and_exit_codes() {
    if !require_bpf("cli_errors_and_exit_codes") {
        return;
    }
    let setup = setup("cli");

    // attach to an interface the namespace does not have
    let (code, log) = setup.attach_fails(&["nosuch0"]);
    assert_eq!(code, Some(1), "attach nosuch0:\n{log}");
    assert!(
        log.contains("nosuch0") && log.contains("does not exist"),
        "the error names the missing interface:\n{log}"
    );
    assert!(
        !setup.pins.has_link("nosuch0"),
        "{:?}",
        setup.pins.entries()
    );
    assert!(!setup.xdp_attached());

    // detach what is not attached
    let output = setup.pins.command(Some(setup.server()), &["detach", IFACE]);
    assert_eq!(output.status.code(), Some(1), "detach: {}", stderr(&output));
    assert!(
        stderr(&output).contains("not attached to veth-s"),
        "{}",
        stderr(&output)
    );

    // check: the documented examples pass
    for (name, text) in [("docex", DOC_EXAMPLE), ("docmon", DOC_MONITOR_EXAMPLE)] {
        let policy = PolicyFile::new(name, text);
        let output = sipfilter(&["check", policy.arg()]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "check of the {name} example: {}{stdout}",
            stderr(&output)
        );
        assert!(
            stdout.contains(&format!("{}: OK", policy.arg())),
            "{stdout}"
        );
    }
    let policy = PolicyFile::new("docex", DOC_EXAMPLE);
    let stdout = String::from_utf8_lossy(&sipfilter(&["check", policy.arg()]).stdout).into_owned();
    assert!(
        stdout.contains("restricted   UDP 4569; TCP 22, 8080 (enforce)"),
        "{stdout}"
    );
    assert!(stdout.contains("3 denied prefixes (enforce)"), "{stdout}");

    // check: a bad policy fails with the key and the line
    for (text, key, line) in BAD_POLICIES {
        let policy = PolicyFile::new("cli", text);
        let output = sipfilter(&["check", policy.arg()]);
        assert_eq!(output.status.code(), Some(1), "check: {}", stderr(&output));
        assert!(stderr(&output).contains(key), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("{}:{line}:", policy.file_name())),
            "{}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "no summary of a bad policy");
    }

    // check: a file that does not exist
    let missing = std::env::temp_dir().join(format!("sft-missing-{}.toml", std::process::id()));
    let output = sipfilter(&["check", missing.to_str().expect("UTF-8 path")]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "check missing: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("sft-missing-"),
        "the error names the file: {}",
        stderr(&output)
    );

    // usage errors exit 2
    let output = sipfilter(&["frobnicate"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "unknown subcommand: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("frobnicate"),
        "{}",
        stderr(&output)
    );
    let output = setup
        .pins
        .command(None, &["attach", IFACE, "--mode", "turbo"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "bad --mode: {}",
        stderr(&output)
    );
    let output = setup.pins.command(None, &["attach"]);
    assert_eq!(output.status.code(), Some(2), "attach without an interface");

    // attach into a namespace that does not exist
    let state = setup.pins.state_file();
    let output = setup.pins.command(
        None,
        &[
            "--netns",
            "sft-nonexistent-namespace",
            "attach",
            "--state-file",
            state.to_str().expect("UTF-8 path"),
            IFACE,
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("sft-nonexistent-namespace"),
        "{}",
        stderr(&output)
    );
    assert!(!setup.xdp_attached());
}

// ----------------------------------------------------------------------------------------------
// 9. XDP modes

/// Attaches in `mode`, checks the log and `ip link`, and that the filter filters.
fn attach_in_mode(tag: &str, mode: Option<&str>, logged: &str, link_flag: &str) {
    const N: usize = 5;
    let setup = setup(tag);
    let policy = PolicyFile::new(tag, SCANNERS_ONLY);
    let extra: Vec<&str> = mode.map(|m| vec!["--mode", m]).unwrap_or_default();
    let daemon = setup.start(Some(&policy), &extra);
    assert!(
        attached_in(&daemon.log(), IFACE, logged),
        "the log names the mode {logged}:\n{}",
        daemon.log()
    );
    let link = setup.link_show();
    assert!(
        link.split_whitespace().any(|word| word == link_flag),
        "ip link shows `{link_flag}`:\n{link}"
    );
    for family in FAMILIES {
        let (burst, legit) = mixed_burst(&format!("{tag}{family:?}"), N);
        assert_same_messages(
            setup.udp_expect_drops(family, SIP_PORT, &burst),
            legit,
            &format!("{family:?} in {logged} mode"),
        );
    }
    // TCP through the filter in this mode as well.
    let listener = tcp_listener(setup.server(), Family::V4.server_at(SIP_PORT)).expect("listener");
    let legit = legit_register(&format!("{tag}-tcp"));
    assert_eq!(tcp_roundtrip(&setup, &listener, Family::V4, &legit), legit);
}

#[test]
fn skb_mode_attaches_on_veth() {
    if !require_bpf("skb_mode_attaches_on_veth") {
        return;
    }
    attach_in_mode("modeskb", Some("skb"), "skb", "xdpgeneric");
}

#[test]
fn driver_mode_attaches_on_veth() {
    if !require_bpf("driver_mode_attaches_on_veth") {
        return;
    }
    attach_in_mode("modedrv", Some("driver"), "driver", "xdp");
}

#[test]
fn auto_mode_picks_driver_on_veth() {
    if !require_bpf("auto_mode_picks_driver_on_veth") {
        return;
    }
    attach_in_mode("modeauto", None, "driver", "xdp");
}

/// 4 KB SIP messages in single frames, on a jumbo-MTU link. veth refuses native XDP at that MTU
/// (the program is not multi-buffer), as many NIC drivers do: `--mode driver` is refused with an
/// error naming the interface, and `auto` falls back to generic mode, where the program sees
/// the whole frame. A 4 KB REGISTER with a scanner User-Agent is dropped, a legitimate one
/// arrives whole, over IPv4 and IPv6.
#[test]
fn jumbo_link_auto_falls_back_to_skb_and_filters_4k_messages() {
    if !require_bpf("jumbo_link_auto_falls_back_to_skb_and_filters_4k_messages") {
        return;
    }
    const SIZE: usize = 4096;
    let setup = setup("jumbo");
    for (ns, ifname) in [
        (&setup.topo.client, Topology::CLIENT_IF),
        (setup.server(), IFACE),
    ] {
        let output = ns
            .ip(&["link", "set", "dev", ifname, "mtu", "9000"])
            .expect("ip link set mtu");
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let policy = PolicyFile::new("jumbo", SCANNERS_ONLY);
    let (code, log) = setup.attach_fails(&[IFACE, "--config", policy.arg(), "--mode", "driver"]);
    assert_ne!(code, Some(0), "driver mode at MTU 9000:\n{log}");
    assert!(
        log.contains(IFACE) && log.contains("MTU is too large"),
        "the error names the interface and the reason:\n{log}"
    );
    assert!(!setup.xdp_attached(), "{}", setup.link_show());

    let daemon = setup.start(Some(&policy), &[]);
    let log = daemon.log();
    assert!(
        attached_in(&log, IFACE, "skb"),
        "generic mode at MTU 9000:\n{log}"
    );
    assert!(log.contains("native XDP unavailable"), "{log}");
    let link = setup.link_show();
    assert!(
        link.split_whitespace().any(|word| word == "xdpgeneric"),
        "ip link shows xdpgeneric:\n{link}"
    );
    for family in FAMILIES {
        let id = format!("jumbo-{family:?}");
        let legit = register(
            "alice",
            "example.com",
            &format!("{id}-legit"),
            1,
            Some("Zoiper rv2.10.20.2"),
            Some(SIZE),
        );
        let scanner = register(
            "100",
            "example.com",
            &format!("{id}-scan"),
            1,
            Some("friendly-scanner"),
            Some(SIZE),
        );
        let before = setup.counters();
        let got = setup.udp_expect_drops(family, SIP_PORT, &[scanner, legit.clone()]);
        assert_same_messages(got, vec![legit], &format!("{family:?} 4 KB"));
        let after = setup.counters();
        assert_eq!(grew(&before, &after, Reason::ScannerUserAgent), 1);
        assert_eq!(grew(&before, &after, Reason::SipOk), 1);
    }
}
