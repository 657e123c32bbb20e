//! Types shared across the kernel boundary: map keys and values, event records and counter
//! indices. Used by the XDP datapath (`sipfilter-ebpf`, `no_std`) and by the userspace loader
//! (`sipfilter`, with the `user` feature, which implements `aya::Pod`).
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding and no `bool`, and its size is
//! asserted at compile time: a change of layout is a change of ABI between a running daemon and
//! pinned maps, so it must be deliberate (bump [`ABI_VERSION`]).
#![no_std]

/// Bumped whenever a pinned map's key or value layout changes; part of [`Config`] so a loader can
/// refuse maps written by an incompatible build instead of misreading them.
pub const ABI_VERSION: u32 = 2;

/// Names of the maps, as the kernel and bpffs see them (the kernel keeps 15 bytes).
pub mod map_names {
    pub const CONFIG: &str = "SF_CONFIG";
    pub const PORTS: &str = "SF_PORTS";
    pub const SRC_HINTS: &str = "SF_SRC_HINTS";
    pub const DENY_V4: &str = "SF_DENY4";
    pub const DENY_V6: &str = "SF_DENY6";
    pub const DENY_NETS_V4: &str = "SF_DENY4_NETS";
    pub const ALLOW_V4: &str = "SF_ALLOW4";
    pub const ALLOW_V6: &str = "SF_ALLOW6";
    pub const BANS: &str = "SF_BANS";
    pub const RATE: &str = "SF_RATE";
    pub const TOLL: &str = "SF_TOLL";
    /// Scanner pattern lists ([`crate::PatternSet`]). Earlier builds pinned lists of other
    /// layouts under [`RETIRED_PATTERNS`]; the loader removes stale pins of them.
    pub const PATTERNS: &str = "SF_PATTERNS_V3";
    /// The pattern maps of earlier builds: `Dfa` automata (Aho-Corasick), then `PatternSet`
    /// without the pair prefilter.
    pub const RETIRED_PATTERNS: [&str; 2] = ["SF_PATTERNS", "SF_PATTERNS_V2"];
    pub const SCRATCH: &str = "SF_SCRATCH";
    pub const STATS: &str = "SF_STATS";
    pub const EVENTS: &str = "SF_EVENTS";
    pub const STAGES: &str = "SF_STAGES";
    pub const EGRESS_SCRATCH: &str = "SF_EGRESS_BUF";
    pub const EGRESS_HANDOFF: &str = "SF_EGRESS_HAND";
    pub const EGRESS_STAGES: &str = "SF_EGRESS_NEXT";
}

/// Names of the programs in the datapath object.
pub mod program_names {
    /// The XDP entry point, attached to interfaces.
    pub const MAIN: &str = "sipfilter";
    /// The SIP stage, reached from `MAIN` by tail call through `SF_STAGES`.
    pub const SIP: &str = "sipfilter_sip";
    /// The header scan, reached from `SIP` by tail call.
    pub const HEADERS: &str = "sipfilter_headers";
    /// The TC egress watcher of the PBX's responses, attached beside `MAIN`.
    pub const EGRESS: &str = "sipfilter_egress";
    /// The watcher's response reader, reached from `EGRESS` by tail call through
    /// `SF_EGRESS_NEXT` (index 0), for the same reason as the XDP stages.
    pub const EGRESS_READ: &str = "sipfilter_egress_read";
}

/// `SF_STAGES` indices. The SIP checks run as programs of their own, entered by tail call with
/// their inputs in a per-CPU hand-off map: the verifier then checks each stage once, from one
/// state, instead of once per path through the parsers before it (VLAN tags, IPv4 options,
/// IPv6 extension headers, source-list outcomes), which would exceed its budget.
pub const STAGE_SIP: u32 = 0;
pub const STAGE_HEADERS: u32 = 1;
/// Entries of `SF_STAGES`.
pub const STAGES: u32 = 2;

