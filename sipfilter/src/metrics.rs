//! The Prometheus endpoint: [`render`] encodes a [`Snapshot`] of the datapath's and the daemon's
//! counters in the text exposition format (0.0.4), and [`serve`] answers scrapes over HTTP.
//!
//! The counters are owned by the kernel (the per-CPU slots of `SF_STATS`) and by the daemon, not
//! by this module: every scrape takes a fresh snapshot and encodes its values as constant
//! metrics, so nothing is kept between scrapes and the datapath's counts survive a restart of the
//! daemon. Metric names, labels and meanings are listed in `docs/metrics.md`.

use std::{fmt, io, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode_registry},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use sipfilter_common::{Method, Reason, ResponseClass, stats};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout,
};

/// Everything a scrape reports, gathered by the daemon at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The datapath's per-CPU counters already summed, indexed as `sipfilter_common::stats`.
    /// Empty when they could not be read: the datapath's series are then left out rather than
    /// reported as zero, which would look like a counter reset.
    pub counters: Vec<u64>,
    pub bans_active: u64,
    /// Bans issued since the daemon started, by reason ("rate_limited", "scanner", "toll_fraud",
    /// "auth_failure", "manual").
    pub bans_total: Vec<(String, u64)>,
    /// Allow/deny entries by (kind "allow"|"deny", origin "policy"|"cli"|"dns").
    pub entries: Vec<(String, String, u64)>,
    /// Map occupancy: (map name, entries used, capacity).
    pub maps: Vec<(String, u64, u64)>,
    /// Events the daemon read from the ring buffer.
    pub events_received: u64,
    /// Policy reloads that took effect.
    pub reloads: u64,
    /// Policy reloads refused (the running policy stayed).
    pub reload_failures: u64,
    /// Unix time the daemon started.
    pub start_time_seconds: f64,
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes `snapshot` in the Prometheus text exposition format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut open_metrics = String::new();
    encode_registry(&mut open_metrics, &registry).expect("writing to a String cannot fail");
    to_text_format(&open_metrics)
}

