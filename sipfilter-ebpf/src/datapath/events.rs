//! Events for the daemon's ban engine and log, through the `SF_EVENTS` ring buffer. The datapath
//! never waits: a full ring costs the event (counted in `events_lost`), not the packet.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use sipfilter_common::{
    EVENT_DETAIL_BYTES, EVENT_VERSION, EXPIRES_ABSENT, Event, EventKind, Method, Reason,
    TOLL_PREFIX_MAX,
};

use super::{ip::Origin, maps::SF_EVENTS, stats::count_event};

pub struct Occurrence<'a> {
    pub kind: EventKind,
    pub reason: Reason,
    pub origin: &'a Origin,
    pub method: Method,
    pub monitored: bool,
}

/// A response the egress watcher reports.
pub struct Answer<'a> {
    pub kind: EventKind,
    /// The peer the response goes to, as the source, and the local SIP port.
    pub origin: &'a Origin,
    /// The method of the request answered (CSeq).
    pub method: Method,
    pub status: u16,
    /// Granted registration lifetime, or `None`.
    pub expires_s: Option<u32>,
    /// The To user.
    pub user: Option<&'a [u8; TOLL_PREFIX_MAX]>,
}

/// Sends an event; `detail` (the dialled user of a toll-fraud attempt) is optional.
#[inline(always)]
pub fn emit(what: &Occurrence<'_>, detail: Option<&[u8; TOLL_PREFIX_MAX]>) {
    submit(
        what.kind,
        what.reason,
        what.origin,
        what.method,
        what.monitored,
        detail,
        0,
        EXPIRES_ABSENT,
    );
}

/// Sends a response event.
#[inline(always)]
pub fn emit_answer(answer: &Answer<'_>) {
    submit(
        answer.kind,
        Reason::SipOk,
        answer.origin,
        answer.method,
        false,
        answer.user,
        answer.status,
        answer.expires_s.unwrap_or(EXPIRES_ABSENT),
    );
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn submit(
    kind: EventKind,
    reason: Reason,
    origin: &Origin,
    method: Method,
    monitored: bool,
    detail: Option<&[u8; TOLL_PREFIX_MAX]>,
    status: u16,
    expires_s: u32,
) {
    let Some(mut entry) = SF_EVENTS.reserve::<Event>(0) else {
        count_event(false);
        return;
    };
    let mut bytes = [0u8; EVENT_DETAIL_BYTES];
    let mut detail_len = 0;
    if let Some(detail) = detail {
        bytes[..TOLL_PREFIX_MAX].copy_from_slice(detail);
        detail_len = TOLL_PREFIX_MAX as u8;
    }
    entry.write(Event {
        kind: kind as u16,
        version: EVENT_VERSION,
        reason: reason as u32,
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        addr: origin.source.0,
        src_port: origin.src_port,
        dst_port: origin.dst_port,
        method: method as u8,
        ip_version: origin.version,
        monitored: monitored as u8,
        detail_len,
        detail: bytes,
        status,
        _reserved: 0,
        expires_s,
    });
    entry.submit(0);
    count_event(true);
}