/// Capacities of the maps whose size is fixed at load time.
pub mod capacity {
    /// Deny and allow entries per address family.
    pub const SOURCE_LISTS: u32 = 65_536;
    /// Active bans (both families).
    pub const BANS: u32 = 262_144;
    /// Toll-fraud prefixes.
    pub const TOLL_PREFIXES: u32 = 1_024;
    /// Default rate-limiter sources: an LRU sized for a spoofed-source flood, so a flood evicts
    /// the oldest idle sources instead of failing inserts.
    pub const RATE_SOURCES_DEFAULT: u32 = 1_000_000;
    /// Bytes of the event ring buffer (power of two, multiple of the page size).
    pub const EVENT_RING_BYTES: u32 = 1 << 20;
}

// ---------------------------------------------------------------------------------------------
// Verdict reasons
// ---------------------------------------------------------------------------------------------

/// Why the datapath decided what it did. Append-only with explicit values: the value indexes the
/// stats array and is exported as a Prometheus label; a retired value is never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6, or headers too short to find the destination port: passed untouched (the
    /// kernel drops what is truly broken).
    Unparsed = 0,
    /// Neither a SIP, TLS nor restricted port (or not UDP/TCP): passed.
    Unprotected = 1,
    /// Source in the allow set: passed without further checks.
    Allowlisted = 2,
    /// SIP message that passed every SIP check.
    SipOk = 3,
    /// CRLF keep-alive or STUN message on a SIP port.
    Keepalive = 4,
    /// TLS SIP port: only the source checks apply.
    Tls = 5,
    /// Non-first IP fragment from a source that is neither denied nor banned.
    Fragment = 6,
    /// TCP segment on a SIP port that does not start a SIP message (or carries no payload).
    TcpContinuation = 7,
    /// Source in the deny set.
    Denylisted = 8,
    /// Source banned by the daemon, ban not yet expired.
    Banned = 9,
    /// Untrusted source on a restricted port.
    RestrictedPort = 10,
    /// Untrusted source on a SIP port while `untrusted_sip = "drop"`.
    UntrustedSip = 11,
    /// Truncated or inconsistent IP/UDP/TCP header on a protected port.
    Malformed = 12,
    /// UDP payload on a SIP port that is neither SIP, a keep-alive nor STUN.
    NotSip = 13,
    /// User-Agent matched a scanner pattern.
    ScannerUserAgent = 14,
    /// From matched a scanner pattern.
    ScannerFrom = 15,
    /// INVITE whose Request-URI user starts with a denied prefix.
    TollFraud = 16,
    /// REGISTER over the per-source rate.
    RateRegister = 17,
    /// INVITE over the per-source rate.
    RateInvite = 18,
    /// IPv6 packet whose upper-layer header lies beyond the extension headers we follow.
    Ipv6ExtensionLimit = 19,
    /// REGISTER or INVITE within its source's rate, but over the rate of all untrusted
    /// sources together (`[rate_limit] total`): a flood from many (spoofed) sources.
    RateTotal = 20,
}

