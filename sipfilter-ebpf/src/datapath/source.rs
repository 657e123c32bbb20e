//! Source checks: deny set, bans, allow set, in that order (deny wins over allow).

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::LpmTrie};
use sipfilter_common::{
    Config, Reason, RuleKind, SourceKey, SourceRule, deny_nets, hint, hint_slot_v4, hint_slot_v6,
};

use super::{
    ip::{Host, Origin},
    maps::{
        LpmKey, SF_ALLOW4, SF_ALLOW6, SF_BANS, SF_DENY4, SF_DENY4_NETS, SF_DENY6, SF_SRC_HINTS,
    },
    stats::count_monitored,
};

/// Key of per-source state: the IPv4 address, or the IPv6 address cut to the configured prefix
/// (attackers own whole /64s).
#[inline(always)]
pub fn source_key(origin: &Origin, config: &Config) -> SourceKey {
    let source = &origin.source.0;
    if origin.version == 4 {
        return SourceKey { addr: *source };
    }
    let prefix = config.ipv6_prefix_len.clamp(32, 128);
    let mut high = u64::from_be_bytes([
        source[0], source[1], source[2], source[3], source[4], source[5], source[6], source[7],
    ]);
    let mut low = u64::from_be_bytes([
        source[8], source[9], source[10], source[11], source[12], source[13], source[14],
        source[15],
    ]);
    if prefix >= 64 {
        low = if prefix == 64 {
            0
        } else {
            low & (u64::MAX << (128 - prefix))
        };
    } else {
        high &= u64::MAX << (64 - prefix);
        low = 0;
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&high.to_be_bytes());
    addr[8..].copy_from_slice(&low.to_be_bytes());
    SourceKey { addr }
}

#[inline(always)]
fn live(expires_ns: Option<u64>, now: &mut u64) -> bool {
    let Some(expires_ns) = expires_ns else {
        return false;
    };
    if expires_ns == 0 {
        return true;
    }
    if *now == 0 {
        // SAFETY: a helper without arguments.
        *now = unsafe { bpf_ktime_get_ns() };
    }
    *now < expires_ns
}

#[inline(always)]
fn hints(host: &Host) -> u8 {
    let (family, slot) = if host.version == 4 {
        (hint::FAMILY_V4, hint_slot_v4(host.v4()))
    } else {
        (hint::FAMILY_V6, hint_slot_v6(&host.address.0))
    };
    match SF_SRC_HINTS.get(family * 256 + (slot >> 8)) {
        Some(block) => block.bits[(slot & 0xff) as usize],
        None => 0,
    }
}

#[inline(always)]
fn in_list(
    host: &Host,
    v4: &LpmTrie<[u8; 4], SourceRule>,
    v6: &LpmTrie<[u8; 16], SourceRule>,
    now: &mut u64,
) -> bool {
    if host.version == 4 {
        live(
            v4.get(&LpmKey::new(32, host.v4()).key)
                .map(|rule| rule.expires_ns),
            now,
        )
    } else {
        live(
            v6.get(&LpmKey::new(128, host.address.0).key)
                .map(|rule| rule.expires_ns),
            now,
        )
    }
}

/// An IPv4 source in a /24 that a permanent deny entry covers whole: denied without the trie.
#[inline(always)]
fn in_denied_net(host: &Host) -> bool {
    if host.version != 4 {
        return false;
    }
    let (entry, word, bit) = deny_nets::position(u32::from_be_bytes(host.v4()) >> 8);
    SF_DENY4_NETS
        .get(entry)
        .is_some_and(|block| (block.words[word] >> bit) & 1 != 0)
}

/// `Some(reason)` when the source alone decides the packet: denied, banned or allowlisted.
#[inline(always)]
pub fn check(host: &Host, config: &Config) -> Option<Reason> {
    let hints = hints(host);
    if hints == 0 {
        return None;
    }
    let mut now = 0u64;
    if hints & hint::DENY != 0
        && (in_denied_net(host) || in_list(host, &SF_DENY4, &SF_DENY6, &mut now))
    {
        if config.monitor_mask & RuleKind::Deny.bit() == 0 {
            return Some(Reason::Denylisted);
        }
        count_monitored(Reason::Denylisted);
    }
    if hints & hint::BAN != 0 {
        let key = source_key(&Origin::new(host, 0, 0), config);
        // SAFETY: the value is only read, and a racing delete leaves it readable until the
        // program returns (RCU).
        if live(
            unsafe { SF_BANS.get(&key) }.map(|ban| ban.expires_ns),
            &mut now,
        ) {
            return Some(Reason::Banned);
        }
    }
    if hints & hint::ALLOW != 0 && in_list(host, &SF_ALLOW4, &SF_ALLOW6, &mut now) {
        return Some(Reason::Allowlisted);
    }
    None
}
