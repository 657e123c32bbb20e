//! The flood lab: an attacker host, a legitimate user's host and a PBX host (Debian's Kamailio as
//! registrar, `lab/kamailio/`), each in a namespace of its own, joined by a switch namespace (a
//! Linux bridge), with a defence on the PBX's one interface: nothing, iptables (+ ipset),
//! nftables, or sipfilter in driver or skb mode with the equivalent policy. Used by
//! `cargo xtask lab`, `cargo xtask bench flood` (through the `sipfilter-lab` binary) and
//! `tests/tests/flood_lab.rs`.
//!
//! ```text
//!  attacker [atk0 192.0.2.66 2001:db8::66] --- sw-atk \
//!  user     [usr0 192.0.2.10 .20 .30, ::10 ::20 ::30] sw-usr -- br0 (switch namespace)
//!  pbx      [pbx0 192.0.2.2  2001:db8::2] ---- sw-pbx /      defence on pbx0 (ingress)
//! ```
//!
//! The attacker host stands for the Internet: the PBX's default routes point at it, so
//! Kamailio's answers to flood sources (203.0.113.66, 198.18.0.0/15, 2001:db8:8000::/33) go
//! there and are dropped (it does not forward). Both ends of every veth sit in namespaces this
//! module creates; no address, route, rule or program touches the root namespace. Every
//! firewall command runs through `ip netns exec PBX-NAMESPACE`.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use ipnet::IpNet;

use crate::daemon::{Daemon, PinDir, PolicyFile};
use crate::flood::{self, FloodReport, FloodSources, FloodSpec};
use crate::flood_xdp;
use crate::lab::{Kamailio, LabDir, SeenLog, SipClient};
use crate::netns::{NetNs, link_with_queues};

pub const ATTACKER_IF: &str = "atk0";
pub const USER_IF: &str = "usr0";
pub const PBX_IF: &str = "pbx0";
pub const BRIDGE: &str = "br0";

pub const PBX_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const PBX_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The ordinary legitimate user: rate-limited like anyone else.
pub const USER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const USER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// A trusted source (a trunk, the office) on the user's host: in every defence's allowlist.
pub const TRUSTED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
pub const TRUSTED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);
/// A phone on the user's host that is in no allowlist: sipfilter (responsive mode) learns it
/// from the PBX's 200 to its registration; for the other defences it is one more unlisted
/// client.
pub const LEARNED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
pub const LEARNED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30);
/// The attacker's address on the LAN, which is also the PBX's gateway.
pub const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const ATTACKER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66);
/// Where single-source floods come from: an attacker "on the Internet", behind the gateway.
pub const FLOOD_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
pub const FLOOD_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6666, 0, 0, 0, 0, 0x66);
pub const SIP_PORT: u16 = 5060;

/// Subscribers of the lab registrar: the ordinary user, the trusted one and the learned one
/// (see [`Agent`]).
pub const USERS: &[(&str, &str)] = &[
    ("1000", "flood-lab-pw-1000"),
    ("1001", "flood-lab-pw-1001"),
    ("1002", "flood-lab-pw-1002"),
];

/// How long the lab waits for sipfilter to list the learned agent after its registration (the
/// PBX's 200 goes through the egress watcher, an event and the daemon: milliseconds).
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(10);

/// The legitimate agents on the user's host, each from its own address with its own account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    /// `192.0.2.10`, user 1000: no list names it (with sipfilter's responsive mode it is
    /// learned too, from its first granted registration, like any phone).
    User,
    /// `192.0.2.20`, user 1001: in every defence's allowlist.
    Trusted,
    /// `192.0.2.30`, user 1002: in no allowlist; registers before the flood and, with
    /// sipfilter, is in `list learned` before the flood starts.
    Learned,
}

impl Agent {
    pub fn name(self) -> &'static str {
        match self {
            Agent::User => "user",
            Agent::Trusted => "trusted",
            Agent::Learned => "learned",
        }
    }

    /// Its address, in the family of the lab's Kamailio.
    pub fn address(self, v6: bool) -> IpAddr {
        match (self, v6) {
            (Agent::User, false) => USER_V4.into(),
            (Agent::User, true) => USER_V6.into(),
            (Agent::Trusted, false) => TRUSTED_V4.into(),
            (Agent::Trusted, true) => TRUSTED_V6.into(),
            (Agent::Learned, false) => LEARNED_V4.into(),
            (Agent::Learned, true) => LEARNED_V6.into(),
        }
    }

    /// Its account: (user, password).
    pub fn credentials(self) -> (&'static str, &'static str) {
        match self {
            Agent::User => USERS[0],
            Agent::Trusted => USERS[1],
            Agent::Learned => USERS[2],
        }
    }

    /// Where its schedule starts within a [`LEGIT_TICK`]: the agents stand for phones of their
    /// own, whose requests do not reach the PBX at the same instant (in step, each agent's
    /// registration would wait for the others' on Kamailio's two workers).
    fn schedule_offset(self) -> Duration {
        match self {
            Agent::User => Duration::ZERO,
            Agent::Trusted => LEGIT_TICK / 3,
            Agent::Learned => LEGIT_TICK * 2 / 3,
        }
    }
}

