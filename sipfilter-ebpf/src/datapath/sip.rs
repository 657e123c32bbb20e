//! The SIP stages: what the datapath checks on packets to a SIP port from a source that is
//! neither denied nor trusted. The message is copied once into the per-CPU scan buffer; the
//! parsing itself is `sipfilter_ebpf::sip`, shared with the host tests.
//!
//! Three programs share a packet: the main program parses headers, checks the source and port
//! and applies the rate limit ([`limit_rate`]), then tail-calls the SIP program (start line,
//! toll fraud), which tail-calls the header-scan program when scanner patterns are loaded. Each reads its inputs from the
//! per-CPU [`Handoff`], so the verifier checks each from a single state.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use sipfilter_common::{
    Config, EventKind, Method, PatternSet, Reason, RuleKind, TOLL_PREFIX_MAX, TRANSPORT_TCP,
    config_flags,
};
use sipfilter_ebpf::{
    matcher,
    sip::{self as parser, RequestHeaders, SCAN_BYTES, ScanBuf, wanted},
    swar::{low_bytes, word_of},
};

use super::{
    cursor::read,
    events::{Occurrence, emit},
    ip::{Network, Origin},
    l4::Transport,
    maps::{LpmKey, SF_CONFIG, SF_HANDOFF, SF_PATTERNS_V3, SF_SCRATCH, SF_TOLL},
    rate::{self, Verdict},
    source::source_key,
    stats::{count_method, count_monitored},
};

/// What one stage passes to the next, for the same packet on the same CPU.
#[repr(C)]
pub struct Handoff {
    pub origin: Origin,
    /// Where the transport payload starts in the frame, and its bytes in the frame.
    pub payload_offset: u64,
    pub payload_len: u64,
    /// `TRANSPORT_UDP` or `TRANSPORT_TCP`.
    pub transport: u64,
    /// Bytes of the message in the scan buffer.
    pub len: u64,
    /// Where the first header line starts.
    pub headers: u64,
    /// `sipfilter_ebpf::sip::wanted` bits of the `RequestHeaders` to look for.
    pub wanted: u64,
    pub method: u64,
}

/// A stage's outcome: a verdict, or "continue with the next stage".
pub enum Stage {
    Done(Reason),
    Next,
}

/// Applies a rule's mode: `Some(reason)` to drop, or `None` after counting the would-be drop.
#[inline(always)]
pub fn enforce(config: &Config, kind: RuleKind, reason: Reason) -> Option<Reason> {
    if config.monitor_mask & kind.bit() == 0 {
        Some(reason)
    } else {
        count_monitored(reason);
        None
    }
}

#[inline(always)]
fn monitored(config: &Config, kind: RuleKind) -> bool {
    config.monitor_mask & kind.bit() != 0
}

/// The per-source rate limit, in the main program: REGISTER and INVITE are told by their
/// first bytes, so a flood that is over its limit (most of a flood's packets) is dropped
/// before the tail call, the copy into the scan buffer and the start-line parse. A message
/// that starts like a REGISTER or INVITE counts against the limit whether or not the rest of
/// its start line parses.
#[inline(always)]
pub fn limit_rate(
    ctx: &XdpContext,
    net: &Network,
    transport: &Transport,
    config: &Config,
) -> Option<Reason> {
    let method = rate_limited_method(ctx, transport)?;
    // Allowlist-only SIP ports refuse everything from untrusted sources in the SIP stage,
    // except REGISTER in responsive mode.
    if config.flags & config_flags::UNTRUSTED_SIP_DROP != 0
        && (config.flags & config_flags::RESPONSIVE == 0 || method != Method::Register)
    {
        return None;
    }
    let origin = Origin::new(
        &net.host,
        transport.ports.src_port,
        transport.ports.dst_port,
    );
    let key = source_key(&origin, config);
    let reason = match rate::check(config, &key, method) {
        Verdict::Conforming => return None,
        Verdict::Exceeded { report } => {
            let reason = if method == Method::Register {
                Reason::RateRegister
            } else {
                Reason::RateInvite
            };
            if report {
                emit(
                    &Occurrence {
                        kind: EventKind::RateLimited,
                        reason,
                        origin: &origin,
                        method,
                        monitored: monitored(config, RuleKind::RateLimit),
                    },
                    None,
                );
            }
            reason
        }
        Verdict::ExceededTotal => Reason::RateTotal,
    };
    let drop = enforce(config, RuleKind::RateLimit, reason)?;
    // Dropped before the SIP stage, which counts the methods of the rest.
    count_method(method);
    Some(drop)
}

/// `REGISTER ` or `INVITE ` at the start of the payload (methods are case-sensitive).
#[inline(always)]
fn rate_limited_method(ctx: &XdpContext, transport: &Transport) -> Option<Method> {
    let head = read::<u64>(ctx, transport.payload_offset)?;
    if head == word_of(b"REGISTER") {
        return (read::<u8>(ctx, transport.payload_offset + 8)? == b' ')
            .then_some(Method::Register);
    }
    (head & low_bytes(7) == word_of(b"INVITE ")).then_some(Method::Invite)
}

/// Called by the main program for a packet to a SIP port: records what the SIP stage needs.
#[inline(always)]
pub fn hand_over(net: &Network, transport: &Transport) -> Stage {
    let Some(handoff) = SF_HANDOFF.get_ptr_mut(0) else {
        return Stage::Done(Reason::SipOk);
    };
    // SAFETY: this CPU's slot, used by one packet at a time.
    let handoff = unsafe { &mut *handoff };
    handoff.origin = Origin::new(
        &net.host,
        transport.ports.src_port,
        transport.ports.dst_port,
    );
    handoff.payload_offset = transport.payload_offset as u64;
    handoff.payload_len = transport.payload_len as u64;
    handoff.transport = u64::from(transport.ports.transport);
    Stage::Next
}

