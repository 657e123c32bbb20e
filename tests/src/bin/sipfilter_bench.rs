//! `sipfilter-bench`: what the XDP datapath and the TC egress watcher cost per packet, measured
//! with `BPF_PROG_TEST_RUN` beside a trivial program of the same kind (`XDP_PASS`,
//! `TC_ACT_UNSPEC`), whose cost (the harness's own) is subtracted.
//!
//! Run it with `cargo xtask bench [--json] [-- --runs N --repeat N]`; it needs root. Each case
//! is one packet that takes one path through the datapath; the packet is checked once to give
//! the expected action and reason before anything is measured, and the counters are checked
//! after the measurement to prove that every measured packet took that path (a benchmark of the
//! wrong path is worthless). Runs are interleaved (run 1 of every case, then run 2, ...) so
//! drift of the machine affects every case alike. This is a benchmark, not a test: targets are
//! reported, never asserted; the exit status is non-zero only when it could not measure.
//!
//! See `docs/benchmarks.md` for the figures and how to read them.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{ProgramInfo, SchedClassifier, Xdp, loaded_programs},
};
use serde_json::{Map, Value, json};
use sipfilter::datapath::XDP_PASS_OBJECT;
use sipfilter_common::{Method, Reason, ResponseClass, program_names, stats};
use sipfilter_tests::{
    Packet,
    datapath::{self, TestDatapath, XDP_DROP, XDP_PASS},
    sip_messages,
};

const DEFAULT_RUNS: u32 = 10;
const DEFAULT_REPEAT: u32 = 1_000_000;
/// The largest rate-limit burst a policy may set: a source that sends more than this many
/// REGISTERs (or INVITEs) in one run would leave the path under test for the rate-limit drop.
const MAX_REPEAT: u32 = 1_000_000;
/// Each run of the rate-limited cases uses a fresh source: the run index is part of an IPv4
/// address (10.x.0.0/16) and an IPv6 hextet.
const MAX_RUNS: u32 = 10_000;
/// Packets per case in the warm-up pass (not measured): faults in the maps and warms the caches.
const WARM_UP_REPEAT: u32 = 100_000;
/// Packets per run of `scanner_1k_drained`: every one of its events must fit in the drained
/// ring (1 MiB of 80-byte records: 13,107).
const DRAINED_REPEAT: u32 = 10_000;

/// The policy every datapath case runs under: the built-in scanner patterns, a small allow and
/// deny list, limits generous enough that a run of `MAX_REPEAT` packets from one source stays
/// under them, and a typical toll-fraud setting (so the INVITE takes the toll-prefix lookup).
///
/// The sources of the cases are chosen so that only the denylisted one shares a source-hint
/// slot (IPv4 /16, or the second IPv6 hextet) with a list entry: the others take the common
/// path, one array read and no trie lookup.
macro_rules! policy {
    () => {
        policy!("{ rate = 1000000, burst = 1000000 }")
    };
    ($register:literal) => {
        concat!(
            r#"
[sources]
allow = ["192.0.2.10"]
deny = ["203.0.113.0/24", "3fff:bad::/48"]

[rate_limit]
register = "#,
            $register,
            r#"
invite = { rate = 1000000, burst = 1000000 }

[toll_fraud]
deny_prefixes = ["00", "011", "+"]
"#
        )
    };
}

const POLICY: &str = policy!();

/// [`POLICY`] without scanner patterns: the SIP stage then decides without tail-calling the
/// header scan, so `register_400_no_scan` isolates what the scan costs.
const POLICY_NO_SCAN: &str = concat!(
    policy!(),
    r#"
[scanners]
user_agents = []
from = []
"#
);

/// [`POLICY`] with one REGISTER per 1,000 s: after its first REGISTER, a source is over its
/// limit for longer than the benchmark runs, so `register_over_limit` measures the drop of a
/// flood's packets.
const POLICY_FLOOD: &str = policy!("{ rate = 0.001, burst = 1 }");

/// Indices of the datapaths, loaded with [`POLICY`], [`POLICY_NO_SCAN`] and [`POLICY_FLOOD`].
const MAIN: usize = 0;
const NO_SCAN: usize = 1;
const FLOOD: usize = 2;

/// Where the cases send to: the PBX.
const PBX_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PBX_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 2);
/// An untrusted source in no list.
const UNTRUSTED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// A source inside `sources.deny`.
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// First sources of the rate-limited cases; slot `n` uses the `n`-th address after it (IPv4)
/// or the `n`-th /64 (IPv6).
const REGISTER_BASE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
const SCANNER_BASE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 0);
const DRAINED_BASE: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 0);
const UNMATCHED_BASE: Ipv4Addr = Ipv4Addr::new(10, 4, 0, 0);
const INVITE_SUBNET: [u16; 3] = [0x2001, 0xdb8, 0x4000];
/// What the INVITE's own SIP headers and SDP say (a host in the first of those /64s).
const INVITE_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x4000, 1, 0, 0, 0, 0xa);

const BENIGN_USER_AGENT: &str = "Linphone/5.2.5 (belle-sip/5.2.4)";
const SCANNER_USER_AGENT: &str = "friendly-scanner";

