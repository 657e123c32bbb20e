//! Every map of the datapath, with what it holds. Pinned maps live under the loader's pin
//! directory (`/sys/fs/bpf/sipfilter/` by default), so a restarted daemon adopts them and the
//! program keeps filtering with its last policy while no daemon runs.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key,
    },
};
use sipfilter_ebpf::sip::ScanBuf;

use super::{egress::EgressHandoff, sip::Handoff};
use sipfilter_common::{
    Ban, Config, HintBlock, NetBlock, PORT_BLOCKS, PatternSet, PortBlock, RateState, STAGES,
    SourceKey, SourceRule, TOLL_PREFIX_MAX, capacity, deny_nets, hint, stats,
};

/// Run-time settings: one [`Config`], replaced whole by userspace.
#[map]
pub static SF_CONFIG: Array<Config> = Array::pinned(1, 0);

/// Port class per transport and destination port ([`sipfilter_common::port_class`]).
#[map]
pub static SF_PORTS: Array<PortBlock> = Array::pinned(PORT_BLOCKS, 0);

/// Coarse summary of the source lists ([`sipfilter_common::hint`]): a source whose slot has no
/// bit set costs no trie lookup.
#[map]
pub static SF_SRC_HINTS: Array<HintBlock> = Array::pinned(hint::BLOCKS, 0);

/// IPv4 /24 networks a permanent deny entry covers whole ([`sipfilter_common::deny_nets`]).
#[map]
pub static SF_DENY4_NETS: Array<NetBlock> = Array::pinned(deny_nets::BLOCKS, 0);

/// Deny set (policy file and CLI), IPv4 and IPv6.
#[map]
pub static SF_DENY4: LpmTrie<[u8; 4], SourceRule> = LpmTrie::pinned(capacity::SOURCE_LISTS, 0);
#[map]
pub static SF_DENY6: LpmTrie<[u8; 16], SourceRule> = LpmTrie::pinned(capacity::SOURCE_LISTS, 0);

/// Allow set: trusted sources skip every check after the deny set.
#[map]
pub static SF_ALLOW4: LpmTrie<[u8; 4], SourceRule> = LpmTrie::pinned(capacity::SOURCE_LISTS, 0);
#[map]
pub static SF_ALLOW6: LpmTrie<[u8; 16], SourceRule> = LpmTrie::pinned(capacity::SOURCE_LISTS, 0);

/// Bans written by the daemon's ban engine, keyed like the rate limiter. A plain hash, never
/// evicted: a ban ends by its expiry or by the daemon.
#[map]
pub static SF_BANS: HashMap<SourceKey, Ban> = HashMap::pinned(capacity::BANS, 0);

/// Per-source token buckets. LRU, so a spoofed-source flood evicts idle sources instead of
/// failing inserts; the loader sizes it from the policy (`max_sources`).
#[map]
pub static SF_RATE: LruHashMap<SourceKey, RateState> =
    LruHashMap::pinned(capacity::RATE_SOURCES_DEFAULT, 0);

/// The theoretical arrival time of the bucket shared by all untrusted sources
/// (`Config::total`), one `u64`.
#[map]
pub static SF_RATE_TOTAL: Array<u64> = Array::with_max_entries(1, 0);

/// Toll-fraud prefixes of the Request-URI user.
#[map]
pub static SF_TOLL: LpmTrie<[u8; TOLL_PREFIX_MAX], u8> =
    LpmTrie::pinned(capacity::TOLL_PREFIXES, 0);

/// Scanner pattern lists, compiled for the shift-or matcher: [`PatternSet::USER_AGENT`] and
/// [`PatternSet::FROM`]. (Earlier builds pinned lists of other layouts under other names:
/// `map_names::RETIRED_PATTERNS`.)
#[map]
pub static SF_PATTERNS_V3: Array<PatternSet> = Array::pinned(PatternSet::LISTS, 0);

/// Per-CPU copy of the SIP message being inspected (too large for the stack).
#[map]
pub static SF_SCRATCH: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);

/// The egress watcher's own copy of the response it reads, so the XDP and TC programs never
/// share scratch state, whatever order the kernel runs them in on a CPU.
#[map]
pub static SF_EGRESS_BUF: PerCpuArray<ScanBuf> = PerCpuArray::with_max_entries(1, 0);

/// What the egress watcher tells its response reader (same CPU, same packet).
#[map]
pub static SF_EGRESS_HAND: PerCpuArray<EgressHandoff> = PerCpuArray::with_max_entries(1, 0);

/// The egress watcher's response reader ([`sipfilter_common::program_names::EGRESS_READ`]) at
/// index 0. Pinned like `SF_STAGES`.
#[map]
pub static SF_EGRESS_NEXT: ProgramArray = ProgramArray::pinned(1, 0);

/// What the main program tells the header-scan program it tail-calls (same CPU, same packet).
#[map]
pub static SF_HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// Later stages of the pipeline, reached by tail call ([`sipfilter_common::STAGE_SIP`],
/// [`sipfilter_common::STAGE_HEADERS`]). Pinned, so a restarted daemon points the pinned
/// program's stages at its own programs.
#[map]
pub static SF_STAGES: ProgramArray = ProgramArray::pinned(STAGES, 0);

/// Per-CPU counters ([`sipfilter_common::stats`]).
#[map]
pub static SF_STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::LEN, 0);

/// Events for the daemon. Never waited on: when full, the event is counted as lost.
#[map]
pub static SF_EVENTS: RingBuf = RingBuf::pinned(capacity::EVENT_RING_BYTES, 0);

/// An LPM key whose data sits 8-byte aligned on the stack. aya's `Key` is packed (`u32` then
/// the data), so LLVM would build it byte by byte; aligned, it writes whole words.
#[repr(C, align(8))]
pub struct LpmKey<K> {
    _pad: u32,
    pub key: Key<K>,
}

impl<K> LpmKey<K> {
    #[inline(always)]
    pub fn new(prefix_len: u32, data: K) -> Self {
        LpmKey {
            _pad: 0,
            key: Key::new(prefix_len, data),
        }
    }
}
