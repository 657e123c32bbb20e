//! Proves the PBX lab without sipfilter in the path: Kamailio registers users with digest
//! authentication and answers like a real PBX, a real user agent (baresip) and the Rust digest
//! client register, the sipvicious attackers find exactly what they should, Kamailio's log shows
//! what reached it, and every process the lab started is gone afterwards.
//!
//! Topology (from `Topology`): client 192.0.2.1 / 2001:db8::1 <-> server 192.0.2.2 / 2001:db8::2,
//! Kamailio on the server side, users and attackers on the client side.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sipfilter_tests::lab::{
    Baresip, BaresipRegistration, Kamailio, SipClient, process_group_members, process_running,
    svcrack, svmap, svwar,
};
use sipfilter_tests::{Topology, require_bpf};

const USERS: &[(&str, &str)] = &[
    ("1000", "lab-pw-1000"),
    ("1001", "lab-pw-1001"),
    ("1002", "lab-pw-1002"),
];
const SIP_PORT: u16 = 5060;
/// Upper bound for one attacker run; they take 0.1-4 s here.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const UA_TIMEOUT: Duration = Duration::from_secs(10);

/// A topology with Kamailio on the server side. Fields drop in order: Kamailio stops before
/// its namespace goes away.
struct Lab {
    kamailio: Kamailio,
    topology: Topology,
}

fn lab(tag: &str, server_ip: IpAddr) -> Lab {
    let topology = Topology::new(tag).expect("topology");
    let kamailio = Kamailio::start(
        &topology.server,
        SocketAddr::new(server_ip, SIP_PORT),
        USERS,
    )
    .expect("kamailio starts and answers OPTIONS");
    Lab { kamailio, topology }
}

fn lab_v4(tag: &str) -> Lab {
    lab(tag, Topology::SERVER_V4.into())
}

fn client_v4() -> IpAddr {
    Topology::CLIENT_V4.into()
}

impl Lab {
    fn server(&self) -> SocketAddr {
        self.kamailio.listen()
    }

    fn client(&self) -> SipClient {
        let local = SocketAddr::new(
            match self.server().ip() {
                IpAddr::V4(_) => client_v4(),
                IpAddr::V6(_) => Topology::CLIENT_V6.into(),
            },
            0,
        );
        SipClient::bind(&self.topology.client, local, self.server()).expect("client socket")
    }