/// Per-packet cost of the sipfilter datapath under BPF_PROG_TEST_RUN, against a trivial
/// XDP_PASS program measured in the same run. Needs root.
#[derive(Debug, clap::Parser)]
#[command(name = "sipfilter-bench")]
struct Args {
    /// Print one JSON object (one key per case, min/median/max ns) instead of the table.
    #[arg(long)]
    json: bool,
    /// Runs per case (interleaved across cases).
    #[arg(long, default_value_t = DEFAULT_RUNS, value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    runs: u32,
    /// Packets per run. At most the policy's largest burst, or a source would be rate-limited
    /// mid-run and the wrong path measured.
    #[arg(long, default_value_t = DEFAULT_REPEAT, value_parser = clap::value_parser!(u32).range(1..=MAX_REPEAT as i64))]
    repeat: u32,
    /// Measure only this case (its JSON key; repeatable), with the trivial program it is
    /// reported over: for profiling one path, for example with `perf record -a`.
    #[arg(long = "case", value_name = "KEY")]
    only: Vec<String>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "error: sipfilter-bench must run as root: it loads XDP programs, pins their maps \
             under /sys/fs/bpf and runs them with BPF_PROG_TEST_RUN"
        );
        return ExitCode::FAILURE;
    }
    // Errors are printed, not returned from main: with RUST_BACKTRACE set, anyhow's Debug form
    // would add a backtrace to what is an ordinary failure report.
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `TC_ACT_UNSPEC` (-1), as `BPF_PROG_TEST_RUN` reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Program {
    Trivial,
    /// The trivial TC program, the baseline of the egress cases.
    TrivialTc,
    /// The egress watcher of the datapath with this index.
    Egress(usize),
    /// The datapath with this index ([`MAIN`], [`NO_SCAN`]).
    Datapath(usize),
}

struct Case {
    /// The JSON key.
    key: &'static str,
    /// A case of our own, beyond the issue's list: it explains the others' costs.
    diagnostic: bool,
    /// What the packet is, for the human output.
    what: String,
    program: Program,
    /// `packets[0]` for the warm-up and the verification of the shared packet, `packets[1 + r]`
    /// for run `r`; a single packet serves every run. The rate-limited cases need a fresh
    /// source per run (identical bytes otherwise), so no run inherits a drained bucket.
    packets: Vec<Vec<u8>>,
    /// Bytes of the SIP message (UDP payload), for SIP cases.
    sip_len: Option<usize>,
    action: u32,
    /// `None` for the trivial programs, which have no counters, and the egress watcher, which
    /// decides nothing.
    reason: Option<Reason>,
    /// The class the egress watcher counts for each packet.
    response: Option<ResponseClass>,
    /// The SIP method the datapath counts for each packet.
    method: Option<Method>,
    /// Target, in nanoseconds over the trivial program.
    target_ns: Option<f64>,
    /// At most this many packets per run (and in the warm-up).
    repeat_cap: Option<u32>,
    /// Empty the event ring before each run, as the daemon would, so every event is written.
    drain_events: bool,
    /// Packets sent once, unchecked, before the path checks: they put the source where the
    /// case needs it (over its rate limit).
    prime: u32,
    /// Mean nanoseconds per packet, one per measured run.
    samples: Vec<f64>,
}

impl Case {
    fn packet(&self, slot: usize) -> &[u8] {
        &self.packets[slot % self.packets.len()]
    }

    fn repeat(&self, repeat: u32) -> u32 {
        self.repeat_cap.map_or(repeat, |cap| cap.min(repeat))
    }

    /// The key of the trivial case whose median this case is reported over (`None` for the
    /// trivial cases themselves).
    fn baseline(&self) -> Option<&'static str> {
        match self.program {
            Program::Datapath(_) => Some("trivial"),
            Program::Egress(_) => Some("trivial_tc"),
            Program::Trivial | Program::TrivialTc => None,
        }
    }
}

/// A case with the fields most cases share; the rest are set with struct update syntax.
fn case(key: &'static str, program: Program, packets: Vec<Vec<u8>>) -> Case {
    Case {
        key,
        diagnostic: false,
        what: String::new(),
        program,
        packets,
        sip_len: None,
        action: match program {
            Program::Trivial | Program::Datapath(_) => XDP_PASS,
            Program::TrivialTc | Program::Egress(_) => TC_ACT_UNSPEC,
        },
        reason: None,
        response: None,
        method: None,
        target_ns: None,
        repeat_cap: None,
        drain_events: false,
        prime: 0,
        samples: Vec::new(),
    }
}

/// The `n`-th IPv4 address after `base`.
fn nth_v4(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n as u32)
}

/// Host `::a` of the `n`-th /64 of `INVITE_SUBNET`.
fn nth_v6(n: usize) -> Ipv6Addr {
    let [a, b, c] = INVITE_SUBNET;
    Ipv6Addr::new(a, b, c, n as u16, 0, 0, 0, 0xa)
}

fn register_400() -> Vec<u8> {
    sip_messages::register_message(
        "alice",
        "example.com",
        "reg-4c1f9a0e@192.0.2.1",
        1,
        Some(BENIGN_USER_AGENT),
    )
    .pad_to(400)
    .build()
}