impl Reason {
    /// Number of reasons; sizes the reason slices of the stats array.
    pub const COUNT: u32 = 21;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Unparsed,
        Reason::Unprotected,
        Reason::Allowlisted,
        Reason::SipOk,
        Reason::Keepalive,
        Reason::Tls,
        Reason::Fragment,
        Reason::TcpContinuation,
        Reason::Denylisted,
        Reason::Banned,
        Reason::RestrictedPort,
        Reason::UntrustedSip,
        Reason::Malformed,
        Reason::NotSip,
        Reason::ScannerUserAgent,
        Reason::ScannerFrom,
        Reason::TollFraud,
        Reason::RateRegister,
        Reason::RateInvite,
        Reason::Ipv6ExtensionLimit,
        Reason::RateTotal,
    ];

    /// The packet is dropped for this reason (in `enforce` mode).
    pub const fn is_drop(self) -> bool {
        (self as u32) >= Reason::Denylisted as u32
    }

    /// Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Unparsed => "unparsed",
            Reason::Unprotected => "unprotected",
            Reason::Allowlisted => "allowlisted",
            Reason::SipOk => "sip_ok",
            Reason::Keepalive => "keepalive",
            Reason::Tls => "tls",
            Reason::Fragment => "fragment",
            Reason::TcpContinuation => "tcp_continuation",
            Reason::Denylisted => "denylisted",
            Reason::Banned => "banned",
            Reason::RestrictedPort => "restricted_port",
            Reason::UntrustedSip => "untrusted_sip",
            Reason::Malformed => "malformed",
            Reason::NotSip => "not_sip",
            Reason::ScannerUserAgent => "scanner_user_agent",
            Reason::ScannerFrom => "scanner_from",
            Reason::TollFraud => "toll_fraud",
            Reason::RateRegister => "rate_register",
            Reason::RateInvite => "rate_invite",
            Reason::Ipv6ExtensionLimit => "ipv6_extension_limit",
            Reason::RateTotal => "rate_total",
        }
    }

    pub const fn from_u32(value: u32) -> Option<Reason> {
        if value < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }
}

/// Rule kinds that have a policy mode (`enforce` or `monitor`). The value is a bit in
/// [`Config::monitor_mask`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Deny = 0,
    Restricted = 1,
    Scanner = 2,
    TollFraud = 3,
    RateLimit = 4,
}

impl RuleKind {
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

// ---------------------------------------------------------------------------------------------
// SIP methods
// ---------------------------------------------------------------------------------------------

/// SIP methods the datapath recognises (RFC 3261 and its extensions). Append-only.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A request with a method not listed here (extension methods are legal SIP).
    Other = 0,
    Register = 1,
    Invite = 2,
    Ack = 3,
    Bye = 4,
    Cancel = 5,
    Options = 6,
    Subscribe = 7,
    Notify = 8,
    Publish = 9,
    Info = 10,
    Refer = 11,
    Message = 12,
    Prack = 13,
    Update = 14,
    /// A SIP response (`SIP/2.0 NNN ...`).
    Response = 15,
}

impl Method {
    pub const COUNT: u32 = 16;

    pub const ALL: [Method; Self::COUNT as usize] = [
        Method::Other,
        Method::Register,
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Options,
        Method::Subscribe,
        Method::Notify,
        Method::Publish,
        Method::Info,
        Method::Refer,
        Method::Message,
        Method::Prack,
        Method::Update,
        Method::Response,
    ];

    /// Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Other => "OTHER",
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Response => "response",
        }
    }

    pub const fn from_u8(value: u8) -> Option<Method> {
        if (value as u32) < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Layout of the per-CPU `SF_STATS` array: one `u64` counter per slot, summed over CPUs by
/// userspace.
pub mod stats {
    use super::{Method, Reason};

    /// Packets by final verdict reason: `[REASON_BASE + reason]`.
    pub const REASON_BASE: u32 = 0;
    /// Rule hits in `monitor` mode (would have been dropped): `[MONITOR_BASE + reason]`.
    pub const MONITOR_BASE: u32 = 32;
    /// SIP messages seen, by method: `[METHOD_BASE + method]`.
    pub const METHOD_BASE: u32 = 64;
    /// Events that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 96;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 97;
    /// SIP responses the host sent from a SIP port, by class: `[RESPONSE_BASE + class]`.
    pub const RESPONSE_BASE: u32 = 100;
    /// Slots in the array.
    pub const LEN: u32 = 128;

    const _: () = assert!(Reason::COUNT <= MONITOR_BASE - REASON_BASE);
    const _: () = assert!(Reason::COUNT <= METHOD_BASE - MONITOR_BASE);
    const _: () = assert!(Method::COUNT <= EVENTS_LOST - METHOD_BASE);
    const _: () = assert!(EVENTS_SENT < RESPONSE_BASE);
    const _: () = assert!(RESPONSE_BASE + super::ResponseClass::COUNT <= LEN);
}

/// What a response the host sends says about the request it answers, as the egress watcher
/// classifies it. Append-only: the value indexes the stats array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseClass {
    /// 401 or 407: the requester must authenticate.
    Challenge = 0,
    /// 403, 404 or 484 to REGISTER, INVITE, OPTIONS or SUBSCRIBE: refused.
    Rejection = 1,
    /// 2xx to REGISTER (a registration granted) or to INVITE (an authenticated call).
    Success = 2,
    /// Any other response: counted only.
    Other = 3,
}