    /// Stops Kamailio and checks that none of its processes and none of its files are left.
    fn stop(self) {
        let pids = self.kamailio.pids();
        let dir = self.kamailio.dir().to_path_buf();
        assert!(
            pids.len() >= 3,
            "expected the timeout wrapper, kamailio and its workers, got {pids:?}"
        );
        let (status, log) = self.kamailio.stop().expect("kamailio stops");
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        assert!(
            status.success(),
            "kamailio exited with {status}; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        assert_gone(&pids, &dir);
    }
}

#[track_caller]
fn assert_gone(pids: &[u32], dir: &Path) {
    let running: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|pid| process_running(*pid))
        .collect();
    assert!(running.is_empty(), "processes left running: {running:?}");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn kamailio_answers_options() {
    if !require_bpf("kamailio_answers_options") {
        return;
    }
    let lab = lab_v4("labopt");
    let response = lab.client().options().expect("OPTIONS answered");
    assert_eq!(response.code, 200, "{}", response.raw);
    assert_eq!(response.header("server"), Some("sipfilter-lab"));

    let seen = lab.kamailio.requests_seen().unwrap();
    assert_eq!(
        seen.by_method_and_source(),
        BTreeMap::from([(("OPTIONS".to_owned(), client_v4()), 1)]),
        "startup probes are left out, the client's OPTIONS is in"
    );
    assert_eq!(seen.responses_with("OPTIONS", "200"), 1);
    lab.stop();
}

#[test]
fn digest_register_accepts_only_the_right_password() {
    if !require_bpf("digest_register_accepts_only_the_right_password") {
        return;
    }
    let lab = lab_v4("labreg");
    let client = lab.client();

    let good = client.register("1000", "lab-pw-1000").unwrap();
    let challenge = good
        .challenge
        .as_ref()
        .expect("first REGISTER is challenged");
    assert_eq!(challenge.code, 401, "{}", challenge.raw);
    let www = challenge.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Digest") && www.contains("realm=\"192.0.2.2\"") && www.contains("qop="),
        "{www}"
    );
    assert_eq!(good.code(), 200, "{}", good.response.raw);
    let contact = good.response.header("contact").expect("200 lists bindings");
    assert!(
        contact.contains(&client.local_addr().to_string()),
        "binding {contact} is not the client's"
    );

    let bad = client.register("1001", "not-the-password").unwrap();
    assert!(bad.challenge.is_some());
    assert_eq!(bad.code(), 403, "{}", bad.response.raw);

    let unknown = client.register("1999", "whatever").unwrap();
    assert!(
        unknown.challenge.is_none(),
        "unknown users are not challenged"
    );
    assert_eq!(unknown.code(), 404, "{}", unknown.response.raw);

    // Removing the binding needs the password too.
    let gone = client
        .register_with_expires("1000", "lab-pw-1000", 0)
        .unwrap();
    assert_eq!(gone.code(), 200, "{}", gone.response.raw);

    let seen = lab.kamailio.requests_seen().unwrap();
    // 2 (challenge + credentials) for each of good, bad and unregister, 1 for unknown.
    assert_eq!(seen.count_from("REGISTER", client_v4()), 7);
    assert_eq!(seen.count("REGISTER"), 7);
    assert_eq!(seen.responses_with("REGISTER", "401"), 3);
    assert_eq!(seen.responses_with("REGISTER", "200"), 2);
    assert_eq!(seen.responses_with("REGISTER", "403"), 1);
    assert_eq!(seen.responses_with("REGISTER", "404"), 1);
    lab.stop();
}

#[test]
fn invite_reaches_only_registered_users() {
    if !require_bpf("invite_reaches_only_registered_users") {
        return;
    }
    let lab = lab_v4("labinv");
    let callee = lab.client();
    let caller = lab.client();
    assert_eq!(callee.register("1001", "lab-pw-1001").unwrap().code(), 200);

    let unregistered = caller.invite("1000", "1002").unwrap();
    assert_eq!(unregistered.code, 404, "{}", unregistered.raw);

    // The relayed INVITE arrives at the registered contact; its 486 travels back.
    let (answer, relayed) = std::thread::scope(|scope| {
        let call = scope.spawn(|| caller.invite("1000", "1001"));
        let relayed = callee
            .recv_request(Duration::from_secs(5))
            .expect("INVITE relayed to the registered contact");
        callee.respond(&relayed, 486, "Busy Here").unwrap();
        (call.join().unwrap(), relayed)
    });
    assert_eq!(relayed.method, "INVITE");
    assert_eq!(relayed.source, lab.server());
    assert_eq!(answer.unwrap().code, 486);

    let seen = lab.kamailio.requests_seen().unwrap();
    assert_eq!(seen.count_from("INVITE", client_v4()), 2);
    assert_eq!(seen.responses_with("INVITE", "404"), 1);
    assert_eq!(seen.responses_with("INVITE", "relay"), 1);
    lab.stop();
}