/// `register_400` with its User-Agent and From header names changed by one letter
/// (`User-Agenx`, `Xrom`): the same lines for the header scan to walk, but no value for the
/// scanner patterns to be matched in.
fn register_400_unmatched() -> Vec<u8> {
    let text = String::from_utf8(register_400()).expect("the builder writes text");
    let renamed = text
        .replacen("\r\nUser-Agent: ", "\r\nUser-Agenx: ", 1)
        .replacen("\r\nFrom: ", "\r\nXrom: ", 1);
    assert_ne!(renamed, text);
    assert_eq!(renamed.len(), text.len());
    renamed.into_bytes()
}

/// What SIPVicious `svwar` sends while it enumerates extensions: a REGISTER, padded to 1 KB,
/// with the scanner's User-Agent as the very last header (the longest header scan).
fn scanner_1k() -> Vec<u8> {
    sip_messages::register_message(
        "100",
        "192.0.2.2",
        "3c26700b-scan@192.0.2.1",
        1,
        Some(SCANNER_USER_AGENT),
    )
    .user_agent_last()
    .pad_to(1024)
    .build()
}

/// An INVITE from an IPv6 softphone with an audio offer, to a national number (it passes the
/// toll-fraud prefixes), with its own address in Via, Contact and SDP.
fn invite_v6() -> Vec<u8> {
    let host = format!("[{INVITE_HOST_V6}]:5060");
    let sdp = format!(
        "v=0\r\n\
         o=alice 2890844526 2890844526 IN IP6 {INVITE_HOST_V6}\r\n\
         s=-\r\n\
         c=IN IP6 {INVITE_HOST_V6}\r\n\
         t=0 0\r\n\
         m=audio 49170 RTP/AVP 9 0 8 101\r\n\
         a=rtpmap:9 G722/8000\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n"
    );
    sip_messages::invite_message(
        "alice",
        "02079460018",
        "example.com",
        "a84b4c76e66710@pc33.example.com",
        314159,
    )
    .set_header(
        "Via",
        &format!("SIP/2.0/UDP {host};branch=z9hG4bK776asdhds;rport"),
    )
    .set_header("Contact", &format!("<sip:alice@{host}>"))
    .header("User-Agent", BENIGN_USER_AGENT)
    .body("application/sdp", sdp.as_bytes())
    .build()
}

/// What kamailio's registrar sends: a challenge to a first REGISTER (about 500 bytes) and the
/// granted registration.
fn answer(code: u16, reason: &str, extra: Option<(&str, &str)>) -> Vec<u8> {
    let mut message =
        sip_messages::response_message(code, reason, "REGISTER", "bench@198.51.100.7", 1)
            .set_header(
                "To",
                "<sip:1001@192.0.2.2>;tag=b27e1a1d33761e85846fc98f5f3a7e58.ab01",
            )
            .set_header("Server", "kamailio (5.6.3 (x86_64/linux))");
    if let Some((name, value)) = extra {
        message = message.header(name, value);
    }
    message.header("Content-Length", "0").build()
}

