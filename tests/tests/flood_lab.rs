//! The flood lab end to end (`sipfilter_tests::floodlab`): attacker, user and PBX namespaces
//! joined by a switch, Debian's Kamailio as registrar, the real `sipfilter attach` on the PBX's
//! interface, the project's flood generator sending from the attacker.
//!
//! Asserts what the lab exists to show, on a short bounded run: a single-source REGISTER flood
//! reaches Kamailio at no more than the configured rate while the legitimate user keeps
//! registering; a spoofed-source flood fills the rate limiter's map and is held to the limit of
//! all untrusted sources together (`[rate_limit] total`) without dropping the
//! allowlisted source or the learned one (a phone in no allowlist that sipfilter's responsive
//! mode learned from its registration before the flood), and without making sipfilter forget
//! or stop trusting the learned one; the firewall rules the comparison uses load; and nothing
//! of the lab is left afterwards.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sipfilter_common::{Reason, stats};
use sipfilter_tests::flood::{FloodMethod, FloodSources};
use sipfilter_tests::floodlab::{
    self, Agent, Defence, FLOOD_SOURCE_V4, FloodLab, FrameSource, LEARNED_V4, LabPolicy,
    LegitReport, TRUSTED_V4, USERS, dropped, namespace_exists, run_legit,
};
use sipfilter_tests::require_bpf;

/// Kamailio's lifetime bound: far beyond the test, which takes about 20 s.
const LIFETIME: Duration = Duration::from_secs(180);
const SINGLE_FLOOD: Duration = Duration::from_secs(4);
/// One message per spoofed source, three rounds: each source stays under its own burst, so the
/// datapath drops only what the limit on all untrusted sources together holds back.
const SPOOFED_SOURCES: u32 = 100_000;
const SPOOFED_ROUNDS: u64 = 3;
/// REGISTERs the learned source sends back to back after the flood: four bursts' worth, so an
/// untrusted source would see most of them dropped by the rate limit.
const LEARNED_BURST: u32 = 40;

fn reason(counters: &[u64], reason: Reason) -> u64 {
    counters[(stats::REASON_BASE + reason as u32) as usize]
}

/// Requests of an agent that certainly passed the datapath: each answered transaction had at
/// least one request reach Kamailio, and a granted registration two (challenge and answer).
fn passed_at_least(agent: &LegitReport) -> u64 {
    2 * u64::from(agent.registered) + u64::from(agent.options_ok)
}

/// `count` unauthenticated REGISTERs from `from`, sent back to back without waiting for the
/// answers (Kamailio challenges each).
fn register_burst(lab: &FloodLab, from: SocketAddr, count: u32) -> u32 {
    let server = lab.server();
    lab.user.run(|| {
        let socket = UdpSocket::bind(from).expect("bind the learned address");
        let local = socket.local_addr().unwrap();
        for n in 0..count {
            let message = format!(
                "REGISTER sip:{ip} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-burst-{n};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:1002@{ip}>;tag=burst{n}\r\n\
                 To: <sip:1002@{ip}>\r\n\
                 Call-ID: burst-{n}@{local}\r\n\
                 CSeq: 1 REGISTER\r\n\
                 Contact: <sip:1002@{local}>\r\n\
                 Expires: 300\r\n\
                 User-Agent: sipfilter-lab-client\r\n\
                 Content-Length: 0\r\n\r\n",
                ip = server.ip()
            );
            socket
                .send_to(message.as_bytes(), server)
                .expect("send a REGISTER");
        }
    });
    count
}

