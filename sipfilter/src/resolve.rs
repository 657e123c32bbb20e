//! Host-name resolution for the allow list: `sipfilter allow HOSTNAME` and host names in the
//! policy are turned into their IPv4 and IPv6 addresses, together with how long those addresses
//! may be trusted, and [`next_refresh`] says when the daemon should ask again.
//!
//! The daemon is the cache: it keeps each name's addresses and re-resolves them when the TTL
//! runs out, so the resolver underneath caches nothing and every [`Resolver::lookup`] asks the
//! source afresh.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::Hosts;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::ProtoError;
use hickory_resolver::proto::op::{Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};

/// How long one query waits for an answer. Short, because a name that does not answer must be
/// reported and retried later rather than hold up the others.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a query is sent before the lookup gives up.
const QUERY_ATTEMPTS: usize = 2;

/// When to refresh a name whose source gave no TTL (e.g. /etc/hosts).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// The shortest refresh interval: a TTL of 0 or 1 s must not make the daemon hammer the server.
const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest refresh interval, however long the TTL: a changed record is seen within a day.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);
/// The first retry after a failed lookup; it doubles with each further failure.
const RETRY: Duration = Duration::from_secs(30);

/// The static host table consulted before DNS when the system configuration is used.
const SYSTEM_HOSTS_FILE: &str = "/etc/hosts";

/// Why a host name could not be resolved (or a resolver not built).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the system resolver configuration (/etc/resolv.conf): {0}")]
    SystemConfig(#[source] NetError),
    #[error("setting up the DNS resolver: {0}")]
    Setup(#[source] NetError),
    #[error("{name:?} is not a valid host name: {source}")]
    InvalidName { name: String, source: ProtoError },
    #[error("looking up {name}: no such host (NXDOMAIN)")]
    NotFound { name: String },
    #[error("looking up {name}: the name exists but has no A or AAAA record")]
    NoAddresses { name: String },
    #[error("looking up {name}: {source}")]
    Lookup { name: String, source: NetError },
}

/// The addresses a host name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// IPv4 and IPv6 addresses, sorted and deduplicated.
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL among the answers; `None` when the source gives none (/etc/hosts, an
    /// address literal).
    pub ttl: Option<Duration>,
}

/// A stub resolver for A and AAAA records.
#[derive(Debug)]
pub struct Resolver {
    /// The DNS server to ask; `None` for the system configuration.
    server: Option<SocketAddr>,
    /// Built from the system configuration at the first lookup that needs DNS, and tried again
    /// at the next one if that fails: a filter that starts early at boot may find no
    /// /etc/resolv.conf yet (systemd-resolved writes it later), and it must filter all the same.
    dns: OnceLock<TokioResolver>,
    /// Read afresh on every lookup so that an edit is seen at the next refresh, as with DNS.
    /// `None` when a specific server was asked for: then only that server answers.
    hosts_file: Option<PathBuf>,
}

impl Resolver {
    /// Uses the system configuration (/etc/resolv.conf, /etc/hosts) when `server` is `None`;
    /// otherwise only that DNS server (UDP, with TCP fallback when an answer is truncated).
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, ResolveError> {
        let resolver = Resolver {
            server,
            dns: OnceLock::new(),
            hosts_file: server.is_none().then(|| PathBuf::from(SYSTEM_HOSTS_FILE)),
        };
        // A server given by the operator needs no file: a mistake in its setup shows at once.
        if server.is_some() {
            resolver.dns()?;
        }
        Ok(resolver)
    }

    fn dns(&self) -> Result<&TokioResolver, ResolveError> {
        if let Some(dns) = self.dns.get() {
            return Ok(dns);
        }
        let dns = build(self.server)?;
        Ok(self.dns.get_or_init(|| dns))
    }

    /// A and AAAA for `name`, with the smallest TTL of the answers (`None` when the source gives
    /// no TTL, e.g. /etc/hosts). Both families are asked; one family failing while the other
    /// answers is not an error.
    pub async fn lookup(&self, name: &str) -> Result<Resolved, ResolveError> {
        if let Ok(address) = name.parse::<IpAddr>() {
            return Ok(Resolved {
                addresses: vec![address],
                ttl: None,
            });
        }
        let invalid = |source| ResolveError::InvalidName {
            name: name.to_owned(),
            source,
        };
        let parsed = Name::from_utf8(name).map_err(invalid)?;
        if parsed.num_labels() == 0 {
            return Err(invalid("the name is empty".into()));
        }

        if let Some(hosts_file) = &self.hosts_file
            && let Some(resolved) = lookup_hosts(hosts_file, &parsed).await
        {
            return Ok(resolved);
        }

        let dns = self.dns()?;
        let (v4, v6) = tokio::join!(dns.ipv4_lookup(parsed.clone()), dns.ipv6_lookup(parsed));
        combine(name, [v4, v6])
    }
}

/// The DNS resolver for `server`, or for the system configuration when `None`.
fn build(server: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let mut builder = match server {
        None => TokioResolver::builder_tokio().map_err(ResolveError::SystemConfig)?,
        Some(server) => {
            let connection = |mut config: ConnectionConfig| {
                config.port = server.port();
                config
            };
            // The one server's NXDOMAIN is final: there is no other to ask.
            let name_server = NameServerConfig::new(
                server.ip(),
                true,
                vec![
                    connection(ConnectionConfig::udp()),
                    connection(ConnectionConfig::tcp()),
                ],
            );
            let config = ResolverConfig::from_name_servers(vec![name_server]);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
    };
    configure(builder.options_mut());
    builder.build().map_err(ResolveError::Setup)
}

/// The resolver options sipfilter needs, whatever resolv.conf says.
fn configure(options: &mut ResolverOpts) {
    options.timeout = QUERY_TIMEOUT;
    // hickory counts the retries after the first query.
    options.attempts = QUERY_ATTEMPTS - 1;
    // The daemon schedules refreshes from the TTL itself; a cache would only answer a refresh
    // with what it already knows (and a 0 capacity stores nothing at all).
    options.cache_size = 0;
    // /etc/hosts is read by `lookup_hosts`, which can say that its answers carry no TTL.
    options.use_hosts_file = ResolveHosts::Never;
}

/// The addresses /etc/hosts (or the like) gives `name`, `None` when it names none. Like the C
/// library's "files dns" order, an entry there wins over DNS.
async fn lookup_hosts(path: &Path, name: &Name) -> Option<Resolved> {
    let contents = match tokio::fs::read(path).await {
        Ok(contents) => contents,
        // Containers often have no hosts file: DNS alone answers then.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            log::warn!(
                "reading {}: {error}; resolving with DNS only",
                path.display()
            );
            return None;
        }
    };
    let mut hosts = Hosts::default();
    if let Err(error) = hosts.read_hosts_conf(contents.as_slice()) {
        log::warn!(
            "reading {}: {error}; resolving with DNS only",
            path.display()
        );
        return None;
    }
    let mut addresses: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(|family| hosts.lookup_static_host(&Query::query(name.clone(), family)))
        .flat_map(|lookup| addresses_of(&lookup).collect::<Vec<_>>())
        .collect();
    if addresses.is_empty() {
        return None;
    }
    addresses.sort_unstable();
    addresses.dedup();
    Some(Resolved {
        addresses,
        ttl: None,
    })
}