/// Entries of the blocklist each defence carries (the issue's 10,000-entry ipset). They are
/// spread over 198.19.160.0-198.19.238.30 (every other address, so nothing aggregates into a
/// CIDR): benchmarking space that overlaps no flood source and is never on the wire.
pub const BLOCKLIST_LEN: u32 = 10_000;

/// The scanner User-Agents every defence that can match strings drops: sipfilter's built-in
/// list, which is also what the classic iptables recipes block one `string` rule at a time.
pub const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "pplsip",
    "sip-scan",
    "sundayddr",
    "iWar",
    "SIVuS",
    "siparmyknife",
    "smap",
];

/// The blocklist's addresses.
pub fn blocklist() -> Vec<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(198, 19, 160, 0));
    (0..BLOCKLIST_LEN)
        .map(|i| Ipv4Addr::from(base + 2 * i))
        .collect()
}

/// Namespaces, links and Kamailio. Fields drop in order: Kamailio stops before the namespaces
/// go.
#[derive(Debug)]
pub struct FloodLab {
    pub kamailio: Kamailio,
    pub attacker: NetNs,
    pub user: NetNs,
    pub pbx: NetNs,
    pub switch: NetNs,
    pub attacker_mac: [u8; 6],
    pub pbx_mac: [u8; 6],
}

