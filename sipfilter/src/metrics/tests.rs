use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use tokio::io::AsyncRead;

use super::*;

/// Every family `render` writes, with its type: a new family must be added here, to the
/// documentation and (where useful) to the dashboard.
const FAMILIES: [(&str, &str); 18] = [
    ("sipfilter_packets_total", "counter"),
    ("sipfilter_monitored_total", "counter"),
    ("sipfilter_sip_requests_total", "counter"),
    ("sipfilter_sip_responses_total", "counter"),
    ("sipfilter_answers_total", "counter"),
    ("sipfilter_rate_limited_total", "counter"),
    ("sipfilter_bans_active", "gauge"),
    ("sipfilter_bans_total", "counter"),
    ("sipfilter_list_entries", "gauge"),
    ("sipfilter_map_entries", "gauge"),
    ("sipfilter_map_capacity", "gauge"),
    ("sipfilter_events_total", "counter"),
    ("sipfilter_events_lost_total", "counter"),
    ("sipfilter_events_received_total", "counter"),
    ("sipfilter_policy_reloads_total", "counter"),
    ("sipfilter_policy_reload_failures_total", "counter"),
    ("sipfilter_start_time_seconds", "gauge"),
    ("sipfilter_build_info", "gauge"),
];

/// A snapshot whose every datapath slot holds a value of its own (1000 + index), except the
/// scanner drops, which hold 42.
fn synthetic() -> Snapshot {
    let mut counters: Vec<u64> = (0..u64::from(stats::LEN)).map(|i| 1000 + i).collect();
    counters[(stats::REASON_BASE + Reason::ScannerUserAgent as u32) as usize] = 42;
    Snapshot {
        counters,
        bans_active: 3,
        bans_total: vec![("scanner".into(), 5), ("manual".into(), 1)],
        entries: vec![
            ("allow".into(), "policy".into(), 2),
            ("deny".into(), "cli".into(), 4),
        ],
        maps: vec![
            ("SF_BANS".into(), 3, 262_144),
            ("SF_RATE".into(), 10, 1_000_000),
        ],
        events_received: 77,
        reloads: 4,
        reload_failures: 1,
        start_time_seconds: 1_714_000_000.5,
    }
}

fn slot(index: u32) -> f64 {
    (1000 + index) as f64
}

// ---------------------------------------------------------------------------------------------
// A strict reader of the text format
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Family {
    help: String,
    kind: String,
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

/// Reads the text exposition format as strictly as a scraper would: every sample follows the
/// `# HELP` and `# TYPE` of the family it is named after, names and label values are well
/// formed, values are numbers, and no family or series appears twice.
fn parse(text: &str) -> BTreeMap<String, Family> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(valid_name(name), "metric name {name:?}");
            assert!(!help.is_empty(), "{name} has a help text");
            let family = Family {
                help: help.to_owned(),
                kind: String::new(),
                samples: Vec::new(),
            };
            assert!(
                families.insert(name.to_owned(), family).is_none(),
                "{name} declared twice"
            );
            current = name.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
            assert_eq!(name, current, "TYPE follows the HELP of its family");
            let family = families.get_mut(name).unwrap();
            assert!(family.kind.is_empty(), "{name} typed twice");
            assert!(["counter", "gauge"].contains(&kind), "{name}: type {kind}");
            family.kind = kind.to_owned();
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (name, labels, value) = parse_sample(line);
            assert_eq!(name, current, "sample {line:?} outside its family");
            let family = families.get_mut(name).unwrap();
            assert!(!family.kind.is_empty(), "{name}: sample before TYPE");
            assert!(
                family.samples.iter().all(|(seen, _)| *seen != labels),
                "series repeated: {line:?}"
            );
            family.samples.push((labels, value));
        }
    }
    families
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_sample(line: &str) -> (&str, BTreeMap<String, String>, f64) {
    let end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("sample {line:?}"));
    let name = &line[..end];
    assert!(valid_name(name), "metric name {name:?}");
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            let (label, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label in {line:?}"));
            assert!(valid_name(label), "label name {label:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let closing = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((at, '"')) => break at,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            assert!(
                labels.insert(label.to_owned(), value).is_none(),
                "label repeated in {line:?}"
            );
            rest = &after[closing + 1..];
            if let Some(more) = rest.strip_prefix(',') {
                rest = more;
            } else {
                rest = rest
                    .strip_prefix('}')
                    .unwrap_or_else(|| panic!("labels not closed in {line:?}"));
                break;
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("value {value:?} in {line:?}"));
    (name, labels, value)
}

