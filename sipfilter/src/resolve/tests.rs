//! The resolver against a small authoritative DNS server that each test runs on loopback: no
//! test asks the internet or the machine's configured resolver.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_resolver::proto::op::{Message, OpCode};
use hickory_resolver::proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::*;

/// Far more than any lookup here needs (2 attempts of 2 s), so that a hang fails the test
/// instead of stalling the suite.
const TEST_DEADLINE: Duration = Duration::from_secs(10);

/// What the test server knows of one name.
#[derive(Clone, Default)]
struct Host {
    records: Vec<(IpAddr, u32)>,
    /// Answer UDP queries with the TC bit and nothing else, so the client must ask over TCP.
    truncate_udp: bool,
}

type Zone = Arc<Mutex<HashMap<String, Host>>>;

/// An authoritative server for the names in its zone, on UDP and TCP of one loopback port.
/// Unknown names get NXDOMAIN.
struct TestServer {
    addr: SocketAddr,
    zone: Zone,
    tasks: Vec<JoinHandle<()>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let zone = Zone::default();
        // UDP takes an ephemeral port; TCP on the same number is almost always free, but
        // another process may hold it, so a few ports are tried.
        for _ in 0..10 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let tasks = vec![
                tokio::spawn(serve_udp(udp, zone.clone())),
                tokio::spawn(serve_tcp(tcp, zone.clone())),
            ];
            return TestServer { addr, zone, tasks };
        }
        panic!("no loopback port free for both UDP and TCP");
    }

    fn set(&self, name: &str, records: &[(&str, u32)]) {
        let records = records
            .iter()
            .map(|&(ip, ttl)| (ip.parse().unwrap(), ttl))
            .collect();
        self.zone.lock().unwrap().insert(
            name.to_owned(),
            Host {
                records,
                truncate_udp: false,
            },
        );
    }

    fn truncate_udp(&self, name: &str) {
        self.zone
            .lock()
            .unwrap()
            .get_mut(name)
            .unwrap()
            .truncate_udp = true;
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(Some(self.addr)).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: Zone) {
    let mut buffer = [0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(reply) = answer(&zone, &buffer[..len], true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Zone) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve_tcp_connection(stream, zone.clone()));
    }
}

