//! The daemon behind `sipfilter attach`: keeps the datapath's maps in sync with the policy file,
//! the CLI's entries, resolved host names, the ban engine and learned trust, serves the control
//! socket and the metrics endpoint, and persists what must survive a restart.
//!
//! Evidence comes from the datapath's events: requests it judged (rate, scanner, toll fraud) and
//! the PBX's answers the egress watcher saw (challenge, rejection, success). A source that is
//! allowlisted or learned-trusted is never banned on such evidence: UDP sources can be spoofed,
//! and a spoofed flood must not get a trunk or a registered phone banned.
//!
//! Everything runs on one task: each control request, event, timer tick and signal is handled
//! to completion before the next, so the maps are never written by two hands at once and a
//! command's change is in the kernel before its answer is sent.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use std::future::Future as _;

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::json;
use sipfilter_common::{EventKind, Method, Reason, ResponseClass, stats};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    bans::{Ban, BanEngine, BanReason, Offence},
    compile::{CompiledPolicy, SourceLists, TrieKey, compile},
    config::Policy,
    control::{self, ListFilter, ListKind, Request, Response},
    datapath::{self, AttachMode, Attached, Datapath, EgressHook, monotonic_now_ns},
    events::{DatapathEvent, read_events},
    learned::{LearnedTrust, Learning},
    metrics::{self, Snapshot},
    resolve::{self, ResolveError, Resolved, Resolver},
    state::{self, ListEntry, State, Target},
};

/// How often expiries, host refreshes and state saves are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Events queued between the ring reader and the daemon loop; beyond, they are counted and
/// dropped (the datapath has already acted on them).
const EVENT_QUEUE: usize = 4096;

/// How often, at most, the rate limiter's entries are counted for `status` and the metrics.
/// Counting walks the map key by key (a second or so for a million keys), so the pause after a
/// count is also at least ten times what the count took: the walk never takes more than a
/// tenth of a core.
const RATE_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// How often the source lists', bans' and toll prefixes' entries are counted for the metrics
/// (`status` counts afresh).
const OCCUPANCY_INTERVAL: Duration = Duration::from_secs(5);

/// The result of a finished task, without awaiting (the caller checked `is_finished`).
fn futures_now<T>(task: tokio::task::JoinHandle<T>) -> Option<Result<T, tokio::task::JoinError>> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut task = std::pin::pin!(task);
    match task.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}

/// What `attach` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub policy_path: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub state_path: PathBuf,
    /// DNS server for host names; the system's resolver when `None`.
    pub dns_server: Option<SocketAddr>,
}

/// A host name from the policy or the CLI, and what it resolved to last.
#[derive(Clone, Debug, Default)]
struct Host {
    addresses: Vec<IpAddr>,
    error: Option<String>,
    failures: u32,
    next_refresh: Option<Instant>,
    resolving: bool,
}

struct Daemon {
    options: Options,
    policy: Policy,
    compiled: CompiledPolicy,
    datapath: Datapath,
    /// Entries added through the CLI.
    entries: Vec<ListEntry>,
    hosts: BTreeMap<String, Host>,
    bans: BanEngine,
    learned: LearnedTrust,
    attached: Vec<AttachedInterface>,
    started: SystemTime,
    reloads: u64,
    reload_failures: u64,
    events_received: u64,
    /// The state file is behind the in-memory state.
    dirty: bool,
    /// Entries of the rate limiter's LRU, counted now and then off the daemon's task (a
    /// spoofed-source flood fills it with up to a million keys).
    rate_occupancy: (String, u64, u64),
    rate_count: Option<(tokio::task::JoinHandle<u64>, Instant)>,
    /// The other maps' occupancy for the metrics, counted by walking their keys (a
    /// 10,000-entry blocklist is 20,000 system calls), so at most every `OCCUPANCY_INTERVAL`.
    occupancy: Vec<(String, u64, u64)>,
    next_occupancy: Instant,
    next_rate_count: Instant,
    /// Shared with the metrics server; refreshed after every change and tick.
    snapshot: Arc<Mutex<Snapshot>>,
    resolved: mpsc::UnboundedSender<(String, Result<Resolved, ResolveError>)>,
    resolver: Arc<Resolver>,
    stop: bool,
}

/// An interface this daemon attached to or took over.
struct AttachedInterface {
    name: String,
    /// `driver`, `skb`, or `adopted` for a pinned link taken over.
    mode: String,
    egress: EgressHook,
}

/// Runs the daemon until SIGINT/SIGTERM or a `detach` of every interface.
pub fn run(options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(options))
}

