//! Events for the daemon's ban engine and log, through the `SF_EVENTS` ring buffer. The datapath
//! never waits: a full ring costs the event (counted in `events_lost`), not the packet.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use sipfilter_common::{
    EVENT_DETAIL_BYTES, EVENT_VERSION, Event, EventKind, Method, Reason, TOLL_PREFIX_MAX,
};

use super::{ip::Origin, maps::SF_EVENTS, stats::count_event};

pub struct Occurrence<'a> {
    pub kind: EventKind,
    pub reason: Reason,
    pub origin: &'a Origin,
    pub method: Method,
    pub monitored: bool,
}

/// Sends an event; `detail` (the dialled user of a toll-fraud attempt) is optional.
#[inline(always)]
pub fn emit(what: &Occurrence<'_>, detail: Option<&[u8; TOLL_PREFIX_MAX]>) {
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
        kind: what.kind as u16,
        version: EVENT_VERSION,
        reason: what.reason as u32,
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        addr: what.origin.source.0,
        src_port: what.origin.src_port,
        dst_port: what.origin.dst_port,
        method: what.method as u8,
        ip_version: what.origin.version,
        monitored: what.monitored as u8,
        detail_len,
        detail: bytes,
    });
    entry.submit(0);
    count_event(true);
}