impl FloodLab {
    /// Builds the lab and starts Kamailio on the PBX (IPv4 and IPv6 both reach it: it listens
    /// on `listen_v6` when true, else on IPv4). `tag` (letters and digits, at most 6) names the
    /// namespaces; `lifetime` bounds Kamailio's.
    pub fn new(tag: &str, listen_v6: bool, lifetime: Duration) -> Result<FloodLab> {
        ensure!(tag.len() <= 6, "lab tag {tag:?} longer than 6");
        let switch = NetNs::new(&format!("{tag}sw"))?;
        let attacker = NetNs::new(&format!("{tag}atk"))?;
        let user = NetNs::new(&format!("{tag}usr"))?;
        let pbx = NetNs::new(&format!("{tag}pbx"))?;
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        // Bridged frames must not be handed to the switch's (empty) iptables: that would only
        // add per-packet cost that has nothing to do with the defences.
        switch.exec(&[
            "sh",
            "-c",
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e \"$f\" ] && echo 0 > \"$f\"; done; true",
        ])?;
        let hosts = [
            (&attacker, ATTACKER_IF, "sw-atk"),
            (&user, USER_IF, "sw-usr"),
            (&pbx, PBX_IF, "sw-pbx"),
        ];
        let queues = thread::available_parallelism().map_or(1, usize::from);
        for (ns, ifname, port) in hosts {
            link_with_queues(ns, ifname, &switch, port, queues)?;
            switch.ip(&["link", "set", "dev", port, "master", BRIDGE])?;
            switch.up(port)?;
        }
        switch.up(BRIDGE)?;
        let addresses: [(&NetNs, &str, Vec<String>); 3] = [
            (
                &attacker,
                ATTACKER_IF,
                vec![format!("{ATTACKER_V4}/24"), format!("{ATTACKER_V6}/64")],
            ),
            (
                &user,
                USER_IF,
                vec![
                    format!("{USER_V4}/24"),
                    format!("{TRUSTED_V4}/24"),
                    format!("{LEARNED_V4}/24"),
                    format!("{USER_V6}/64"),
                    format!("{TRUSTED_V6}/64"),
                    format!("{LEARNED_V6}/64"),
                ],
            ),
            (
                &pbx,
                PBX_IF,
                vec![format!("{PBX_V4}/24"), format!("{PBX_V6}/64")],
            ),
        ];
        for (ns, ifname, cidrs) in &addresses {
            for cidr in cidrs {
                ns.addr(ifname, cidr)?;
            }
            ns.up(ifname)?;
        }
        let attacker_mac = attacker.mac(ATTACKER_IF)?;
        let user_mac = user.mac(USER_IF)?;
        let pbx_mac = pbx.mac(PBX_IF)?;
        // Static forwarding entries: the switch never floods a frame to every port (which
        // would hand the flood to the user's host too) while it learns.
        for (mac, port) in [
            (attacker_mac, "sw-atk"),
            (user_mac, "sw-usr"),
            (pbx_mac, "sw-pbx"),
        ] {
            switch.exec(&[
                "bridge",
                "fdb",
                "replace",
                &mac_text(mac),
                "dev",
                port,
                "master",
                "static",
            ])?;
        }
        // Permanent neighbours: no ARP or ND, whose packets a filter would see, and no lost
        // first packets.
        for (addr, mac) in [(PBX_V4.to_string(), pbx_mac), (PBX_V6.to_string(), pbx_mac)] {
            attacker.neighbor(ATTACKER_IF, &addr, mac)?;
            user.neighbor(USER_IF, &addr, mac)?;
        }
        for (addr, mac) in [
            (USER_V4.to_string(), user_mac),
            (TRUSTED_V4.to_string(), user_mac),
            (LEARNED_V4.to_string(), user_mac),
            (USER_V6.to_string(), user_mac),
            (TRUSTED_V6.to_string(), user_mac),
            (LEARNED_V6.to_string(), user_mac),
            (ATTACKER_V4.to_string(), attacker_mac),
            (ATTACKER_V6.to_string(), attacker_mac),
        ] {
            pbx.neighbor(PBX_IF, &addr, mac)?;
        }
        pbx.ip(&["route", "add", "default", "via", &ATTACKER_V4.to_string()])?;
        pbx.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ATTACKER_V6.to_string(),
        ])?;
        for (ns, ifname) in [(&attacker, ATTACKER_IF), (&user, USER_IF), (&pbx, PBX_IF)] {
            ns.wait_ready(ifname, Duration::from_secs(5))?;
        }
        let listen = if listen_v6 {
            SocketAddr::new(PBX_V6.into(), SIP_PORT)
        } else {
            SocketAddr::new(PBX_V4.into(), SIP_PORT)
        };
        let kamailio = Kamailio::start_for(&pbx, listen, USERS, lifetime)?;
        Ok(FloodLab {
            kamailio,
            attacker,
            user,
            pbx,
            switch,
            attacker_mac,
            pbx_mac,
        })
    }

    /// Kamailio's address.
    pub fn server(&self) -> SocketAddr {
        self.kamailio.listen()
    }

    /// Names of the lab's namespaces (to check they are gone afterwards).
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.attacker, &self.user, &self.pbx, &self.switch]
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// A SIP client on the user's host, from `agent`'s address.
    pub fn client(&self, agent: Agent) -> Result<SipClient> {
        let ip = self.agent_address(agent);
        SipClient::bind(&self.user, SocketAddr::new(ip, 0), self.server())
    }

    /// `agent`'s address in this lab (IPv6 when Kamailio listens on IPv6).
    pub fn agent_address(&self, agent: Agent) -> IpAddr {
        agent.address(self.server().is_ipv6())
    }

    /// Registers `agent` once (digest) and fails unless the PBX answers 200.
    pub fn register(&self, agent: Agent) -> Result<()> {
        let (user, password) = agent.credentials();
        let registration = self.client(agent)?.register(user, password)?;
        ensure!(
            registration.code() == 200,
            "the {} agent's registration was answered {}",
            agent.name(),
            registration.code()
        );
        Ok(())
    }

    /// Registers the learned agent and, when `sipfilter` learns sources (responsive mode),
    /// waits (at most [`LEARN_TIMEOUT`]) until `list learned` shows it. Returns its row (`None`
    /// without sipfilter or without responsive mode).
    pub fn learn_agent(
        &self,
        sipfilter: Option<&SipfilterGuard>,
        policy: &LabPolicy,
    ) -> Result<Option<serde_json::Value>> {
        self.register(Agent::Learned)?;
        match sipfilter {
            Some(guard) if policy.responsive => guard
                .wait_learned(self.agent_address(Agent::Learned), LEARN_TIMEOUT)
                .map(Some),
            _ => Ok(None),
        }
    }

    /// A flood of `sources` at Kamailio from the attacker's interface, for `duration`.
    pub fn flood_spec(
        &self,
        method: flood::FloodMethod,
        sources: FloodSources,
        duration: Duration,
    ) -> FloodSpec {
        FloodSpec::new(
            method,
            sources,
            self.server(),
            (self.attacker_mac, self.pbx_mac),
            duration,
        )
    }

    /// Sends the flood (blocking) and reports what it achieved.
    pub fn flood(&self, spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport> {
        flood::flood(&self.attacker, ATTACKER_IF, spec, stop)
    }

    /// [`FloodLab::flood`] of frames built beforehand ([`flood::frame_pool`]), sent by
    /// `source`.
    pub fn flood_frames(
        &self,
        source: FrameSource,
        spec: &FloodSpec,
        pool: &[Vec<u8>],
        stop: &AtomicBool,
    ) -> Result<FloodReport> {
        match source {
            FrameSource::PacketSocket => {
                flood::flood_frames(&self.attacker, ATTACKER_IF, spec, pool, stop)
            }
            FrameSource::LiveFrames => {
                // A veth accepts redirected frames only when its peer runs NAPI, which GRO
                // turns on without an XDP program there.
                self.switch
                    .exec(&["ethtool", "-K", "sw-atk", "gro", "on"])
                    .context("turning GRO on for sw-atk (NAPI for redirected frames)")?;
                flood_xdp::flood_live(&self.attacker, ATTACKER_IF, spec, pool, stop)
            }
        }
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// True while a network namespace called `name` exists.
pub fn namespace_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

// ------------------------------------------------------------------------------------------
// Defences

/// What stands in front of Kamailio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Defence {
    None,
    Iptables,
    Nftables,
    SipfilterDriver,
    SipfilterSkb,
}

impl Defence {
    pub const ALL: [Defence; 5] = [
        Defence::None,
        Defence::Iptables,
        Defence::Nftables,
        Defence::SipfilterDriver,
        Defence::SipfilterSkb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Defence::None => "no filter",
            Defence::Iptables => "iptables",
            Defence::Nftables => "nftables",
            Defence::SipfilterDriver => "sipfilter driver",
            Defence::SipfilterSkb => "sipfilter skb",
        }
    }

    pub fn is_sipfilter(self) -> bool {
        matches!(self, Defence::SipfilterDriver | Defence::SipfilterSkb)
    }
}

