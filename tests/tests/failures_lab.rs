//! The failures lab (issue 4): a real registrar, real attackers and a real user agent, with
//! sipfilter between them, banning from the PBX's own answers as the egress watcher sees them.
//!
//! Topology, all in namespaces this test creates (documentation addresses only):
//!
//! ```text
//!  enumerator ns 192.0.2.1 (svwar)    veth-a --- veth-pa ─┐
//!  cracker ns    192.0.2.4 (svcrack)  veth-c --- veth-pc ─┼─ br0 192.0.2.2 (kamailio), pbx ns
//!  user ns       192.0.2.3 (phone)    veth-u --- veth-pu ─┘
//! ```
//!
//! sipfilter runs in the PBX namespace, attached to the three bridge ports (XDP on ingress, the
//! egress watcher on egress). Scanner patterns are off and the rate limits generous, so what bans the
//! attackers is what the PBX answered them, however ordinary their User-Agent.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use sipfilter_tests::{
    NetNs,
    daemon::{Daemon, PinDir, PolicyFile},
    lab::{Kamailio, SipClient, svcrack, svwar},
    netns::link,
    require_bpf,
};

const PBX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const ENUMERATOR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CRACKER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 4);
const PHONE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const SIP_PORT: u16 = 5060;
const USERS: &[(&str, &str)] = &[
    ("1000", "lab-pw-1000"),
    ("1001", "lab-pw-1001"),
    ("1002", "lab-pw-1002"),
];
const MAX_FAILURES: usize = 5;
const MAX_CHALLENGES: usize = 10;
const MAX_USERS: usize = 3;
/// Requests an attacker may get to kamailio beyond the threshold: those already on the wire, or
/// answered, while the event travels to the daemon and the ban to the kernel. sipvicious sends
/// in small bursts without waiting for answers; a handful of milliseconds of reaction covers a
/// burst.
const IN_FLIGHT: usize = 20;
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(10);

fn policy() -> String {
    format!(
        r#"
[sip]
udp_ports = [5060]
tcp_ports = [5060]
tls_ports = [5061]

[rate_limit]
register = {{ rate = 1000, burst = 1000 }}
invite = {{ rate = 1000, burst = 1000 }}
max_sources = 1024

[scanners]
user_agents = []
from = []

[bans]
max_failures = {MAX_FAILURES}
max_challenges = {MAX_CHALLENGES}
max_users = {MAX_USERS}
find_time = "10m"
ban_time = "1h"

[responsive]
enabled = true
grace = "1m"

[daemon]
metrics = "off"
"#
    )
}

/// The three hosts. Fields drop in order: kamailio and the daemon stop before the namespaces
/// go.
struct Lab {
    enumerator: NetNs,
    cracker: NetNs,
    user: NetNs,
    pbx: NetNs,
}

/// The PBX side's interfaces, where sipfilter attaches.
const PBX_PORTS: [&str; 3] = ["veth-pa", "veth-pc", "veth-pu"];

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            enumerator: NetNs::new("fla").expect("enumerator namespace"),
            cracker: NetNs::new("flc").expect("cracker namespace"),
            user: NetNs::new("flu").expect("user namespace"),
            pbx: NetNs::new("flp").expect("pbx namespace"),
        };
        let pbx = &lab.pbx;
        pbx.ip(&["link", "add", "br0", "type", "bridge"])
            .expect("bridge");
        for (host, ifname, address, port) in [
            (&lab.enumerator, "veth-a", ENUMERATOR, PBX_PORTS[0]),
            (&lab.cracker, "veth-c", CRACKER, PBX_PORTS[1]),
            (&lab.user, "veth-u", PHONE, PBX_PORTS[2]),
        ] {
            link(host, ifname, pbx, port).expect("veth pair");
            host.addr(ifname, &format!("{address}/24"))
                .expect("address");
            host.up(ifname).expect("host side up");
            pbx.ip(&["link", "set", port, "master", "br0"])
                .expect("bridge port");
            pbx.up(port).expect("pbx side up");
        }
        pbx.addr("br0", &format!("{PBX}/24")).expect("pbx address");
        pbx.up("br0").expect("bridge up");
        for (ns, ifname) in [
            (&lab.enumerator, "veth-a"),
            (&lab.cracker, "veth-c"),
            (&lab.user, "veth-u"),
            (&lab.pbx, "br0"),
        ] {
            ns.wait_ready(ifname, Duration::from_secs(10))
                .expect("link ready");
        }
        lab
    }
}

fn pbx_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PBX), SIP_PORT)
}

fn list(pins: &PinDir, which: &str) -> Vec<Value> {
    let output = pins.command(None, &["list", which, "--json"]);
    assert!(
        output.status.success(),
        "sipfilter list {which}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).expect("list --json prints JSON") {
        Value::Array(rows) => rows,
        other => panic!("list --json printed {other}"),
    }
}

fn row_for(rows: &[Value], address: &str) -> Option<Value> {
    rows.iter()
        .find(|row| {
            row["address"]
                .as_str()
                .is_some_and(|a| a == address || a.starts_with(&format!("{address}/")))
        })
        .cloned()
}