#[test]
fn baresip_registers_with_the_right_password_only() {
    if !require_bpf("baresip_registers_with_the_right_password_only") {
        return;
    }
    let lab = lab_v4("labua");
    let local = SocketAddr::new(client_v4(), 5070);

    let mut phone = Baresip::start(
        &lab.topology.client,
        local,
        lab.server(),
        "1001",
        "lab-pw-1001",
        UA_TIMEOUT,
    )
    .unwrap();
    let result = phone.registration(UA_TIMEOUT).unwrap();
    assert_eq!(
        result,
        BaresipRegistration::Registered,
        "{}",
        phone.output()
    );
    let (pids, dir) = (phone.pids(), phone.dir().to_path_buf());
    phone.stop().unwrap();
    assert_gone(&pids, &dir);

    let mut wrong = Baresip::start(
        &lab.topology.client,
        local,
        lab.server(),
        "1002",
        "wrong-password",
        UA_TIMEOUT,
    )
    .unwrap();
    let result = wrong.registration(UA_TIMEOUT).unwrap();
    assert!(
        matches!(result, BaresipRegistration::Failed(403, _)),
        "{result:?}\n{}",
        wrong.output()
    );
    drop(wrong);

    let seen = lab.kamailio.requests_seen().unwrap();
    let from_phone = |user: &str, code: &str| {
        seen.responses
            .iter()
            .filter(|r| r.source == local && r.to_user == user && r.code == code)
            .count()
    };
    assert!(from_phone("1001", "200") >= 1, "{seen:#?}");
    assert_eq!(from_phone("1001", "403"), 0);
    assert_eq!(from_phone("1002", "403"), 1, "{seen:#?}");
    assert_eq!(from_phone("1002", "200"), 0);
    lab.stop();
}

#[test]
fn svwar_finds_exactly_the_configured_extensions() {
    if !require_bpf("svwar_finds_exactly_the_configured_extensions") {
        return;
    }
    let lab = lab_v4("labwar");
    let scan = svwar(
        &lab.topology.client,
        lab.server(),
        client_v4(),
        995..=1005,
        TOOL_TIMEOUT,
    )
    .unwrap();
    assert!(
        scan.run.success(),
        "{:?}: {}\n{}",
        scan.run.status,
        scan.run.stdout,
        scan.run.stderr
    );
    let expected: BTreeMap<String, String> = ["1000", "1001", "1002"]
        .iter()
        .map(|ext| ((*ext).to_owned(), "reqauth".to_owned()))
        .collect();
    assert_eq!(scan.found, expected, "{}", scan.run.stdout);
    assert!(process_group_members(scan.run.pgid).is_empty());

    let seen = lab.kamailio.requests_seen().unwrap();
    // svwar first registers a random 32-bit number to learn the "no such user" answer.
    assert_eq!(seen.count_from("REGISTER", client_v4()), 12, "{seen:#?}");
    let scanned: BTreeSet<u32> = seen
        .requests
        .iter()
        .filter_map(|r| r.to_user.parse().ok())
        .filter(|ext| (995..=1005).contains(ext))
        .collect();
    assert_eq!(scanned, (995..=1005).collect());
    assert_eq!(seen.responses_with("REGISTER", "401"), 3);
    assert_eq!(seen.responses_with("REGISTER", "404"), 9);
    lab.stop();
}

#[test]
fn svcrack_finds_the_password() {
    if !require_bpf("svcrack_finds_the_password") {
        return;
    }
    let lab = lab_v4("labcrack");
    let words = ["123456", "password", "lab-pw-1000", "qwerty", "letmein"];
    let crack = svcrack(
        &lab.topology.client,
        lab.server(),
        client_v4(),
        "1000",
        &words,
        TOOL_TIMEOUT,
    )
    .unwrap();
    assert!(
        crack.run.success(),
        "{:?}: {}\n{}",
        crack.run.status,
        crack.run.stdout,
        crack.run.stderr
    );
    assert_eq!(
        crack.cracked,
        BTreeMap::from([("1000".to_owned(), "lab-pw-1000".to_owned())]),
        "{}",
        crack.run.stdout
    );
    assert!(process_group_members(crack.run.pgid).is_empty());

    let seen = lab.kamailio.requests_seen().unwrap();
    assert!(seen.requests.iter().all(|r| r.to_user == "1000"));
    assert_eq!(seen.responses_with("REGISTER", "200"), 1, "{seen:#?}");
    // The two wrong guesses before the right one; svcrack may send the ones after it before
    // the 200 arrives.
    let wrong = seen.responses_with("REGISTER", "403");
    assert!((2..=4).contains(&wrong), "{wrong} wrong guesses: {seen:#?}");

    // svcrack's registration is real: 1000 is now bound to svcrack's made-up contact
    // (sip:123@1.1.1.1), which the lab registrar refuses to relay to.
    let call = lab.client().invite("1001", "1000").unwrap();
    assert_eq!(call.code, 480, "{}", call.raw);
    assert_eq!(call.reason, "Contact Outside The Lab");
    lab.stop();
}