/// The policy every defence enforces, each in its own terms.
#[derive(Clone, Debug)]
pub struct LabPolicy {
    /// Per-source requests per second on udp/5060 (sipfilter: REGISTER and INVITE each;
    /// iptables `hashlimit` and nftables' meter: every packet, as operators write them).
    pub rate: u32,
    pub burst: u32,
    /// Carry the 10,000-entry blocklist.
    pub blocklist: bool,
    /// sipfilter only: its ban engine (off for comparisons: iptables and nftables have none).
    pub bans: bool,
    /// iptables command: `iptables` (Debian's default, the nf_tables backend) or
    /// `iptables-legacy` (x_tables).
    pub iptables: String,
    /// sipfilter only: responsive mode (`[responsive] enabled = true, grace = "5m"`): a
    /// source whose registration the PBX grants is trusted for the registration's lifetime
    /// plus the grace. Neither firewall has an equivalent.
    pub responsive: bool,
    /// sipfilter only: `[rate_limit] total`, REGISTER and INVITE per second from all untrusted
    /// sources together (burst: twice as many), which holds a spoofed flood to that rate. The
    /// classic iptables and nftables recipes have no such rule (a global `limit` could be
    /// added to them).
    pub total: Option<u32>,
}

impl Default for LabPolicy {
    fn default() -> LabPolicy {
        LabPolicy {
            rate: 5,
            burst: 10,
            blocklist: true,
            bans: false,
            iptables: "iptables".to_owned(),
            responsive: true,
            total: Some(200),
        }
    }
}

impl LabPolicy {
    /// The sipfilter policy file. The blocklist is not in it (a policy list holds at most 4096
    /// entries): [`LabPolicy::sipfilter_state`] puts it in the state file, as CLI entries.
    pub fn sipfilter_toml(&self) -> String {
        let total = match self.total {
            Some(rate) => format!("{{ rate = {rate}, burst = {} }}", 2 * rate),
            None => "\"off\"".to_owned(),
        };
        format!(
            "[sources]\nallow = [\"{TRUSTED_V4}\", \"{TRUSTED_V6}\"]\n\n\
             [rate_limit]\nregister = {{ rate = {r}, burst = {b} }}\n\
             invite = {{ rate = {r}, burst = {b} }}\ntotal = {total}\n\n\
             [bans]\nenabled = {bans}\n\n\
             [responsive]\nenabled = {responsive}\ngrace = \"5m\"\n\n\
             [daemon]\nmetrics = \"off\"\n",
            r = self.rate,
            b = self.burst,
            bans = self.bans,
            responsive = self.responsive
        )
    }

    /// The daemon's state file holding the blocklist as deny entries added from the CLI (how an
    /// operator's blocklist of this size gets into sipfilter).
    pub fn sipfilter_state(&self) -> sipfilter::state::State {
        let mut state = sipfilter::state::State::default();
        if self.blocklist {
            let now = SystemTime::now();
            state.entries = blocklist()
                .into_iter()
                .map(|ip| sipfilter::state::ListEntry {
                    kind: sipfilter::control::ListKind::Deny,
                    target: sipfilter::state::Target::Net(IpNet::from(IpAddr::V4(ip))),
                    comment: Some("flood lab blocklist".to_owned()),
                    expires: None,
                    added: now,
                })
                .collect();
        }
        state
    }

    /// `ipset restore` input: the blocklist sets.
    pub fn ipset_restore(&self) -> String {
        let mut text = String::from(
            "create sflab-block4 hash:ip family inet hashsize 16384 maxelem 65536\n\
             create sflab-block6 hash:ip family inet6 hashsize 1024 maxelem 65536\n",
        );
        if self.blocklist {
            for ip in blocklist() {
                let _ = writeln!(text, "add sflab-block4 {ip}");
            }
        }
        text
    }

    /// `iptables-restore` / `ip6tables-restore` input: the classic operator rules on udp/5060
    /// (blocklist, allowlist, one `string` rule per scanner User-Agent, `hashlimit` per source;
    /// IPv6 sources are grouped by /64 like sipfilter's).
    pub fn iptables_restore(&self, v6: bool) -> String {
        let (set, trusted, mask) = if v6 {
            (
                "sflab-block6",
                format!("{TRUSTED_V6}/128"),
                " --hashlimit-srcmask 64",
            )
        } else {
            ("sflab-block4", format!("{TRUSTED_V4}/32"), "")
        };
        let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
        let _ = writeln!(text, "-A INPUT -m set --match-set {set} src -j DROP");
        let _ = writeln!(text, "-A INPUT -s {trusted} -j ACCEPT");
        for ua in SCANNER_USER_AGENTS {
            let _ = writeln!(
                text,
                "-A INPUT -p udp --dport {SIP_PORT} -m string --string \"{ua}\" --algo bm --icase -j DROP"
            );
        }
        let _ = writeln!(
            text,
            "-A INPUT -p udp --dport {SIP_PORT} -m hashlimit --hashlimit-above {}/sec \
             --hashlimit-burst {} --hashlimit-mode srcip{mask} --hashlimit-name sflab{} -j DROP",
            self.rate,
            self.burst,
            if v6 { 6 } else { 4 }
        );
        text.push_str("COMMIT\n");
        text
    }