#[inline(always)]
fn slots() -> Option<(&'static mut ScanBuf, &'static mut Handoff, &'static Config)> {
    let buf = SF_SCRATCH.get_ptr_mut(0)?;
    let handoff = SF_HANDOFF.get_ptr_mut(0)?;
    let config = SF_CONFIG.get(0)?;
    // SAFETY: this CPU's slots, used by one packet at a time (the stages of a packet run one
    // after the other on the same CPU).
    Some(unsafe { (&mut *buf, &mut *handoff, config) })
}

/// The SIP program's body: start line, toll fraud.
#[inline(always)]
pub fn inspect(ctx: &XdpContext) -> Stage {
    let Some((buf, handoff, config)) = slots() else {
        return Stage::Done(Reason::SipOk);
    };
    // Allowlist-only SIP ports drop untrusted sources at once, unless responsive mode lets them
    // REGISTER (to earn learned trust): then the start line decides.
    let allowlist_only = config.flags & config_flags::UNTRUSTED_SIP_DROP != 0;
    if allowlist_only && config.flags & config_flags::RESPONSIVE == 0 {
        return Stage::Done(Reason::UntrustedSip);
    }
    let is_tcp = handoff.transport == u64::from(TRANSPORT_TCP);
    let not_a_message = Stage::Done(if is_tcp {
        Reason::TcpContinuation
    } else {
        Reason::NotSip
    });
    let payload_offset = handoff.payload_offset as usize & 0xffff;
    let Some(len) = parser::copy_len(handoff.payload_len as usize) else {
        return not_a_message;
    };
    // SAFETY: `len` is in 1..=SCAN_BYTES and the buffer holds SCAN_BYTES + 8 bytes.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx.cast(),
            payload_offset as u32,
            buf.words.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        return Stage::Done(Reason::Malformed);
    }
    parser::seal(buf, len);
    if !allowlist_only && (parser::is_keepalive(buf, len) || parser::is_stun(buf, len)) {
        return Stage::Done(Reason::Keepalive);
    }
    let start = parser::parse_start_line(buf, len);
    if allowlist_only && !start.is_some_and(|start| start.method == Method::Register) {
        return Stage::Done(Reason::UntrustedSip);
    }
    let Some(start) = start else {
        return not_a_message;
    };
    count_method(start.method);
    if start.method == Method::Response {
        return Stage::Done(Reason::SipOk);
    }
    let origin = handoff.origin;
    let event = |kind, reason, kind_of_rule| Occurrence {
        kind,
        reason,
        origin: &origin,
        method: start.method,
        monitored: monitored(config, kind_of_rule),
    };

    if start.method == Method::Invite
        && config.flags & config_flags::TOLL_FRAUD != 0
        && let Some(user) = parser::uri_user(buf, start.uri)
        && SF_TOLL
            .get(&LpmKey::new((TOLL_PREFIX_MAX * 8) as u32, user).key)
            .is_some()
    {
        emit(
            &event(EventKind::TollFraud, Reason::TollFraud, RuleKind::TollFraud),
            Some(&user),
        );
        if let Some(drop) = enforce(config, RuleKind::TollFraud, Reason::TollFraud) {
            return Stage::Done(drop);
        }
    }

    let mut headers = 0;
    if config.flags & config_flags::SCAN_USER_AGENT != 0 {
        headers |= wanted(RequestHeaders::USER_AGENT);
    }
    if config.flags & config_flags::SCAN_FROM != 0 {
        headers |= wanted(RequestHeaders::FROM);
    }
    if headers == 0 {
        return Stage::Done(Reason::SipOk);
    }
    handoff.len = len as u64;
    handoff.headers = start.headers as u64;
    handoff.wanted = headers;
    handoff.method = start.method as u64;
    Stage::Next
}

/// The header-scan program's body: finds User-Agent and From and matches them against the
/// scanner pattern lists.
#[inline(always)]
pub fn scan_headers() -> Reason {
    let Some((buf, handoff, config)) = slots() else {
        return Reason::SipOk;
    };
    let len = handoff.len as usize;
    if len == 0 || len > SCAN_BYTES {
        return Reason::SipOk;
    }
    let headers = parser::find_header_starts::<RequestHeaders>(
        buf,
        handoff.headers as usize & (SCAN_BYTES - 1),
        len,
        handoff.wanted,
    );
    if !headers.is_complete() {
        // More header lines than any real message has: padding to push the User-Agent out of
        // reach is the likely reason.
        return Reason::NotSip;
    }
    let method = Method::from_u8(handoff.method as u8).unwrap_or(Method::Other);
    let checks = [
        (
            headers.value(RequestHeaders::USER_AGENT),
            PatternSet::USER_AGENT,
            Reason::ScannerUserAgent,
        ),
        (
            headers.value(RequestHeaders::FROM),
            PatternSet::FROM,
            Reason::ScannerFrom,
        ),
    ];
    // A value's end is found only when it is matched: a scanner's User-Agent decides before
    // its From is looked at.
    let len = parser::widened_len(buf, len);
    for (value, list, reason) in checks {
        if !value.is_present() {
            continue;
        }
        let Some(set) = SF_PATTERNS_V3.get(list) else {
            continue;
        };
        let value = parser::value_span(buf, value.start, len);
        if matcher::matches(set, buf, value) {
            let monitored = monitored(config, RuleKind::Scanner);
            emit(
                &Occurrence {
                    kind: EventKind::Scanner,
                    reason,
                    origin: &handoff.origin,
                    method,
                    monitored,
                },
                None,
            );
            if let Some(drop) = enforce(config, RuleKind::Scanner, reason) {
                return drop;
            }
        }
    }
    Reason::SipOk
}