impl ResponseClass {
    pub const COUNT: u32 = 4;

    pub const ALL: [ResponseClass; Self::COUNT as usize] = [
        ResponseClass::Challenge,
        ResponseClass::Rejection,
        ResponseClass::Success,
        ResponseClass::Other,
    ];

    /// Prometheus label value.
    pub const fn name(self) -> &'static str {
        match self {
            ResponseClass::Challenge => "challenge",
            ResponseClass::Rejection => "rejection",
            ResponseClass::Success => "success",
            ResponseClass::Other => "other",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Run-time configuration
// ---------------------------------------------------------------------------------------------

/// Token-bucket parameters in the GCRA form (one timestamp per source): a request conforms when
/// the source's theoretical arrival time is at most `tolerance_ns` ahead of now; each conforming
/// request moves it `interval_ns` further.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateParams {
    /// Nanoseconds per token: `1e9 / rate`. Zero disables the limit.
    pub interval_ns: u64,
    /// `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
}

/// `Config::flags` bits.
pub mod config_flags {
    /// `untrusted_sip = "drop"`: SIP ports are allowlist-only.
    pub const UNTRUSTED_SIP_DROP: u32 = 1 << 0;
    /// At least one User-Agent pattern is loaded: scan for the header.
    pub const SCAN_USER_AGENT: u32 = 1 << 1;
    /// At least one From pattern is loaded: scan for the header.
    pub const SCAN_FROM: u32 = 1 << 2;
    /// At least one toll-fraud prefix is loaded.
    pub const TOLL_FRAUD: u32 = 1 << 3;
    /// `[responsive] enabled`: with `UNTRUSTED_SIP_DROP`, untrusted sources may still send
    /// REGISTER (at the rate limit), so that they can earn learned trust.
    pub const RESPONSIVE: u32 = 1 << 4;
}

/// The single value of `SF_CONFIG`: run-time settings the datapath reads on every packet that
/// needs them. Userspace replaces it whole, so a packet never sees half of an update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`ABI_VERSION`] of the loader that wrote this value.
    pub abi_version: u32,
    /// [`config_flags`].
    pub flags: u32,
    /// Bit per [`RuleKind`]: set = `monitor` (count, report, pass), clear = `enforce`.
    pub monitor_mask: u32,
    /// Prefix length that keys per-source state of IPv6 sources (32..=128).
    pub ipv6_prefix_len: u32,
    pub register: RateParams,
    pub invite: RateParams,
    /// REGISTER and INVITE from all untrusted sources together, checked after the source's
    /// own limit.
    pub total: RateParams,
    /// Minimum gap between two rate-limit events for one source.
    pub event_interval_ns: u64,
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Class of a destination port, per transport. `SF_PORTS` holds a [`PortBlock`] per 256 ports:
/// index `transport * 256 + (port >> 8)`, byte `port & 0xff`.
pub mod port_class {
    pub const NONE: u8 = 0;
    /// SIP in clear text: parsed and checked.
    pub const SIP: u8 = 1;
    /// SIP over TLS: source checks only.
    pub const TLS: u8 = 2;
    /// Only trusted sources may reach it.
    pub const RESTRICTED: u8 = 3;
}

pub const TRANSPORT_UDP: u32 = 0;
pub const TRANSPORT_TCP: u32 = 1;
/// Entries of `SF_PORTS`: 256 blocks per transport.
pub const PORT_BLOCKS: u32 = 512;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBlock {
    pub class: [u8; 256],
}

impl Default for PortBlock {
    fn default() -> Self {
        PortBlock { class: [0; 256] }
    }
}

// ---------------------------------------------------------------------------------------------
// Source lists, bans and the source hints
// ---------------------------------------------------------------------------------------------

// The allow, deny and toll-fraud tries are keyed by aya's `lpm_trie::Key<[u8; N]>`
// (`prefix_len: u32` then the data): addresses in network order, toll prefixes as text.

/// Value of the allow and deny tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRule {
    /// `CLOCK_MONOTONIC` nanoseconds after which the entry no longer applies; 0 = never expires.
    pub expires_ns: u64,
}

