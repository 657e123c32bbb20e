//! Per-source token buckets for REGISTER and INVITE, in the GCRA form: one timestamp per source
//! and method (the theoretical arrival time, TAT) instead of a token count and a refill time.
//!
//! The state is shared by all CPUs (an LRU hash, not per-CPU), so the configured rate holds on a
//! multi-core host. It is updated without a lock: the TAT advances with an atomic add, so every
//! conforming request is accounted for; two CPUs that pass the check at the same instant may
//! each admit one request beyond the burst, and a reset of an idle bucket (a plain store) may
//! race with an add and forget it. The error is at most one request per CPU per burst window;
//! the long-run rate is exact.
//!
//! A request within its source's rate then draws on one more bucket, shared by all untrusted
//! sources (`Config::total`): a flood from many sources, each under its own limit (spoofed
//! addresses), is held to that rate as a whole. Sources over their own limit are dropped before
//! they reach it, so one noisy source cannot spend the others' share.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};
use sipfilter_common::{Config, Method, RateParams, RateState, SourceKey};

use super::maps::{SF_RATE, SF_RATE_TOTAL};

pub enum Verdict {
    Conforming,
    /// Over the rate; `report` is true at most once per source per `event_interval_ns`.
    Exceeded {
        report: bool,
    },
    /// Within the source's rate, over the rate of all untrusted sources together. Not the
    /// source's fault, so never reported as evidence against it.
    ExceededTotal,
}

#[inline(always)]
pub fn check(config: &Config, key: &SourceKey, method: Method) -> Verdict {
    // Jiffy resolution (1-4 ms) is plenty for rates of a few per second, and the coarse clock
    // is a fraction of the cost of `bpf_ktime_get_ns`.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match check_source(config, key, method, now) {
        Verdict::Conforming => check_total(&config.total, now),
        exceeded => exceeded,
    }
}

/// One GCRA step on the theoretical arrival time `tat`: whether a request at `now` conforms. A
/// conforming request is accounted for; one over the limit leaves `tat` as it is.
///
/// # Safety
/// `tat` must point into a live map value; it is accessed with single loads and stores or
/// atomically.
#[inline(always)]
unsafe fn conforms(tat: *mut u64, params: &RateParams, now: u64) -> bool {
    // SAFETY: per the caller.
    unsafe {
        let current = tat.read_volatile();
        if current <= now {
            tat.write_volatile(now + params.interval_ns);
            return true;
        }
        if current - now > params.tolerance_ns {
            return false;
        }
        // The bpfel target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist;
        // the intrinsic compiles to the eBPF atomic add.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(tat, params.interval_ns);
    }
    true
}

/// The bucket of all untrusted sources: the same GCRA on a single shared timestamp.
#[inline(always)]
fn check_total(params: &RateParams, now: u64) -> Verdict {
    if params.interval_ns == 0 {
        return Verdict::Conforming;
    }
    let Some(tat) = SF_RATE_TOTAL.get_ptr_mut(0) else {
        return Verdict::Conforming;
    };
    // SAFETY: `tat` points into a live map value.
    if unsafe { conforms(tat, params, now) } {
        Verdict::Conforming
    } else {
        Verdict::ExceededTotal
    }
}

#[inline(always)]
fn check_source(config: &Config, key: &SourceKey, method: Method, now: u64) -> Verdict {
    let is_register = method == Method::Register;
    let params = if is_register {
        config.register
    } else {
        config.invite
    };
    if params.interval_ns == 0 {
        return Verdict::Conforming;
    }
    let Some(state) = SF_RATE.get_ptr_mut(key) else {
        let mut fresh = RateState::default();
        if is_register {
            fresh.register_tat = now + params.interval_ns;
        } else {
            fresh.invite_tat = now + params.interval_ns;
        }
        // Another CPU may have inserted the source meanwhile; either way this request conforms.
        let _ = SF_RATE.insert(key, &fresh, BPF_NOEXIST as u64);
        return Verdict::Conforming;
    };
    // SAFETY: `state` points into a live map value; its fields are u64, accessed with single
    // loads and stores or atomically.
    unsafe {
        let tat = if is_register {
            &raw mut (*state).register_tat
        } else {
            &raw mut (*state).invite_tat
        };
        if conforms(tat, &params, now) {
            return Verdict::Conforming;
        }
        let last = &raw mut (*state).last_event_ns;
        let report = now.wrapping_sub(last.read_volatile()) >= config.event_interval_ns;
        if report {
            last.write_volatile(now);
        }
        Verdict::Exceeded { report }
    }
}