/// prometheus-client writes OpenMetrics, which names a counter family without its `_total`
/// suffix in `# HELP` and `# TYPE` while its samples carry it. The 0.0.4 text format names the
/// family like its samples, and a parser of that format would otherwise file the samples under
/// an untyped family of their own, so the suffix is added to those two lines. Everything else
/// the encoder writes here is the same in both formats.
fn to_text_format(open_metrics: &str) -> String {
    let mut text = String::with_capacity(open_metrics.len() + 1024);
    let mut lines = open_metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if lines
                .next_if_eq(&format!("# TYPE {name} counter").as_str())
                .is_some()
            {
                text.push_str(&format!(
                    "# HELP {name}_total {help}\n# TYPE {name}_total counter\n"
                ));
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Labels of one series, in the order they are written.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Encodes a [`Snapshot`]; registered afresh for every scrape.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    // Counter families are named without `_total` here: the encoder appends it.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = &self.0;
        let slot = |index: u32| snapshot.counters.get(index as usize).copied();
        let reason = |reason: Reason| slot(stats::REASON_BASE + reason as u32);
        let method = |method: Method| slot(stats::METHOD_BASE + method as u32);

        counters(
            &mut encoder,
            "sipfilter_packets",
            "Packets the datapath decided on, by verdict and reason (verdict drop: dropped in \
             enforce mode)",
            Reason::ALL.into_iter().filter_map(|r| {
                let verdict = if r.is_drop() { "drop" } else { "pass" };
                Some((vec![("verdict", verdict), ("reason", r.name())], reason(r)?))
            }),
        )?;
        counters(
            &mut encoder,
            "sipfilter_monitored",
            "Rule hits in monitor mode: packets passed that enforce mode would have dropped, by \
             reason",
            Reason::ALL
                .into_iter()
                .filter(|r| r.is_drop())
                .filter_map(|r| {
                    let hits = slot(stats::MONITOR_BASE + r as u32)?;
                    Some((vec![("reason", r.name())], hits))
                }),
        )?;
        counters(
            &mut encoder,
            "sipfilter_sip_requests",
            "SIP requests the datapath parsed, by method (OTHER: a method it does not know)",
            Method::ALL
                .into_iter()
                .filter(|&m| m != Method::Response)
                .filter_map(|m| Some((vec![("method", m.name())], method(m)?))),
        )?;
        counters(
            &mut encoder,
            "sipfilter_sip_responses",
            "SIP responses the datapath parsed",
            method(Method::Response).map(|count| (vec![], count)),
        )?;
        counters(
            &mut encoder,
            "sipfilter_answers",
            "SIP responses the host sent from its SIP ports, as the egress watcher classified \
             them (challenge: 401/407; rejection: 403/404/484 to REGISTER, INVITE, OPTIONS, \
             SUBSCRIBE; success: 2xx to REGISTER or INVITE)",
            ResponseClass::ALL.into_iter().filter_map(|class| {
                let count = slot(stats::RESPONSE_BASE + class as u32)?;
                Some((vec![("class", class.name())], count))
            }),
        )?;
        counters(
            &mut encoder,
            "sipfilter_rate_limited",
            "Requests dropped for exceeding their source's rate, by method",
            [
                (Method::Register, Reason::RateRegister),
                (Method::Invite, Reason::RateInvite),
            ]
            .into_iter()
            .filter_map(|(m, r)| Some((vec![("method", m.name())], reason(r)?))),
        )?;
        gauges(
            &mut encoder,
            "sipfilter_bans_active",
            "Sources banned now",
            [(vec![], snapshot.bans_active)],
        )?;
        counters(
            &mut encoder,
            "sipfilter_bans",
            "Bans issued since the daemon started, by reason",
            snapshot
                .bans_total
                .iter()
                .map(|(reason, count)| (vec![("reason", reason.as_str())], *count)),
        )?;
        gauges(
            &mut encoder,
            "sipfilter_list_entries",
            "Entries of the source lists, by kind (allow, deny) and origin (policy, cli, dns, \
             learned)",
            snapshot.entries.iter().map(|(kind, origin, count)| {
                (
                    vec![("kind", kind.as_str()), ("origin", origin.as_str())],
                    *count,
                )
            }),
        )?;
        gauges(
            &mut encoder,
            "sipfilter_map_entries",
            "Entries in use in a BPF map",
            snapshot
                .maps
                .iter()
                .map(|(map, used, _)| (vec![("map", map.as_str())], *used)),
        )?;
        gauges(
            &mut encoder,
            "sipfilter_map_capacity",
            "Entries a BPF map can hold",
            snapshot
                .maps
                .iter()
                .map(|(map, _, capacity)| (vec![("map", map.as_str())], *capacity)),
        )?;
        counters(
            &mut encoder,
            "sipfilter_events",
            "Events the datapath wrote to the ring buffer",
            slot(stats::EVENTS_SENT).map(|count| (vec![], count)),
        )?;
        counters(
            &mut encoder,
            "sipfilter_events_lost",
            "Events the datapath dropped because the ring buffer was full",
            slot(stats::EVENTS_LOST).map(|count| (vec![], count)),
        )?;
        counters(
            &mut encoder,
            "sipfilter_events_received",
            "Events the daemon read from the ring buffer",
            [(vec![], snapshot.events_received)],
        )?;
        counters(
            &mut encoder,
            "sipfilter_policy_reloads",
            "Policy reloads that took effect",
            [(vec![], snapshot.reloads)],
        )?;
        counters(
            &mut encoder,
            "sipfilter_policy_reload_failures",
            "Policy reloads refused (the running policy stayed)",
            [(vec![], snapshot.reload_failures)],
        )?;
        gauges(
            &mut encoder,
            "sipfilter_start_time_seconds",
            "Unix time the daemon started",
            [(vec![], snapshot.start_time_seconds)],
        )?;
        // A gauge, not an OpenMetrics info: the 0.0.4 text format has no info type.
        gauges(
            &mut encoder,
            "sipfilter_build_info",
            "The daemon's version; always 1",
            [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
        )
    }
}

fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let series = series
        .into_iter()
        .map(|(labels, value)| (labels, ConstCounter::new(value)));
    family(encoder, name, help, MetricType::Counter, series)
}

fn gauges<'a, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, V)>,
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let series = series
        .into_iter()
        .map(|(labels, value)| (labels, ConstGauge::new(value)));
    family(encoder, name, help, MetricType::Gauge, series)
}