/// The value of the series `labels` of `name`.
fn value(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families[name]
        .samples
        .iter()
        .find(|(labels, _)| *labels == wanted)
        .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
        .1
}

fn series_count(families: &BTreeMap<String, Family>, name: &str) -> usize {
    families[name].samples.len()
}

// ---------------------------------------------------------------------------------------------
// render
// ---------------------------------------------------------------------------------------------

#[test]
fn every_family_is_declared_with_help_and_type() {
    let families = parse(&render(&synthetic()));
    let declared: BTreeMap<&str, &str> = families
        .iter()
        .map(|(name, family)| (name.as_str(), family.kind.as_str()))
        .collect();
    assert_eq!(declared, BTreeMap::from(FAMILIES));
    for (name, family) in &families {
        assert!(!family.help.is_empty());
        if family.kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends in _total");
        }
    }
}

#[test]
fn datapath_counters_land_in_their_series() {
    let families = parse(&render(&synthetic()));

    assert_eq!(
        series_count(&families, "sipfilter_packets_total"),
        Reason::ALL.len()
    );
    for reason in Reason::ALL {
        let verdict = if reason.is_drop() { "drop" } else { "pass" };
        let expected = if reason == Reason::ScannerUserAgent {
            42.0
        } else {
            slot(stats::REASON_BASE + reason as u32)
        };
        let labels = [("verdict", verdict), ("reason", reason.name())];
        assert_eq!(
            value(&families, "sipfilter_packets_total", &labels),
            expected
        );
    }
    assert_eq!(
        value(
            &families,
            "sipfilter_packets_total",
            &[("verdict", "pass"), ("reason", "sip_ok")]
        ),
        slot(Reason::SipOk as u32)
    );

    let drop_reasons: Vec<Reason> = Reason::ALL.into_iter().filter(|r| r.is_drop()).collect();
    assert_eq!(
        series_count(&families, "sipfilter_monitored_total"),
        drop_reasons.len()
    );
    for reason in drop_reasons {
        assert_eq!(
            value(
                &families,
                "sipfilter_monitored_total",
                &[("reason", reason.name())]
            ),
            slot(stats::MONITOR_BASE + reason as u32)
        );
    }

    assert_eq!(
        series_count(&families, "sipfilter_sip_requests_total"),
        Method::ALL.len() - 1
    );
    for method in Method::ALL.into_iter().filter(|&m| m != Method::Response) {
        assert_eq!(
            value(
                &families,
                "sipfilter_sip_requests_total",
                &[("method", method.name())]
            ),
            slot(stats::METHOD_BASE + method as u32)
        );
    }
    assert_eq!(
        value(&families, "sipfilter_sip_responses_total", &[]),
        slot(stats::METHOD_BASE + Method::Response as u32)
    );
    assert_eq!(series_count(&families, "sipfilter_answers_total"), 4);
    for class in ResponseClass::ALL {
        assert_eq!(
            value(
                &families,
                "sipfilter_answers_total",
                &[("class", class.name())]
            ),
            slot(stats::RESPONSE_BASE + class as u32)
        );
    }

    assert_eq!(series_count(&families, "sipfilter_rate_limited_total"), 2);
    assert_eq!(
        value(
            &families,
            "sipfilter_rate_limited_total",
            &[("method", "REGISTER")]
        ),
        slot(Reason::RateRegister as u32)
    );
    assert_eq!(
        value(
            &families,
            "sipfilter_rate_limited_total",
            &[("method", "INVITE")]
        ),
        slot(Reason::RateInvite as u32)
    );

    assert_eq!(
        value(&families, "sipfilter_events_total", &[]),
        slot(stats::EVENTS_SENT)
    );
    assert_eq!(
        value(&families, "sipfilter_events_lost_total", &[]),
        slot(stats::EVENTS_LOST)
    );
}