/// The cases, in the order they are reported; `slots` is the number of distinct sources a
/// rate-limited case needs (warm-up plus one per run).
fn cases(slots: usize) -> Vec<Case> {
    let per_slot = |build: &dyn Fn(usize) -> Vec<u8>| (0..slots).map(build).collect::<Vec<_>>();
    // An RTP-sized datagram (12-byte header, 20 ms of G.711) to a port that is not SIP.
    let mut rtp = vec![0u8; 172];
    rtp[0] = 0x80;
    let non_sip = Packet::udp4(UNTRUSTED_V4, PBX_V4, 40000, 9999, &rtp).build();
    let scan = sip_messages::sipvicious_options();
    let denied = Packet::udp4(DENIED_V4, PBX_V4, 5060, 5060, &scan).build();
    let register = register_400();
    let unmatched = register_400_unmatched();
    let scanner = scanner_1k();
    let invite = invite_v6();
    let keepalive = b"\r\n\r\n";
    let register_from = |base: Ipv4Addr| {
        per_slot(&|n| Packet::udp4(nth_v4(base, n + 1), PBX_V4, 5060, 5060, &register).build())
    };
    let scanner_from = |base: Ipv4Addr| {
        per_slot(&|n| Packet::udp4(nth_v4(base, n + 1), PBX_V4, 5060, 5060, &scanner).build())
    };
    let datapath = Program::Datapath(MAIN);
    let egress = Program::Egress(MAIN);
    let challenge = answer(
        401,
        "Unauthorized",
        Some((
            "WWW-Authenticate",
            "Digest realm=\"192.0.2.2\", nonce=\"Z0lGQV2bN1o3s0uOXU1p3gC4Kf0sdXyk\", qop=\"auth\"",
        )),
    );
    let granted = answer(
        200,
        "OK",
        Some((
            "Contact",
            "<sip:1001@198.51.100.7:5060;transport=udp>;expires=600;received=\"sip:198.51.100.7\"",
        )),
    );
    let from_pbx = |payload: &[u8]| Packet::udp4(PBX_V4, UNTRUSTED_V4, 5060, 5060, payload).build();
    let rtp_out = Packet::udp4(PBX_V4, UNTRUSTED_V4, 9999, 40000, &rtp).build();

    vec![
        Case {
            what: "xdp_pass (r0 = XDP_PASS; exit) on the non_sip packet".into(),
            ..case("trivial", Program::Trivial, vec![non_sip.clone()])
        },
        Case {
            what: format!("UDP {UNTRUSTED_V4} -> {PBX_V4}:9999, 172-byte RTP-like payload"),
            reason: Some(Reason::Unprotected),
            target_ns: Some(10.0),
            ..case("non_sip", datapath, vec![non_sip])
        },
        Case {
            what: format!("UDP {DENIED_V4} (in 203.0.113.0/24) -> :5060, SIPVicious OPTIONS"),
            sip_len: Some(scan.len()),
            action: XDP_DROP,
            reason: Some(Reason::Denylisted),
            target_ns: Some(10.0),
            ..case("denylisted", datapath, vec![denied])
        },
        Case {
            what: "UDP 10.1.x.y (a fresh source per run) -> :5060, REGISTER under the limit".into(),
            sip_len: Some(register.len()),
            reason: Some(Reason::SipOk),
            method: Some(Method::Register),
            target_ns: Some(90.0),
            ..case("register_400", datapath, register_from(REGISTER_BASE))
        },
        Case {
            what: format!(
                "UDP 10.2.x.y (a fresh source per run) -> :5060, REGISTER, \
                 User-Agent: {SCANNER_USER_AGENT} last"
            ),
            sip_len: Some(scanner.len()),
            action: XDP_DROP,
            reason: Some(Reason::ScannerUserAgent),
            method: Some(Method::Register),
            target_ns: Some(250.0),
            ..case("scanner_1k", datapath, scanner_from(SCANNER_BASE))
        },
        Case {
            what: format!(
                "UDP {}:N::a (a fresh /64 per run) -> [{PBX_V6}]:5060, INVITE with SDP",
                INVITE_SUBNET.map(|h| format!("{h:x}")).join(":")
            ),
            sip_len: Some(invite.len()),
            reason: Some(Reason::SipOk),
            method: Some(Method::Invite),
            ..case(
                "invite_v6",
                datapath,
                per_slot(&|n| Packet::udp6(nth_v6(n + 1), PBX_V6, 5060, 5060, &invite).build()),
            )
        },
        Case {
            what: "tc_pass (r0 = TC_ACT_UNSPEC; exit) on the egress_challenge packet".into(),
            ..case("trivial_tc", Program::TrivialTc, vec![from_pbx(&challenge)])
        },
        Case {
            what: format!("UDP {PBX_V4}:9999 -> {UNTRUSTED_V4}, RTP-like: not from a SIP port"),
            ..case("egress_not_sip", egress, vec![rtp_out])
        },
        Case {
            what: format!("UDP {PBX_V4}:5060 -> {UNTRUSTED_V4}, 401 to REGISTER (event sent)"),
            sip_len: Some(challenge.len()),
            response: Some(ResponseClass::Challenge),
            ..case("egress_challenge", egress, vec![from_pbx(&challenge)])
        },
        Case {
            what: format!(
                "UDP {PBX_V4}:5060 -> {UNTRUSTED_V4}, 200 to REGISTER, Contact expires (event sent)"
            ),
            sip_len: Some(granted.len()),
            response: Some(ResponseClass::Success),
            ..case("egress_success", egress, vec![from_pbx(&granted)])
        },
        Case {
            diagnostic: true,
            what: format!(
                "UDP {UNTRUSTED_V4} -> :5060, CRLF keep-alive: the cost of entering the SIP stage"
            ),
            sip_len: Some(keepalive.len()),
            reason: Some(Reason::Keepalive),
            ..case(
                "keepalive",
                datapath,
                vec![Packet::udp4(UNTRUSTED_V4, PBX_V4, 5060, 5060, keepalive).build()],
            )
        },
        Case {
            diagnostic: true,
            what: "register_400 with no scanner patterns: no header scan".into(),
            sip_len: Some(register.len()),
            reason: Some(Reason::SipOk),
            method: Some(Method::Register),
            ..case(
                "register_400_no_scan",
                Program::Datapath(NO_SCAN),
                register_from(REGISTER_BASE),
            )
        },
        Case {
            diagnostic: true,
            what: format!(
                "UDP {UNTRUSTED_V4} -> :5060, register_400 from a source over its limit: what \
                 each packet of a single-source flood costs"
            ),
            sip_len: Some(register.len()),
            action: XDP_DROP,
            reason: Some(Reason::RateRegister),
            method: Some(Method::Register),
            prime: 1,
            ..case(
                "register_over_limit",
                Program::Datapath(FLOOD),
                vec![Packet::udp4(UNTRUSTED_V4, PBX_V4, 5060, 5060, &register).build()],
            )
        },
        Case {
            diagnostic: true,
            what: "register_400 with User-Agent and From renamed: header scan, no pattern match"
                .into(),
            sip_len: Some(unmatched.len()),
            reason: Some(Reason::SipOk),
            method: Some(Method::Register),
            ..case(
                "register_400_unmatched",
                datapath,
                per_slot(&|n| {
                    Packet::udp4(
                        nth_v4(UNMATCHED_BASE, n + 1),
                        PBX_V4,
                        5060,
                        5060,
                        &unmatched,
                    )
                    .build()
                }),
            )
        },
        Case {
            diagnostic: true,
            what: format!(
                "scanner_1k with the event ring drained before each run of {DRAINED_REPEAT}"
            ),
            sip_len: Some(scanner.len()),
            action: XDP_DROP,
            reason: Some(Reason::ScannerUserAgent),
            method: Some(Method::Register),
            repeat_cap: Some(DRAINED_REPEAT),
            drain_events: true,
            ..case("scanner_1k_drained", datapath, scanner_from(DRAINED_BASE))
        },
    ]
}

