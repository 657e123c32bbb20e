//! Golden table for the TC egress watcher, through `BPF_PROG_TEST_RUN` on the real eBPF object:
//! frames the PBX sends, each row asserting the response class counted, the event reported (or
//! none), and that the frame leaves unchanged with `TC_ACT_UNSPEC`.
//!
//! Addresses are documentation ranges: the PBX is 192.0.2.10 / 2001:db8::10, its peers are
//! 198.51.100.20 / 2001:db8:1::20.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use sipfilter::events::DatapathEvent;
use sipfilter_common::{EventKind, Method, ResponseClass, stats};
use sipfilter_tests::{
    Packet,
    datapath::TestDatapath,
    packet::tcp_flags,
    require_bpf,
    sip_messages::{SipMessage, options, response_message},
};

const PBX4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PBX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20);
const PEER_PORT: u16 = 5062;
const SIP_PORT: u16 = 5060;
/// `TC_ACT_UNSPEC` (-1) as the kernel hands it back.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const POLICY: &str = r#"
[sip]
udp_ports = [5060]
tcp_ports = [5060]
tls_ports = [5061]

[rate_limit]
max_sources = 1024
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

fn peer(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(PEER4),
        Family::V6 => IpAddr::V6(PEER6),
    }
}

/// A UDP frame from the PBX's port `sport` to the peer.
fn udp_from(family: Family, sport: u16, payload: &[u8]) -> Packet {
    match family {
        Family::V4 => Packet::udp4(PBX4, PEER4, sport, PEER_PORT, payload),
        Family::V6 => Packet::udp6(PBX6, PEER6, sport, PEER_PORT, payload),
    }
}

fn tcp_from(family: Family, payload: &[u8]) -> Packet {
    match family {
        Family::V4 => Packet::tcp4(PBX4, PEER4, SIP_PORT, PEER_PORT, payload),
        Family::V6 => Packet::tcp6(PBX6, PEER6, SIP_PORT, PEER_PORT, payload),
    }
}

/// A response as kamailio writes it, to `user` (the To user) for `method`.
fn answer(code: u16, reason: &str, method: &str, user: &str) -> SipMessage {
    response_message(code, reason, method, "egress-call@198.51.100.20", 7)
        .set_header("To", &format!("<sip:{user}@192.0.2.10>;tag=kamailio.1"))
}