/// Polls `list bans` until `address` is banned (at most `limit`); the ban row and how long it
/// took from `since`.
fn wait_for_ban(
    pins: &PinDir,
    address: Ipv4Addr,
    since: Instant,
    limit: Duration,
) -> Option<(Value, Duration)> {
    let address = address.to_string();
    while since.elapsed() < limit {
        if let Some(row) = row_for(&list(pins, "bans"), &address) {
            return Some((row, since.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The legitimate phone: registers every 500 ms while `running`, with digest authentication, and
/// checks with OPTIONS that the PBX answers it. Returns (registrations tried, succeeded).
fn keep_registering(user: &NetNs, running: &AtomicBool) -> (usize, usize) {
    let client = SipClient::bind(user, SocketAddr::new(IpAddr::V4(PHONE), 0), pbx_addr())
        .expect("phone socket")
        .with_timeout(Duration::from_secs(2));
    let (mut tried, mut ok) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tried += 1;
        let registered = client
            .register("1000", "lab-pw-1000")
            .is_ok_and(|registration| registration.code() == 200);
        let answered = client.options().is_ok_and(|response| response.code == 200);
        if registered && answered {
            ok += 1;
        }
        if !running.load(Ordering::Relaxed) || Instant::now() > deadline {
            return (tried, ok);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn attackers_are_banned_from_the_pbx_answers_and_the_phone_is_learned() {
    if !require_bpf("attackers_are_banned_from_the_pbx_answers_and_the_phone_is_learned") {
        return;
    }
    let lab = Lab::new();
    let kamailio = Kamailio::start(&lab.pbx, pbx_addr(), USERS).expect("kamailio");
    let pins = PinDir::new("flab");
    let policy = PolicyFile::new("flab", &policy());
    let mut args = PBX_PORTS.to_vec();
    args.extend(["--config", policy.arg()]);
    let mut daemon = Daemon::attach(&lab.pbx, &pins, &args).expect("sipfilter starts");
    daemon.wait_ready(Duration::from_secs(30)).expect("ready");
    for port in PBX_PORTS {
        assert!(
            pins.entries().contains(&format!("egress-{port}")),
            "the egress watcher is pinned on {port}: {:?}",
            pins.entries()
        );
    }

    // The phone registers once before the attacks and is learned from the PBX's 200.
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let phone = scope.spawn(|| keep_registering(&lab.user, &running));
        let learned_by = Instant::now();
        let learned = loop {
            if let Some(row) = row_for(&list(&pins, "learned"), &PHONE.to_string()) {
                break row;
            }
            assert!(
                learned_by.elapsed() < Duration::from_secs(10),
                "the phone was not learned: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(learned["kind"], "learned", "{learned}");
        assert_eq!(learned["user"], "1000", "{learned}");

        // svwar enumerates 100 extensions that do not exist: kamailio answers 404 to each.
        let started = Instant::now();
        let (scan, ban) = std::thread::scope(|inner| {
            let scan = inner.spawn(|| {
                svwar(
                    &lab.enumerator,
                    pbx_addr(),
                    IpAddr::V4(ENUMERATOR),
                    2000..=2099,
                    TOOL_TIMEOUT,
                )
            });
            let ban = wait_for_ban(&pins, ENUMERATOR, started, Duration::from_secs(30));
            (scan.join().expect("svwar thread"), ban)
        });
        let scan = scan.expect("svwar runs");
        let (ban, time_to_ban) = ban.unwrap_or_else(|| {
            panic!(
                "svwar was not banned: {}\n{}",
                scan.run.stdout,
                daemon.log()
            )
        });
        let reason = ban["reason"].as_str().unwrap_or_default().to_owned();
        assert!(
            reason == "enumeration" || reason == "rejection",
            "banned for {reason}: {ban}"
        );
        let seen = kamailio.requests_seen().expect("kamailio log");
        let reached = seen.count_from("REGISTER", IpAddr::V4(ENUMERATOR));
        // svwar's first REGISTER probes a random user to learn the "no such user" answer;
        // with max_users names it takes max_users + 1 rejections to ban.
        assert!(
            reached <= MAX_USERS + 1 + 1 + IN_FLIGHT,
            "{reached} of svwar's requests reached kamailio"
        );
        assert!(reached > MAX_USERS, "the ban came before the evidence did");
        // A second run after the ban: nothing more reaches kamailio.
        let again = svwar(
            &lab.enumerator,
            pbx_addr(),
            IpAddr::V4(ENUMERATOR),
            3000..=3019,
            TOOL_TIMEOUT,
        )
        .expect("svwar runs again");
        assert!(again.found.is_empty(), "{}", again.run.stdout);
        let after = kamailio
            .requests_seen()
            .expect("kamailio log")
            .count_from("REGISTER", IpAddr::V4(ENUMERATOR));
        assert_eq!(after, reached, "requests reached kamailio after the ban");
        println!(
            "svwar: scanned 100 extensions, then 20 more; {reached} requests reached kamailio, \
             banned for {reason} {time_to_ban:?} after it started, 0 reached it after the ban"
        );

        // svcrack guesses 1001's password from another address with 40 wrong words: each guess
        // is a 401 challenge and a 403 rejection.
        let words: Vec<String> = (0..40).map(|n| format!("guess{n}")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let started = Instant::now();
        let (crack, ban) = std::thread::scope(|inner| {
            let crack = inner.spawn(|| {
                svcrack(
                    &lab.cracker,
                    pbx_addr(),
                    IpAddr::V4(CRACKER),
                    "1001",
                    &words,
                    TOOL_TIMEOUT,
                )
            });
            let ban = wait_for_ban(&pins, CRACKER, started, Duration::from_secs(30));
            (crack.join().expect("svcrack thread"), ban)
        });
        let crack = crack.expect("svcrack runs");
        assert!(crack.cracked.is_empty(), "{}", crack.run.stdout);
        let (ban, time_to_ban) = ban.unwrap_or_else(|| {
            panic!(
                "svcrack was not banned: {:?} {}\n{}\nkamailio saw {:?}\n{}\n{}",
                crack.run.status,
                crack.run.stdout,
                crack.run.stderr,
                kamailio
                    .requests_seen()
                    .map(|seen| seen.by_method_and_source()),
                String::from_utf8_lossy(&pins.command(None, &["stats", "--json"]).stdout),
                daemon.log()
            )
        });
        let reason = ban["reason"].as_str().unwrap_or_default().to_owned();
        assert!(
            reason == "rejection" || reason == "challenges",
            "banned for {reason}: {ban}"
        );
        let seen = kamailio.requests_seen().expect("kamailio log");
        let reached = seen.count_from("REGISTER", IpAddr::V4(CRACKER));
        // Two requests a guess; MAX_FAILURES rejections ban.
        assert!(
            reached <= 2 * MAX_FAILURES + IN_FLIGHT,
            "{reached} of svcrack's requests reached kamailio"
        );
        let again = svcrack(
            &lab.cracker,
            pbx_addr(),
            IpAddr::V4(CRACKER),
            "1002",
            &words[..5],
            TOOL_TIMEOUT,
        )
        .expect("svcrack runs again");
        assert!(again.cracked.is_empty());
        let after = kamailio
            .requests_seen()
            .expect("kamailio log")
            .count_from("REGISTER", IpAddr::V4(CRACKER));
        assert_eq!(after, reached, "requests reached kamailio after the ban");
        println!(
            "svcrack: a list of 40 wrong passwords, then 5 more; {reached} requests reached \
             kamailio, banned for {reason} {time_to_ban:?} after it started, 0 reached it after \
             the ban"
        );

        running.store(false, Ordering::Relaxed);
        let (tried, ok) = phone.join().expect("phone thread");
        println!("phone: {ok} of {tried} registrations (with an OPTIONS each) succeeded");
        assert!(tried >= 3, "the phone ran throughout the attacks");
        assert_eq!(ok, tried, "every registration of the phone succeeded");
    });

    // The phone was never banned, and is still learned.
    let bans = list(&pins, "bans");
    assert!(row_for(&bans, &PHONE.to_string()).is_none(), "{bans:?}");
    assert!(row_for(&list(&pins, "learned"), &PHONE.to_string()).is_some());
    let stats = pins.command(None, &["stats", "--json"]);
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("stats --json");
    println!(
        "responses seen by the egress watcher: {}",
        stats["responses"]
    );
    assert!(stats["responses"]["rejection"].as_u64().unwrap_or(0) >= (MAX_USERS + 1) as u64);
    assert!(stats["responses"]["success"].as_u64().unwrap_or(0) >= 1);

    assert_eq!(daemon.stop(STOP).expect("SIGTERM").code(), Some(0));
    // Learned trust is kept like bans: in the state file, with the account and the expiry.
    let state = std::fs::read_to_string(pins.state_file()).expect("state file");
    let state: Value = serde_json::from_str(&state).expect("state file is JSON");
    let saved = state["learned"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["address"] == PHONE.to_string()))
        .unwrap_or_else(|| panic!("the phone's learned trust is saved: {state:#}"));
    assert_eq!(saved["user"], "1000", "{saved}");

    // A restarted daemon restores it, and an operator can take it back.
    let mut daemon = Daemon::attach(&lab.pbx, &pins, &args).expect("sipfilter restarts");
    daemon.wait_ready(Duration::from_secs(30)).expect("ready");
    assert!(
        row_for(&list(&pins, "learned"), &PHONE.to_string()).is_some(),
        "restored after a restart: {}",
        daemon.log()
    );
    let removed = pins.command(None, &["remove", &PHONE.to_string()]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(row_for(&list(&pins, "learned"), &PHONE.to_string()).is_none());
    assert_eq!(daemon.stop(STOP).expect("SIGTERM").code(), Some(0));
    kamailio.stop().expect("kamailio stops");
}