fn action_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC",
        _ => "another action",
    }
}

/// What the cases run on.
struct Programs {
    datapaths: Vec<TestDatapath>,
    /// The event ring of the [`MAIN`] datapath, for the cases that drain it.
    events: RingBuf<MapData>,
    /// Owns the trivial program.
    trivial: Ebpf,
}

impl Programs {
    fn load() -> Result<Programs> {
        let mut datapaths = Vec::new();
        for (index, policy) in [
            (MAIN, POLICY),
            (NO_SCAN, POLICY_NO_SCAN),
            (FLOOD, POLICY_FLOOD),
        ] {
            debug_assert_eq!(index, datapaths.len());
            datapaths.push(TestDatapath::load(policy).context("loading the datapath")?);
        }
        let events = datapaths[MAIN].datapath.take_events()?;
        let mut trivial = Ebpf::load(XDP_PASS_OBJECT).context("loading xdp-pass")?;
        let program: &mut Xdp = trivial
            .program_mut("xdp_pass")
            .context("the xdp-pass object has no program xdp_pass")?
            .try_into()?;
        program.load().context("loading xdp_pass into the kernel")?;
        let program: &mut SchedClassifier = trivial
            .program_mut("tc_pass")
            .context("the xdp-pass object has no program tc_pass")?
            .try_into()?;
        program.load().context("loading tc_pass into the kernel")?;
        Ok(Programs {
            datapaths,
            events,
            trivial,
        })
    }

    fn trivial(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .trivial
            .program_mut("xdp_pass")
            .context("no program xdp_pass")?
            .try_into()?)
    }

    fn trivial_tc(&mut self) -> Result<&mut SchedClassifier> {
        Ok(self
            .trivial
            .program_mut("tc_pass")
            .context("no program tc_pass")?
            .try_into()?)
    }

    fn program(&mut self, index: usize) -> Result<&mut Xdp> {
        Ok(self.datapaths[index].datapath.program()?)
    }

    /// Runs `program` on `packet` `repeat` times: the action and the mean time.
    fn run(&mut self, program: Program, packet: &[u8], repeat: u32) -> Result<(u32, f64)> {
        let (action, mean) = match program {
            Program::Trivial => datapath::run(self.trivial()?, packet, repeat)?,
            Program::TrivialTc => datapath::run(self.trivial_tc()?, packet, repeat)?,
            Program::Datapath(index) => datapath::run(self.program(index)?, packet, repeat)?,
            Program::Egress(index) => {
                datapath::run(self.datapaths[index].datapath.egress()?, packet, repeat)?
            }
        };
        Ok((action, mean.as_nanos() as f64))
    }

    /// Empties the event ring; returns how many events it held.
    fn drain_events(&mut self) -> u64 {
        let mut drained = 0;
        while self.events.next().is_some() {
            drained += 1;
        }
        drained
    }
}

/// One `BPF_PROG_TEST_RUN` of `case` with the packet of `slot`: mean nanoseconds per packet.
fn measure(case: &Case, programs: &mut Programs, slot: usize, repeat: u32) -> Result<f64> {
    let lost_before = if case.drain_events {
        programs.drain_events();
        Some(programs.datapaths[MAIN].counters()?[stats::EVENTS_LOST as usize])
    } else {
        None
    };
    let (action, mean) = programs
        .run(case.program, case.packet(slot), case.repeat(repeat))
        .with_context(|| format!("running {}", case.key))?;
    ensure!(
        action == case.action,
        "{}: a measured run returned {} ({action}), expected {}",
        case.key,
        action_name(action),
        action_name(case.action)
    );
    if let Some(before) = lost_before {
        let lost = programs.datapaths[MAIN].counters()?[stats::EVENTS_LOST as usize] - before;
        ensure!(
            lost == 0,
            "{}: {lost} events did not fit in the drained ring",
            case.key
        );
    }
    Ok(mean)
}

/// Checks that every packet of `case` gives the expected action and reason, once.
fn verify(case: &Case, programs: &mut Programs) -> Result<()> {
    for (slot, packet) in case.packets.iter().enumerate() {
        let (action, reason) = match case.program {
            Program::Datapath(index) => {
                let (action, reason) = programs.datapaths[index].verdict(packet)?;
                (action, Some(reason))
            }
            other => (programs.run(other, packet, 1)?.0, None),
        };
        if action != case.action || reason != case.reason {
            bail!(
                "{} (packet {slot}) gives {} {reason:?}, expected {} {:?}: the benchmark would \
                 measure the wrong path",
                case.key,
                action_name(action),
                action_name(case.action),
                case.reason
            );
        }
    }
    Ok(())
}