/// Key of per-source state (bans, rate limiter): IPv4 as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`), IPv6 masked to `Config::ipv6_prefix_len`. 8-byte aligned so the
/// datapath can build it on the stack with aligned stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

/// Value of `SF_BANS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ban {
    /// `CLOCK_MONOTONIC` nanoseconds when the ban ends (checked in the kernel, so bans end on
    /// time even while the daemon is down).
    pub expires_ns: u64,
}

/// `SF_SRC_HINTS` is a coarse summary of every source list, so the common case (a source in no
/// list) costs one array read instead of several trie lookups. Entry `family * 256 + (slot >> 8)`,
/// byte `slot & 0xff`, where `slot` is the top 16 bits of an IPv4 address, or bits 16..32 of an
/// IPv6 address (the second hextet: 2001:**db8**::). A set bit means "an entry of that list may
/// cover this slot: look it up". Userspace keeps the bits a superset of the truth.
pub mod hint {
    pub const DENY: u8 = 1 << 0;
    pub const ALLOW: u8 = 1 << 1;
    pub const BAN: u8 = 1 << 2;
    pub const FAMILY_V4: u32 = 0;
    pub const FAMILY_V6: u32 = 1;
    pub const BLOCKS: u32 = 512;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintBlock {
    pub bits: [u8; 256],
}

impl Default for HintBlock {
    fn default() -> Self {
        HintBlock { bits: [0; 256] }
    }
}

/// `SF_DENY4_NETS` marks the IPv4 /24 networks that one permanent deny entry covers whole, one
/// bit each, so the datapath drops their sources with one array read instead of a trie lookup
/// (range blocklists are mostly /24 and shorter). For `net`, an address's top 24 bits: entry
/// `net >> 11`, word `(net >> 6) & 31`, bit `net & 63`. Userspace keeps the bits a subset of the
/// deny trie's permanent entries: set after the entry is written, cleared before it goes, so a
/// set bit never decides what the trie would not.
pub mod deny_nets {
    pub const BLOCKS: u32 = 1 << 13;
    pub const WORDS: usize = 32;