#[test]
fn daemon_values_land_in_their_series() {
    let families = parse(&render(&synthetic()));
    assert_eq!(value(&families, "sipfilter_bans_active", &[]), 3.0);
    assert_eq!(series_count(&families, "sipfilter_bans_total"), 2);
    assert_eq!(
        value(&families, "sipfilter_bans_total", &[("reason", "scanner")]),
        5.0
    );
    assert_eq!(
        value(&families, "sipfilter_bans_total", &[("reason", "manual")]),
        1.0
    );
    assert_eq!(series_count(&families, "sipfilter_list_entries"), 2);
    assert_eq!(
        value(
            &families,
            "sipfilter_list_entries",
            &[("kind", "allow"), ("origin", "policy")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &families,
            "sipfilter_list_entries",
            &[("kind", "deny"), ("origin", "cli")]
        ),
        4.0
    );
    assert_eq!(
        value(&families, "sipfilter_map_entries", &[("map", "SF_RATE")]),
        10.0
    );
    assert_eq!(
        value(&families, "sipfilter_map_capacity", &[("map", "SF_RATE")]),
        1_000_000.0
    );
    assert_eq!(
        value(&families, "sipfilter_map_capacity", &[("map", "SF_BANS")]),
        262_144.0
    );
    assert_eq!(
        value(&families, "sipfilter_events_received_total", &[]),
        77.0
    );
    assert_eq!(value(&families, "sipfilter_policy_reloads_total", &[]), 4.0);
    assert_eq!(
        value(&families, "sipfilter_policy_reload_failures_total", &[]),
        1.0
    );
    assert_eq!(
        value(&families, "sipfilter_start_time_seconds", &[]),
        1_714_000_000.5
    );
    assert_eq!(
        value(
            &families,
            "sipfilter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[test]
fn slots_the_snapshot_lacks_are_left_out_not_zeroed() {
    // Only the reason slots: a datapath whose counters could not be read in full.
    let snapshot = Snapshot {
        counters: vec![9; Reason::COUNT as usize],
        ..Snapshot::default()
    };
    let families = parse(&render(&snapshot));
    assert_eq!(
        series_count(&families, "sipfilter_packets_total"),
        Reason::ALL.len()
    );
    assert_eq!(series_count(&families, "sipfilter_rate_limited_total"), 2);
    for name in [
        "sipfilter_monitored_total",
        "sipfilter_sip_requests_total",
        "sipfilter_sip_responses_total",
        "sipfilter_answers_total",
        "sipfilter_events_total",
        "sipfilter_events_lost_total",
    ] {
        assert_eq!(series_count(&families, name), 0, "{name}");
    }

    let families = parse(&render(&Snapshot::default()));
    assert_eq!(families.len(), FAMILIES.len(), "families stay declared");
    assert_eq!(series_count(&families, "sipfilter_packets_total"), 0);
    assert_eq!(value(&families, "sipfilter_bans_active", &[]), 0.0);
    assert_eq!(series_count(&families, "sipfilter_build_info"), 1);
}

#[test]
fn label_values_are_escaped() {
    let name = "we\"ird\\map\nname";
    let snapshot = Snapshot {
        maps: vec![(name.into(), 1, 2)],
        ..Snapshot::default()
    };
    let families = parse(&render(&snapshot));
    assert_eq!(
        value(&families, "sipfilter_map_entries", &[("map", name)]),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard and the documentation follow the metrics
// ---------------------------------------------------------------------------------------------

fn repository_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `sipfilter_...` names a text mentions.
fn metric_names(text: &str) -> BTreeSet<&str> {
    text.match_indices("sipfilter_")
        .map(|(at, _)| {
            let end = text[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |len| at + len);
            &text[at..end]
        })
        .collect()
}

#[test]
fn dashboard_is_valid_and_queries_only_exported_metrics() {
    let text = repository_file("deploy/grafana/sipfilter-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");

    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(!dashboard["title"].as_str().unwrap().is_empty());
    assert!(!dashboard["uid"].as_str().unwrap().is_empty());
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(inputs.iter().any(|input| input["name"] == "DS_PROMETHEUS"
        && input["type"] == "datasource"
        && input["pluginId"] == "prometheus"));

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id repeated"
        );
        let grid = &panel["gridPos"];
        let (x, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(
                !metric_names(target["expr"].as_str().unwrap()).is_empty(),
                "{title}: a query of no sipfilter metric"
            );
        }
    }
    assert!(panels.len() >= 9);

    let exported: BTreeSet<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
    for name in metric_names(&text) {
        assert!(exported.contains(name), "the dashboard queries {name}");
    }
}

#[test]
fn documentation_lists_every_metric() {
    let text = repository_file("docs/metrics.md");
    let documented = metric_names(&text);
    for (name, _) in FAMILIES {
        assert!(documented.contains(name), "docs/metrics.md lacks {name}");
    }
    let exported: BTreeSet<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
    for name in documented {
        assert!(exported.contains(name), "docs/metrics.md names {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` as is and reads the reply up to the server's close.
async fn exchange(address: SocketAddr, request: &[u8]) -> io::Result<Reply> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(request).await?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await?;
    let text = String::from_utf8(bytes).expect("UTF-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// `GET target` in HTTP/1.0, which keeps servers from chunking the body.
async fn get(address: SocketAddr, target: &str) -> io::Result<Reply> {
    let request = format!("GET {target} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    timeout(
        Duration::from_secs(10),
        exchange(address, request.as_bytes()),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in 10 s"))?
}

/// Starts `serve` on a loopback port; the returned handle's abort stops it.
async fn start(
    snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (address, tokio::spawn(serve(listener, snapshot)))
}

#[tokio::test]
async fn serves_metrics_and_index() {
    let scrapes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&scrapes);
    let (address, server) = start(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        synthetic()
    })
    .await;

    let reply = get(address, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some(CONTENT_TYPE));
    assert_eq!(
        reply.header("Content-Length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.body, render(&synthetic()));
    assert_eq!(scrapes.load(Ordering::SeqCst), 1, "one snapshot per scrape");

    let reply = get(address, "/metrics?name[]=x").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(scrapes.load(Ordering::SeqCst), 2);

    let reply = get(address, "/").await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("/metrics"));
    assert_eq!(
        scrapes.load(Ordering::SeqCst),
        2,
        "the index takes no snapshot"
    );
    server.abort();
}

#[tokio::test]
async fn answers_other_requests_with_errors() {
    let (address, server) = start(synthetic).await;

    assert_eq!(get(address, "/nope").await.unwrap().status, 404);
    assert_eq!(get(address, "/metrics/x").await.unwrap().status, 404);

    let reply = exchange(address, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("Allow"), Some("GET"));

    let reply = exchange(address, b"hello\r\n\r\n").await.unwrap();
    assert_eq!(reply.status, 400);
    let reply = exchange(address, b"GET /metrics SPDY/3\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(reply.status, 400);

    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    let reply = exchange(address, huge.as_bytes()).await.unwrap();
    assert_eq!(reply.status, 431);
    server.abort();
}

/// Waits until the server closes `stream` (end of file or reset) and returns when.
async fn closed(mut stream: impl AsyncRead + Unpin) -> Instant {
    let mut buffer = [0u8; 64];
    let limit = IO_TIMEOUT + Duration::from_secs(5);
    match timeout(limit, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => Instant::now(),
        Ok(Ok(_)) => panic!("the server answered an incomplete request"),
        Err(_) => panic!("the connection is still open after {limit:?}"),
    }
}

#[tokio::test]
async fn silent_and_trickling_clients_time_out_without_blocking_scrapes() {
    let (address, server) = start(synthetic).await;
    let started = Instant::now();

    let silent = TcpStream::connect(address).await.unwrap();
    // Sends a byte every 300 ms, never ending its head: each read succeeds, the deadline must
    // still apply to the whole head.
    let (trickle_read, mut trickle_write) = TcpStream::connect(address).await.unwrap().into_split();
    let trickler = tokio::spawn(async move {
        for _ in 0..50 {
            if trickle_write.write_all(b"G").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let reply = get(address, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a scrape waited for the idle clients"
    );

    let (silent_closed, trickle_closed) = tokio::join!(closed(silent), closed(trickle_read));
    for at in [silent_closed, trickle_closed] {
        let after = at - started;
        assert!(
            after >= IO_TIMEOUT - Duration::from_millis(500),
            "closed early: {after:?}"
        );
    }
    trickler.abort();

    assert_eq!(get(address, "/metrics").await.unwrap().status, 200);
    server.abort();
}

#[tokio::test]
async fn stopping_the_server_closes_its_connections() {
    let (address, server) = start(synthetic).await;
    let idle = TcpStream::connect(address).await.unwrap();
    // Lets the server accept the connection before it is stopped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = Instant::now();
    server.abort();
    let at = closed(idle).await;
    assert!(at - stopped < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// The real Prometheus
// ---------------------------------------------------------------------------------------------

/// Kills the child by its PID when dropped, so a failing test leaves no Prometheus behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn real_prometheus_scrapes_the_endpoint() {
    let Some(prometheus) = find_in_path("prometheus") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "prometheus is not installed (Debian package `prometheus`; `cargo xtask setup` \
             installs it)"
        );
        eprintln!("skipped: prometheus is not installed (Debian package `prometheus`)");
        return;
    };

    let (target, server) = start(synthetic).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: \
             sipfilter\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log_path = dir.path().join("prometheus.log");
    let web = SocketAddr::from(([127, 0, 0, 1], free_loopback_port()));
    let mut child = KillOnDrop(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", prometheus.display())),
    );
    let log = || fs::read_to_string(&log_path).unwrap_or_default();

    let query = format!(
        "/api/v1/query?query={}",
        url_encode(r#"sipfilter_packets_total{reason="scanner_user_agent"}"#)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", log());
        }
        // Refused until Prometheus listens; empty until its first scrape is stored.
        if let Ok(reply) = get(web, &query).await
            && reply.status == 200
        {
            let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(answer["status"], "success", "{}", reply.body);
            if let Some(series) = answer["data"]["result"].as_array().and_then(|r| r.first()) {
                break series.clone();
            }
        }
        if Instant::now() > deadline {
            let targets = get(web, "/api/v1/targets").await.map(|reply| reply.body);
            panic!(
                "no sample in 20 s; targets: {targets:?}\nprometheus log:\n{}",
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    assert_eq!(result["value"][1], "42", "{result}");
    assert_eq!(result["metric"]["verdict"], "drop", "{result}");
    assert_eq!(result["metric"]["job"], "sipfilter", "{result}");

    // Prometheus filed the samples under the family their HELP and TYPE declared.
    let metadata = api(web, "/api/v1/metadata?metric=sipfilter_packets_total").await;
    assert_eq!(
        metadata["data"]["sipfilter_packets_total"][0]["type"], "counter",
        "{metadata}"
    );

    // Every dashboard query is valid PromQL, with Grafana's variables given values.
    let dashboard: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/grafana/sipfilter-dashboard.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let promql = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let answer = api(web, &format!("/api/v1/query?query={}", url_encode(&promql))).await;
            assert_eq!(
                answer["status"], "success",
                "{}: {expr}: {answer}",
                panel["title"]
            );
        }
    }
    drop(child);
    server.abort();
}

/// The JSON answer of a Prometheus API call that must succeed.
async fn api(address: SocketAddr, target: &str) -> serde_json::Value {
    let reply = get(address, target).await.unwrap();
    assert_eq!(reply.status, 200, "{target}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}