/// Counters of datapath `index` that moved between `before` and `after` but should not have,
/// or by the wrong amount, given `packets(case)` packets of every case run on it.
fn unexpected_counts(
    cases: &[Case],
    index: usize,
    packets: impl Fn(&Case) -> u64,
    before: &[u64],
    after: &[u64],
) -> Vec<String> {
    let mut expected = vec![0u64; stats::LEN as usize];
    for case in cases.iter().filter(|case| {
        case.program == Program::Datapath(index) || case.program == Program::Egress(index)
    }) {
        if let Some(reason) = case.reason {
            expected[(stats::REASON_BASE + reason as u32) as usize] += packets(case);
        }
        if let Some(method) = case.method {
            expected[(stats::METHOD_BASE + method as u32) as usize] += packets(case);
        }
        if let Some(class) = case.response {
            expected[(stats::RESPONSE_BASE + class as u32) as usize] += packets(case);
        }
    }
    let slots = Reason::ALL
        .iter()
        .map(|reason| (stats::REASON_BASE + *reason as u32, reason.name()))
        .chain(
            Method::ALL
                .iter()
                .map(|method| (stats::METHOD_BASE + *method as u32, method.name())),
        )
        .chain(
            ResponseClass::ALL
                .iter()
                .map(|class| (stats::RESPONSE_BASE + *class as u32, class.name())),
        );
    let mut wrong = Vec::new();
    for (slot, name) in slots {
        let slot = slot as usize;
        let counted = after[slot].wrapping_sub(before[slot]);
        if counted != expected[slot] {
            wrong.push(format!("{name}: {counted} (expected {})", expected[slot]));
        }
    }
    wrong
}

struct ProgramSize {
    name: String,
    verified_insns: Option<u32>,
    jited_bytes: u32,
}

fn size_of(info: &ProgramInfo) -> ProgramSize {
    ProgramSize {
        name: info.name_as_str().unwrap_or("?").to_owned(),
        verified_insns: info.verified_instruction_count(),
        jited_bytes: info.size_jitted(),
    }
}

/// The programs of the main datapath (the entry and its tail-called stages) and the trivial
/// one. The stages are found among every program loaded on the host by name (`sipfilter*`, cut
/// to 15 characters by the kernel) and by sharing a map with our entry program, because other
/// processes (tests running beside us) may have their own sipfilter loaded.
fn program_sizes(programs: &mut Programs) -> Result<Vec<ProgramSize>> {
    let main = programs.program(MAIN)?.info()?;
    let our_maps: BTreeSet<u32> = main.map_ids()?.unwrap_or_default().into_iter().collect();
    let mut sizes = Vec::new();
    // A program of another process may vanish while we list: skip what cannot be read.
    for info in loaded_programs().filter_map(Result::ok) {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if !name.starts_with(program_names::MAIN) {
            continue;
        }
        let ours = info.id() == main.id()
            || info
                .map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.iter().any(|id| our_maps.contains(id)));
        if ours {
            sizes.push(size_of(&info));
        }
    }
    let stage_order = |name: &str| {
        [
            program_names::MAIN,
            program_names::SIP,
            program_names::HEADERS,
            program_names::EGRESS,
            program_names::EGRESS_READ,
        ]
        .iter()
        .position(|full| full.starts_with(name))
        .unwrap_or(usize::MAX)
    };
    sizes.sort_by_key(|size| stage_order(&size.name));
    sizes.push(size_of(&programs.trivial()?.info()?));
    sizes.push(size_of(&programs.trivial_tc()?.info()?));
    Ok(sizes)
}

struct Summary {
    min: f64,
    median: f64,
    max: f64,
}

fn summarize(samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Summary {
        min: sorted[0],
        median,
        max: sorted[n - 1],
    }
}

/// The machine, for the report: CPUs, kernel, CPU model.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim());
    format!("{cpus} CPUs, {model}, kernel {}", kernel.trim())
}

/// The 1-minute load average: other work on the machine is noise in the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn bench(args: &Args) -> Result<()> {
    let slots = 1 + args.runs as usize;
    let load_before = load_average();
    let mut cases = selected(cases(slots), &args.only)?;

    eprintln!("loading the datapaths and the trivial program");
    let mut programs = Programs::load()?;
    // Reported before the path checks too, so a build that measures the wrong path still shows
    // what the verifier made of it.
    let sizes = program_sizes(&mut programs)?;
    for size in &sizes {
        let insns = size
            .verified_insns
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        eprintln!("  {}: {insns} verified instructions", size.name);
    }

    eprintln!("verifying the path of every packet");
    for case in &cases {
        for packet in &case.packets {
            if case.prime > 0 {
                programs.run(case.program, packet, case.prime)?;
            }
        }
        verify(case, &mut programs)?;
    }

    let before: Vec<Vec<u64>> = programs
        .datapaths
        .iter()
        .map(TestDatapath::counters)
        .collect::<Result<_>>()?;
    let warm_up = |case: &Case| WARM_UP_REPEAT.min(case.repeat(args.repeat));
    eprintln!("warming up (up to {WARM_UP_REPEAT} packets per case, not measured)");
    for case in &cases {
        measure(case, &mut programs, 0, warm_up(case))?;
    }
    let count = cases.len();
    for run in 0..args.runs as usize {
        eprintln!("run {}/{}", run + 1, args.runs);
        // Start each run at another case, so no case always follows the same one.
        for index in (0..count).map(|i| (i + run) % count) {
            let sample = measure(&cases[index], &mut programs, 1 + run, args.repeat)?;
            cases[index].samples.push(sample);
        }
    }
    let packets = |case: &Case| {
        u64::from(warm_up(case)) + u64::from(args.runs) * u64::from(case.repeat(args.repeat))
    };
    let mut events = (0, 0);
    for (index, before) in before.iter().enumerate() {
        let after = programs.datapaths[index].counters()?;
        let wrong = unexpected_counts(&cases, index, packets, before, &after);
        ensure!(
            wrong.is_empty(),
            "the measured packets did not all take the path their case is about (counters of \
             datapath {index}: {}); the figures are void",
            wrong.join(", ")
        );
        if index == MAIN {
            let moved = |slot: u32| after[slot as usize] - before[slot as usize];
            events = (moved(stats::EVENTS_SENT), moved(stats::EVENTS_LOST));
        }
    }

    let load = (load_before, load_average());
    let medians = medians(&cases);
    let baseline = |case: &Case| case.baseline().map(|key| medians[key]);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_report(&cases))?);
        return Ok(());
    }
    print_report(args, &cases, &sizes, &baseline, events, load);
    Ok(())
}