    /// Where the bit of the /24 network `net` lies: `(entry, word, bit)`.
    pub const fn position(net: u32) -> (u32, usize, u32) {
        (net >> 11, ((net >> 6) & 31) as usize, net & 63)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetBlock {
    pub words: [u64; deny_nets::WORDS],
}

/// Per-source rate-limiter state (`SF_RATE`, LRU hash). Updated from several CPUs without a
/// lock: see the datapath's `rate` module for the bounded error this allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// GCRA theoretical arrival time of the next REGISTER (ns, `CLOCK_MONOTONIC` coarse).
    pub register_tat: u64,
    /// Same for INVITE.
    pub invite_tat: u64,
    /// When the last rate-limit event for this source was sent.
    pub last_event_ns: u64,
}

// ---------------------------------------------------------------------------------------------
// Toll-fraud prefixes
// ---------------------------------------------------------------------------------------------

/// Bytes of the Request-URI user compared against the toll-fraud prefixes (`SF_TOLL` is an LPM
/// trie keyed by these bytes; a prefix of n bytes has `prefix_len` 8n).
pub const TOLL_PREFIX_MAX: usize = 16;

// ---------------------------------------------------------------------------------------------
// Scanner patterns
// ---------------------------------------------------------------------------------------------

/// A scanner pattern list compiled by userspace for the datapath's multi-pattern shift-or
/// matcher (`sipfilter_ebpf::matcher`), which walks a header value 8 bytes per step.
///
/// The patterns (ASCII lower-cased) sit side by side in one state of `64 * words` bits: pattern
/// `j` of length `L` owns `L + 7` consecutive bits, the last 7 of which are wildcards, so that a
/// match ending anywhere in an 8-byte step is still visible at the end of the step. A state bit
/// is 0 while the text read so far ends with the pattern's prefix up to that bit ("shift-or":
/// 0 means alive). One step over the text bytes `c[0..8]` is
///
/// ```text
/// state = ((state << 8) & shift_mask) | lanes[0][c[0]] | lanes[1][c[1]] | ... | lanes[7][c[7]]
/// ```
///
/// where `lanes[i][c]` is the mismatch mask of byte `c` (1 where the pattern does not have `c`,
/// either case) shifted by `7 - i` with each pattern's first `7 - i` bits cleared (they belong to
/// text after the step started), and `shift_mask` clears each pattern's first 8 bits (a pattern
/// may start anywhere). A pattern occurred when any of its `end_mask` bits (its last byte and
/// its 7 wildcards) is 0 after a step. The table loads depend only on the text, never on the
/// state, so the steps do not wait on one another the way an automaton's walk does.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PatternSet {
    /// State words the list uses (1 to [`PatternSet::MAX_WORDS`]); 0 for an empty list, which
    /// never matches. Also the stride of `lanes`.
    pub words: u64,
    /// Clears the first 8 bits of every pattern after the state is shifted by 8.
    pub shift_mask: [u64; PatternSet::MAX_WORDS],
    /// The bits that say a pattern occurred: each pattern's last byte and its 7 wildcards.
    pub end_mask: [u64; PatternSet::MAX_WORDS],
    /// `tail[n]`: what the lanes from `n` to 7 contribute when they hold a byte that no pattern
    /// has. ORed into the last step of a value with `n` bytes in it (`n` is 1 to 7; `tail[0]`
    /// is unused), it makes the bytes past the value's end match nothing, whatever they are.
    pub tail: [[u64; PatternSet::MAX_WORDS]; PatternSet::STEP],
    /// `lanes[(lane * 256 + byte) * words + word]`; the part beyond `8 * 256 * words` is unused.
    pub lanes: [u64; PatternSet::LANE_WORDS],
    /// 1 when `pairs` may rule values out; 0 (a list of one state word, whose matcher costs
    /// about what the prefilter does, or a pattern shorter than 3 bytes) sends every value
    /// through the matcher.
    pub pairs_usable: u64,
    /// The pair prefilter, a set of 65,536 bits (pair `p` is bit `p % 64` of word `p / 64`),
    /// read before the matcher walks a value. A pair is two bytes, each ORed with 0x20 (which
    /// takes ASCII letters to lower case, and maps the bytes a pattern byte matches to one
    /// value), read as a little-endian `u16`. The datapath reads the pairs that start at even
    /// positions of the scan buffer, four per word; a value none of whose pairs is in the set
    /// holds no pattern. That is sound because the set holds, for every pattern of 3 bytes or
    /// more, one of its pairs that starts at an even offset and one that starts at an odd
    /// offset: wherever the pattern occurs, one of the two starts at an even position.
    pub pairs: [u64; PatternSet::PAIR_WORDS],
}

impl PatternSet {
    /// Text bytes per step of the matcher.
    pub const STEP: usize = 8;
    /// State words a list may use: `64 * MAX_WORDS` bits, each pattern taking its length plus
    /// `STEP - 1`.
    pub const MAX_WORDS: usize = 8;
    /// State bits a list may use.
    pub const MAX_BITS: usize = 64 * PatternSet::MAX_WORDS;
    /// Entries of `lanes`.
    pub const LANE_WORDS: usize = PatternSet::STEP * 256 * PatternSet::MAX_WORDS;
    /// Words of `pairs`: one bit per value of a pair of bytes.
    pub const PAIR_WORDS: usize = (1 << 16) / 64;
    /// `SF_PATTERNS_V3` index of the User-Agent list.
    pub const USER_AGENT: u32 = 0;
    /// `SF_PATTERNS_V3` index of the From list.
    pub const FROM: u32 = 1;
    /// Entries of `SF_PATTERNS_V3`.
    pub const LISTS: u32 = 2;

