//! Turns a validated [`Policy`] into the images of the datapath's maps. Pure computation, so
//! every rule of the translation (port tables, source hints, token-bucket parameters, toll keys)
//! is unit-tested without a kernel.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use sipfilter_common::{
    ABI_VERSION, Config, HintBlock, NetBlock, PORT_BLOCKS, PatternSet, PortBlock, RateParams,
    RuleKind, SourceKey, TOLL_PREFIX_MAX, TRANSPORT_TCP, TRANSPORT_UDP, config_flags, deny_nets,
    hint, port_class,
};

use crate::{
    config::{Mode, Policy, Rate, UntrustedSip},
    patterns::{self, PatternError},
};

/// Minimum gap between two rate-limit events for one source: the ban engine needs evidence,
/// not one event per dropped packet of a flood.
const RATE_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// An allow or deny entry as the tries store it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrieKey {
    V4 { prefix_len: u32, addr: [u8; 4] },
    V6 { prefix_len: u32, addr: [u8; 16] },
}

impl TrieKey {
    pub fn from_net(net: &IpNet) -> TrieKey {
        match net.trunc() {
            IpNet::V4(v4) => TrieKey::V4 {
                prefix_len: u32::from(v4.prefix_len()),
                addr: v4.addr().octets(),
            },
            IpNet::V6(v6) => TrieKey::V6 {
                prefix_len: u32::from(v6.prefix_len()),
                addr: v6.addr().octets(),
            },
        }
    }
}

/// The allow and deny tries' contents: every entry with its expiry (`CLOCK_MONOTONIC` ns, 0 =
/// never). The policy file's entries are permanent; the daemon adds entries from the CLI and
/// from resolved host names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceLists {
    pub allow: BTreeMap<TrieKey, u64>,
    pub deny: BTreeMap<TrieKey, u64>,
}

impl SourceLists {
    /// The policy's own entries.
    pub fn from_policy(policy: &CompiledPolicy) -> SourceLists {
        let permanent = |keys: &[TrieKey]| keys.iter().map(|key| (*key, 0)).collect();
        SourceLists {
            allow: permanent(&policy.allow),
            deny: permanent(&policy.deny),
        }
    }

    /// Adds an entry; where one exists already, the longer-lived wins (0 = permanent).
    pub fn add(list: &mut BTreeMap<TrieKey, u64>, key: TrieKey, expires_ns: u64) {
        list.entry(key)
            .and_modify(|current| {
                if *current != 0 && (expires_ns == 0 || expires_ns > *current) {
                    *current = expires_ns;
                }
            })
            .or_insert(expires_ns);
    }

    /// Every entry with its hint bit.
    pub fn hint_entries(&self) -> impl Iterator<Item = (&TrieKey, u8)> {
        self.allow
            .keys()
            .map(|key| (key, hint::ALLOW))
            .chain(self.deny.keys().map(|key| (key, hint::DENY)))
    }
}

/// Everything the datapath needs from a policy, ready to write.
pub struct CompiledPolicy {
    pub config: Config,
    pub ports: Vec<PortBlock>,
    pub allow: Vec<TrieKey>,
    pub deny: Vec<TrieKey>,
    /// Toll-fraud prefixes: `(prefix_len in bits, zero-padded bytes)`.
    pub toll: Vec<(u32, [u8; TOLL_PREFIX_MAX])>,
    pub user_agents: Box<PatternSet>,
    pub from: Box<PatternSet>,
    /// Entries of the rate-limiter LRU (set at load time).
    pub max_sources: u32,
}

pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PatternError> {
    let mut flags = 0;
    if policy.sources.untrusted_sip == UntrustedSip::Drop {
        flags |= config_flags::UNTRUSTED_SIP_DROP;
    }
    if !policy.scanners.user_agents.is_empty() {
        flags |= config_flags::SCAN_USER_AGENT;
    }
    if !policy.scanners.from.is_empty() {
        flags |= config_flags::SCAN_FROM;
    }
    if !policy.toll_fraud.deny_prefixes.is_empty() {
        flags |= config_flags::TOLL_FRAUD;
    }
    if policy.responsive.enabled {
        flags |= config_flags::RESPONSIVE;
    }
    let modes = [
        (RuleKind::Deny, policy.sources.deny_mode),
        (RuleKind::Restricted, policy.restricted.mode),
        (RuleKind::Scanner, policy.scanners.mode),
        (RuleKind::TollFraud, policy.toll_fraud.mode),
        (RuleKind::RateLimit, policy.rate_limit.mode),
    ];
    let monitor_mask = modes
        .iter()
        .filter(|(_, mode)| *mode == Mode::Monitor)
        .fold(0, |mask, (kind, _)| mask | kind.bit());

    let config = Config {
        abi_version: ABI_VERSION,
        flags,
        monitor_mask,
        ipv6_prefix_len: u32::from(policy.rate_limit.ipv6_prefix),
        register: rate_params(policy.rate_limit.register.as_ref()),
        invite: rate_params(policy.rate_limit.invite.as_ref()),
        total: rate_params(policy.rate_limit.total.as_ref()),
        event_interval_ns: RATE_EVENT_INTERVAL_NS,
    };

    let toll = policy
        .toll_fraud
        .deny_prefixes
        .iter()
        .map(|prefix| {
            let mut digits = [0u8; TOLL_PREFIX_MAX];
            digits[..prefix.len()].copy_from_slice(prefix.as_bytes());
            ((prefix.len() * 8) as u32, digits)
        })
        .collect();

    Ok(CompiledPolicy {
        config,
        ports: port_blocks(policy),
        allow: policy.sources.allow.iter().map(TrieKey::from_net).collect(),
        deny: policy.sources.deny.iter().map(TrieKey::from_net).collect(),
        toll,
        user_agents: patterns::compile(&policy.scanners.user_agents)?,
        from: patterns::compile(&policy.scanners.from)?,
        max_sources: policy.rate_limit.max_sources,
    })
}

/// GCRA parameters: a request conforms while the theoretical arrival time is at most
/// `(burst - 1)` intervals ahead, which admits `burst` requests at once from an idle source.
fn rate_params(rate: Option<&Rate>) -> RateParams {
    match rate {
        None => RateParams::default(),
        Some(rate) => {
            let interval_ns = ((1e9 / rate.rate).round() as u64).max(1);
            RateParams {
                interval_ns,
                tolerance_ns: interval_ns * u64::from(rate.burst.saturating_sub(1)),
            }
        }
    }
}

fn port_blocks(policy: &Policy) -> Vec<PortBlock> {
    let mut blocks = vec![PortBlock::default(); PORT_BLOCKS as usize];
    let mut set = |transport: u32, ports: &[u16], class: u8| {
        for &port in ports {
            blocks[(transport * 256 + u32::from(port >> 8)) as usize].class
                [usize::from(port & 0xff)] = class;
        }
    };
    set(TRANSPORT_UDP, &policy.sip.udp, port_class::SIP);
    set(TRANSPORT_TCP, &policy.sip.tcp, port_class::SIP);
    set(TRANSPORT_TCP, &policy.sip.tls, port_class::TLS);
    set(
        TRANSPORT_UDP,
        &policy.restricted.udp,
        port_class::RESTRICTED,
    );
    set(
        TRANSPORT_TCP,
        &policy.restricted.tcp,
        port_class::RESTRICTED,
    );
    blocks
}