/// Each case's median, by key.
fn medians(cases: &[Case]) -> std::collections::BTreeMap<&'static str, f64> {
    cases
        .iter()
        .map(|case| (case.key, summarize(&case.samples).median))
        .collect()
}

/// The `--json` report: one object, one key per case, each with `min_ns`, `median_ns` and
/// `max_ns`, and for the cases measured against a trivial program also the figures over it,
/// the ratio and the target.
fn json_report(cases: &[Case]) -> Value {
    let medians = medians(cases);
    let mut object = Map::new();
    for case in cases {
        let summary = summarize(&case.samples);
        let mut entry = Map::new();
        entry.insert("min_ns".into(), json!(summary.min));
        entry.insert("median_ns".into(), json!(summary.median));
        entry.insert("max_ns".into(), json!(summary.max));
        if let Some(trivial_median) = case.baseline().and_then(|key| medians.get(key)) {
            let over = summary.median - trivial_median;
            entry.insert("over_trivial_ns".into(), json!(over));
            entry.insert("ratio".into(), json!(summary.median / trivial_median));
            if let Some(target) = case.target_ns {
                entry.insert("target_over_trivial_ns".into(), json!(target));
                entry.insert("target_met".into(), json!(over <= target));
            }
        }
        object.insert(case.key.into(), Value::Object(entry));
    }
    Value::Object(object)
}

/// The cases `only` names, and the trivial cases they are reported over; all when `only` is
/// empty.
fn selected(cases: Vec<Case>, only: &[String]) -> Result<Vec<Case>> {
    if only.is_empty() {
        return Ok(cases);
    }
    if let Some(unknown) = only
        .iter()
        .find(|key| !cases.iter().any(|case| case.key == key.as_str()))
    {
        let keys: Vec<&str> = cases.iter().map(|case| case.key).collect();
        bail!("no case {unknown:?}; the cases are {}", keys.join(", "));
    }
    let named = |key: &str| only.iter().any(|wanted| wanted == key);
    let baselines: Vec<&str> = cases
        .iter()
        .filter(|case| named(case.key))
        .filter_map(Case::baseline)
        .collect();
    Ok(cases
        .into_iter()
        .filter(|case| named(case.key) || baselines.contains(&case.key))
        .collect())
}

fn runs(count: u32) -> String {
    if count == 1 {
        "1 run".to_owned()
    } else {
        format!("{count} runs")
    }
}