    /// Index in `lanes` of `word` of the mask of `byte` at `lane`, for a list of `words` words.
    #[inline(always)]
    pub const fn lane_index(words: usize, lane: usize, byte: usize, word: usize) -> usize {
        (lane * 256 + byte) * words + word
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Version of [`Event`]'s layout.
pub const EVENT_VERSION: u16 = 2;

#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A REGISTER or INVITE over the source's rate (at most one per source per
    /// `Config::event_interval_ns`).
    RateLimited = 1,
    /// A scanner pattern matched (User-Agent or From).
    Scanner = 2,
    /// An INVITE to a denied prefix.
    TollFraud = 3,
    /// The host challenged a request (401, 407).
    Challenge = 4,
    /// The host refused a request (403, 404, 484).
    Rejection = 5,
    /// The host granted a registration (2xx to REGISTER) or accepted an INVITE (2xx).
    Success = 6,
}

impl EventKind {
    pub const fn from_u16(value: u16) -> Option<EventKind> {
        match value {
            1 => Some(EventKind::RateLimited),
            2 => Some(EventKind::Scanner),
            3 => Some(EventKind::TollFraud),
            4 => Some(EventKind::Challenge),
            5 => Some(EventKind::Rejection),
            6 => Some(EventKind::Success),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::RateLimited => "rate_limited",
            EventKind::Scanner => "scanner",
            EventKind::TollFraud => "toll_fraud",
            EventKind::Challenge => "challenge",
            EventKind::Rejection => "rejection",
            EventKind::Success => "success",
        }
    }
}

/// Bytes of detail carried by an event (the dialled user of a toll-fraud attempt, the To user
/// of a response).
pub const EVENT_DETAIL_BYTES: usize = 32;

/// A record in the `SF_EVENTS` ring buffer. Events about requests (rate, scanner, toll fraud)
/// come from the XDP program; events about responses (challenge, rejection, success) from the
/// egress watcher, which reports the peer the response goes to as the source, so that `addr`
/// and `src_port` always name the remote party and `dst_port` the local SIP port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`EventKind`].
    pub kind: u16,
    /// [`EVENT_VERSION`].
    pub version: u16,
    /// [`Reason`] the datapath recorded; response events carry [`Reason::SipOk`] (the
    /// watcher never changes a packet).
    pub reason: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// Source address; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Source and destination ports in host order.
    pub src_port: u16,
    pub dst_port: u16,
    /// [`Method`].
    pub method: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// 1 when the rule is in `monitor` mode (the packet passed).
    pub monitored: u8,
    /// Bytes of `detail` in use.
    pub detail_len: u8,
    pub detail: [u8; EVENT_DETAIL_BYTES],
    /// Response events: the status code; 0 for request events.
    pub status: u16,
    pub _reserved: u16,
    /// Success events for REGISTER: the granted registration lifetime in seconds (`Expires`
    /// header, else the Contact's `expires` parameter); [`EXPIRES_ABSENT`] when neither says.
    pub expires_s: u32,
}

/// [`Event::expires_s`] of a success that carried no expiry.
pub const EXPIRES_ABSENT: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------------
// Layout assertions and Pod
// ---------------------------------------------------------------------------------------------

const _: () = assert!(core::mem::size_of::<RateParams>() == 16);
const _: () = assert!(core::mem::size_of::<Config>() == 72);
const _: () = assert!(core::mem::size_of::<PortBlock>() == 256);
const _: () = assert!(core::mem::size_of::<SourceRule>() == 8);
const _: () = assert!(core::mem::size_of::<SourceKey>() == 16);
const _: () = assert!(core::mem::size_of::<Ban>() == 8);
const _: () = assert!(core::mem::size_of::<HintBlock>() == 256);
const _: () = assert!(core::mem::size_of::<NetBlock>() == 256);
const _: () = assert!(deny_nets::BLOCKS as usize * deny_nets::WORDS * 64 == 1 << 24);
const _: () = assert!(core::mem::size_of::<RateState>() == 24);
const _: () = assert!(
    core::mem::size_of::<PatternSet>()
        == 8 * (2
            + (2 + PatternSet::STEP) * PatternSet::MAX_WORDS
            + PatternSet::LANE_WORDS
            + PatternSet::PAIR_WORDS)
);
const _: () = assert!(core::mem::size_of::<Event>() == 80);

// ---------------------------------------------------------------------------------------------
// The flood lab's frame source (`xdp_flood`, not part of the filter)
// ---------------------------------------------------------------------------------------------

pub mod flood {
    /// Largest frame of the pool (a REGISTER is about 600 bytes, an INVITE with SDP 900).
    pub const FRAME_BYTES: usize = 1024;