/// DNS over TCP: each message is preceded by its length in two bytes.
async fn serve_tcp_connection(mut stream: TcpStream, zone: Zone) {
    while let Ok(len) = stream.read_u16().await {
        let mut query = vec![0; len.into()];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = answer(&zone, &query, false) else {
            return;
        };
        let len = u16::try_from(reply.len()).unwrap();
        if stream
            .write_all(&[&len.to_be_bytes()[..], &reply].concat())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn answer(zone: &Zone, query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut response = Message::response(request.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.recursion_desired;
    response.add_query(question.clone());

    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match zone.lock().unwrap().get(&name) {
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(host) if over_udp && host.truncate_udp => response.metadata.truncation = true,
        Some(host) => {
            for &(ip, ttl) in &host.records {
                let rdata = RData::from(ip);
                if rdata.record_type() == question.query_type() {
                    response.add_answer(Record::from_rdata(question.name().clone(), ttl, rdata));
                }
            }
        }
    }
    response.to_vec().ok()
}

/// `resolver.lookup(name)`, failing the test if it outlives `TEST_DEADLINE`.
async fn lookup(resolver: &Resolver, name: &str) -> Result<Resolved, ResolveError> {
    tokio::time::timeout(TEST_DEADLINE, resolver.lookup(name))
        .await
        .unwrap_or_else(|_| panic!("looking up {name} took over {TEST_DEADLINE:?}"))
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn both_families_with_the_smallest_ttl() {
    let server = TestServer::start().await;
    server.set(
        "pbx.test",
        &[
            ("2001:db8::5", 120),
            ("192.0.2.10", 300),
            ("192.0.2.9", 60),
            ("192.0.2.10", 300),
        ],
    );

    let resolved = lookup(&server.resolver(), "pbx.test").await.unwrap();
    assert_eq!(
        resolved,
        Resolved {
            addresses: vec![ip("192.0.2.9"), ip("192.0.2.10"), ip("2001:db8::5")],
            ttl: Some(Duration::from_secs(60)),
        }
    );
}

#[tokio::test]
async fn only_an_a_record_gives_ipv4_only() {
    let server = TestServer::start().await;
    server.set("v4.test", &[("192.0.2.20", 3600)]);

    let resolved = lookup(&server.resolver(), "v4.test").await.unwrap();
    assert_eq!(
        resolved,
        Resolved {
            addresses: vec![ip("192.0.2.20")],
            ttl: Some(Duration::from_secs(3600))
        }
    );
}

#[tokio::test]
async fn only_an_aaaa_record_gives_ipv6_only() {
    let server = TestServer::start().await;
    server.set("v6.test", &[("2001:db8::6", 30)]);

    let resolved = lookup(&server.resolver(), "v6.test.").await.unwrap();
    assert_eq!(resolved.addresses, vec![ip("2001:db8::6")]);
}

#[tokio::test]
async fn an_unknown_name_is_not_found() {
    let server = TestServer::start().await;
    server.set("pbx.test", &[("192.0.2.10", 300)]);

    let error = lookup(&server.resolver(), "nosuch.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::NotFound { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("nosuch.test") && message.contains("NXDOMAIN"),
        "{message}"
    );
}

#[tokio::test]
async fn a_name_without_addresses_is_reported_as_such() {
    let server = TestServer::start().await;
    server.set("empty.test", &[]);

    let error = lookup(&server.resolver(), "empty.test").await.unwrap_err();
    assert!(
        matches!(error, ResolveError::NoAddresses { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("empty.test"), "{error}");
}

#[tokio::test]
async fn a_changed_record_is_seen_on_the_next_lookup() {
    let server = TestServer::start().await;
    let resolver = server.resolver();
    server.set("moving.test", &[("192.0.2.1", 1)]);
    assert_eq!(
        lookup(&resolver, "moving.test").await.unwrap().addresses,
        vec![ip("192.0.2.1")]
    );

    // Well within the old TTL: nothing between the daemon and the server may answer from memory.
    server.set("moving.test", &[("192.0.2.2", 1), ("2001:db8::2", 1)]);
    assert_eq!(
        lookup(&resolver, "moving.test").await.unwrap().addresses,
        vec![ip("192.0.2.2"), ip("2001:db8::2")]
    );

    // And a name that disappears is reported gone, not remembered.
    server.zone.lock().unwrap().remove("moving.test");
    let error = lookup(&resolver, "moving.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let server = TestServer::start().await;
    server.set("big.test", &[("192.0.2.30", 100), ("2001:db8::30", 100)]);
    server.truncate_udp("big.test");

    let resolved = lookup(&server.resolver(), "big.test").await.unwrap();
    assert_eq!(
        resolved.addresses,
        vec![ip("192.0.2.30"), ip("2001:db8::30")]
    );
}

#[tokio::test]
async fn no_server_listening_fails_within_the_timeout() {
    // Take a free port and let it go again: nothing listens there.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let resolver = Resolver::new(Some(addr)).unwrap();

    let start = Instant::now();
    let error = lookup(&resolver, "pbx.test").await.unwrap_err();
    assert!(start.elapsed() < TEST_DEADLINE);
    assert!(matches!(error, ResolveError::Lookup { .. }), "{error:?}");
    assert!(error.to_string().contains("pbx.test"), "{error}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Bound but never read: every query goes unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = Resolver::new(Some(silent.local_addr().unwrap())).unwrap();

    let start = Instant::now();
    let error = lookup(&resolver, "pbx.test").await.unwrap_err();
    let elapsed = start.elapsed();
    let every_attempt = QUERY_TIMEOUT * u32::try_from(QUERY_ATTEMPTS).unwrap();
    // Some slack for a loaded machine, but well short of a third attempt.
    assert!(
        elapsed < every_attempt + QUERY_TIMEOUT / 2,
        "gave up after {elapsed:?}"
    );
    assert!(
        elapsed >= every_attempt,
        "gave up after {elapsed:?}, before every attempt timed out"
    );
    assert!(matches!(error, ResolveError::Lookup { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("pbx.test") && message.contains("timed out"),
        "{message}"
    );
}

#[tokio::test]
async fn a_hosts_file_entry_wins_and_has_no_ttl() {
    let server = TestServer::start().await;
    server.set("pbx.test", &[("192.0.2.10", 300)]);
    server.set("other.test", &[("192.0.2.11", 300)]);
    let hosts_file =
        std::env::temp_dir().join(format!("sipfilter-resolve-{}.hosts", std::process::id()));
    std::fs::write(
        &hosts_file,
        "# test\n198.51.100.7 pbx.test pbx\n2001:db8::7 pbx.test\n",
    )
    .unwrap();
    let resolver = Resolver {
        hosts_file: Some(hosts_file.clone()),
        ..server.resolver()
    };

    let from_hosts = lookup(&resolver, "pbx.test").await;
    let from_dns = lookup(&resolver, "other.test").await;
    std::fs::remove_file(&hosts_file).unwrap();

    assert_eq!(
        from_hosts.unwrap(),
        Resolved {
            addresses: vec![ip("198.51.100.7"), ip("2001:db8::7")],
            ttl: None
        }
    );
    assert_eq!(
        from_dns.unwrap(),
        Resolved {
            addresses: vec![ip("192.0.2.11")],
            ttl: Some(Duration::from_secs(300))
        }
    );
}

#[tokio::test]
async fn an_address_literal_resolves_to_itself() {
    // No server at all: a literal must not be sent to DNS.
    let resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap())).unwrap();
    for literal in ["192.0.2.1", "2001:db8::1"] {
        let resolved = lookup(&resolver, literal).await.unwrap();
        assert_eq!(
            resolved,
            Resolved {
                addresses: vec![ip(literal)],
                ttl: None
            }
        );
    }
}

#[tokio::test]
async fn invalid_names_are_rejected_before_any_query() {
    let resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap())).unwrap();
    let too_long = format!("{}.test", "a".repeat(64));
    for name in ["", ".", "a..b", too_long.as_str()] {
        let error = lookup(&resolver, name).await.unwrap_err();
        assert!(
            matches!(error, ResolveError::InvalidName { .. }),
            "{name:?}: {error:?}"
        );
        assert!(error.to_string().contains(&format!("{name:?}")), "{error}");
    }
}

#[test]
fn lookups_can_run_on_spawned_tasks() {
    // The daemon resolves each name on its own task.
    fn assert_send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let resolver = Resolver::new(Some("127.0.0.1:9".parse().unwrap())).unwrap();
    assert_send(&resolver.lookup("pbx.test"));
}

#[test]
fn next_refresh_follows_the_ttl_within_bounds() {
    let default = DEFAULT_REFRESH;
    let resolved = |ttl: Option<u64>| -> Result<Resolved, ResolveError> {
        Ok(Resolved {
            addresses: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            ttl: ttl.map(Duration::from_secs),
        })
    };
    let cases = [
        (None, 0, default),
        (Some(0), 0, Duration::from_secs(10)),
        (Some(1), 0, Duration::from_secs(10)),
        (Some(10), 0, Duration::from_secs(10)),
        (Some(60), 0, Duration::from_secs(60)),
        (Some(3600), 0, Duration::from_secs(3600)),
        (Some(86_400), 0, Duration::from_secs(86_400)),
        (Some(604_800), 0, Duration::from_secs(86_400)),
        (Some(u64::from(u32::MAX)), 0, Duration::from_secs(86_400)),
        // A success ends a run of failures whatever the count passed.
        (Some(60), 5, Duration::from_secs(60)),
    ];
    for (ttl, failures, expected) in cases {
        assert_eq!(
            next_refresh(&resolved(ttl), default, failures),
            expected,
            "ttl {ttl:?}"
        );
    }
    assert_eq!(
        next_refresh(&resolved(None), Duration::from_secs(42), 0),
        Duration::from_secs(42)
    );
}

#[test]
fn next_refresh_backs_off_after_failures() {
    let failed: Result<Resolved, ResolveError> = Err(ResolveError::NotFound {
        name: "pbx.test".to_owned(),
    });
    let cases = [
        (0, 30),
        (1, 30),
        (2, 60),
        (3, 120),
        (4, 240),
        (5, 300),
        (6, 300),
        (40, 300),
        (u32::MAX, 300),
    ];
    for (failures, expected) in cases {
        let got = next_refresh(&failed, DEFAULT_REFRESH, failures);
        assert_eq!(
            got,
            Duration::from_secs(expected),
            "after {failures} failures"
        );
    }
    // A longer default lets the backoff grow further.
    let hour = Duration::from_secs(3600);
    assert_eq!(next_refresh(&failed, hour, 7), Duration::from_secs(1920));
    assert_eq!(next_refresh(&failed, hour, 8), hour);
}