#[test]
fn svmap_fingerprints_the_registrar() {
    if !require_bpf("svmap_fingerprints_the_registrar") {
        return;
    }
    let lab = lab_v4("labmap");
    let map = svmap(
        &lab.topology.client,
        lab.server(),
        client_v4(),
        TOOL_TIMEOUT,
    )
    .unwrap();
    assert!(map.run.success(), "{}\n{}", map.run.stdout, map.run.stderr);
    assert_eq!(
        map.devices,
        BTreeMap::from([("192.0.2.2:5060".to_owned(), "sipfilter-lab".to_owned())])
    );
    let seen = lab.kamailio.requests_seen().unwrap();
    assert_eq!(seen.count_from("OPTIONS", client_v4()), 1);
    lab.stop();
}

#[test]
fn lab_works_over_ipv6() {
    if !require_bpf("lab_works_over_ipv6") {
        return;
    }
    let lab = lab("labsix", Topology::SERVER_V6.into());
    let client = lab.client();
    assert_eq!(client.options().unwrap().code, 200);
    assert_eq!(client.register("1002", "lab-pw-1002").unwrap().code(), 200);
    assert_eq!(client.register("1002", "nope").unwrap().code(), 403);

    let scan = svwar(
        &lab.topology.client,
        lab.server(),
        Topology::CLIENT_V6.into(),
        999..=1001,
        TOOL_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        scan.found.keys().collect::<Vec<_>>(),
        ["1000", "1001"],
        "{}\n{}",
        scan.run.stdout,
        scan.run.stderr
    );
    let seen = lab.kamailio.requests_seen().unwrap();
    assert_eq!(
        seen.count_from("REGISTER", Topology::CLIENT_V6.into()),
        4 + 4,
        "client: 2 + 2; svwar: probe + 3"
    );
    lab.stop();
}

#[test]
fn dropped_guards_leave_no_processes() {
    if !require_bpf("dropped_guards_leave_no_processes") {
        return;
    }
    let topology = Topology::new("labdrop").unwrap();
    let server = SocketAddr::new(Topology::SERVER_V4.into(), SIP_PORT);
    let kamailio = Kamailio::start(&topology.server, server, USERS).unwrap();
    let phone = Baresip::start(
        &topology.client,
        SocketAddr::new(client_v4(), 5070),
        server,
        "1000",
        "lab-pw-1000",
        UA_TIMEOUT,
    )
    .unwrap();
    let pids: Vec<u32> = kamailio.pids().into_iter().chain(phone.pids()).collect();
    let dirs = [kamailio.dir().to_path_buf(), phone.dir().to_path_buf()];
    assert!(pids.len() >= 4, "{pids:?}");

    // Dropping (as a panicking test would) stops everything, without stop().
    drop(phone);
    drop(kamailio);
    for dir in &dirs {
        assert_gone(&pids, dir);
    }
}

#[test]
fn kamailio_start_fails_cleanly_without_its_address() {
    if !require_bpf("kamailio_start_fails_cleanly_without_its_address") {
        return;
    }
    let topology = Topology::new("labfail").unwrap();
    // 198.51.100.2 is not an address of the server namespace: Kamailio cannot bind and exits.
    let listen = SocketAddr::new([198, 51, 100, 2].into(), SIP_PORT);
    let err = Kamailio::start(&topology.server, listen, USERS).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("kamailio exited") && message.contains("198.51.100.2"),
        "{message}"
    );
}