/// One family: `# HELP`, `# TYPE`, then a sample per series.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl Iterator<Item = (Labels<'a>, impl EncodeMetric)>,
) -> fmt::Result {
    let mut metric_encoder = encoder.encode_descriptor(name, help, None, metric_type)?;
    let mut series = series.peekable();
    // A family without labels has this one series. Encoded as a family member, it would be
    // written with an empty `{}`.
    if let Some((_, metric)) = series.next_if(|(labels, _)| labels.is_empty()) {
        return metric.encode(metric_encoder);
    }
    for (labels, metric) in series {
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Bytes of request head read at most; a scrape's head is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its whole request head, and then to take the whole response. The
/// deadline covers the whole exchange rather than each read, so a client trickling bytes cannot
/// hold a connection open for longer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), which would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The page at `/`, for a person who opens the address in a browser.
const INDEX: &str = "sipfilter metrics exporter\n\nMetrics: /metrics\n";

/// Serves `GET /metrics` (and a short text page on `/`; 404 otherwise) on `listener` until the
/// future is dropped. `snapshot` is called once per scrape.
///
/// Each connection is answered by a task of its own, under a deadline, so a slow or silent
/// client delays no other scrape; dropping the future also ends the connections in progress.
/// Returns only if the listener itself fails.
pub async fn serve(
    listener: TcpListener,
    snapshot: impl Fn() -> Snapshot + Send + Sync + 'static,
) -> io::Result<()> {
    let snapshot = Arc::new(snapshot);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let snapshot = Arc::clone(&snapshot);
                    connections.spawn(async move {
                        if let Err(error) = answer(stream, snapshot).await {
                            log::debug!("metrics: {peer}: {error}");
                        }
                    });
                }
                Err(error) if listener_broken(&error) => return Err(error),
                // Aborted connections, exhausted descriptors or memory: transient.
                Err(error) => {
                    log::warn!("metrics: accepting a connection: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps finished connections so the set does not grow with every scrape.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// `accept` errors that say the listening socket is unusable, as opposed to a failure of one
/// incoming connection or a momentary lack of resources.
fn listener_broken(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK)
    )
}

/// What a connection's request head came to.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed the connection before ending its head: nobody to answer.
    Closed,
}

async fn answer<F>(mut stream: TcpStream, snapshot: Arc<F>) -> io::Result<()>
where
    F: Fn() -> Snapshot + Send + Sync + 'static,
{
    let head = timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no complete request head"))??;
    let response = match head {
        Head::Closed => return Ok(()),
        Head::TooLarge => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Head::Complete(head) => route(&head, snapshot).await,
    };
    timeout(IO_TIMEOUT, async {
        stream.write_all(&response.into_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not taken"))?
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if memchr::memmem::find(&head, b"\r\n\r\n").is_some() {
            return Ok(Head::Complete(head));
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Head::Closed);
        }
        head.extend_from_slice(&chunk[..read]);
    }
}

async fn route<F>(head: &[u8], snapshot: Arc<F>) -> Response
where
    F: Fn() -> Snapshot + Send + Sync + 'static,
{
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request", "HTTP/1.x only\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" && path != "/" {
        return Response::text(404, "Not Found", "not found; metrics are at /metrics\n");
    }
    if method != "GET" {
        let mut response = Response::text(405, "Method Not Allowed", "GET only\n");
        response.allow_get = true;
        return response;
    }
    if path == "/" {
        return Response::text(200, "OK", INDEX);
    }
    // The snapshot reads kernel maps (system calls, possibly a walk of a large hash map) and
    // takes the daemon's locks: run it off the async workers so it stalls no other connection.
    match tokio::task::spawn_blocking(move || render(&snapshot())).await {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            allow_get: false,
            body,
        },
        Err(error) => {
            log::error!("metrics: taking the snapshot failed: {error}");
            Response::text(500, "Internal Server Error", "snapshot failed\n")
        }
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// Adds `Allow: GET` (required with a 405).
    allow_get: bool,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow_get: false,
            body: body.to_owned(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let allow = if self.allow_get { "Allow: GET\r\n" } else { "" };
        let mut bytes = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
        )
        .into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests;