#[test]
fn sipfilter_holds_floods_in_the_lab() {
    if !require_bpf("sipfilter_holds_floods_in_the_lab") {
        return;
    }
    let never = AtomicBool::new(false);
    let lab = FloodLab::new("flt", false, LIFETIME).expect("the flood lab builds");
    let names = lab.namespace_names();
    assert_eq!(names.len(), 4);
    // The comparison's policy: 5/s burst 10 per source, the 10,000-entry blocklist (through
    // the state file), bans off so the rate limit alone is measured.
    let policy = LabPolicy::default();
    let active = lab
        .defend(Defence::SipfilterDriver, &policy)
        .expect("sipfilter attaches in driver mode");
    let guard = active.sipfilter.as_ref().unwrap();
    let status = guard.status_json().expect("status");
    let status_text = status.to_string();
    assert!(
        status_text.contains("10000"),
        "the blocklist is loaded: {status_text}"
    );
    assert_eq!(
        lab.client(Agent::User)
            .unwrap()
            .register(USERS[0].0, USERS[0].1)
            .unwrap()
            .code(),
        200,
        "the user registers before the flood"
    );
    // The phone at 192.0.2.30 is in no allowlist: responsive mode learns it from the PBX's 200.
    let learned = lab
        .learn_agent(Some(guard), &policy)
        .expect("sipfilter learns the phone from its registration")
        .expect("responsive mode is on in the lab's policy");
    eprintln!("learned before the floods: {learned}");
    assert_eq!(learned["kind"], "learned", "{learned}");
    assert_eq!(learned["origin"], "responsive", "{learned}");
    assert_eq!(learned["user"], USERS[2].0, "{learned}");

    // 1. A single-source REGISTER flood at full speed, the user registering every second.
    let log_before = lab.kamailio.log().len();
    let spec = lab.flood_spec(
        FloodMethod::Register,
        FloodSources::Single(FLOOD_SOURCE_V4.into()),
        SINGLE_FLOOD,
    );
    let (flood, legit) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| lab.flood(&spec, &never));
        let legit = run_legit(&lab, Agent::User, SINGLE_FLOOD, &never).expect("legit agent");
        (flood.join().unwrap().expect("flood"), legit)
    });
    eprintln!(
        "single-source flood: {} frames in {:.2} s ({:.0}/s); legit {}/{} (p99 {:.2} ms)",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        flood.pps(),
        legit.registered,
        legit.registrations,
        legit.register_ms(99.0)
    );
    assert!(flood.sent > 0 && flood.pps() > 0.0, "{flood:?}");
    assert!(
        flood.sent > 10 * u64::from(policy.burst),
        "a flood, not a trickle: {flood:?}"
    );
    assert!(legit.registrations >= 3, "{legit:?}");
    assert_eq!(
        legit.registered, legit.registrations,
        "every registration of the user succeeded during the flood: {:?}",
        legit.errors
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = lab.kamailio.log();
    let seen = sipfilter_tests::lab::SeenLog::parse(&log[log_before..]).unwrap();
    let reached = seen.count_from("REGISTER", FLOOD_SOURCE_V4.into()) as f64;
    let secs = flood.elapsed.as_secs_f64();
    let configured = f64::from(policy.burst) + f64::from(policy.rate) * secs;
    // The datapath's documented error (sipfilter-ebpf/src/datapath/rate.rs): at most one
    // request per CPU per burst window (burst / rate seconds) beyond the configured rate, plus
    // one for the coarse clock's jiffy at either end.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let windows = 1.0 + secs * f64::from(policy.rate) / f64::from(policy.burst);
    let slack = cpus * windows + 1.0;
    eprintln!(
        "flood requests at kamailio: {reached} (configured {configured:.1}, slack {slack:.1})"
    );
    assert!(
        reached <= configured + slack,
        "{reached} flood requests reached kamailio, above {configured:.1} + {slack:.1}"
    );
    assert!(
        reached >= f64::from(policy.burst),
        "the flood source's burst reaches kamailio ({reached}): the flood was real SIP"
    );

    // 2. A spoofed-source flood: 100,000 sources, three messages each, while the trusted
    //    (allowlisted) source and the learned one register.
    let learned_before = guard
        .learned_row(LEARNED_V4.into())
        .unwrap()
        .expect("the phone is still learned when the spoofed flood starts");
    assert_eq!(
        learned_before["since"], learned["since"],
        "{learned_before}"
    );
    let before = guard.counters().unwrap();
    let mut spec = lab.flood_spec(
        FloodMethod::Register,
        FloodSources::Spoofed4 {
            count: SPOOFED_SOURCES,
        },
        Duration::from_secs(10),
    );
    spec.max_packets = u64::from(SPOOFED_SOURCES) * SPOOFED_ROUNDS;
    let (flood, trusted, learned_agent) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| lab.flood(&spec, &never));
        let learned =
            scope.spawn(|| run_legit(&lab, Agent::Learned, Duration::from_secs(2), &never));
        let trusted =
            run_legit(&lab, Agent::Trusted, Duration::from_secs(2), &never).expect("trusted");
        (
            flood.join().unwrap().expect("spoofed flood"),
            trusted,
            learned.join().unwrap().expect("learned"),
        )
    });
    let after = guard.counters().unwrap();
    let (sources, capacity) = guard.rate_occupancy().unwrap();
    eprintln!(
        "spoofed flood: {} frames in {:.2} s; rate map {sources}/{capacity}; trusted {}/{} \
         (p50 {:.2} ms, p99 {:.2} ms); learned {}/{} (p50 {:.2} ms, p99 {:.2} ms)",
        flood.sent,
        flood.elapsed.as_secs_f64(),
        trusted.registered,
        trusted.registrations,
        trusted.register_ms(50.0),
        trusted.register_ms(99.0),
        learned_agent.registered,
        learned_agent.registrations,
        learned_agent.register_ms(50.0),
        learned_agent.register_ms(99.0)
    );
    assert_eq!(flood.sent, spec.max_packets, "{flood:?}");
    // Every spoofed source stays under its own burst, so the only drops are those of the limit
    // on all untrusted sources together (`[rate_limit] total`), and none of the trusted or the
    // learned source: what passed of the flood is that limit's burst and rate, no more.
    let total_dropped = reason(&after, Reason::RateTotal) - reason(&before, Reason::RateTotal);
    assert_eq!(
        dropped(&after) - dropped(&before),
        total_dropped,
        "no drop but the shared limit's: no spoofed source exceeded its own burst, and neither \
         the trusted nor the learned source was dropped"
    );
    let total = policy
        .total
        .expect("the lab's policy limits all untrusted sources together");
    let secs = flood.elapsed.as_secs_f64();
    let passed = (flood.sent - total_dropped) as f64;
    // The same documented error as for one source: one request per CPU per burst window.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let allowed = f64::from(2 * total) + f64::from(total) * secs;
    let slack = cpus * (1.0 + secs / 2.0) + 1.0;
    eprintln!(
        "spoofed flood: {passed} of {} frames passed the limit of all sources together \
         ({total}/s, burst {}: {allowed:.0} + {slack:.0} allowed)",
        flood.sent,
        2 * total
    );
    assert!(
        passed <= allowed + slack,
        "{passed} spoofed requests passed, above {allowed:.0} + {slack:.0}"
    );
    assert!(
        passed >= f64::from(2 * total),
        "the shared burst passed first"
    );
    assert!(
        trusted.registrations >= 2 && learned_agent.registrations >= 2,
        "both agents ran beside the flood: {trusted:?} {learned_agent:?}"
    );
    // Only the trusted and the learned agents are trusted senders during the flood: what they
    // certainly got through must all have passed as allowlisted (a learned source is in the
    // allow set with an expiry), not as ordinary SIP.
    let allowlisted = reason(&after, Reason::Allowlisted) - reason(&before, Reason::Allowlisted);
    let expected = passed_at_least(&trusted) + passed_at_least(&learned_agent);
    assert!(
        allowlisted >= expected,
        "the requests of the trusted source {TRUSTED_V4} and the learned source {LEARNED_V4} \
         passed as allowlisted: {allowlisted} counted, at least {expected} expected"
    );
    // The flood made sipfilter neither forget the learned source nor learn it anew (its
    // registrations during the flood would re-learn it: `since` tells).
    let learned_after = guard
        .learned_row(LEARNED_V4.into())
        .unwrap()
        .expect("the phone is still learned after the spoofed flood");
    assert_eq!(
        learned_after["since"], learned_before["since"],
        "the same trust period, not lost during the flood: {learned_after}"
    );
    // And the kernel still trusts it: four bursts' worth of REGISTERs back to back pass without
    // a single rate-limit drop, every one counted as allowlisted (an untrusted source would
    // lose most of them).
    let before = guard.counters().unwrap();
    let sent = register_burst(&lab, SocketAddr::new(LEARNED_V4.into(), 0), LEARNED_BURST);
    std::thread::sleep(Duration::from_millis(300));
    let after = guard.counters().unwrap();
    let allowlisted = reason(&after, Reason::Allowlisted) - reason(&before, Reason::Allowlisted);
    let rate_dropped = reason(&after, Reason::RateRegister) - reason(&before, Reason::RateRegister);
    eprintln!(
        "after the flood: {sent} REGISTERs from the learned source back to back: {allowlisted} \
         passed as allowlisted, {rate_dropped} dropped by the rate limit"
    );
    assert_eq!(rate_dropped, 0, "the learned source is not rate-limited");
    assert_eq!(dropped(&after) - dropped(&before), 0);
    assert!(
        allowlisted >= u64::from(sent),
        "every REGISTER of the learned source passed as allowlisted ({allowlisted} of {sent})"
    );
    assert!(
        sources >= u64::from(SPOOFED_SOURCES) * 9 / 10 && sources <= capacity,
        "the spoofed sources are tracked, within the map's capacity: {sources}/{capacity}"
    );
    // Right after the flood (Kamailio's queue drains in milliseconds), both users register.
    std::thread::sleep(Duration::from_millis(300));
    for agent in [Agent::Trusted, Agent::Learned, Agent::User] {
        let (user, password) = agent.credentials();
        let registration = lab
            .client(agent)
            .unwrap()
            .register(user, password)
            .expect("answered");
        assert_eq!(registration.code(), 200, "{agent:?}");
    }

    drop(active);
    drop(lab);
    let left: Vec<&String> = names.iter().filter(|n| namespace_exists(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

/// The generator's live-frames source (`xdp_flood` in `BPF_PROG_TEST_RUN`): its frames cross
/// the switch, meet sipfilter's XDP program on the PBX and are real SIP to Kamailio.
#[test]
fn live_frames_reach_sipfilter_and_kamailio() {
    if !require_bpf("live_frames_reach_sipfilter_and_kamailio") {
        return;
    }
    const FRAMES: u64 = 2_000;
    let never = AtomicBool::new(false);
    let lab = FloodLab::new("fllive", false, LIFETIME).expect("the flood lab builds");
    let names = lab.namespace_names();
    let policy = LabPolicy::default();
    let active = lab
        .defend(Defence::SipfilterDriver, &policy)
        .expect("sipfilter attaches in driver mode");
    let guard = active.sipfilter.as_ref().unwrap();
    let before = guard.counters().unwrap();
    let log_before = lab.kamailio.log().len();
    let mut spec = lab.flood_spec(
        FloodMethod::Register,
        FloodSources::Single(FLOOD_SOURCE_V4.into()),
        Duration::from_secs(10),
    );
    spec.max_packets = FRAMES;
    let pool = sipfilter_tests::flood::frame_pool(&spec);
    let flood = lab
        .flood_frames(FrameSource::LiveFrames, &spec, &pool, &never)
        .expect("the live-frames flood runs");
    std::thread::sleep(Duration::from_millis(500));
    let after = guard.counters().unwrap();
    let seen = sipfilter_tests::lab::SeenLog::parse(&lab.kamailio.log()[log_before..]).unwrap();
    let reached = seen.count_from("REGISTER", FLOOD_SOURCE_V4.into()) as u64;
    let rate_dropped = reason(&after, Reason::RateRegister) - reason(&before, Reason::RateRegister);
    eprintln!(
        "live frames: {} sent in {:.3} s, {rate_dropped} dropped by the rate limit, {reached} \
         at kamailio",
        flood.sent,
        flood.elapsed.as_secs_f64()
    );
    assert_eq!(flood.sent, FRAMES, "{flood:?}");
    assert!(
        reached >= u64::from(policy.burst),
        "the source's burst reached Kamailio as SIP: {reached}"
    );
    // Every frame met the datapath: what did not reach Kamailio, the rate limit dropped (a
    // frame lost on the way would be in neither count).
    assert!(
        rate_dropped + reached >= FRAMES,
        "{rate_dropped} dropped + {reached} at kamailio < {FRAMES} sent"
    );
    drop(active);
    drop(lab);
    assert!(names.iter().all(|n| !namespace_exists(n)));
}

#[test]
fn firewall_defences_load_their_rules() {
    if !require_bpf("firewall_defences_load_their_rules") {
        return;
    }
    floodlab::check_prerequisites(&[Defence::Iptables, Defence::Nftables])
        .expect("iptables, ipset and nft are installed (cargo xtask setup)");
    let policy = LabPolicy::default();
    for defence in [Defence::Iptables, Defence::Nftables] {
        let lab = FloodLab::new("flfw", false, LIFETIME).expect("lab");
        let names = lab.namespace_names();
        let _active = lab.defend(defence, &policy).expect("rules load");
        let listing =
            |args: &[&str]| String::from_utf8(lab.pbx.exec(args).expect("listing").stdout).unwrap();
        match defence {
            Defence::Iptables => {
                let rules = listing(&["iptables", "-S", "INPUT"]);
                assert!(
                    rules.contains("hashlimit") || rules.contains("limit"),
                    "{rules}"
                );
                assert!(rules.contains("friendly-scanner"), "{rules}");
                let rules6 = listing(&["ip6tables", "-S", "INPUT"]);
                assert!(rules6.contains("sflab-block6"), "{rules6}");
                let set = listing(&["ipset", "list", "-terse", "sflab-block4"]);
                assert!(set.contains("Number of entries: 10000"), "{set}");
            }
            _ => {
                let table = listing(&["nft", "list", "table", "inet", "sflab"]);
                assert!(
                    table.contains("limit rate over 5/second burst 10"),
                    "{table}"
                );
                assert!(table.contains("198.19.160.0"), "blocklist loaded");
            }
        }
        // The user still registers through the rules (3 requests/s is under every limit).
        let client = lab.client(Agent::User).unwrap();
        assert_eq!(client.register(USERS[0].0, USERS[0].1).unwrap().code(), 200);
        drop(_active);
        drop(lab);
        assert!(names.iter().all(|n| !namespace_exists(n)));
    }
}