async fn run_async(options: Options) -> anyhow::Result<()> {
    // First of all: a signal that arrives while the policy is written or the interfaces are
    // attached waits for the loop below instead of killing the process half-way.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let policy = match &options.policy_path {
        Some(path) => Policy::load(path)?,
        None => Policy::builtin(),
    };
    let compiled = compile(&policy).context("compiling the scanner patterns")?;
    for iface in &options.interfaces {
        if !datapath::interface_exists(iface) {
            anyhow::bail!("interface {iface} does not exist (see `ip link`)");
        }
    }
    let listener = control::bind(&options.socket)
        .with_context(|| format!("control socket {}", options.socket.display()))?;
    let metrics_listener =
        match policy.daemon.metrics {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(
                || format!("metrics endpoint {address} (policy [daemon] metrics)"),
            )?),
            None => None,
        };

    let datapath = Datapath::load(&options.pin_dir, compiled.max_sources).with_context(|| {
        format!(
            "loading the datapath (pins under {})",
            options.pin_dir.display()
        )
    })?;
    let now = SystemTime::now();
    let (entries, bans, learned) = match state::load(&options.state_path) {
        Ok(Some(saved)) => {
            log::info!(
                "restored {} entries, {} bans and {} learned sources from {}",
                saved.entries.len(),
                saved.bans.active_count(),
                saved.learned.len(),
                options.state_path.display()
            );
            let learned = if policy.responsive.enabled {
                LearnedTrust::restore(saved.learned, now)
            } else {
                LearnedTrust::default()
            };
            (
                saved.entries,
                BanEngine::restore(saved.bans, &policy.bans),
                learned,
            )
        }
        Ok(None) => (
            Vec::new(),
            BanEngine::new(&policy.bans),
            LearnedTrust::default(),
        ),
        Err(error) => {
            log::error!("{error}; starting from the policy file alone");
            (
                Vec::new(),
                BanEngine::new(&policy.bans),
                LearnedTrust::default(),
            )
        }
    };
    let compiled_max_sources = datapath.rate_capacity();
    let (resolved_tx, mut resolved_rx) = mpsc::unbounded_channel();
    let resolver =
        Arc::new(Resolver::new(options.dns_server).context("setting up the DNS resolver")?);
    let mut daemon = Daemon {
        options,
        policy,
        compiled,
        datapath,
        entries,
        hosts: BTreeMap::new(),
        bans,
        learned,
        attached: Vec::new(),
        rate_occupancy: (
            sipfilter_common::map_names::RATE.to_owned(),
            0,
            u64::from(compiled_max_sources),
        ),
        rate_count: None,
        next_rate_count: Instant::now(),
        occupancy: Vec::new(),
        next_occupancy: Instant::now(),
        started: now,
        reloads: 0,
        reload_failures: 0,
        events_received: 0,
        dirty: false,
        snapshot: Arc::new(Mutex::new(Snapshot::default())),
        resolved: resolved_tx,
        resolver,
        stop: false,
    };
    daemon.track_hosts();
    daemon.resolve_due_hosts_now().await;
    let lists = daemon.desired_lists();
    daemon
        .datapath
        .apply(&daemon.compiled, &lists)
        .context("writing the policy into the datapath's maps")?;
    daemon.install_active_bans()?;
    let had_links = !datapath::attached_interfaces(&daemon.options.pin_dir).is_empty();
    for iface in daemon.options.interfaces.clone() {
        let attached = daemon.datapath.attach(&iface, daemon.options.mode);
        if attached.is_err() && !had_links && daemon.attached.is_empty() {
            // Nothing of ours was in the kernel before: leave nothing behind.
            let _ = datapath::remove_pins(&daemon.options.pin_dir);
        }
        let (attached, egress) = attached?;
        let mode = match attached {
            Attached::New(mode) => format!("{mode:?}").to_lowercase(),
            Attached::Adopted => "adopted".to_owned(),
        };
        log::info!(
            "{iface}: attached ({mode}), egress watcher on {}",
            egress.name()
        );
        daemon.attached.push(AttachedInterface {
            name: iface,
            mode,
            egress,
        });
    }
    let source = daemon
        .options
        .policy_path
        .as_ref()
        .map_or("built-in policy".to_owned(), |path| {
            path.display().to_string()
        });
    log::info!(
        "filtering with {source}; pins under {}, control socket {}",
        daemon.options.pin_dir.display(),
        daemon.options.socket.display()
    );

    let (event_tx, mut event_rx) = mpsc::channel(EVENT_QUEUE);
    let ring = daemon.datapath.take_events()?;
    let reader = tokio::spawn(read_events(ring, move |event| {
        let _ = event_tx.try_send(event);
    }));
    if let Some(listener) = metrics_listener {
        let snapshot = daemon.snapshot.clone();
        let pin_dir = daemon.options.pin_dir.clone();
        log::info!("metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(metrics::serve(listener, move || {
            let mut current = snapshot.lock().expect("snapshot lock").clone();
            current.counters = datapath::pinned_counters(&pin_dir).unwrap_or_default();
            current
        }));
    }
    daemon.occupancy = daemon.datapath.occupancy();
    daemon.next_occupancy = Instant::now() + OCCUPANCY_INTERVAL;
    daemon.refresh_snapshot();

    let mut ticks = tokio::time::interval(TICK);
    while !daemon.stop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => daemon.serve_client(&mut stream).await,
                Err(error) => log::warn!("control socket: {error}"),
            },
            Some(event) = event_rx.recv() => daemon.on_event(event),
            Some((name, result)) = resolved_rx.recv() => daemon.on_resolved(name, result),
            _ = ticks.tick() => daemon.tick(),
            _ = hangup.recv() => {
                let response = daemon.reload();
                if !response.ok {
                    log::error!("reload refused: {}", response.error.unwrap_or_default());
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    reader.abort();
    daemon.save_state();
    let _ = std::fs::remove_file(&daemon.options.socket);
    if daemon.attached.is_empty() {
        log::info!("detached from every interface; stopping");
    } else {
        log::info!("stopping; the filter stays attached (`sipfilter detach IFACE` removes it)");
    }
    Ok(())
}

/// The wall-clock instant `when` on the `CLOCK_MONOTONIC` clock the kernel checks expiries
/// against; 1 (long past) for an instant already gone, so the entry is expired, never permanent.
fn monotonic(when: SystemTime) -> u64 {
    let now_mono = monotonic_now_ns();
    match when.duration_since(SystemTime::now()) {
        Ok(ahead) => now_mono.saturating_add(ahead.as_nanos() as u64),
        Err(_) => 1,
    }
}

fn rfc3339(when: SystemTime) -> String {
    humantime::format_rfc3339_seconds(when).to_string()
}

/// An address or CIDR as the CLI and policy write it: a bare address is a host route; host bits
/// must be clear.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    let net: IpNet = text.parse().map_err(|_| {
        format!(
            "{text:?} is not an address or CIDR (e.g. 192.0.2.7, 203.0.113.0/24, 2001:db8::/48)"
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set: did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A DNS host name (RFC 1123 labels).
pub fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && text.bytes().any(|b| b.is_ascii_alphabetic())
}

impl Daemon {
    /// The source key of `address` as the ban engine sees it: the address, or its IPv6 prefix.
    fn source_net(&self, address: IpAddr) -> IpNet {
        match address {
            IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
            IpAddr::V6(v6) => IpNet::new(IpAddr::V6(v6), self.policy.rate_limit.ipv6_prefix)
                .expect("validated prefix")
                .trunc(),
        }
    }

    /// Everything the allow and deny tries should hold now.
    fn desired_lists(&self) -> SourceLists {
        let mut lists = SourceLists::from_policy(&self.compiled);
        let now = SystemTime::now();
        for entry in &self.entries {
            let expires_ns = match entry.expires {
                Some(when) if when <= now => continue,
                Some(when) => monotonic(when),
                None => 0,
            };
            let list = match entry.kind {
                ListKind::Allow => &mut lists.allow,
                ListKind::Deny => &mut lists.deny,
            };
            match &entry.target {
                Target::Net(net) => SourceLists::add(list, TrieKey::from_net(net), expires_ns),
                Target::Host(name) => {
                    for address in self
                        .hosts
                        .get(name)
                        .map(|host| host.addresses.as_slice())
                        .unwrap_or_default()
                    {
                        SourceLists::add(
                            list,
                            TrieKey::from_net(&IpNet::from(*address)),
                            expires_ns,
                        );
                    }
                }
            }
        }
        for name in &self.policy.sources.allow_hosts {
            for address in self
                .hosts
                .get(name)
                .map(|host| host.addresses.as_slice())
                .unwrap_or_default()
            {
                SourceLists::add(
                    &mut lists.allow,
                    TrieKey::from_net(&IpNet::from(*address)),
                    0,
                );
            }
        }
        for entry in self.learned.entries().filter(|entry| entry.until > now) {
            SourceLists::add(
                &mut lists.allow,
                TrieKey::from_net(&IpNet::from(entry.address)),
                monotonic(entry.until),
            );
        }
        lists
    }

    /// Whether `address` is in the allow set now: the policy's networks, unexpired CLI entries,
    /// resolved host names, or learned trust.
    fn is_trusted(&self, address: IpAddr, now: SystemTime) -> bool {
        let host_has = |name: &String| {
            self.hosts
                .get(name)
                .is_some_and(|host| host.addresses.contains(&address))
        };
        self.learned.is_trusted(address, now)
            || self.is_allowlisted(address, now)
            || self.policy.sources.allow_hosts.iter().any(host_has)
            || self.entries.iter().any(|entry| {
                entry.kind == ListKind::Allow
                    && entry.expires.is_none_or(|when| when > now)
                    && matches!(&entry.target, Target::Host(name) if host_has(name))
            })
    }

    /// Whether a network of the policy or of the CLI allows `address` now.
    fn is_allowlisted(&self, address: IpAddr, now: SystemTime) -> bool {
        self.policy
            .sources
            .allow
            .iter()
            .any(|net| net.contains(&address))
            || self.entries.iter().any(|entry| {
                entry.kind == ListKind::Allow
                    && entry.expires.is_none_or(|when| when > now)
                    && matches!(&entry.target, Target::Net(net) if net.contains(&address))
            })
    }

    /// Host names the daemon must keep resolved: the policy's and the CLI's.
    fn track_hosts(&mut self) {
        let wanted: BTreeSet<String> = self
            .policy
            .sources
            .allow_hosts
            .iter()
            .cloned()
            .chain(self.entries.iter().filter_map(|entry| match &entry.target {
                Target::Host(name) => Some(name.clone()),
                Target::Net(_) => None,
            }))
            .collect();
        self.hosts.retain(|name, _| wanted.contains(name));
        for name in wanted {
            self.hosts.entry(name).or_default();
        }
    }

    /// Resolves every host not resolved yet, waiting for the answers (at start-up, so the first
    /// policy written already holds them).
    async fn resolve_due_hosts_now(&mut self) {
        let names: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, host)| host.next_refresh.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let result = self.resolver.lookup(&name).await;
            self.record_resolution(&name, result);
        }
    }

    fn record_resolution(&mut self, name: &str, result: Result<Resolved, ResolveError>) {
        let default = self.policy.daemon.dns_refresh;
        let Some(host) = self.hosts.get_mut(name) else {
            return;
        };
        host.resolving = false;
        match &result {
            Ok(resolved) => {
                if host.addresses != resolved.addresses {
                    log::info!("{name} resolves to {:?}", resolved.addresses);
                }
                host.addresses = resolved.addresses.clone();
                host.error = None;
                host.failures = 0;
            }
            Err(error) => {
                // The last good addresses stay: a DNS outage must not untrust a trunk.
                if host.error.is_none() {
                    log::warn!("{error}; keeping {:?} and retrying", host.addresses);
                }
                host.error = Some(error.to_string());
                host.failures += 1;
            }
        }
        host.next_refresh =
            Some(Instant::now() + resolve::next_refresh(&result, default, host.failures));
    }

    fn on_resolved(&mut self, name: String, result: Result<Resolved, ResolveError>) {
        let before = self.hosts.get(&name).map(|host| host.addresses.clone());
        self.record_resolution(&name, result);
        if self.hosts.get(&name).map(|host| &host.addresses) != before.as_ref() {
            self.sync_lists();
        }
    }

    fn spawn_due_resolutions(&mut self) {
        let now = Instant::now();
        for (name, host) in &mut self.hosts {
            if host.resolving || host.next_refresh.is_some_and(|at| at > now) {
                continue;
            }
            host.resolving = true;
            let (name, resolver, tx) = (name.clone(), self.resolver.clone(), self.resolved.clone());
            tokio::spawn(async move {
                let result = resolver.lookup(&name).await;
                let _ = tx.send((name, result));
            });
        }
    }

    fn sync_lists(&mut self) {
        let lists = self.desired_lists();
        if let Err(error) = self.datapath.apply_lists(&lists) {
            log::error!("updating the allow and deny lists: {error}");
        }
        self.refresh_snapshot();
    }

    fn install_ban(&mut self, ban: &Ban) -> Result<(), datapath::DatapathError> {
        self.datapath
            .add_ban(ban.source.addr(), monotonic(ban.until))
    }

    fn install_active_bans(&mut self) -> anyhow::Result<()> {
        let active: Vec<Ban> = self.bans.active().cloned().collect();
        for ban in &active {
            self.install_ban(ban)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: DatapathEvent) {
        self.events_received += 1;
        // Every registration is challenged: answers are routine, requests the filter judged
        // are not.
        if event.is_response() {
            log::debug!("{event}");
        } else {
            log::warn!("{event}");
        }
        // Monitor mode reports; it must not enforce through the back door of a ban.
        if event.monitored {
            return;
        }
        let now = SystemTime::now();
        if event.kind == EventKind::Success {
            self.on_success(&event, now);
            return;
        }
        if self.is_trusted(event.source, now) {
            return;
        }
        let source = self.source_net(event.source);
        let user = (!event.detail.is_empty()).then_some(event.detail.as_str());
        let ban = match event.kind {
            EventKind::RateLimited => self.bans.record(source, Offence::RateLimited, now),
            EventKind::Scanner => self.bans.record(source, Offence::Scanner, now),
            EventKind::TollFraud => self.bans.record(source, Offence::TollFraud, now),
            EventKind::Challenge => self.bans.record_challenge(source, now),
            EventKind::Rejection => self.bans.record_rejection(source, user, now),
            EventKind::Success => unreachable!("handled above"),
        };
        if let Some(ban) = ban {
            match self.install_ban(&ban) {
                Ok(()) => log::warn!(
                    "banned {} until {} ({}: {} in {}, last: {})",
                    ban.source,
                    rfc3339(ban.until),
                    ban.reason,
                    ban.offences,
                    humantime::format_duration(self.policy.bans.find_time),
                    event.kind.name()
                ),
                Err(error) => log::error!("banning {}: {error}", ban.source),
            }
            self.dirty = true;
            self.refresh_snapshot();
        }
    }

    /// The PBX granted a registration (or an authenticated call): the source's evidence is
    /// cleared, and with responsive mode a registration makes its address trusted.
    fn on_success(&mut self, event: &DatapathEvent, now: SystemTime) {
        let source = self.source_net(event.source);
        self.bans.record_success(&source);
        // Trusted otherwise (a network or host name of the allow set): learning would only give
        // its entry an expiry.
        let trusted_otherwise =
            self.is_trusted(event.source, now) && !self.learned.is_trusted(event.source, now);
        if event.method != Method::Register || !self.policy.responsive.enabled || trusted_otherwise
        {
            return;
        }
        let user = (!event.detail.is_empty()).then_some(event.detail.as_str());
        let lifetime = event.expires_s.map(|secs| Duration::from_secs(secs.into()));
        // An expiry of 0 is a de-registration: it earns nothing.
        if lifetime == Some(Duration::ZERO) {
            return;
        }
        let learning = self.learned.learn(
            event.source,
            user,
            lifetime,
            self.policy.responsive.grace,
            now,
        );
        if learning == Learning::Unchanged {
            return;
        }
        let until = self.learned.until(event.source).expect("just learned");
        if learning == Learning::New {
            log::info!(
                "learned trust for {} ({}) until {}",
                event.source,
                user.unwrap_or("no user"),
                rfc3339(until)
            );
        }
        let key = TrieKey::from_net(&IpNet::from(event.source));
        if let Err(error) = self.datapath.allow_one(&key, monotonic(until)) {
            log::error!("trusting {}: {error}", event.source);
        }
        self.refresh_snapshot();
        // A new source is saved at once; an extension waits for the next save (at the latest
        // on shutdown): phones re-register all the time, and a lost extension only means that
        // after a crash the trust ends at the previous registration's end, until the next one.
        if learning == Learning::New {
            self.dirty = true;
        }
    }

    fn tick(&mut self) {
        let now = SystemTime::now();
        let before = self.entries.len();
        self.entries
            .retain(|entry| entry.expires.is_none_or(|when| when > now));
        let unlearned = self.learned.expire(now);
        for entry in &unlearned {
            log::info!("learned trust for {} ended", entry.address);
        }
        if self.entries.len() != before || !unlearned.is_empty() {
            self.track_hosts();
            self.sync_lists();
            self.dirty = true;
        }
        for ban in self.bans.expire(now) {
            if let Err(error) = self.datapath.remove_ban(ban.source.addr()) {
                log::error!("lifting the ban of {}: {error}", ban.source);
            }
            log::info!("ban of {} ended", ban.source);
            self.dirty = true;
        }
        self.bans.prune(now);
        self.spawn_due_resolutions();
        self.count_rate_sources();
        if Instant::now() >= self.next_occupancy {
            self.occupancy = self.datapath.occupancy();
            self.next_occupancy = Instant::now() + OCCUPANCY_INTERVAL;
        }
        if self.dirty {
            self.save_state();
        }
        self.refresh_snapshot();
    }

    /// Counting walks the LRU key by key, so it runs on a blocking thread, at most every
    /// `RATE_COUNT_INTERVAL` and never more than a tenth of the time.
    fn count_rate_sources(&mut self) {
        if let Some((task, _)) = &self.rate_count
            && task.is_finished()
        {
            let (task, started) = self.rate_count.take().expect("checked");
            if let Some(Ok(count)) = futures_now(task) {
                self.rate_occupancy.1 = count;
            }
            self.next_rate_count =
                Instant::now() + RATE_COUNT_INTERVAL.max(started.elapsed().saturating_mul(10));
        }
        if self.rate_count.is_none() && Instant::now() >= self.next_rate_count {
            let pin_dir = self.options.pin_dir.clone();
            let task = tokio::task::spawn_blocking(move || {
                datapath::pinned_rate_sources(&pin_dir).unwrap_or(0)
            });
            self.rate_count = Some((task, Instant::now()));
        }
    }

    fn save_state(&mut self) {
        let state = State {
            entries: self.entries.clone(),
            bans: self.bans.snapshot(),
            learned: self.learned.entries().cloned().collect(),
        };
        match state::save(&self.options.state_path, &state) {
            Ok(()) => self.dirty = false,
            Err(error) => log::error!("saving {}: {error}", self.options.state_path.display()),
        }
    }

    async fn serve_client(&mut self, stream: &mut tokio::net::UnixStream) {
        let response = match control::peer_uid(stream) {
            Ok(0) => {
                match tokio::time::timeout(Duration::from_secs(5), control::read_request(stream))
                    .await
                {
                    Ok(Ok(request)) => self.handle(request),
                    Ok(Err(error)) => Response::failed(format!("bad request: {error}")),
                    Err(_) => Response::failed("no request within 5 s"),
                }
            }
            Ok(uid) => {
                // Read (and ignore) the request first: closing on an unread request makes the
                // client's write fail with EPIPE, and it would never see this answer.
                let _ = tokio::time::timeout(Duration::from_secs(5), control::read_request(stream))
                    .await;
                Response::failed(format!("permission denied: uid {uid} is not root"))
            }
            Err(error) => Response::failed(format!("cannot identify the client: {error}")),
        };
        if let Err(error) = control::write_response(stream, &response).await {
            log::debug!("answering a client: {error}");
        }
    }

    fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Add {
                kind,
                target,
                ttl_secs,
                comment,
            } => self.add(kind, &target, ttl_secs, comment),
            Request::Remove { target } => self.remove(&target),
            Request::Unban { address } => self.unban(&address),
            Request::List { filter } => Response::data(self.list(filter)),
            Request::Stats => self.stats(),
            Request::Status => self.status(),
            Request::Reload => self.reload(),
            Request::Detach { interfaces } => self.detach(interfaces),
        }
    }

    fn add(
        &mut self,
        kind: ListKind,
        text: &str,
        ttl_secs: Option<u64>,
        comment: Option<String>,
    ) -> Response {
        let target = match parse_net(text) {
            Ok(net) => Target::Net(net),
            Err(_) if kind == ListKind::Allow && is_hostname(text) => {
                Target::Host(text.to_ascii_lowercase())
            }
            Err(error) => return Response::failed(error),
        };
        let now = SystemTime::now();
        let expires = ttl_secs.map(|secs| now + Duration::from_secs(secs));
        self.entries
            .retain(|entry| !(entry.kind == kind && entry.target == target));
        self.entries.push(ListEntry {
            kind,
            target: target.clone(),
            comment,
            expires,
            added: now,
        });
        if kind == ListKind::Allow {
            // Allowlisted sources are never banned: lift what covers the new entry.
            let lifted: Vec<IpNet> = self
                .bans
                .active()
                .filter(|ban| match &target {
                    Target::Net(net) => net.contains(&ban.source.addr()),
                    Target::Host(_) => false,
                })
                .map(|ban| ban.source)
                .collect();
            for source in lifted {
                self.bans.unban(&source);
                let _ = self.datapath.remove_ban(source.addr());
            }
        }
        self.track_hosts();
        if let Target::Host(name) = &target
            && let Some(host) = self.hosts.get_mut(name)
            && host.next_refresh.is_none()
        {
            // Resolve now, but answer without waiting: the entry is kept whatever DNS says.
            self.spawn_due_resolutions();
        }
        self.sync_lists();
        self.dirty = true;
        self.save_state();
        let what = match kind {
            ListKind::Allow => "allowed",
            ListKind::Deny => "denied",
        };
        Response::done(match expires {
            Some(until) => format!("{what} {text} until {}", rfc3339(until)),
            None => format!("{what} {text}"),
        })
    }

    fn remove(&mut self, text: &str) -> Response {
        let target = match parse_net(text) {
            Ok(net) => Target::Net(net),
            Err(_) if is_hostname(text) => Target::Host(text.to_ascii_lowercase()),
            Err(error) => return Response::failed(error),
        };
        let before = self.entries.len();
        self.entries.retain(|entry| entry.target != target);
        let unlearned = match &target {
            Target::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                self.learned.forget(net.addr())
            }
            _ => false,
        };
        let removed = before - self.entries.len() + usize::from(unlearned);
        let unbanned = match &target {
            Target::Net(net) => self.lift_ban(&self.source_net(net.addr())),
            Target::Host(_) => false,
        };
        if removed == 0 && !unbanned {
            let in_policy = match &target {
                Target::Net(net) => {
                    self.policy.sources.allow.contains(net)
                        || self.policy.sources.deny.contains(net)
                }
                Target::Host(name) => self.policy.sources.allow_hosts.contains(name),
            };
            return Response::failed(if in_policy {
                format!("{text} comes from the policy file: edit it and run `sipfilter reload`")
            } else {
                format!("no CLI entry, learned trust or ban for {text}")
            });
        }
        self.track_hosts();
        self.sync_lists();
        self.dirty = true;
        self.save_state();
        Response::done(format!(
            "removed {text}{}",
            if unbanned {
                if removed > 0 {
                    " and lifted its ban"
                } else {
                    " (ban lifted)"
                }
            } else {
                ""
            }
        ))
    }

    fn lift_ban(&mut self, source: &IpNet) -> bool {
        if self.bans.unban(source).is_none() {
            return false;
        }
        if let Err(error) = self.datapath.remove_ban(source.addr()) {
            log::error!("lifting the ban of {source}: {error}");
        }
        true
    }

    fn unban(&mut self, text: &str) -> Response {
        let address: IpAddr = match text.parse() {
            Ok(address) => address,
            Err(_) => return Response::failed(format!("{text:?} is not an IP address")),
        };
        let source = self.source_net(address);
        if !self.lift_ban(&source) {
            return Response::failed(format!("{source} is not banned"));
        }
        self.dirty = true;
        self.save_state();
        self.refresh_snapshot();
        Response::done(format!("lifted the ban of {source}"))
    }

    fn list(&self, filter: Option<ListFilter>) -> serde_json::Value {
        let wants = |kind: ListFilter| filter.is_none_or(|wanted| wanted == kind);
        let mut rows = Vec::new();
        let host_row = |name: &str| {
            let host = self.hosts.get(name).cloned().unwrap_or_default();
            (
                host.addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>(),
                host.error,
            )
        };
        for (kind, nets, filter_kind) in [
            ("allow", &self.policy.sources.allow, ListFilter::Allow),
            ("deny", &self.policy.sources.deny, ListFilter::Deny),
        ] {
            if wants(filter_kind) {
                for net in nets {
                    rows.push(
                        json!({"kind": kind, "address": net.to_string(), "origin": "policy",
                        "comment": null, "expires": null}),
                    );
                }
            }
        }
        if wants(ListFilter::Allow) {
            for name in &self.policy.sources.allow_hosts {
                let (addresses, error) = host_row(name);
                rows.push(
                    json!({"kind": "allow", "address": name, "origin": "policy", "comment": null,
                    "expires": null, "addresses": addresses, "error": error}),
                );
            }
        }
        for entry in &self.entries {
            let (kind, filter_kind) = match entry.kind {
                ListKind::Allow => ("allow", ListFilter::Allow),
                ListKind::Deny => ("deny", ListFilter::Deny),
            };
            if !wants(filter_kind) {
                continue;
            }
            let mut row = json!({"kind": kind, "origin": "cli", "comment": entry.comment,
                "expires": entry.expires.map(rfc3339)});
            match &entry.target {
                Target::Net(net) => row["address"] = json!(net.to_string()),
                Target::Host(name) => {
                    let (addresses, error) = host_row(name);
                    row["address"] = json!(name);
                    row["addresses"] = json!(addresses);
                    row["error"] = json!(error);
                }
            }
            rows.push(row);
        }
        if wants(ListFilter::Learned) {
            for entry in self.learned.entries() {
                rows.push(json!({"kind": "learned", "address": entry.address.to_string(),
                    "origin": "responsive", "comment": entry.user.as_ref().map(|user| format!("registered {user}")),
                    "user": entry.user, "expires": rfc3339(entry.until), "since": rfc3339(entry.since)}));
            }
        }
        if wants(ListFilter::Bans) {
            for ban in self.bans.active() {
                let origin = match ban.reason {
                    BanReason::Manual => "cli",
                    _ => "ban_engine",
                };
                let reason = ban.reason.name();
                rows.push(
                    json!({"kind": "ban", "address": ban.source.to_string(), "origin": origin,
                    "comment": format!("{reason}, {} offences", ban.offences), "reason": reason,
                    "expires": rfc3339(ban.until), "since": rfc3339(ban.since)}),
                );
            }
        }
        serde_json::Value::Array(rows)
    }

    fn stats(&self) -> Response {
        let counters = match self.datapath.counters() {
            Ok(counters) => counters,
            Err(error) => return Response::failed(error.to_string()),
        };
        let mut packets = serde_json::Map::new();
        let mut monitored = serde_json::Map::new();
        for reason in Reason::ALL {
            let verdict = if reason.is_drop() { "drop" } else { "pass" };
            packets.insert(
                reason.name().to_owned(),
                json!({"verdict": verdict, "packets": counters[(stats::REASON_BASE + reason as u32) as usize]}),
            );
            if reason.is_drop() {
                monitored.insert(
                    reason.name().to_owned(),
                    json!(counters[(stats::MONITOR_BASE + reason as u32) as usize]),
                );
            }
        }
        let methods: serde_json::Map<String, serde_json::Value> = Method::ALL
            .iter()
            .map(|method| {
                (
                    method.name().to_owned(),
                    json!(counters[(stats::METHOD_BASE + *method as u32) as usize]),
                )
            })
            .collect();
        Response::data(json!({
            "packets": packets,
            "monitored": monitored,
            "sip_messages": methods,
            "events": {"sent": counters[stats::EVENTS_SENT as usize], "lost": counters[stats::EVENTS_LOST as usize],
                       "received": self.events_received},
            "responses": ResponseClass::ALL
                .iter()
                .map(|class| (class.name().to_owned(), json!(counters[(stats::RESPONSE_BASE + *class as u32) as usize])))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "bans": {"active": self.bans.active().count()},
            "learned": self.learned.len(),
        }))
    }

    fn status(&mut self) -> Response {
        let program_id = self
            .datapath
            .program()
            .ok()
            .and_then(|program| program.info().ok())
            .map(|info| info.id());
        let uptime = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs();
        let maps: Vec<serde_json::Value> = self
            .datapath
            .occupancy()
            .into_iter()
            .chain([self.rate_occupancy.clone()])
            .map(|(name, used, capacity)| json!({"map": name, "entries": used, "capacity": capacity}))
            .collect();
        Response::data(json!({
            "interfaces": self.attached.iter().map(|iface| json!({
                "name": iface.name,
                "mode": iface.mode,
                "egress": iface.egress.name(),
            })).collect::<Vec<_>>(),
            "program_id": program_id,
            "policy_file": self.options.policy_path.as_ref().map(|path| path.display().to_string()),
            "pin_dir": self.options.pin_dir.display().to_string(),
            "uptime_seconds": uptime,
            "started": rfc3339(self.started),
            "maps": maps,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
        }))
    }

    /// Re-reads the policy file and applies it; a bad file is refused and the running policy
    /// stays.
    fn reload(&mut self) -> Response {
        let Some(path) = self.options.policy_path.clone() else {
            return Response::failed(
                "no policy file to reload: the daemon runs the built-in policy",
            );
        };
        let loaded = Policy::load(&path)
            .map_err(|error| error.to_string())
            .and_then(|policy| {
                compile(&policy)
                    .map(|compiled| (policy, compiled))
                    .map_err(|e| e.to_string())
            });
        let (policy, compiled) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                self.reload_failures += 1;
                self.refresh_snapshot();
                return Response::failed(format!("{error} (the running policy stays)"));
            }
        };
        self.policy = policy;
        self.compiled = compiled;
        self.bans.set_policy(&self.policy.bans);
        if !self.policy.responsive.enabled && !self.learned.is_empty() {
            log::info!(
                "responsive mode is off: forgetting {} learned sources",
                self.learned.clear()
            );
            self.dirty = true;
        }
        self.track_hosts();
        let lists = self.desired_lists();
        if let Err(error) = self.datapath.apply(&self.compiled, &lists) {
            self.reload_failures += 1;
            return Response::failed(format!("writing the new policy: {error}"));
        }
        self.spawn_due_resolutions();
        self.reloads += 1;
        self.refresh_snapshot();
        log::info!("reloaded {}", path.display());
        Response::done(format!("reloaded {}", path.display()))
    }

    fn detach(&mut self, interfaces: Vec<String>) -> Response {
        let names: Vec<String> = if interfaces.is_empty() {
            self.attached
                .iter()
                .map(|iface| iface.name.clone())
                .collect()
        } else {
            interfaces
        };
        for name in &names {
            if !self.attached.iter().any(|iface| &iface.name == name) {
                return Response::failed(format!(
                    "not attached to {name} (attached: {})",
                    self.attached
                        .iter()
                        .map(|iface| iface.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for name in &names {
            if let Err(error) = datapath::detach(&self.options.pin_dir, name) {
                return Response::failed(error.to_string());
            }
            self.attached.retain(|iface| &iface.name != name);
            log::info!("{name}: detached");
        }
        if self.attached.is_empty() {
            self.stop = true;
        }
        Response::done(format!("detached from {}", names.join(", ")))
    }

    fn refresh_snapshot(&self) {
        let mut entries: BTreeMap<(String, String), u64> = BTreeMap::new();
        entries.insert(
            ("allow".into(), "policy".into()),
            self.policy.sources.allow.len() as u64,
        );
        entries.insert(
            ("deny".into(), "policy".into()),
            self.policy.sources.deny.len() as u64,
        );
        for name in &self.policy.sources.allow_hosts {
            let count = self
                .hosts
                .get(name)
                .map_or(0, |host| host.addresses.len() as u64);
            *entries.entry(("allow".into(), "dns".into())).or_default() += count;
        }
        for entry in &self.entries {
            let kind = match entry.kind {
                ListKind::Allow => "allow",
                ListKind::Deny => "deny",
            };
            *entries.entry((kind.into(), "cli".into())).or_default() += 1;
        }
        if self.policy.responsive.enabled {
            entries.insert(
                ("allow".into(), "learned".into()),
                self.learned.len() as u64,
            );
        }
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        snapshot.bans_active = self.bans.active().count() as u64;
        snapshot.bans_total = self
            .bans
            .totals()
            .iter()
            .map(|(reason, count)| (reason.to_string(), *count))
            .collect();
        snapshot.entries = entries
            .into_iter()
            .map(|((kind, origin), count)| (kind, origin, count))
            .collect();
        snapshot.maps = self.occupancy.clone();
        snapshot.maps.push(self.rate_occupancy.clone());
        snapshot.events_received = self.events_received;
        snapshot.reloads = self.reloads;
        snapshot.reload_failures = self.reload_failures;
        snapshot.start_time_seconds = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
    }
}
