//! The policy file: TOML parsed with serde into span-carrying raw structs, then validated into a
//! [`Policy`]. Every section and key is optional (missing ones take the built-in values of
//! [`Policy::builtin`]); every error names the file, the dotted key and the line and column.
//!
//! A network may be in both `sources.allow` and `sources.deny`: deny wins, as it does in the
//! datapath, which looks the deny set up first.
//!
//! `[bans]` and `[daemon]` configure the daemon (`sipfilter attach`), not the datapath: the ban
//! engine ([`crate::bans`]) and the daemon's own services.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use sipfilter_common::{TOLL_PREFIX_MAX, capacity};
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// The validated policy
// ---------------------------------------------------------------------------------------------

/// A validated policy. `Default` is [`Policy::builtin`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    pub sip: SipPorts,
    pub sources: Sources,
    pub rate_limit: RateLimit,
    pub scanners: Scanners,
    pub toll_fraud: TollFraud,
    pub restricted: Restricted,
    pub bans: Bans,
    pub responsive: Responsive,
    pub daemon: Daemon,
}

/// Destination ports carrying SIP. TLS ports are TCP ports that get only the source checks.
#[derive(Debug, Clone, PartialEq)]
pub struct SipPorts {
    pub udp: Vec<u16>,
    pub tcp: Vec<u16>,
    pub tls: Vec<u16>,
}

impl Default for SipPorts {
    fn default() -> Self {
        SipPorts {
            udp: vec![5060],
            tcp: vec![5060],
            tls: vec![5061],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sources {
    /// Trusted networks: they skip every check. A bare address is a /32 or /128.
    pub allow: Vec<IpNet>,
    /// Host names from `allow`, resolved by whoever loads the policy.
    pub allow_hosts: Vec<String>,
    /// Networks whose packets are dropped on every protected port; wins over `allow`.
    pub deny: Vec<IpNet>,
    pub untrusted_sip: UntrustedSip,
    pub deny_mode: Mode,
}

/// What SIP ports do with sources outside `sources.allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UntrustedSip {
    /// Run the SIP checks.
    #[default]
    Inspect,
    /// Drop: the SIP ports are allowlist-only.
    Drop,
}

/// Whether a rule drops (`enforce`) or only counts and reports what it would drop (`monitor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// Per-source REGISTER and INVITE limits (`None`: no limit).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// IPv6 sources share one limit per prefix of this length (32..=128): one host owns a /64.
    pub ipv6_prefix: u8,
    pub register: Option<Rate>,
    pub invite: Option<Rate>,
    /// REGISTER and INVITE from all untrusted sources together (off by default).
    pub total: Option<Rate>,
    /// Sources the limiter tracks (an LRU); applied when the datapath is attached.
    pub max_sources: u32,
    pub mode: Mode,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            ipv6_prefix: 64,
            register: Some(BUILTIN_REGISTER),
            invite: Some(BUILTIN_INVITE),
            total: None,
            max_sources: capacity::RATE_SOURCES_DEFAULT,
            mode: Mode::Enforce,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub rate: f64,
    pub burst: u32,
}

const BUILTIN_REGISTER: Rate = Rate {
    rate: 5.0,
    burst: 10,
};
const BUILTIN_INVITE: Rate = Rate {
    rate: 2.0,
    burst: 5,
};
/// What a `total` table that leaves out `rate` or `burst` gets for it (`total` itself is off
/// unless written).
const BUILTIN_TOTAL: Rate = Rate {
    rate: 100.0,
    burst: 200,
};

/// Substrings (ASCII case-insensitive) that mark a request as coming from a scanner.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanners {
    pub user_agents: Vec<String>,
    pub from: Vec<String>,
    pub mode: Mode,
}

impl Default for Scanners {
    fn default() -> Self {
        // User-Agent strings of SIP scanning and attack tools, as they appear in scans seen in
        // the wild and in the common PBX block lists. Each is specific enough not to occur in a
        // legitimate phone's or PBX's User-Agent.
        const USER_AGENTS: &[&str] = &[
            "friendly-scanner", // SIPVicious svmap/svwar/svcrack, before 0.3
            "sipvicious",       // SIPVicious 0.3 and later
            "sipcli",           // sipcli, a brute-force REGISTER/INVITE tool ("sipcli/v1.8")
            "VaxSIPUserAgent",  // toll-fraud INVITE floods
            "pplsip",           // toll-fraud INVITE floods
            "sip-scan",         // sip-scan scanner
            "sundayddr",        // sundayddr scanning worm
            "iWar",             // iWar war dialer
            "SIVuS",            // SiVuS vulnerability scanner
            "siparmyknife",     // SIP Army Knife fuzzer
            "smap",             // smap SIP scanner
        ];
        Scanners {
            user_agents: USER_AGENTS.iter().map(|&s| s.to_owned()).collect(),
            // SIPVicious puts its name in the From display name: `"sipvicious"<sip:100@1.1.1.1>`.
            from: vec!["sipvicious".to_owned()],
            mode: Mode::Enforce,
        }
    }
}

/// Request-URI user prefixes that INVITEs from untrusted sources may not dial. Empty by default:
/// refusing international numbers out of the box would break legitimate calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TollFraud {
    pub deny_prefixes: Vec<String>,
    pub mode: Mode,
}

/// Ports (not SIP) that only allowlisted sources may reach. Empty by default: restricting SSH
/// or a web console out of the box could lock the operator out.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restricted {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub mode: Mode,
}

/// When the daemon bans a source for its offences (fail2ban semantics, see [`crate::bans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bans {
    /// `false`: offences are never turned into bans (manual bans still work).
    pub enabled: bool,
    /// Weighted offences within `find_time` that ban a source.
    pub max_failures: u32,
    /// Challenges (401/407) within `find_time` not followed by a success: more ban the source.
    pub max_challenges: u32,
    /// Distinct user names rejected (403/404/484) within `find_time`: more ban the source as
    /// an extension enumerator.
    pub max_users: u32,
    /// The sliding window offences are counted in.
    pub find_time: Duration,
    /// Length of a source's first ban.
    pub ban_time: Duration,
    /// Cap of the doubling applied to a source banned again within a day; `>= ban_time`.
    pub max_ban_time: Duration,
    pub weights: OffenceWeights,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            enabled: true,
            max_failures: 5,
            max_challenges: 10,
            max_users: 3,
            find_time: Duration::from_secs(10 * 60),
            ban_time: Duration::from_secs(HOUR),
            max_ban_time: Duration::from_secs(7 * DAY),
            weights: OffenceWeights::default(),
        }
    }
}

/// Offence units each kind of offence counts for towards `max_failures` (0: not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffenceWeights {
    pub rate_limited: u32,
    pub scanner: u32,
    pub toll_fraud: u32,
    pub rejection: u32,
}

impl Default for OffenceWeights {
    fn default() -> Self {
        // A scanner fingerprint or a toll-fraud dial is deliberate on its own, so with the
        // default max_failures one is enough; a rate-limit hit or a refused request can be a
        // misconfigured phone, so it takes a few.
        OffenceWeights {
            rate_limited: 1,
            scanner: 5,
            toll_fraud: 5,
            rejection: 1,
        }
    }
}

/// Learned trust (FreePBX's "responsive firewall"): a source the PBX grants a registration is
/// trusted for the registration's lifetime plus `grace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responsive {
    pub enabled: bool,
    pub grace: Duration,
}

impl Default for Responsive {
    fn default() -> Self {
        Responsive {
            enabled: false,
            grace: Duration::from_secs(5 * 60),
        }
    }
}

/// The daemon's own services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Where the Prometheus endpoint listens; `None`: no endpoint. Loopback unless the file
    /// also sets `metrics_public = true`.
    pub metrics: Option<SocketAddr>,
    /// How often allow host names are resolved again when the answer carries no usable TTL.
    pub dns_refresh: Duration,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9868))),
            dns_refresh: Duration::from_secs(5 * 60),
        }
    }
}

const HOUR: u64 = 60 * 60;
const DAY: u64 = 24 * HOUR;