    /// `nft -f` input: blocklist sets, allowlist, a per-source limit on udp/5060 in dynamic
    /// sets (IPv6 keyed by /64). nftables has no string match, so no scanner rule.
    pub fn nft_ruleset(&self) -> String {
        let mut elements = String::new();
        if self.blocklist {
            let list: Vec<String> = blocklist().iter().map(|ip| ip.to_string()).collect();
            elements = format!(" elements = {{ {} }}", list.join(", "));
        }
        format!(
            "table inet sflab {{\n\
             set block4 {{ type ipv4_addr; size 65536;{elements} }}\n\
             set block6 {{ type ipv6_addr; size 65536; }}\n\
             set rl4 {{ type ipv4_addr; size 65535; flags dynamic,timeout; timeout 60s; }}\n\
             set rl6 {{ type ipv6_addr; size 65535; flags dynamic,timeout; timeout 60s; }}\n\
             chain input {{\n\
             type filter hook input priority filter; policy accept;\n\
             ip saddr @block4 drop\n\
             ip6 saddr @block6 drop\n\
             ip saddr {TRUSTED_V4} accept\n\
             ip6 saddr {TRUSTED_V6} accept\n\
             meta nfproto ipv4 udp dport {SIP_PORT} update @rl4 {{ ip saddr limit rate over {r}/second burst {b} packets }} drop\n\
             meta nfproto ipv6 udp dport {SIP_PORT} update @rl6 {{ ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over {r}/second burst {b} packets }} drop\n\
             }}\n}}\n",
            r = self.rate,
            b = self.burst
        )
    }
}

/// A defence in force on the lab's PBX. Firewall rules live in the PBX namespace and go with
/// it; sipfilter's daemon is stopped and its pins removed when this drops.
#[derive(Debug)]
pub struct ActiveDefence {
    pub defence: Defence,
    pub sipfilter: Option<SipfilterGuard>,
}

/// The sipfilter daemon of a lab and its private places. Drop order: daemon, then pins
/// (`detach --all`), then the policy file.
#[derive(Debug)]
pub struct SipfilterGuard {
    pub daemon: Daemon,
    pub pins: PinDir,
    pub policy: PolicyFile,
}

impl SipfilterGuard {
    /// The datapath's counters (summed over CPUs).
    pub fn counters(&self) -> Result<Vec<u64>> {
        self.pins.counters()
    }

    /// Sources in the rate limiter's LRU, and its capacity.
    pub fn rate_occupancy(&self) -> Result<(u64, u64)> {
        let used = sipfilter::datapath::pinned_rate_sources(self.pins.path())?;
        let capacity = aya::maps::MapInfo::from_pin(self.pins.path().join("SF_RATE"))
            .map(|info| u64::from(info.max_entries()))
            .unwrap_or(0);
        Ok((used, capacity))
    }