/// What a row expects: the class counted (if any) and the event's kind, status, method,
/// user and expiry (if any).
struct Expect {
    class: Option<ResponseClass>,
    event: Option<(EventKind, u16, Method, &'static str, Option<u32>)>,
}

const IGNORED: Expect = Expect {
    class: None,
    event: None,
};

const fn counted(class: ResponseClass) -> Expect {
    Expect {
        class: Some(class),
        event: None,
    }
}

const fn reported(
    class: ResponseClass,
    kind: EventKind,
    status: u16,
    method: Method,
    user: &'static str,
    expires: Option<u32>,
) -> Expect {
    Expect {
        class: Some(class),
        event: Some((kind, status, method, user, expires)),
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<DatapathEvent> {
    let mut events = Vec::new();
    while let Some(record) = ring.next() {
        events.push(DatapathEvent::decode(&record).expect("a decodable event"));
    }
    events
}

fn response_counts(dp: &TestDatapath) -> Vec<u64> {
    let counters = dp.counters().expect("counters");
    (0..ResponseClass::COUNT)
        .map(|class| counters[(stats::RESPONSE_BASE + class) as usize])
        .collect()
}

struct Row {
    name: String,
    frame: Vec<u8>,
    family: Family,
    expect: Expect,
}

fn rows() -> Vec<Row> {
    use EventKind::*;
    use Method::*;
    use ResponseClass::{Challenge as C, Other as O, Rejection as R, Success as S};
    let mut rows = Vec::new();
    for family in [Family::V4, Family::V6] {
        let mut row = |name: &str, frame: Vec<u8>, expect: Expect| {
            rows.push(Row {
                name: format!("{family:?} {name}"),
                frame,
                family,
                expect,
            })
        };
        let udp = |message: &SipMessage| udp_from(family, SIP_PORT, &message.build()).build();
        row(
            "401 to REGISTER",
            udp(&answer(401, "Unauthorized", "REGISTER", "1001")),
            reported(C, Challenge, 401, Register, "1001", None),
        );
        row(
            "407 to INVITE",
            udp(&answer(
                407,
                "Proxy Authentication Required",
                "INVITE",
                "0049301234",
            )),
            reported(C, Challenge, 407, Invite, "0049301234", None),
        );
        for (method, name) in [
            (Register, "REGISTER"),
            (Invite, "INVITE"),
            (Options, "OPTIONS"),
            (Subscribe, "SUBSCRIBE"),
        ] {
            for (code, reason) in [
                (403, "Forbidden"),
                (404, "Not Found"),
                (484, "Address Incomplete"),
            ] {
                row(
                    &format!("{code} to {name}"),
                    udp(&answer(code, reason, name, "2042")),
                    reported(R, Rejection, code, method, "2042", None),
                );
            }
        }
        row(
            "404 to BYE",
            udp(&answer(404, "Not Found", "BYE", "1")),
            counted(O),
        );
        row(
            "486 to INVITE",
            udp(&answer(486, "Busy Here", "INVITE", "1")),
            counted(O),
        );
        row(
            "180 to INVITE",
            udp(&answer(180, "Ringing", "INVITE", "1")),
            counted(O),
        );
        row(
            "200 to OPTIONS",
            udp(&answer(200, "OK", "OPTIONS", "1")),
            counted(O),
        );
        row(
            "200 to REGISTER, Contact expires",
            udp(&answer(200, "OK", "REGISTER", "1001").header(
                "Contact",
                "<sip:1001@198.51.100.20:5062>;expires=600;received=\"sip:198.51.100.20:5062\"",
            )),
            reported(S, Success, 200, Register, "1001", Some(600)),
        );
        row(
            "200 to REGISTER, Expires header, compact forms",
            udp(&SipMessage::response(200, "OK")
                .header("t", "\"Alice\" <sip:alice@192.0.2.10>;tag=9")
                .header("CSeq", "2 REGISTER")
                .header("m", "<sip:alice@198.51.100.20>;expires=60")
                .header("Expires", "3600")),
            reported(S, Success, 200, Register, "alice", Some(3600)),
        );
        row(
            "200 to REGISTER without an expiry",
            udp(&answer(200, "OK", "REGISTER", "1001")),
            reported(S, Success, 200, Register, "1001", None),
        );
        row(
            "200 to INVITE",
            udp(&answer(200, "OK", "INVITE", "1002")),
            reported(S, Success, 200, Invite, "1002", None),
        );
        row(
            "401 without CSeq",
            udp(&answer(401, "Unauthorized", "REGISTER", "1").remove_header("CSeq")),
            counted(O),
        );
        row(
            "401 over TCP",
            tcp_from(
                family,
                &answer(401, "Unauthorized", "REGISTER", "1001").build(),
            )
            .tcp_flags(tcp_flags::ACK | tcp_flags::PSH)
            .build(),
            reported(C, Challenge, 401, Register, "1001", None),
        );
        row(
            "TCP segment in the middle of a message",
            tcp_from(family, b"Content-Length: 0\r\n\r\n").build(),
            IGNORED,
        );
        row(
            "401 on a VLAN",
            udp_from(
                family,
                SIP_PORT,
                &answer(401, "Unauthorized", "REGISTER", "7").build(),
            )
            .vlan(100)
            .build(),
            reported(C, Challenge, 401, Register, "7", None),
        );
        row(
            "401 from a port that is not SIP",
            udp_from(
                family,
                5080,
                &answer(401, "Unauthorized", "REGISTER", "1").build(),
            )
            .build(),
            IGNORED,
        );
        row(
            "401 from the TLS port",
            udp_from(
                family,
                5061,
                &answer(401, "Unauthorized", "REGISTER", "1").build(),
            )
            .build(),
            IGNORED,
        );
        row(
            "a request the host sends",
            udp_from(
                family,
                SIP_PORT,
                &options("1001", "198.51.100.20", "q@x", 1),
            )
            .build(),
            IGNORED,
        );
        row(
            "not SIP",
            udp_from(family, SIP_PORT, b"\x00\x01binary\xff").build(),
            IGNORED,
        );
        row(
            "keep-alive",
            udp_from(family, SIP_PORT, b"\r\n\r\n").build(),
            IGNORED,
        );
        let ip_header = if family == Family::V4 { 20 } else { 40 };
        row(
            "UDP header cut short",
            udp_from(
                family,
                SIP_PORT,
                &answer(401, "Unauthorized", "REGISTER", "1").build(),
            )
            .truncate(14 + ip_header + 4)
            .build(),
            IGNORED,
        );
        row(
            "UDP length beyond the frame",
            udp_from(
                family,
                SIP_PORT,
                &answer(401, "Unauthorized", "REGISTER", "1").build(),
            )
            .udp_len(2000)
            .build(),
            IGNORED,
        );
        row(
            "later fragment",
            udp_from(
                family,
                SIP_PORT,
                &answer(401, "Unauthorized", "REGISTER", "1").build(),
            )
            .fragment(64, false)
            .build(),
            IGNORED,
        );
    }
    rows
}

#[test]
fn responses_are_classified_and_reported_and_never_changed() {
    if !require_bpf("responses_are_classified_and_reported_and_never_changed") {
        return;
    }
    let mut dp = TestDatapath::load(POLICY).expect("loading the datapath");
    let mut ring = dp.datapath.take_events().expect("event ring");
    let mut failures = Vec::new();
    for row in rows() {
        let before = response_counts(&dp);
        let xdp_before = dp.counters().unwrap()[..stats::RESPONSE_BASE as usize].to_vec();
        let (action, unchanged) = dp.run_egress(&row.frame).expect("test run");
        let after = response_counts(&dp);
        let events = drain(&mut ring);
        let moved: Vec<ResponseClass> = ResponseClass::ALL
            .into_iter()
            .filter(|class| after[*class as usize] != before[*class as usize])
            .collect();
        let expected_moved: Vec<ResponseClass> = row.expect.class.into_iter().collect();
        let mut problems = Vec::new();
        if action != TC_ACT_UNSPEC {
            problems.push(format!("action {action}, expected TC_ACT_UNSPEC"));
        }
        if !unchanged {
            problems.push("the frame was changed".to_owned());
        }
        if moved != expected_moved {
            problems.push(format!("counted {moved:?}, expected {expected_moved:?}"));
        }
        // Events that are counted in the stats array's lower part are the XDP program's.
        let xdp_after = dp.counters().unwrap()[..stats::RESPONSE_BASE as usize].to_vec();
        let event_slots = [stats::EVENTS_SENT as usize, stats::EVENTS_LOST as usize];
        let xdp_moved: Vec<usize> = (0..xdp_after.len())
            .filter(|slot| xdp_after[*slot] != xdp_before[*slot] && !event_slots.contains(slot))
            .collect();
        if !xdp_moved.is_empty() {
            problems.push(format!("moved XDP counters {xdp_moved:?}"));
        }
        match (&row.expect.event, events.as_slice()) {
            (None, []) => {}
            (Some((kind, status, method, user, expires)), [event]) => {
                let want = (
                    *kind,
                    *status,
                    *method,
                    user.to_string(),
                    *expires,
                    peer(row.family),
                    PEER_PORT,
                    SIP_PORT,
                    false,
                );
                let got = (
                    event.kind,
                    event.status,
                    event.method,
                    event.detail.clone(),
                    event.expires_s,
                    event.source,
                    event.src_port,
                    event.dst_port,
                    event.monitored,
                );
                if want != got {
                    problems.push(format!("event {got:?}, expected {want:?}"));
                }
            }
            (expected, got) => problems.push(format!("events {got:?}, expected {expected:?}")),
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", row.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