    pub mod map_names {
        /// `Array<FloodFrame>`, sized by the loader to the pool.
        pub const FRAMES: &str = "SF_FLOOD_FRAMES";
        /// `Array<FloodConfig>`, one entry.
        pub const CONFIG: &str = "SF_FLOOD_CONFIG";
    }

    /// One frame of the pool, Ethernet header first.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct FloodFrame {
        pub len: u64,
        pub bytes: [u8; FRAME_BYTES],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct FloodConfig {
        /// Interface the frames are redirected to (in the caller's network namespace).
        pub ifindex: u32,
        /// Frames in the pool.
        pub frames: u32,
        /// Frame to send next; the program advances it (one caller at a time).
        pub next: u64,
        /// Length of the packet each run starts with (the test run's input), which the program
        /// trims to the frame's.
        pub packet_len: u32,
        pub padding: u32,
    }
}

const _: () = assert!(core::mem::size_of::<flood::FloodFrame>() == 8 + flood::FRAME_BYTES);
const _: () = assert!(core::mem::size_of::<flood::FloodConfig>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is `#[repr(C)]` (or packed), `Copy`, with no padding bytes left
    // uninitialised by construction and no invalid bit patterns.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for PortBlock {}
    unsafe impl aya::Pod for SourceRule {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for Ban {}
    unsafe impl aya::Pod for HintBlock {}
    unsafe impl aya::Pod for NetBlock {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for PatternSet {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for flood::FloodFrame {}
    unsafe impl aya::Pod for flood::FloodConfig {}
}

/// Source key of an IPv4 address (network-order bytes).
pub const fn source_key_v4(addr: [u8; 4]) -> SourceKey {
    SourceKey {
        addr: [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ],
    }
}

/// Hint slot of an IPv4 address: its top 16 bits.
pub const fn hint_slot_v4(addr: [u8; 4]) -> u32 {
    ((addr[0] as u32) << 8) | addr[1] as u32
}

/// Hint slot of an IPv6 address: its second hextet.
pub const fn hint_slot_v6(addr: &[u8; 16]) -> u32 {
    ((addr[2] as u32) << 8) | addr[3] as u32
}