    /// `sipfilter status --json` through the daemon's socket.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let output = self.pins.command(None, &["status", "--json"]);
        ensure!(
            output.status.success(),
            "sipfilter status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// `sipfilter list learned --json`: the sources responsive mode trusts.
    pub fn learned(&self) -> Result<Vec<serde_json::Value>> {
        let rows: serde_json::Value =
            serde_json::from_str(&self.cli(&["list", "learned", "--json"])?)
                .context("sipfilter list learned --json")?;
        match rows {
            serde_json::Value::Array(rows) => Ok(rows),
            other => bail!("sipfilter list learned --json printed {other}"),
        }
    }

    /// `address`'s row in `list learned`, if it is there.
    pub fn learned_row(&self, address: IpAddr) -> Result<Option<serde_json::Value>> {
        Ok(self.learned()?.into_iter().find(|row| {
            row["address"]
                .as_str()
                .and_then(|text| text.split('/').next()?.parse::<IpAddr>().ok())
                == Some(address)
        }))
    }

    /// Polls `list learned` until `address` is in it (at most `timeout`); its row.
    pub fn wait_learned(&self, address: IpAddr, timeout: Duration) -> Result<serde_json::Value> {
        let started = Instant::now();
        loop {
            if let Some(row) = self.learned_row(address)? {
                return Ok(row);
            }
            ensure!(
                started.elapsed() < timeout,
                "sipfilter did not learn {address} within {timeout:?} of its registration: {}",
                self.daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sipfilter ARGS...` against this daemon (`list bans`, `stats`, ...): its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = self.pins.command(None, args);
        ensure!(
            output.status.success(),
            "sipfilter {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl FloodLab {
    /// Puts `defence` with `policy` in front of Kamailio.
    pub fn defend(&self, defence: Defence, policy: &LabPolicy) -> Result<ActiveDefence> {
        let sipfilter = match defence {
            Defence::None => None,
            Defence::Iptables => {
                let dir = LabDir::new("iptables")?;
                let ipset = dir.path().join("ipset");
                fs::write(&ipset, policy.ipset_restore())?;
                self.pbx
                    .exec(&["ipset", "restore", "-file", path_str(&ipset)?])?;
                for (v6, command) in [
                    (false, format!("{}-restore", policy.iptables)),
                    (
                        true,
                        format!(
                            "{}-restore",
                            policy.iptables.replace("iptables", "ip6tables")
                        ),
                    ),
                ] {
                    let rules = dir.path().join(if v6 { "rules6" } else { "rules4" });
                    fs::write(&rules, policy.iptables_restore(v6))?;
                    self.pbx.exec(&[&command, path_str(&rules)?])?;
                }
                None
            }
            Defence::Nftables => {
                let dir = LabDir::new("nft")?;
                let rules = dir.path().join("ruleset.nft");
                fs::write(&rules, policy.nft_ruleset())?;
                // `nft -f FILE` with our own table only: never the system's nftables.conf.
                self.pbx.exec(&["nft", "-f", path_str(&rules)?])?;
                None
            }
            Defence::SipfilterDriver | Defence::SipfilterSkb => {
                let mode = if defence == Defence::SipfilterDriver {
                    "driver"
                } else {
                    "skb"
                };
                let pins = PinDir::new("floodlab");
                let policy_file = PolicyFile::new("floodlab", &policy.sipfilter_toml());
                sipfilter::state::save(&pins.state_file(), &policy.sipfilter_state())
                    .context("writing the blocklist into the daemon's state file")?;
                let mut daemon = Daemon::attach(
                    &self.pbx,
                    &pins,
                    &[PBX_IF, "--config", policy_file.arg(), "--mode", mode],
                )?;
                daemon.wait_ready(Duration::from_secs(30))?;
                Some(SipfilterGuard {
                    daemon,
                    pins,
                    policy: policy_file,
                })
            }
        };
        Ok(ActiveDefence { defence, sipfilter })
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 temp path")
}

// ------------------------------------------------------------------------------------------
// The legitimate workload

/// One agent registering every second (digest: challenge and answer) and sending an OPTIONS
/// half a second after each registration: 3 requests per second, under every defence's limit.
#[derive(Clone, Debug, Default)]
pub struct LegitReport {
    pub registrations: u32,
    /// Registrations that ended in 200 OK.
    pub registered: u32,
    /// Time of each registration (both round trips), failures included at the time they
    /// took to fail.
    pub register_times: Vec<Duration>,
    pub options: u32,
    pub options_ok: u32,
    pub options_times: Vec<Duration>,
    /// The first failures, for the report.
    pub errors: Vec<String>,
}

impl LegitReport {
    pub fn success_rate(&self) -> f64 {
        if self.registrations == 0 {
            0.0
        } else {
            f64::from(self.registered) / f64::from(self.registrations)
        }
    }

    /// Percentile `p` (0-100) of the registration times, in ms.
    pub fn register_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.register_times, p)
    }

    /// One report of all of `reports` together (the runs of one defence, say), so that
    /// percentiles are taken over every sample.
    pub fn pooled<'a>(reports: impl IntoIterator<Item = &'a LegitReport>) -> LegitReport {
        let mut all = LegitReport::default();
        for report in reports {
            all.registrations += report.registrations;
            all.registered += report.registered;
            all.register_times.extend(&report.register_times);
            all.options += report.options;
            all.options_ok += report.options_ok;
            all.options_times.extend(&report.options_times);
            all.errors.extend(report.errors.iter().cloned());
        }
        all
    }
}

/// Nearest-rank percentile of `samples` in milliseconds (0 when empty).
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// How long one legit transaction may take (retransmitted at 0.5 s and 1 s) before it counts
/// as failed.
pub const LEGIT_TIMEOUT: Duration = Duration::from_secs(2);

/// An agent's schedule: a registration, one tick later an OPTIONS, and so on.
const LEGIT_TICK: Duration = Duration::from_millis(500);

/// Runs a legitimate agent (the workload above, from `agent`'s address with its account) for
/// `duration` or until `stop`.
pub fn run_legit(
    lab: &FloodLab,
    agent: Agent,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<LegitReport> {
    let (user, password) = agent.credentials();
    let client = lab.client(agent)?.with_timeout(LEGIT_TIMEOUT);
    let mut report = LegitReport::default();
    let started = Instant::now() + agent.schedule_offset();
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let due = started + LEGIT_TICK * tick;
        if due >= started + duration {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let begun = Instant::now();
        if tick.is_multiple_of(2) {
            report.registrations += 1;
            let result = client.register(user, password);
            report.register_times.push(begun.elapsed());
            match result {
                Ok(registration) if registration.code() == 200 => report.registered += 1,
                Ok(registration) => note(
                    &mut report.errors,
                    format!("REGISTER answered {}", registration.code()),
                ),
                Err(err) => note(&mut report.errors, format!("REGISTER: {err:#}")),
            }
        } else {
            report.options += 1;
            let result = client.options();
            report.options_times.push(begun.elapsed());
            match result {
                Ok(response) if response.code == 200 => report.options_ok += 1,
                Ok(response) => note(
                    &mut report.errors,
                    format!("OPTIONS answered {}", response.code),
                ),
                Err(err) => note(&mut report.errors, format!("OPTIONS: {err:#}")),
            }
        }
        // A slow transaction delays the schedule rather than bunching requests after it.
        let elapsed_ticks = (started.elapsed().as_millis() / LEGIT_TICK.as_millis()) as u32;
        tick = (tick + 1).max(elapsed_ticks + 1);
    }
    Ok(report)
}

fn note(errors: &mut Vec<String>, error: String) {
    if errors.len() < 5 {
        let first = error.lines().next().unwrap_or_default().to_owned();
        errors.push(first);
    }
}

// ------------------------------------------------------------------------------------------
// CPU and delivery accounting

/// Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Machine-wide softirq time, in seconds (`/proc/stat`, all CPUs).
pub fn softirq_seconds() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    // cpu user nice system idle iowait irq softirq ...
    let softirq: u64 = line
        .split_whitespace()
        .nth(7)
        .context("short cpu line")?
        .parse()?;
    Ok(softirq as f64 / clock_ticks())
}

/// Exact run time of the kernel's ksoftirqd threads (`/proc/PID/schedstat`), in seconds: the
/// softirq work the kernel deferred instead of running inline.
pub fn ksoftirqd_seconds() -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let nanos: u64 = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("ksoftirqd/"))
        })
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    nanos as f64 / 1e9
}

/// User + system time of `pids`, in seconds (processes that vanished count 0).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state(0) ... utime(11) stime(12).
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / clock_ticks()
}

/// UDP counters of a namespace (`/proc/net/snmp`, `Udp:`): datagrams delivered to sockets and
/// dropped because a socket's receive buffer was full.
pub fn udp_counters(ns: &NetNs) -> Result<(u64, u64)> {
    let output = ns.exec(&["cat", "/proc/net/snmp"])?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    ensure!(lines.len() >= 2, "no Udp lines in /proc/net/snmp");
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let get = |name: &str| -> Result<u64> {
        let at = names
            .iter()
            .position(|n| *n == name)
            .with_context(|| format!("no Udp {name}"))?;
        Ok(values.get(at).context("short Udp line")?.parse()?)
    };
    Ok((get("InDatagrams")?, get("RcvbufErrors")?))
}

// ------------------------------------------------------------------------------------------
// One measurement

/// How the flood's frames leave the attacker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameSource {
    /// `sendmmsg` on an `AF_PACKET` socket ([`flood::flood`]).
    #[default]
    PacketSocket,
    /// `xdp_flood` in `BPF_PROG_TEST_RUN` live-frames mode ([`flood_xdp`]): frames in pages
    /// with XDP's headroom, as a NIC hands them over.
    LiveFrames,
}

/// What to run against a defence.
#[derive(Clone, Debug)]
pub struct Workload {
    pub flood: Option<(flood::FloodMethod, FloodSources)>,
    pub frames: FrameSource,
    pub duration: Duration,
    /// Flood frames per second to aim at (`None`: as fast as possible).
    pub rate: Option<u64>,
    /// Run the legitimate agent from the trusted (allowlisted) address too.
    pub trusted_agent: bool,
    /// Run the learned agent too: it registers before the clock starts and, with sipfilter in
    /// responsive mode, the run starts only once `list learned` shows it.
    pub learned_agent: bool,
}

/// The figures of one defence under one workload.
#[derive(Clone, Debug, Default)]
pub struct Measurement {
    pub flood: FloodReport,
    /// Requests from flood sources that Kamailio logged.
    pub flood_at_kamailio: u64,
    pub legit: LegitReport,
    pub trusted: Option<LegitReport>,
    pub learned: Option<LegitReport>,
    /// sipfilter in responsive mode, with the learned agent: its `list learned` row before the
    /// flood, and after the run (`None` if it was no longer there).
    pub learned_before: Option<serde_json::Value>,
    pub learned_after: Option<Option<serde_json::Value>>,
    /// Machine-wide softirq time from `/proc/stat`. This kernel samples it at ticks (no
    /// `IRQ_TIME_ACCOUNTING`), which aliases with a paced sender: see [`Measurement::path_cpu_s`].
    pub softirq_s: f64,
    /// The flood's packet path, measured exactly: the sending thread's CPU time (which on a
    /// veth includes the receiver's softirq work run inline) plus ksoftirqd's.
    pub path_cpu_s: f64,
    pub kamailio_cpu_s: f64,
    /// UDP datagrams delivered to sockets in the PBX namespace, and dropped at a full socket.
    pub pbx_udp_delivered: u64,
    pub pbx_udp_rcvbuf_drops: u64,
    /// sipfilter only: rate limiter sources in use / capacity, and map occupancy from
    /// `sipfilter status --json`.
    pub rate_sources: Option<(u64, u64)>,
    pub status: Option<serde_json::Value>,
    /// sipfilter only: packets dropped by the datapath during the run.
    pub sipfilter_drops: Option<u64>,
}

impl Measurement {
    /// Softirq time per offered flood packet, in microseconds.
    pub fn softirq_us_per_packet(&self) -> f64 {
        if self.flood.sent == 0 {
            0.0
        } else {
            self.softirq_s * 1e6 / self.flood.sent as f64
        }
    }

    /// sipfilter with the learned agent: whether its learned trust outlived the run, the same
    /// trust period (`since` unchanged: not lost during the flood and learned again from a
    /// later registration). `None` when not measured.
    pub fn learned_kept(&self) -> Option<bool> {
        let before = self.learned_before.as_ref()?;
        let after = self.learned_after.as_ref()?;
        Some(
            after
                .as_ref()
                .is_some_and(|row| row["since"] == before["since"]),
        )
    }

    /// Packet-path CPU per flood packet (send, switch, receive, filter), in microseconds.
    pub fn path_us_per_packet(&self) -> f64 {
        if self.flood.sent == 0 {
            0.0
        } else {
            self.path_cpu_s * 1e6 / self.flood.sent as f64
        }
    }
}

/// Time Kamailio gets after the flood to work through what is queued in its socket, before the
/// figures are read.
const DRAIN: Duration = Duration::from_secs(1);

/// Builds a lab, puts `defence` in front of it, runs `workload` and tears everything down.
/// `tag` names the namespaces; `stop` (Ctrl-C) ends the run early with an error.
pub fn measure(
    tag: &str,
    defence: Defence,
    policy: &LabPolicy,
    workload: &Workload,
    stop: &AtomicBool,
) -> Result<Measurement> {
    let v6 = workload
        .flood
        .as_ref()
        .is_some_and(|(_, sources)| sources.is_v6());
    let lifetime = workload.duration + Duration::from_secs(120);
    let lab = FloodLab::new(tag, v6, lifetime)?;
    let active = lab.defend(defence, policy)?;
    // The agents register once before the clock starts, so the run measures re-registration
    // under load, not the first binding. The learned agent's registration is what sipfilter
    // learns it from: the run starts once `list learned` shows it.
    lab.register(Agent::User)?;
    let learned_before = if workload.learned_agent {
        lab.learn_agent(active.sipfilter.as_ref(), policy)?
    } else {
        None
    };
    ensure!(!stop.load(Ordering::Relaxed), "interrupted");

    let spec = workload.flood.as_ref().map(|(method, sources)| {
        let mut spec = lab.flood_spec(*method, sources.clone(), workload.duration);
        spec.rate = workload.rate;
        spec
    });
    let pool = spec.as_ref().map(flood::frame_pool);

    let kamailio_pids = lab.kamailio.pids();
    let log_before = lab.kamailio.log().len();
    let softirq_before = softirq_seconds()?;
    let ksoftirqd_before = ksoftirqd_seconds();
    let kamailio_before = cpu_seconds(&kamailio_pids);
    let udp_before = udp_counters(&lab.pbx)?;
    let drops_before = active
        .sipfilter
        .as_ref()
        .map(|s| s.counters())
        .transpose()?;

    let (flood, legit, trusted, learned) = thread::scope(|scope| {
        let flood = spec.as_ref().zip(pool.as_deref()).map(|(spec, pool)| {
            scope.spawn(|| lab.flood_frames(workload.frames, spec, pool, stop))
        });
        let lab = &lab;
        let agent =
            |agent: Agent| scope.spawn(move || run_legit(lab, agent, workload.duration, stop));
        let trusted = workload.trusted_agent.then(|| agent(Agent::Trusted));
        let learned = workload.learned_agent.then(|| agent(Agent::Learned));
        let legit = run_legit(lab, Agent::User, workload.duration, stop);
        (flood.map(join), legit, trusted.map(join), learned.map(join))
    });
    let flood = flood.transpose()?.unwrap_or_default();
    let legit = legit?;
    let trusted = trusted.transpose()?;
    let learned = learned.transpose()?;
    ensure!(!stop.load(Ordering::Relaxed), "interrupted");
    thread::sleep(DRAIN);

    let softirq_s = softirq_seconds()? - softirq_before;
    let path_cpu_s = flood.thread_cpu.as_secs_f64() + ksoftirqd_seconds() - ksoftirqd_before;
    let kamailio_cpu_s = cpu_seconds(&kamailio_pids) - kamailio_before;
    let udp_after = udp_counters(&lab.pbx)?;
    let log = lab.kamailio.log();
    let seen = SeenLog::parse(log.get(log_before..).unwrap_or_default())?;
    let flood_at_kamailio = match &workload.flood {
        Some((_, sources)) => seen
            .requests
            .iter()
            .filter(|r| sources.contains(r.source.ip()))
            .count() as u64,
        None => 0,
    };
    let mut measurement = Measurement {
        flood,
        flood_at_kamailio,
        legit,
        trusted,
        learned,
        softirq_s,
        path_cpu_s,
        kamailio_cpu_s,
        pbx_udp_delivered: udp_after.0 - udp_before.0,
        pbx_udp_rcvbuf_drops: udp_after.1 - udp_before.1,
        ..Measurement::default()
    };
    if let Some(guard) = &active.sipfilter {
        if learned_before.is_some() {
            measurement.learned_after = Some(guard.learned_row(lab.agent_address(Agent::Learned))?);
        }
        measurement.learned_before = learned_before;
        measurement.rate_sources = Some(guard.rate_occupancy()?);
        measurement.status = guard.status_json().ok();
        let after = guard.counters()?;
        if let Some(before) = drops_before {
            measurement.sipfilter_drops = Some(dropped(&after) - dropped(&before));
        }
    }
    drop(active);
    drop(lab);
    Ok(measurement)
}

/// Joins a scoped thread, passing its panic on.
fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Packets the datapath dropped, all reasons.
pub fn dropped(counters: &[u64]) -> u64 {
    use sipfilter_common::{Reason, stats};
    Reason::ALL
        .iter()
        .filter(|reason| reason.is_drop())
        .filter_map(|reason| counters.get((stats::REASON_BASE + *reason as u32) as usize))
        .sum()
}

/// Fails unless the machine has what the lab needs (root, the tools).
pub fn check_prerequisites(defences: &[Defence]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "the flood lab needs root");
    let mut tools = vec!["ip", "bridge", "kamailio"];
    if defences.contains(&Defence::Iptables) {
        tools.extend(["iptables-restore", "ip6tables-restore", "ipset"]);
    }
    if defences.contains(&Defence::Nftables) {
        tools.push("nft");
    }
    for tool in tools {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` is not installed: run `cargo xtask setup`");
        }
    }
    Ok(())
}