/// The source hint table for the given entries: every slot an entry may cover gets the entry's
/// bit, so the datapath only skips lookups that could not match.
pub fn hint_blocks<'a>(entries: impl IntoIterator<Item = (&'a TrieKey, u8)>) -> Vec<HintBlock> {
    let mut blocks = vec![HintBlock::default(); hint::BLOCKS as usize];
    for (key, bit) in entries {
        let (family, first, count) = hint_slots(key);
        for slot in first..first + count {
            blocks[(family * 256 + (slot >> 8)) as usize].bits[(slot & 0xff) as usize] |= bit;
        }
    }
    blocks
}

/// The `SF_DENY4_NETS` blocks ([`deny_nets`]) that hold a bit for `deny`: one per IPv4 /24
/// network that a permanent entry of /24 or shorter covers whole. Timed entries stay in the trie
/// alone, which checks their expiry.
pub fn deny_net_blocks(deny: &BTreeMap<TrieKey, u64>) -> BTreeMap<u32, NetBlock> {
    let mut blocks: BTreeMap<u32, NetBlock> = BTreeMap::new();
    for (key, &expires_ns) in deny {
        let TrieKey::V4 { prefix_len, addr } = *key else {
            continue;
        };
        if expires_ns != 0 || prefix_len > 24 {
            continue;
        }
        let first = u32::from_be_bytes(addr) >> 8;
        let count = 1u32 << (24 - prefix_len);
        if count >= 64 {
            // Whole words: a /8 is 1,024 of them, not 65,536 bits.
            for net in (first..first + count).step_by(64) {
                let (entry, word, _) = deny_nets::position(net);
                blocks.entry(entry).or_default().words[word] = u64::MAX;
            }
        } else {
            for net in first..first + count {
                let (entry, word, bit) = deny_nets::position(net);
                blocks.entry(entry).or_default().words[word] |= 1 << bit;
            }
        }
    }
    blocks
}

/// Slots covered by an entry: `(family, first slot, number of slots)`. IPv4 slots are the top
/// 16 bits; IPv6 slots are the second hextet, so a prefix shorter than /32 may reach every slot.
fn hint_slots(key: &TrieKey) -> (u32, u32, u32) {
    match *key {
        TrieKey::V4 { prefix_len, addr } => {
            let slot = u32::from(addr[0]) << 8 | u32::from(addr[1]);
            if prefix_len >= 16 {
                (hint::FAMILY_V4, slot, 1)
            } else {
                slot_range(hint::FAMILY_V4, slot, 16 - prefix_len)
            }
        }
        TrieKey::V6 { prefix_len, addr } => {
            let slot = u32::from(addr[2]) << 8 | u32::from(addr[3]);
            if prefix_len >= 32 {
                (hint::FAMILY_V6, slot, 1)
            } else if prefix_len <= 16 {
                (hint::FAMILY_V6, 0, 1 << 16)
            } else {
                slot_range(hint::FAMILY_V6, slot, 32 - prefix_len)
            }
        }
    }
}

fn slot_range(family: u32, slot: u32, free_bits: u32) -> (u32, u32, u32) {
    let first = slot & !((1 << free_bits) - 1);
    (family, first, 1 << free_bits)
}

/// The trie key a ban of this source key occupies in the hints (bans are exact source keys).
pub fn ban_hint_key(key: &SourceKey) -> TrieKey {
    if key.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        TrieKey::V4 {
            prefix_len: 32,
            addr: [key.addr[12], key.addr[13], key.addr[14], key.addr[15]],
        }
    } else {
        TrieKey::V6 {
            prefix_len: 128,
            addr: key.addr,
        }
    }
}

/// The datapath's source key for an address, given the IPv6 prefix that keys per-source state.
pub fn source_key(addr: IpAddr, ipv6_prefix: u8) -> SourceKey {
    match addr {
        IpAddr::V4(v4) => sipfilter_common::source_key_v4(v4.octets()),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let prefix = u32::from(ipv6_prefix.clamp(32, 128));
            let masked = if prefix == 128 {
                bits
            } else {
                bits & !(u128::MAX >> prefix)
            };
            SourceKey {
                addr: masked.to_be_bytes(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
