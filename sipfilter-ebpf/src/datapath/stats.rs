//! Per-CPU counters: no atomics on the hot path; userspace sums the CPUs.

use sipfilter_common::{Method, Reason, ResponseClass, stats};

use super::maps::SF_STATS;

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = SF_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// The packet's final verdict.
#[inline(always)]
pub fn count_reason(reason: Reason) {
    bump(stats::REASON_BASE + reason as u32);
}

/// A rule in `monitor` mode that would have dropped the packet.
#[inline(always)]
pub fn count_monitored(reason: Reason) {
    bump(stats::MONITOR_BASE + reason as u32);
}

#[inline(always)]
pub fn count_method(method: Method) {
    bump(stats::METHOD_BASE + method as u32);
}

#[inline(always)]
pub fn count_event(sent: bool) {
    bump(if sent {
        stats::EVENTS_SENT
    } else {
        stats::EVENTS_LOST
    });
}

/// A response the egress watcher saw.
#[inline(always)]
pub fn count_response(class: ResponseClass) {
    bump(stats::RESPONSE_BASE + class as u32);
}