fn print_report(
    args: &Args,
    cases: &[Case],
    sizes: &[ProgramSize],
    baseline: &dyn Fn(&Case) -> Option<f64>,
    (events_sent, events_lost): (u64, u64),
    (load_before, load_after): (String, String),
) {
    println!(
        "sipfilter datapath benchmark: BPF_PROG_TEST_RUN, {} x {} packets per case, \
         interleaved, after a warm-up",
        runs(args.runs),
        args.repeat
    );
    println!(
        "machine: {}; load average {load_before} before, {load_after} after (other work on \
         the machine is noise in these figures)",
        machine()
    );
    println!();
    println!("programs (main datapath and egress watcher, then the trivial ones):");
    for size in sizes {
        let insns = size
            .verified_insns
            .map_or("?".to_owned(), |count| count.to_string());
        println!(
            "  {:<16} {insns:>7} verified instructions, {:>6} bytes JITed",
            size.name, size.jited_bytes
        );
    }
    println!();
    println!("packets (frame bytes, SIP message bytes):");
    for case in cases {
        let sip = case.sip_len.map_or(String::new(), |len| len.to_string());
        println!(
            "  {:<22} {:>5} {sip:>5}  {}",
            case.key,
            case.packet(0).len(),
            case.what
        );
    }
    println!();
    println!(
        "mean ns per packet over {} (+trivial: median minus the trivial program's median, \
         trivial for XDP cases, trivial_tc for egress cases; ratio: median over it):",
        runs(args.runs)
    );
    println!(
        "  {:<22} {:>7} {:>7} {:>7} {:>8} {:>6}  {:<10} verdict",
        "case", "min", "median", "max", "+trivial", "ratio", "target"
    );
    for (index, case) in cases.iter().enumerate() {
        if case.diagnostic && !cases[index - 1].diagnostic {
            println!("  diagnostic cases, which explain the costs above:");
        }
        let summary = summarize(&case.samples);
        let mut row = format!(
            "  {:<22} {:>7.1} {:>7.1} {:>7.1}",
            case.key, summary.min, summary.median, summary.max
        );
        if let Some(trivial_median) = baseline(case) {
            let over = summary.median - trivial_median;
            let (target, verdict) = match case.target_ns {
                Some(target) if over <= target => (format!("<= {target}"), "met"),
                Some(target) => (format!("<= {target}"), "NOT met"),
                None if case.diagnostic => ("(diagnostic)".to_owned(), ""),
                None => ("-".to_owned(), ""),
            };
            row += &format!(
                " {over:>8.1} {:>6.2}  {target:<10} {verdict}",
                summary.median / trivial_median
            );
        }
        println!("{}", row.trim_end());
    }
    println!();
    println!(
        "Every measured packet took its case's path (counters checked). Events written to the \
         ring during the measurement: {events_sent}; lost to the full ring: {events_lost}."
    );
    if events_lost > 0 {
        println!(
            "Nothing drains the ring during scanner_1k's runs, so most of its drops take the \
             cheaper ring-full path; scanner_1k_drained writes every event."
        );
    }
    if args.repeat > DRAINED_REPEAT && cases.iter().any(|case| case.key == "scanner_1k_drained") {
        println!(
            "scanner_1k_drained runs {DRAINED_REPEAT} packets per run, not {}.",
            args.repeat
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        <Args as clap::Parser>::try_parse_from(
            std::iter::once("sipfilter-bench").chain(args.iter().copied()),
        )
    }

    #[test]
    fn defaults_and_options() {
        let args = parse(&[]).unwrap();
        assert!(!args.json);
        assert_eq!((args.runs, args.repeat), (DEFAULT_RUNS, DEFAULT_REPEAT));
        let args = parse(&["--json", "--runs", "3", "--repeat=10000"]).unwrap();
        assert!(args.json);
        assert_eq!((args.runs, args.repeat), (3, 10_000));
    }

    #[test]
    fn bad_options() {
        for bad in [
            &["--runs"][..],
            &["--runs", "0"],
            &["--repeat", "1000001"],
            &["--repeat", "x"],
            &["--fast"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn json_report_has_a_key_per_case_with_its_figures() {
        let mut cases = cases(3);
        for (index, case) in cases.iter_mut().enumerate() {
            let base = if case.key == "trivial" {
                6.0
            } else {
                10.0 * (index + 1) as f64
            };
            case.samples = vec![base + 2.0, base, base + 1.0];
        }
        let report = json_report(&cases);
        let object = report.as_object().unwrap();
        for key in [
            "trivial",
            "non_sip",
            "denylisted",
            "register_400",
            "scanner_1k",
            "invite_v6",
        ] {
            let entry = &object[key];
            let (min, median, max) = (
                entry["min_ns"].as_f64().unwrap(),
                entry["median_ns"].as_f64().unwrap(),
                entry["max_ns"].as_f64().unwrap(),
            );
            assert_eq!((median - min, max - min), (1.0, 2.0), "{key}: {entry}");
        }
        assert_eq!(object.len(), cases.len());
        let trivial = object["trivial"]["median_ns"].as_f64().unwrap();
        let register = &object["register_400"];
        let median = register["median_ns"].as_f64().unwrap();
        assert_eq!(
            register["over_trivial_ns"].as_f64().unwrap(),
            median - trivial
        );
        assert_eq!(register["ratio"].as_f64().unwrap(), median / trivial);
        assert_eq!(register["target_over_trivial_ns"].as_f64().unwrap(), 90.0);
        assert_eq!(
            register["target_met"].as_bool().unwrap(),
            median - trivial <= 90.0
        );
        assert!(object["trivial"].get("ratio").is_none());
    }

    #[test]
    fn packets_have_the_promised_sizes() {
        let cases = cases(3);
        let sip = |key: &str| {
            cases
                .iter()
                .find(|case| case.key == key)
                .unwrap()
                .sip_len
                .unwrap()
        };
        assert_eq!(sip("register_400"), 400);
        assert_eq!(sip("register_400_unmatched"), 400);
        assert_eq!(sip("scanner_1k"), 1024);
        assert!(scanner_1k().ends_with(b"User-Agent: friendly-scanner\r\n\r\n"));
        for case in &cases {
            let first = case.packet(0).len();
            assert!(
                case.packets.iter().all(|packet| packet.len() == first),
                "{}: the per-run packets differ in size",
                case.key
            );
        }
    }

    #[test]
    fn one_case_comes_with_its_baseline() {
        let keys = |only: &[&str]| -> Result<Vec<&'static str>> {
            let only: Vec<String> = only.iter().map(|key| key.to_string()).collect();
            Ok(selected(cases(2), &only)?
                .iter()
                .map(|case| case.key)
                .collect())
        };
        assert_eq!(
            keys(&["register_400"]).unwrap(),
            ["trivial", "register_400"]
        );
        assert_eq!(
            keys(&["egress_success", "non_sip"]).unwrap(),
            ["trivial", "non_sip", "trivial_tc", "egress_success"]
        );
        assert_eq!(keys(&[]).unwrap().len(), cases(2).len());
        let error = keys(&["register_401"]).unwrap_err().to_string();
        assert!(error.contains("no case \"register_401\""), "{error}");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]).median, 2.0);
        let summary = summarize(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((summary.min, summary.median, summary.max), (1.0, 2.5, 4.0));
    }
}