fn addresses_of(lookup: &Lookup) -> impl Iterator<Item = IpAddr> + '_ {
    lookup
        .answers()
        .iter()
        .filter_map(|record| record.data.ip_addr())
}

/// Merges the A and AAAA answers: any address makes a success; otherwise the most telling error.
fn combine(name: &str, answers: [Result<Lookup, NetError>; 2]) -> Result<Resolved, ResolveError> {
    let mut addresses = Vec::new();
    let mut ttl: Option<u32> = None;
    let mut errors = Vec::new();
    for answer in answers {
        match answer {
            Ok(lookup) => {
                addresses.extend(addresses_of(&lookup));
                // Every answer counts, CNAMEs included: the name's addresses are only good as
                // long as each link of the chain that led to them.
                let least = lookup.answers().iter().map(|record| record.ttl).min();
                ttl = ttl.into_iter().chain(least).min();
            }
            Err(error) => errors.push(error),
        }
    }
    if !addresses.is_empty() {
        addresses.sort_unstable();
        addresses.dedup();
        let ttl = ttl.map(|seconds| Duration::from_secs(seconds.into()));
        return Ok(Resolved { addresses, ttl });
    }

    let name = name.to_owned();
    let response_code = |error: &NetError| match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            Some(*response_code)
        }
        _ => None,
    };
    // NXDOMAIN is the server's word that the name does not exist at all, so it wins; a failure
    // to get an answer (timeout, refusal) says more than "no record of this family".
    if errors
        .iter()
        .any(|error| response_code(error) == Some(ResponseCode::NXDomain))
    {
        return Err(ResolveError::NotFound { name });
    }
    match errors
        .into_iter()
        .find(|error| response_code(error).is_none())
    {
        Some(source) => Err(ResolveError::Lookup { name, source }),
        None => Err(ResolveError::NoAddresses { name }),
    }
}

/// When to look `name` up again: the TTL (at least 10 s, at most 1 day) or `default` when
/// unknown; after a failure, 30 s doubling with each failure in a row, up to `default`.
pub fn next_refresh(
    result: &Result<Resolved, ResolveError>,
    default: Duration,
    failures_in_a_row: u32,
) -> Duration {
    match result {
        Ok(resolved) => resolved
            .ttl
            .map_or(default, |ttl| ttl.clamp(MIN_REFRESH, MAX_REFRESH)),
        Err(_) => {
            // The first failure waits `RETRY`; the shift is capped where `default` has long won.
            let doublings = failures_in_a_row.saturating_sub(1).min(31);
            RETRY.saturating_mul(1 << doublings).min(default)
        }
    }
}

#[cfg(test)]
mod tests;