impl Policy {
    /// The policy used without `--config`: SIP on 5060 (UDP, TCP) and 5061 (TLS), no source
    /// lists, REGISTER 5/s burst 10 and INVITE 2/s burst 5 per source, the built-in scanner
    /// patterns, no toll-fraud prefixes and no restricted ports, everything enforced; bans
    /// after 5 offence units in 10 minutes, for 1 hour doubling up to a week; metrics on
    /// 127.0.0.1:9868.
    pub fn builtin() -> Policy {
        Policy::default()
    }

    /// Parses and validates `text`; `origin` names the file in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let checker = Checker { text, origin };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| checker.serde_error(&e))?;
        checker.policy(raw)
    }

    /// Reads and validates the file at `path`; an unreadable file is an error naming it.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::from_toml_str(&text, &origin),
            Err(e) => Err(ConfigError {
                origin,
                position: None,
                key: None,
                message: format!("cannot read the policy file: {e}"),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A policy file that cannot be used, as `file:line:column: key: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {message}", Place(.position, .key))]
pub struct ConfigError {
    /// The file (or whatever name the text was given).
    pub origin: String,
    /// Where the offending value starts; `None` when the file could not be read.
    pub position: Option<Position>,
    /// Dotted path of the offending key, e.g. `sources.deny[1]`; `None` for a syntax error
    /// outside any key or an unreadable file.
    pub key: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The `:line:column: key` between the file name and the message, with the parts known.
struct Place<'a>(&'a Option<Position>, &'a Option<String>);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(position) = self.0 {
            write!(f, ":{}:{}", position.line, position.column)?;
        }
        if let Some(key) = self.1 {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------------

/// A list whose entries keep their place in the file. Numbers are read as `i64` so that an
/// out-of-range value gets our message ("1..=65535") rather than serde's ("expected u16").
type List<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    sip: RawSip,
    sources: RawSources,
    rate_limit: RawRateLimit,
    scanners: RawScanners,
    toll_fraud: RawTollFraud,
    restricted: RawRestricted,
    bans: RawBans,
    responsive: RawResponsive,
    daemon: RawDaemon,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSip {
    udp_ports: Option<List<i64>>,
    tcp_ports: Option<List<i64>>,
    tls_ports: Option<List<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawSources {
    allow: Option<List<String>>,
    deny: Option<List<String>>,
    untrusted_sip: Option<UntrustedSip>,
    deny_mode: Option<Mode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawRateLimit {
    ipv6_prefix: Option<Spanned<i64>>,
    register: Option<Spanned<RawLimit>>,
    invite: Option<Spanned<RawLimit>>,
    total: Option<Spanned<RawLimit>>,
    max_sources: Option<Spanned<i64>>,
    mode: Option<Mode>,
}

/// `"off"` or `{ rate = .., burst = .. }`; a key left out of the table keeps its built-in value.
enum RawLimit {
    Off,
    On(RawRate),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    rate: Option<Spanned<f64>>,
    burst: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;

        impl<'de> de::Visitor<'de> for LimitVisitor {
            type Value = RawLimit;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"off\" or a table like { rate = 5, burst = 10 }")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawLimit, E> {
                if value == "off" {
                    Ok(RawLimit::Off)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawLimit, A::Error> {
                RawRate::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawLimit::On)
            }
        }

        deserializer.deserialize_any(LimitVisitor)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawScanners {
    user_agents: Option<List<String>>,
    from: Option<List<String>>,
    mode: Option<Mode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTollFraud {
    deny_prefixes: Option<List<String>>,
    mode: Option<Mode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawRestricted {
    tcp: Option<List<i64>>,
    udp: Option<List<i64>>,
    mode: Option<Mode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBans {
    enabled: Option<bool>,
    max_failures: Option<Spanned<i64>>,
    max_challenges: Option<Spanned<i64>>,
    max_users: Option<Spanned<i64>>,
    find_time: Option<Spanned<String>>,
    ban_time: Option<Spanned<String>>,
    max_ban_time: Option<Spanned<String>>,
    weights: Option<RawWeights>,
}

/// A kind left out keeps its built-in weight.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawWeights {
    rate_limited: Option<Spanned<i64>>,
    scanner: Option<Spanned<i64>>,
    toll_fraud: Option<Spanned<i64>>,
    rejection: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawResponsive {
    enabled: Option<bool>,
    grace: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawDaemon {
    metrics: Option<Spanned<String>>,
    metrics_public: Option<bool>,
    dns_refresh: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Entries any one list may hold: far beyond a sane policy, low enough that a runaway generated
/// file is caught here rather than by a map insert at attach time.
const MAX_LIST_ENTRIES: usize = 4096;
const MAX_PATTERN_BYTES: usize = 64;
/// Rates outside these bounds would round the datapath's nanosecond interval to 0 (which means
/// "no limit") or overflow it.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_BURST: i64 = 1_000_000;
const MAX_SOURCES: std::ops::RangeInclusive<i64> = 1024..=16_000_000;
const IPV6_PREFIX: std::ops::RangeInclusive<i64> = 32..=128;
const MAX_FAILURES: std::ops::RangeInclusive<i64> = 1..=1000;
const WEIGHT: std::ops::RangeInclusive<i64> = 0..=1000;
/// Distinct rejected users a source may collect: the engine keeps that many names per source.
const MAX_USERS: std::ops::RangeInclusive<i64> = 1..=100;

/// Bounds of a duration key, with the way the message writes them.
struct DurationRange {
    min: Duration,
    max: Duration,
    text: &'static str,
}

const GRACE: DurationRange = DurationRange {
    min: Duration::from_secs(0),
    max: Duration::from_secs(DAY),
    text: "0s to 1d",
};
const FIND_TIME: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * DAY),
    text: "1s to 7d",
};
const BAN_TIME: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(365 * DAY),
    text: "1s to 365d",
};
const DNS_REFRESH: DurationRange = DurationRange {
    min: Duration::from_secs(10),
    max: Duration::from_secs(DAY),
    text: "10s to 1d",
};

struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
}

/// A validated port list; `span` is `None` for entries of a built-in default.
struct PortList {
    key: &'static str,
    ports: Vec<(u16, Option<Range<usize>>)>,
}

impl Checker<'_> {
    fn error(&self, key: String, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            position: Some(position(self.text, span.start)),
            key: Some(key),
            message: message.into(),
        }
    }

    fn serde_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        ConfigError {
            origin: self.origin.to_owned(),
            position: span.as_ref().map(|span| position(self.text, span.start)),
            key: span.and_then(|span| key_at(self.text, span.start)),
            message: plain_message(error.message()),
        }
    }

    fn policy(&self, raw: RawPolicy) -> Result<Policy, ConfigError> {
        let builtin = Policy::builtin();
        let udp = self.ports("sip.udp_ports", raw.sip.udp_ports, &builtin.sip.udp)?;
        let tcp = self.ports("sip.tcp_ports", raw.sip.tcp_ports, &builtin.sip.tcp)?;
        let tls = self.ports("sip.tls_ports", raw.sip.tls_ports, &builtin.sip.tls)?;
        let restricted_udp = self.ports("restricted.udp", raw.restricted.udp, &[])?;
        let restricted_tcp = self.ports("restricted.tcp", raw.restricted.tcp, &[])?;
        self.one_role_per_port(&[&udp, &restricted_udp])?;
        self.one_role_per_port(&[&tcp, &tls, &restricted_tcp])?;

        let sources = self.sources(raw.sources)?;
        let rate_limit = self.rate_limit(raw.rate_limit, builtin.rate_limit)?;

        let scanners = Scanners {
            user_agents: self.patterns(
                "scanners.user_agents",
                raw.scanners.user_agents,
                builtin.scanners.user_agents,
            )?,
            from: self.patterns("scanners.from", raw.scanners.from, builtin.scanners.from)?,
            mode: raw.scanners.mode.unwrap_or_default(),
        };
        let toll_fraud = TollFraud {
            deny_prefixes: self.toll_prefixes(raw.toll_fraud.deny_prefixes)?,
            mode: raw.toll_fraud.mode.unwrap_or_default(),
        };

        let bans = self.bans(raw.bans, builtin.bans)?;
        let responsive = Responsive {
            enabled: raw.responsive.enabled.unwrap_or(builtin.responsive.enabled),
            grace: self.duration(
                "responsive.grace",
                raw.responsive.grace.as_ref(),
                builtin.responsive.grace,
                GRACE,
            )?,
        };
        let daemon = self.daemon(raw.daemon, builtin.daemon)?;

        let values = |list: PortList| list.ports.into_iter().map(|(port, _)| port).collect();
        Ok(Policy {
            sip: SipPorts {
                udp: values(udp),
                tcp: values(tcp),
                tls: values(tls),
            },
            sources,
            rate_limit,
            scanners,
            toll_fraud,
            restricted: Restricted {
                tcp: values(restricted_tcp),
                udp: values(restricted_udp),
                mode: raw.restricted.mode.unwrap_or_default(),
            },
            bans,
            responsive,
            daemon,
        })
    }

    /// The entries of a list that is present, after checking its length.
    fn entries<T>(&self, key: &str, list: List<T>) -> Result<Vec<Spanned<T>>, ConfigError> {
        if list.get_ref().len() > MAX_LIST_ENTRIES {
            return Err(self.error(
                key.to_owned(),
                &list.span(),
                format!(
                    "{} entries; a list may hold at most {MAX_LIST_ENTRIES}",
                    list.get_ref().len()
                ),
            ));
        }
        Ok(list.into_inner())
    }

    fn ports(
        &self,
        key: &'static str,
        list: Option<List<i64>>,
        builtin: &[u16],
    ) -> Result<PortList, ConfigError> {
        let Some(list) = list else {
            let ports = builtin.iter().map(|&port| (port, None)).collect();
            return Ok(PortList { key, ports });
        };
        let mut ports = Vec::new();
        for (index, entry) in self.entries(key, list)?.into_iter().enumerate() {
            let span = entry.span();
            let value = entry.into_inner();
            let port = u16::try_from(value)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| {
                    self.error(
                        format!("{key}[{index}]"),
                        &span,
                        format!("port {value} is out of range: ports are 1..=65535"),
                    )
                })?;
            ports.push((port, Some(span)));
        }
        Ok(PortList { key, ports })
    }

    /// A port has one role per transport (SIP, TLS or restricted), and appears once per list.
    fn one_role_per_port(&self, lists: &[&PortList]) -> Result<(), ConfigError> {
        let mut seen: HashMap<u16, (&str, Option<Range<usize>>)> = HashMap::new();
        // Built-in lists first: they never clash among themselves, so a clash is always reported
        // at a value the operator wrote.
        let (builtin, written): (Vec<&PortList>, Vec<&PortList>) = lists
            .iter()
            .copied()
            .partition(|list| list.ports.iter().all(|(_, span)| span.is_none()));
        for list in builtin.into_iter().chain(written) {
            for (index, (port, span)) in list.ports.iter().enumerate() {
                let Some((other, other_span)) = seen.get(port) else {
                    seen.insert(*port, (list.key, span.clone()));
                    continue;
                };
                let other_place = match other_span {
                    Some(other_span) => {
                        format!("line {}", position(self.text, other_span.start).line)
                    }
                    None => format!("built-in default; set {other} to change it"),
                };
                let message = if *other == list.key {
                    format!("port {port} is listed twice ({other_place})")
                } else {
                    format!(
                        "port {port} is also in {other} ({other_place}): on one transport a \
                         port has one role, SIP, TLS or restricted"
                    )
                };
                let span = span.clone().unwrap_or_default();
                return Err(self.error(format!("{}[{index}]", list.key), &span, message));
            }
        }
        Ok(())
    }

    fn sources(&self, raw: RawSources) -> Result<Sources, ConfigError> {
        let mut sources = Sources {
            untrusted_sip: raw.untrusted_sip.unwrap_or_default(),
            deny_mode: raw.deny_mode.unwrap_or_default(),
            ..Sources::default()
        };
        if let Some(list) = raw.allow {
            for (index, entry) in self.entries("sources.allow", list)?.into_iter().enumerate() {
                let text = entry.get_ref();
                let problem = match parse_net(text) {
                    Ok(net) => {
                        sources.allow.push(net);
                        continue;
                    }
                    Err(NetError::NotAddress(_)) if is_host_name(text) => {
                        sources.allow_hosts.push(text.clone());
                        continue;
                    }
                    Err(NetError::NotAddress(problem)) => format!(
                        "{problem}; sources.allow takes addresses, CIDRs and host names, e.g. \
                         \"192.0.2.0/24\", \"2001:db8::/48\", \"192.0.2.7\" or \"pbx.example.com\""
                    ),
                    Err(NetError::Invalid(problem)) => problem,
                };
                return Err(self.error(format!("sources.allow[{index}]"), &entry.span(), problem));
            }
        }
        if let Some(list) = raw.deny {
            for (index, entry) in self.entries("sources.deny", list)?.into_iter().enumerate() {
                let text = entry.get_ref();
                let problem = match parse_net(text) {
                    Ok(net) => {
                        sources.deny.push(net);
                        continue;
                    }
                    Err(NetError::NotAddress(problem)) if is_host_name(text) => format!(
                        "{problem}; sources.deny takes addresses and CIDRs only (host names are \
                         accepted in sources.allow)"
                    ),
                    Err(NetError::NotAddress(problem)) => format!(
                        "{problem}; sources.deny takes addresses and CIDRs, e.g. \
                         \"203.0.113.0/24\" or \"2001:db8::1\""
                    ),
                    Err(NetError::Invalid(problem)) => problem,
                };
                return Err(self.error(format!("sources.deny[{index}]"), &entry.span(), problem));
            }
        }
        Ok(sources)
    }

    fn rate_limit(&self, raw: RawRateLimit, builtin: RateLimit) -> Result<RateLimit, ConfigError> {
        let ipv6_prefix = match raw.ipv6_prefix {
            None => builtin.ipv6_prefix,
            Some(value) => self.in_range("rate_limit.ipv6_prefix", &value, IPV6_PREFIX)? as u8,
        };
        let max_sources = match raw.max_sources {
            None => builtin.max_sources,
            Some(value) => self.in_range("rate_limit.max_sources", &value, MAX_SOURCES)? as u32,
        };
        Ok(RateLimit {
            ipv6_prefix,
            register: self.limit("rate_limit.register", raw.register, BUILTIN_REGISTER)?,
            invite: self.limit("rate_limit.invite", raw.invite, BUILTIN_INVITE)?,
            total: match raw.total {
                None => None,
                Some(total) => self.limit("rate_limit.total", Some(total), BUILTIN_TOTAL)?,
            },
            max_sources,
            mode: raw.mode.unwrap_or_default(),
        })
    }

    fn bans(&self, raw: RawBans, builtin: Bans) -> Result<Bans, ConfigError> {
        let max_failures = match raw.max_failures {
            None => builtin.max_failures,
            Some(value) => self.in_range("bans.max_failures", &value, MAX_FAILURES)? as u32,
        };
        let max_challenges = match raw.max_challenges {
            None => builtin.max_challenges,
            Some(value) => self.in_range("bans.max_challenges", &value, MAX_FAILURES)? as u32,
        };
        let max_users = match raw.max_users {
            None => builtin.max_users,
            Some(value) => self.in_range("bans.max_users", &value, MAX_USERS)? as u32,
        };
        let find_time = self.duration(
            "bans.find_time",
            raw.find_time.as_ref(),
            builtin.find_time,
            FIND_TIME,
        )?;
        let ban_time = self.duration(
            "bans.ban_time",
            raw.ban_time.as_ref(),
            builtin.ban_time,
            BAN_TIME,
        )?;
        let max_ban_time = self.duration(
            "bans.max_ban_time",
            raw.max_ban_time.as_ref(),
            builtin.max_ban_time,
            BAN_TIME,
        )?;
        if max_ban_time < ban_time {
            // Reported at a value the operator wrote, naming the other one.
            let message = |other: &str| {
                format!(
                    "bans.max_ban_time ({}) is shorter than bans.ban_time ({}): escalation \
                     doubles a ban up to max_ban_time, so it must be at least ban_time{other}",
                    humantime::format_duration(max_ban_time),
                    humantime::format_duration(ban_time),
                )
            };
            return Err(match (raw.max_ban_time, raw.ban_time) {
                (Some(value), _) => {
                    self.error("bans.max_ban_time".to_owned(), &value.span(), message(""))
                }
                (None, Some(value)) => self.error(
                    "bans.ban_time".to_owned(),
                    &value.span(),
                    message(
                        " (max_ban_time is the built-in value; set bans.max_ban_time to change it)",
                    ),
                ),
                (None, None) => unreachable!("the built-in values are consistent"),
            });
        }
        let weights = raw.weights.unwrap_or_default();
        let weight = |key: &str, value: Option<Spanned<i64>>, builtin: u32| match value {
            None => Ok(builtin),
            Some(value) => self
                .in_range(&format!("bans.weights.{key}"), &value, WEIGHT)
                .map(|w| w as u32),
        };
        Ok(Bans {
            enabled: raw.enabled.unwrap_or(builtin.enabled),
            max_failures,
            max_challenges,
            max_users,
            find_time,
            ban_time,
            max_ban_time,
            weights: OffenceWeights {
                rate_limited: weight(
                    "rate_limited",
                    weights.rate_limited,
                    builtin.weights.rate_limited,
                )?,
                scanner: weight("scanner", weights.scanner, builtin.weights.scanner)?,
                toll_fraud: weight("toll_fraud", weights.toll_fraud, builtin.weights.toll_fraud)?,
                rejection: weight("rejection", weights.rejection, builtin.weights.rejection)?,
            },
        })
    }

    fn daemon(&self, raw: RawDaemon, builtin: Daemon) -> Result<Daemon, ConfigError> {
        let public = raw.metrics_public.unwrap_or(false);
        let metrics = match raw.metrics {
            None => builtin.metrics,
            Some(value) => self.metrics(value, public)?,
        };
        let dns_refresh = self.duration(
            "daemon.dns_refresh",
            raw.dns_refresh.as_ref(),
            builtin.dns_refresh,
            DNS_REFRESH,
        )?;
        Ok(Daemon {
            metrics,
            dns_refresh,
        })
    }

    /// `"off"` or a socket address, loopback unless `public`.
    fn metrics(
        &self,
        value: Spanned<String>,
        public: bool,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let text = value.get_ref();
        if text == "off" {
            return Ok(None);
        }
        let problem = match text.parse::<SocketAddr>() {
            Err(_) => format!(
                "{text:?} is not a socket address: write an address and port such as \
                 \"127.0.0.1:9868\" or \"[::1]:9868\", or \"off\" for no metrics endpoint"
            ),
            Ok(addr) if addr.port() == 0 => format!(
                "{text:?} has port 0: Prometheus needs a fixed port to scrape, e.g. \"{}\"",
                SocketAddr::new(addr.ip(), 9868)
            ),
            // Exporting the counters to the network by accident leaks what the filter sees
            // (and whom it bans), so that takes a second, explicit key.
            Ok(addr) if !addr.ip().is_loopback() && !public => format!(
                "{text:?} is not a loopback address, so the metrics would be reachable from the \
                 network: set daemon.metrics_public = true to mean it"
            ),
            Ok(addr) => return Ok(Some(addr)),
        };
        Err(self.error("daemon.metrics".to_owned(), &value.span(), problem))
    }

    /// A humantime duration ("30s", "10m", "1h 30m", "1d") within `range`.
    fn duration(
        &self,
        key: &str,
        raw: Option<&Spanned<String>>,
        builtin: Duration,
        range: DurationRange,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = raw else {
            return Ok(builtin);
        };
        let text = value.get_ref();
        let problem = match humantime::parse_duration(text) {
            Err(e) => format!(
                "{text:?} is not a duration ({e}): write a number and a unit, e.g. \"30s\", \
                 \"10m\", \"1h\" or \"1d\"; allowed are {}",
                range.text
            ),
            Ok(duration) if duration < range.min || duration > range.max => {
                format!("{text:?} is out of range: allowed are {}", range.text)
            }
            Ok(duration) => return Ok(duration),
        };
        Err(self.error(key.to_owned(), &value.span(), problem))
    }

    fn in_range(
        &self,
        key: &str,
        value: &Spanned<i64>,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ConfigError> {
        let number = *value.get_ref();
        if range.contains(&number) {
            Ok(number)
        } else {
            Err(self.error(
                key.to_owned(),
                &value.span(),
                format!(
                    "{number} is out of range: allowed are {}..={}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    fn limit(
        &self,
        key: &str,
        raw: Option<Spanned<RawLimit>>,
        builtin: Rate,
    ) -> Result<Option<Rate>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Some(builtin));
        };
        let RawLimit::On(raw) = raw.into_inner() else {
            return Ok(None);
        };
        let rate = match raw.rate {
            None => builtin.rate,
            Some(value) => {
                let rate = *value.get_ref();
                // Written so that NaN fails too.
                if !(MIN_RATE..=MAX_RATE).contains(&rate) {
                    return Err(self.error(
                        format!("{key}.rate"),
                        &value.span(),
                        format!(
                            "rate {rate} is not allowed: requests per second must be a number \
                             from {MIN_RATE} to {MAX_RATE} (e.g. 5, or 0.5 for one every two \
                             seconds); to disable the limit write {key} = \"off\""
                        ),
                    ));
                }
                rate
            }
        };
        let burst = match raw.burst {
            None => builtin.burst,
            Some(value) => self.in_range(&format!("{key}.burst"), &value, 1..=MAX_BURST)? as u32,
        };
        Ok(Some(Rate { rate, burst }))
    }

    fn patterns(
        &self,
        key: &str,
        list: Option<List<String>>,
        builtin: Vec<String>,
    ) -> Result<Vec<String>, ConfigError> {
        let Some(list) = list else {
            return Ok(builtin);
        };
        let span = list.span();
        let mut patterns = Vec::new();
        for (index, entry) in self.entries(key, list)?.into_iter().enumerate() {
            let pattern = entry.get_ref();
            let problem = if pattern.is_empty() {
                Some("is empty (it would match every request)")
            } else if pattern.len() > MAX_PATTERN_BYTES {
                Some("is too long")
            } else if !pattern.is_ascii() {
                Some("is not ASCII")
            } else if pattern.contains(['\r', '\n', '\0']) {
                Some("contains CR, LF or NUL")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.error(
                    format!("{key}[{index}]"),
                    &entry.span(),
                    format!(
                        "pattern {pattern:?} {problem}: a pattern is 1 to {MAX_PATTERN_BYTES} \
                         ASCII characters without CR, LF or NUL, matched case-insensitively \
                         anywhere in the header"
                    ),
                ));
            }
            patterns.push(entry.into_inner());
        }
        // Every pattern is valid and non-empty here, so only the size can be refused.
        let needed = crate::patterns::bits_needed(&patterns).unwrap_or(0);
        if needed > crate::patterns::MAX_BITS {
            return Err(self.error(
                key.to_owned(),
                &span,
                format!(
                    "the patterns are too long in all for the datapath's matcher: each takes its \
                     length plus {} and they take {needed}, at most {} fit (duplicates and \
                     patterns that contain another are not counted); shorten or remove patterns",
                    crate::patterns::BITS_PER_PATTERN_EXTRA,
                    crate::patterns::MAX_BITS
                ),
            ));
        }
        Ok(patterns)
    }

    fn toll_prefixes(&self, list: Option<List<String>>) -> Result<Vec<String>, ConfigError> {
        const KEY: &str = "toll_fraud.deny_prefixes";
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let max_entries = (capacity::TOLL_PREFIXES as usize).min(MAX_LIST_ENTRIES);
        if list.get_ref().len() > max_entries {
            return Err(self.error(
                KEY.to_owned(),
                &list.span(),
                format!(
                    "{} prefixes; at most {max_entries} fit in the datapath",
                    list.get_ref().len()
                ),
            ));
        }
        let mut prefixes = Vec::new();
        for (index, entry) in list.into_inner().into_iter().enumerate() {
            let prefix = entry.get_ref();
            let valid = (1..=TOLL_PREFIX_MAX).contains(&prefix.len())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'*' | b'#'));
            if !valid {
                return Err(self.error(
                    format!("{KEY}[{index}]"),
                    &entry.span(),
                    format!(
                        "prefix {prefix:?} is not allowed: a prefix is 1 to {TOLL_PREFIX_MAX} of \
                         the characters 0-9, +, * and #, e.g. \"00\", \"011\" or \"+\""
                    ),
                ));
            }
            prefixes.push(entry.into_inner());
        }
        Ok(prefixes)
    }
}

/// Why a source entry is not a usable network.
enum NetError {
    /// Not an address or CIDR at all (in `sources.allow` it may still be a host name).
    NotAddress(String),
    /// An address or CIDR with a specific fault; the message says how to fix it.
    Invalid(String),
}

/// An address (as a /32 or /128) or a CIDR without host bits.
fn parse_net(text: &str) -> Result<IpNet, NetError> {
    let net =
        match text.split_once('/') {
            None => IpNet::from(text.parse::<IpAddr>().map_err(|_| {
                NetError::NotAddress(format!("{text:?} is not an IP address or CIDR"))
            })?),
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| {
                    NetError::NotAddress(format!("{addr:?} in {text:?} is not an IP address"))
                })?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let net = len
                    .parse::<u8>()
                    .ok()
                    .and_then(|len| IpNet::new(addr, len).ok())
                    .ok_or_else(|| {
                        NetError::Invalid(format!(
                            "prefix length {len:?} in {text:?} is not 0..={max}"
                        ))
                    })?;
                if net.trunc() != net {
                    return Err(NetError::Invalid(format!(
                        "{text:?} has host bits set: did you mean \"{}\"?",
                        net.trunc()
                    )));
                }
                net
            }
        };
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        // The datapath matches IPv4 packets against the IPv4 lists only.
        return Err(NetError::Invalid(format!(
            "{text:?} is an IPv4-mapped IPv6 address, which IPv4 packets never carry: write {v4} \
             instead"
        )));
    }
    Ok(net)
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, with a
/// top-level label that is not all digits (so that "300.1.1.1" is a bad address, not a name).
pub(crate) fn is_host_name(text: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    text.len() <= 253
        && text.split('.').all(label_ok)
        && text
            .rsplit('.')
            .next()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

/// 1-based line and column of byte `offset`.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// toml's message on one line, in the file's terms rather than Rust's.
fn plain_message(message: &str) -> String {
    const TERMS: &[(&str, &str)] = &[
        ("unknown field", "unknown key"),
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
    ];
    let mut message = message.trim().replace('\n', ": ");
    for (from, to) in TERMS {
        message = message.replace(from, to);
    }
    message
}

/// Dotted path (`sources.deny[1]`) of the key or value at byte `offset`, found in toml_edit's
/// spanned view of the same text (toml's own errors keep the path private).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut path = String::new();
    locate_in_table(document.as_table(), offset, &mut path).then_some(path)
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.contains(&offset))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn locate_in_table(table: &toml_edit::Table, offset: usize, path: &mut String) -> bool {
    for (name, item) in table.iter() {
        let mark = path.len();
        push_key(path, name);
        let key_span = table.key(name).and_then(toml_edit::Key::span);
        if covers(key_span, offset) || locate_in_item(item, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn locate_in_item(item: &toml_edit::Item, offset: usize, path: &mut String) -> bool {
    match item {
        toml_edit::Item::None => false,
        toml_edit::Item::Value(value) => locate_in_value(value, offset, path),
        // A header table's span is its `[header]` line only; its keys are searched first.
        toml_edit::Item::Table(table) => {
            locate_in_table(table, offset, path) || covers(table.span(), offset)
        }
        toml_edit::Item::ArrayOfTables(tables) => {
            tables.iter().enumerate().any(|(index, table)| {
                let mark = path.len();
                path.push_str(&format!("[{index}]"));
                let found = locate_in_table(table, offset, path) || covers(table.span(), offset);
                if !found {
                    path.truncate(mark);
                }
                found
            })
        }
    }
}

fn locate_in_value(value: &toml_edit::Value, offset: usize, path: &mut String) -> bool {
    match value {
        toml_edit::Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                let mark = path.len();
                path.push_str(&format!("[{index}]"));
                if locate_in_value(element, offset, path) {
                    return true;
                }
                path.truncate(mark);
            }
            covers(array.span(), offset)
        }
        toml_edit::Value::InlineTable(table) => {
            for (name, element) in table.iter() {
                let mark = path.len();
                push_key(path, name);
                let key_span = table.key(name).and_then(toml_edit::Key::span);
                if covers(key_span, offset) || locate_in_value(element, offset, path) {
                    return true;
                }
                path.truncate(mark);
            }
            covers(table.span(), offset)
        }
        _ => covers(value.span(), offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"[sip]
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

    fn parse(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml_str(text, "policy.toml")
    }

    /// The error for `text`, checked to name `key` and `line` the way users will read it.
    #[track_caller]
    fn error(text: &str, key: &str, line: usize) -> String {
        let error = parse(text).expect_err("the policy should be refused");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("policy.toml:{line}:")),
            "expected line {line}: {message}"
        );
        assert!(
            message.contains(&format!(": {key}: ")),
            "expected key {key}: {message}"
        );
        assert_eq!(error.key.as_deref(), Some(key), "{message}");
        message
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn spec_example() {
        let policy = parse(SPEC_EXAMPLE).unwrap();
        let expected = Policy {
            sip: SipPorts {
                udp: vec![5060],
                tcp: vec![5060],
                tls: vec![5061],
            },
            sources: Sources {
                allow: vec![
                    "198.51.100.0/24".parse().unwrap(),
                    "2001:db8:100::/48".parse().unwrap(),
                ],
                allow_hosts: vec![],
                deny: vec!["203.0.113.66/32".parse().unwrap()],
                untrusted_sip: UntrustedSip::Inspect,
                deny_mode: Mode::Enforce,
            },
            rate_limit: RateLimit {
                ipv6_prefix: 64,
                register: Some(Rate {
                    rate: 5.0,
                    burst: 10,
                }),
                invite: Some(Rate {
                    rate: 2.0,
                    burst: 5,
                }),
                total: None,
                max_sources: 1_000_000,
                mode: Mode::Enforce,
            },
            scanners: Scanners {
                user_agents: strings(&[
                    "friendly-scanner",
                    "sipvicious",
                    "sipcli",
                    "VaxSIPUserAgent",
                    "pplsip",
                    "sip-scan",
                ]),
                from: strings(&["sipvicious"]),
                mode: Mode::Enforce,
            },
            toll_fraud: TollFraud {
                deny_prefixes: strings(&["00", "011", "+"]),
                mode: Mode::Enforce,
            },
            restricted: Restricted {
                tcp: vec![22, 8080],
                udp: vec![4569],
                mode: Mode::Enforce,
            },
            bans: Bans::default(),
            responsive: Responsive::default(),
            daemon: Daemon::default(),
        };
        assert_eq!(policy, expected);
    }

    #[test]
    fn empty_file_is_builtin() {
        assert_eq!(parse("").unwrap(), Policy::builtin());
        assert_eq!(parse("# nothing\n\n[sip]\n").unwrap(), Policy::default());
        let builtin = Policy::builtin();
        assert_eq!(builtin.scanners.user_agents.len(), 11);
        assert!(builtin.toll_fraud.deny_prefixes.is_empty());
        assert!(builtin.restricted.tcp.is_empty() && builtin.restricted.udp.is_empty());
    }

    #[test]
    fn modes_and_other_keys() {
        let policy = parse(
            r#"
[sources]
allow = ["192.0.2.7", "2001:db8::1", "pbx.example.com", "sbc-1"]
deny = ["192.0.2.0/24"]
untrusted_sip = "drop"
deny_mode = "monitor"

[rate_limit]
ipv6_prefix = 56
max_sources = 2000000
mode = "monitor"

[scanners]
from = ["sipvicious", "friendly"]
mode = "monitor"

[toll_fraud]
deny_prefixes = ["*99#"]
mode = "monitor"

[restricted]
tcp = [22]
mode = "monitor"
"#,
        )
        .unwrap();
        assert_eq!(
            policy.sources.allow,
            vec![
                "192.0.2.7/32".parse::<IpNet>().unwrap(),
                "2001:db8::1/128".parse().unwrap()
            ]
        );
        assert_eq!(
            policy.sources.allow_hosts,
            strings(&["pbx.example.com", "sbc-1"])
        );
        // In both lists: accepted, deny wins in the datapath.
        assert_eq!(
            policy.sources.deny,
            vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(policy.sources.untrusted_sip, UntrustedSip::Drop);
        assert_eq!(policy.sources.deny_mode, Mode::Monitor);
        assert_eq!(policy.rate_limit.ipv6_prefix, 56);
        assert_eq!(policy.rate_limit.max_sources, 2_000_000);
        assert_eq!(policy.rate_limit.register, Some(BUILTIN_REGISTER));
        assert_eq!(policy.rate_limit.mode, Mode::Monitor);
        assert_eq!(policy.scanners.from, strings(&["sipvicious", "friendly"]));
        assert_eq!(policy.scanners.user_agents, Scanners::default().user_agents);
        assert_eq!(policy.scanners.mode, Mode::Monitor);
        assert_eq!(policy.toll_fraud.mode, Mode::Monitor);
        assert_eq!(policy.restricted.tcp, vec![22]);
        assert_eq!(policy.restricted.mode, Mode::Monitor);
        assert_eq!(policy.sip, SipPorts::default());
    }

    #[test]
    fn fractional_rate_off_and_partial_tables() {
        let policy =
            parse("[rate_limit]\nregister = { rate = 0.5, burst = 3 }\ninvite = \"off\"\n")
                .unwrap();
        assert_eq!(
            policy.rate_limit.register,
            Some(Rate {
                rate: 0.5,
                burst: 3
            })
        );
        assert_eq!(policy.rate_limit.invite, None);

        let policy =
            parse("[rate_limit]\nregister = { burst = 20 }\ninvite = { rate = 1 }\n").unwrap();
        assert_eq!(
            policy.rate_limit.register,
            Some(Rate {
                rate: 5.0,
                burst: 20
            })
        );
        assert_eq!(
            policy.rate_limit.invite,
            Some(Rate {
                rate: 1.0,
                burst: 5
            })
        );
    }

    /// The keys the parser accepts in the table `path` (`""` for the top level), read from its
    /// "unknown key ..., expected one of ..." error, so the list cannot drift from the code.
    fn accepted_keys(path: &str) -> Vec<String> {
        let text = match path.rsplit_once('.') {
            None if path.is_empty() => "not_a_key = 1\n".to_owned(),
            None => format!("[{path}]\nnot_a_key = 1\n"),
            Some((section, table)) => format!("[{section}]\n{table} = {{ not_a_key = 1 }}\n"),
        };
        let message = parse(&text).expect_err("an unknown key").to_string();
        // serde's forms: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, ...".
        let (_, expected) = message
            .split_once("unknown key `not_a_key`, expected ")
            .unwrap_or_else(|| panic!("{path}: no list of keys in {message:?}"));
        expected
            .trim_start_matches("one of ")
            .split(", ")
            .flat_map(|keys| keys.split(" or "))
            .map(|key| {
                key.trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_owned()
            })
            .collect()
    }

    /// The README's key table names every key the parser accepts (and docs/policy.md has a row
    /// for each), so a new key cannot ship undocumented.
    #[test]
    fn every_key_is_documented() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let reference = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md"));
        let sections = accepted_keys("");
        assert!(sections.len() >= 9, "{sections:?}");
        let mut checked = 0;
        for section in &sections {
            for key in accepted_keys(section) {
                let mut paths = vec![format!("{section}.{key}")];
                if (section.as_str(), key.as_str()) == ("bans", "weights") {
                    paths = accepted_keys("bans.weights")
                        .into_iter()
                        .map(|weight| format!("bans.weights.{weight}"))
                        .collect();
                }
                for path in paths {
                    assert!(
                        readme.contains(&format!("| `{path}` |")),
                        "README.md's key table lacks `{path}`"
                    );
                    let last = path.rsplit('.').next().unwrap();
                    assert!(
                        reference.contains(&format!("| `{last}` |")),
                        "docs/policy.md has no row for `{path}`"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 35, "only {checked} keys found");
    }

    #[test]
    fn unknown_keys_and_sections() {
        let message = error(
            "[sip]\nudp_ports = [5060]\nudp_port = [5070]\n",
            "sip.udp_port",
            3,
        );
        assert!(message.contains("unknown key `udp_port`"), "{message}");
        assert!(message.contains("`udp_ports`"), "{message}");
        error("\n[sipp]\n", "sipp", 2);
        error(
            "[rate_limit]\nregister = { rate = 1, brust = 2 }\n",
            "rate_limit.register.brust",
            2,
        );
        error(
            "[scanners]\n\nmode = \"enforce\"\npatterns = []\n",
            "scanners.patterns",
            4,
        );
        error("sip.udp_ports = [5060]\nsip.extra = 1\n", "sip.extra", 2);
    }

    #[test]
    fn wrong_types() {
        let message = error(
            "[sip]\nudp_ports = [5060, \"5070\"]\n",
            "sip.udp_ports[1]",
            2,
        );
        assert!(message.contains("expected an integer"), "{message}");
        error("[sip]\n\nudp_ports = 5060\n", "sip.udp_ports", 3);
        error("sip = 5\n", "sip", 1);
        let message = error(
            "[sources]\nuntrusted_sip = \"reject\"\n",
            "sources.untrusted_sip",
            2,
        );
        assert!(
            message.contains("`inspect`") && message.contains("`drop`"),
            "{message}"
        );
        let message = error(
            "[toll_fraud]\nmode = \"monitoring\"\n",
            "toll_fraud.mode",
            2,
        );
        assert!(
            message.contains("`enforce`") && message.contains("`monitor`"),
            "{message}"
        );
        let message = error("[rate_limit]\ninvite = \"no\"\n", "rate_limit.invite", 2);
        assert!(message.contains("\"off\""), "{message}");
        error("[rate_limit]\ninvite = 5\n", "rate_limit.invite", 2);
        error(
            "[rate_limit]\ninvite = { rate = \"fast\" }\n",
            "rate_limit.invite.rate",
            2,
        );
        error(
            "[scanners]\nuser_agents = [\"a\",\n  1]\n",
            "scanners.user_agents[1]",
            3,
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let error = parse("[sip]\nudp_ports = [5060 5070]\n").unwrap_err();
        assert_eq!(error.position.map(|p| p.line), Some(2), "{error}");
        assert!(error.to_string().starts_with("policy.toml:2:"), "{error}");
    }

    #[test]
    fn bad_addresses() {
        let text = "[sources]\ndeny = [\n  \"203.0.113.66\",\n  \"192.0.2.0/33\",\n]\n";
        let message = error(text, "sources.deny[1]", 4);
        assert!(message.contains("0..=32"), "{message}");
        let message = error(
            "[sources]\nallow = [\"300.1.1.1\"]\n",
            "sources.allow[0]",
            2,
        );
        assert!(message.contains("\"300.1.1.1\""), "{message}");
        assert!(message.contains("host names"), "{message}");
        error(
            "[sources]\nallow = [\"2001:db8::/129\"]\n",
            "sources.allow[0]",
            2,
        );
        error(
            "[sources]\nallow = [\"not a host\"]\n",
            "sources.allow[0]",
            2,
        );
        error(
            "[sources]\nallow = [\"-pbx.example.com\"]\n",
            "sources.allow[0]",
            2,
        );
        let message = error(
            "[sources]\ndeny = [\"pbx.example.com\"]\n",
            "sources.deny[0]",
            2,
        );
        assert!(
            message.contains("host names are accepted in sources.allow"),
            "{message}"
        );
        let message = error(
            "[sources]\ndeny = [\"::ffff:192.0.2.1\"]\n",
            "sources.deny[0]",
            2,
        );
        assert!(message.contains("write 192.0.2.1"), "{message}");
    }

    #[test]
    fn host_bits_get_a_hint() {
        let message = error(
            "[sources]\n\nallow = [\"192.0.2.1/24\"]\n",
            "sources.allow[0]",
            3,
        );
        assert!(message.contains("host bits"), "{message}");
        assert!(message.contains("\"192.0.2.0/24\""), "{message}");
        let message = error(
            "[sources]\ndeny = [\"2001:db8::1/32\"]\n",
            "sources.deny[0]",
            2,
        );
        assert!(message.contains("\"2001:db8::/32\""), "{message}");
    }

    #[test]
    fn bad_ports() {
        let message = error("[sip]\nudp_ports = [5060, 0]\n", "sip.udp_ports[1]", 2);
        assert!(message.contains("1..=65535"), "{message}");
        error("[restricted]\ntcp = [65536]\n", "restricted.tcp[0]", 2);
        error("[restricted]\nudp = [-1]\n", "restricted.udp[0]", 2);
        let message = error(
            "[sip]\nudp_ports = [5060,\n 5062, 5060]\n",
            "sip.udp_ports[2]",
            3,
        );
        assert!(message.contains("listed twice (line 2)"), "{message}");
    }

    #[test]
    fn port_roles_clash() {
        let text = "[sip]\ntcp_ports = [5060]\ntls_ports = [5061, 5060]\n";
        let message = error(text, "sip.tls_ports[1]", 3);
        assert!(
            message.contains("also in sip.tcp_ports (line 2)"),
            "{message}"
        );
        let text = "[sip]\nudp_ports = [5060, 4569]\n[restricted]\nudp = [4569]\n";
        error(text, "restricted.udp[0]", 4);
        // Against a built-in default: reported at the written value, with the way out.
        let message = error("[restricted]\ntcp = [22, 5061]\n", "restricted.tcp[1]", 2);
        assert!(
            message.contains("set sip.tls_ports to change it"),
            "{message}"
        );
        let message = error("[sip]\ntcp_ports = [5061]\n", "sip.tcp_ports[0]", 2);
        assert!(message.contains("sip.tls_ports"), "{message}");
        // Different transports may share a number.
        parse("[sip]\nudp_ports = [5060]\n[restricted]\ntcp = [4569]\nudp = [4569, 5061]\n")
            .unwrap();
    }

    #[test]
    fn bad_rates() {
        for rate in ["0", "-1", "nan", "inf", "-inf", "0.0"] {
            let text = format!("[rate_limit]\nregister = {{ rate = {rate}, burst = 10 }}\n");
            error(&text, "rate_limit.register.rate", 2);
        }
        error(
            "[rate_limit]\ninvite = { rate = 0, burst = 0 }\n",
            "rate_limit.invite.rate",
            2,
        );
        let message = error(
            "[rate_limit]\n\ninvite = { rate = 2, burst = 0 }\n",
            "rate_limit.invite.burst",
            3,
        );
        assert!(message.contains("1..="), "{message}");
        let message = error(
            "[rate_limit]\nipv6_prefix = 24\n",
            "rate_limit.ipv6_prefix",
            2,
        );
        assert!(message.contains("32..=128"), "{message}");
        error(
            "[rate_limit]\nipv6_prefix = 129\n",
            "rate_limit.ipv6_prefix",
            2,
        );
        error(
            "[rate_limit]\nmax_sources = 10\n",
            "rate_limit.max_sources",
            2,
        );
        error(
            "[rate_limit]\nmax_sources = 16000001\n",
            "rate_limit.max_sources",
            2,
        );
    }

    #[test]
    fn bad_toll_prefixes() {
        for prefix in ["", "00a", "12345678901234567", " 00", "00-"] {
            let text = format!("[toll_fraud]\ndeny_prefixes = [\"00\", \"{prefix}\"]\n");
            let message = error(&text, "toll_fraud.deny_prefixes[1]", 2);
            assert!(message.contains("0-9, +, * and #"), "{message}");
        }
        parse("[toll_fraud]\ndeny_prefixes = [\"1234567890123456\", \"*#+0\"]\n").unwrap();
    }

    #[test]
    fn bad_scanner_patterns() {
        let long = "x".repeat(65);
        for pattern in ["", long.as_str(), "scännér", "a\\r\\nb", "a\\u0000"] {
            let text = format!("[scanners]\nfrom = [\"ok\",\n \"{pattern}\"]\n");
            let message = error(&text, "scanners.from[1]", 3);
            assert!(message.contains("without CR, LF or NUL"), "{message}");
        }
        let at_limit = "x".repeat(64);
        parse(&format!("[scanners]\nuser_agents = [\"{at_limit}\"]\n")).unwrap();
    }

    #[test]
    fn patterns_too_long_in_all() {
        // Disjoint 10-byte patterns take 17 bits each: 30 fit in 512, 31 do not.
        let list = |count: usize| {
            (0..count)
                .map(|i| format!("\"{}{i:09}\"", char::from(b'a' + (i % 26) as u8)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        parse(&format!("[scanners]\nuser_agents = [{}]\n", list(30))).unwrap();
        let message = error(
            &format!("[scanners]\nmode = \"enforce\"\nfrom = [{}]\n", list(31)),
            "scanners.from",
            3,
        );
        assert!(message.contains("they take 527, at most 512"), "{message}");
        // Repeats are not counted.
        parse(&format!(
            "[scanners]\nfrom = [{}]\n",
            vec!["\"sipvicious\""; 100].join(", ")
        ))
        .unwrap();
    }

    #[test]
    fn too_many_entries() {
        let entries = vec!["\"a\""; MAX_LIST_ENTRIES + 1].join(", ");
        let message = error(
            &format!("[scanners]\n\nuser_agents = [{entries}]\n"),
            "scanners.user_agents",
            3,
        );
        assert!(message.contains("at most 4096"), "{message}");
        let entries = vec!["\"00\""; 1025].join(", ");
        let message = error(
            &format!("[toll_fraud]\ndeny_prefixes = [{entries}]\n"),
            "toll_fraud.deny_prefixes",
            2,
        );
        assert!(message.contains("at most 1024"), "{message}");
    }

    const MINUTE: u64 = 60;

    #[test]
    fn bans_and_daemon_defaults() {
        let builtin = Policy::builtin();
        assert_eq!(
            builtin.bans,
            Bans {
                enabled: true,
                max_failures: 5,
                max_challenges: 10,
                max_users: 3,
                find_time: Duration::from_secs(10 * MINUTE),
                ban_time: Duration::from_secs(HOUR),
                max_ban_time: Duration::from_secs(7 * DAY),
                weights: OffenceWeights {
                    rate_limited: 1,
                    scanner: 5,
                    toll_fraud: 5,
                    rejection: 1,
                },
            }
        );
        assert_eq!(
            builtin.daemon,
            Daemon {
                metrics: Some("127.0.0.1:9868".parse().unwrap()),
                dns_refresh: Duration::from_secs(5 * MINUTE),
            }
        );
        assert_eq!(
            builtin.responsive,
            Responsive {
                enabled: false,
                grace: Duration::from_secs(5 * MINUTE),
            }
        );
        assert_eq!(parse("[bans]\n[responsive]\n[daemon]\n").unwrap(), builtin);
    }

    #[test]
    fn total_rate_limit_key() {
        assert_eq!(Policy::builtin().rate_limit.total, None);
        let policy = parse("[rate_limit]\ntotal = { rate = 200, burst = 400 }\n").unwrap();
        assert_eq!(
            policy.rate_limit.total,
            Some(Rate {
                rate: 200.0,
                burst: 400
            })
        );
        let policy = parse("[rate_limit]\ntotal = { rate = 50 }\n").unwrap();
        assert_eq!(policy.rate_limit.total.map(|total| total.burst), Some(200));
        assert_eq!(
            parse("[rate_limit]\ntotal = \"off\"\n")
                .unwrap()
                .rate_limit
                .total,
            None
        );
        let message = error(
            "[rate_limit]\ntotal = { rate = 0, burst = 1 }\n",
            "rate_limit.total.rate",
            2,
        );
        assert!(message.contains("rate 0 is not allowed"), "{message}");
    }

    #[test]
    fn responsive_keys() {
        let policy = parse("[responsive]\nenabled = true\ngrace = \"0s\"\n").unwrap();
        assert_eq!(
            policy.responsive,
            Responsive {
                enabled: true,
                grace: Duration::ZERO,
            }
        );
        let message = error("[responsive]\ngrace = \"2d\"\n", "responsive.grace", 2);
        assert!(message.contains("0s to 1d"), "{message}");
        let message = error("[responsive]\nenabled = \"yes\"\n", "responsive.enabled", 2);
        assert!(message.contains("boolean"), "{message}");
        let message = error("[responsive]\ntrust = true\n", "responsive.trust", 2);
        assert!(message.contains("unknown"), "{message}");
    }

    #[test]
    fn bans_keys() {
        let policy = parse(
            r#"
[bans]
enabled = false
max_failures = 1000
max_challenges = 20
max_users = 100
find_time = "30s"
ban_time = "1h 30m"
max_ban_time = "1w"
weights = { scanner = 0, rejection = 1000 }
"#,
        )
        .unwrap();
        assert_eq!(
            policy.bans,
            Bans {
                enabled: false,
                max_failures: 1000,
                max_challenges: 20,
                max_users: 100,
                find_time: Duration::from_secs(30),
                ban_time: Duration::from_secs(90 * MINUTE),
                max_ban_time: Duration::from_secs(7 * DAY),
                weights: OffenceWeights {
                    rate_limited: 1,
                    scanner: 0,
                    toll_fraud: 5,
                    rejection: 1000,
                },
            }
        );
        // The weights as a table of their own, and the bounds themselves.
        let policy = parse(
            "[bans]\nmax_failures = 1\nfind_time = \"7d\"\nban_time = \"365d\"\n\
             max_ban_time = \"365d\"\n[bans.weights]\nrate_limited = 0\n",
        )
        .unwrap();
        assert_eq!(policy.bans.max_failures, 1);
        assert_eq!(policy.bans.find_time, Duration::from_secs(7 * DAY));
        assert_eq!(policy.bans.ban_time, Duration::from_secs(365 * DAY));
        assert_eq!(policy.bans.weights.rate_limited, 0);
        assert_eq!(policy.bans.weights.scanner, 5);
        // Equal first and longest bans: no escalation.
        let policy = parse("[bans]\nban_time = \"1d\"\nmax_ban_time = \"24h\"\n").unwrap();
        assert_eq!(policy.bans.ban_time, policy.bans.max_ban_time);
    }

    #[test]
    fn bad_bans() {
        for (text, key, line) in [
            ("[bans]\nfind_time = \"0s\"\n", "bans.find_time", 2),
            ("[bans]\nfind_time = \"0\"\n", "bans.find_time", 2),
            ("[bans]\n\nfind_time = \"8d\"\n", "bans.find_time", 3),
            ("[bans]\nfind_time = \"999ms\"\n", "bans.find_time", 2),
            ("[bans]\nban_time = \"0s\"\n", "bans.ban_time", 2),
            ("[bans]\nban_time = \"366d\"\n", "bans.ban_time", 2),
            ("[bans]\nmax_ban_time = \"0s\"\n", "bans.max_ban_time", 2),
            ("[bans]\nmax_ban_time = \"2y\"\n", "bans.max_ban_time", 2),
            ("[bans]\nmax_failures = 0\n", "bans.max_failures", 2),
            ("[bans]\nmax_failures = 1001\n", "bans.max_failures", 2),
            (
                "[bans]\nweights = { scanner = 1001 }\n",
                "bans.weights.scanner",
                2,
            ),
            (
                "[bans.weights]\ntoll_fraud = -1\n",
                "bans.weights.toll_fraud",
                2,
            ),
        ] {
            let message = error(text, key, line);
            assert!(message.contains("allowed are"), "{message}");
        }
        for text in ["ten minutes", "10 minutes!", "10x", "-1m", ""] {
            let toml = format!("[bans]\nfind_time = \"{text}\"\n");
            let message = error(&toml, "bans.find_time", 2);
            assert!(message.contains("is not a duration"), "{message}");
            assert!(message.contains("\"10m\""), "{message}");
        }
        let message = error("[bans]\nfind_time = 600\n", "bans.find_time", 2);
        assert!(message.contains("expected a string"), "{message}");
        error("[bans]\nenabled = \"yes\"\n", "bans.enabled", 2);
        error("[bans]\nbantime = \"1h\"\n", "bans.bantime", 2);
        error(
            "[bans]\nweights = { scanners = 1 }\n",
            "bans.weights.scanners",
            2,
        );
    }

    #[test]
    fn max_ban_time_below_ban_time() {
        let message = error(
            "[bans]\nban_time = \"2h\"\nmax_ban_time = \"1h\"\n",
            "bans.max_ban_time",
            3,
        );
        assert!(message.contains("at least ban_time"), "{message}");
        // Against the built-in max_ban_time (1w): reported at the written value, with the way
        // out.
        let message = error("[bans]\nban_time = \"8d\"\n", "bans.ban_time", 2);
        assert!(message.contains("set bans.max_ban_time"), "{message}");
        parse("[bans]\nban_time = \"8d\"\nmax_ban_time = \"30d\"\n").unwrap();
    }

    #[test]
    fn daemon_keys() {
        let daemon = |text: &str| parse(text).unwrap().daemon;
        assert_eq!(daemon("[daemon]\nmetrics = \"off\"\n").metrics, None);
        assert_eq!(
            daemon("[daemon]\nmetrics = \"[::1]:9100\"\ndns_refresh = \"10s\"\n"),
            Daemon {
                metrics: Some("[::1]:9100".parse().unwrap()),
                dns_refresh: Duration::from_secs(10),
            }
        );
        assert_eq!(
            daemon("[daemon]\nmetrics = \"127.0.0.2:9868\"\n").metrics,
            Some("127.0.0.2:9868".parse().unwrap())
        );
        assert_eq!(
            daemon("[daemon]\nmetrics = \"0.0.0.0:9868\"\nmetrics_public = true\n").metrics,
            Some("0.0.0.0:9868".parse().unwrap())
        );
        assert_eq!(
            daemon("[daemon]\ndns_refresh = \"1d\"\nmetrics_public = true\n"),
            Daemon {
                dns_refresh: Duration::from_secs(DAY),
                ..Daemon::default()
            }
        );
    }

    #[test]
    fn bad_daemon() {
        for address in [
            "0.0.0.0:9868",
            "192.0.2.1:9868",
            "[::]:9868",
            "[2001:db8::1]:80",
        ] {
            let text = format!("[daemon]\nmetrics = \"{address}\"\n");
            let message = error(&text, "daemon.metrics", 2);
            assert!(message.contains("metrics_public = true"), "{message}");
            let text = format!("[daemon]\nmetrics = \"{address}\"\nmetrics_public = false\n");
            error(&text, "daemon.metrics", 2);
        }
        for address in ["localhost:9868", "127.0.0.1", "9868", "on", ""] {
            let text = format!("[daemon]\n\nmetrics = \"{address}\"\n");
            let message = error(&text, "daemon.metrics", 3);
            assert!(message.contains("\"off\""), "{message}");
        }
        let message = error("[daemon]\nmetrics = \"127.0.0.1:0\"\n", "daemon.metrics", 2);
        assert!(message.contains("\"127.0.0.1:9868\""), "{message}");
        error("[daemon]\nmetrics = false\n", "daemon.metrics", 2);
        for refresh in ["9s", "0s", "2d", "soon"] {
            let text = format!("[daemon]\ndns_refresh = \"{refresh}\"\n");
            let message = error(&text, "daemon.dns_refresh", 2);
            assert!(message.contains("10s to 1d"), "{message}");
        }
        error("[daemon]\nmetric = \"off\"\n", "daemon.metric", 2);
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let path = Path::new("/nonexistent/sipfilter-policy.toml");
        let message = Policy::load(path).unwrap_err().to_string();
        assert!(
            message.starts_with("/nonexistent/sipfilter-policy.toml: cannot read"),
            "{message}"
        );
    }

    #[test]
    fn columns_count_characters() {
        let error = parse("[sources]\n# é\nallow = [\"é\"]\n").unwrap_err();
        assert_eq!(
            error.position,
            Some(Position {
                line: 3,
                column: 10
            })
        );
    }
}
