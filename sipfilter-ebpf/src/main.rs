//! The sipfilter programs: entry points only. The XDP pipeline lives in `datapath::policy`;
//! this file turns its reason into an action and counts it, once, at the single exit. The TC
//! egress watcher lives in `datapath::egress`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For `atomic_xadd`: the eBPF target has atomic adds but no compare-and-swap, so core offers no
// `fetch_add`. The eBPF build uses the nightly toolchain.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// For whole-width unaligned packet loads (`datapath::cursor`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod datapath;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use sipfilter_common::{Reason, STAGE_HEADERS, STAGE_SIP};

    use crate::datapath::{
        egress,
        maps::{SF_EGRESS_NEXT, SF_STAGES},
        policy, sip,
        sip::Stage,
        stats,
    };

    /// The single exit of both programs: count the verdict, turn it into an action.
    #[inline(always)]
    fn finish(reason: Reason) -> u32 {
        stats::count_reason(reason);
        if reason.is_drop() {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// Continues with a later stage; returns only if the stage is missing (the loader always
    /// installs them), in which case the packet passed every check that ran.
    #[inline(always)]
    fn next_stage(ctx: &XdpContext, stage: u32) -> u32 {
        // SAFETY: the context is this program's own.
        unsafe { SF_STAGES.tail_call(ctx, stage) };
        finish(Reason::SipOk)
    }

    #[xdp]
    pub fn sipfilter(ctx: XdpContext) -> u32 {
        match policy::decide(&ctx) {
            Stage::Done(reason) => finish(reason),
            Stage::Next => next_stage(&ctx, STAGE_SIP),
        }
    }

    #[xdp]
    pub fn sipfilter_sip(ctx: XdpContext) -> u32 {
        match sip::inspect(&ctx) {
            Stage::Done(reason) => finish(reason),
            Stage::Next => next_stage(&ctx, STAGE_HEADERS),
        }
    }

    #[xdp]
    pub fn sipfilter_headers(_ctx: XdpContext) -> u32 {
        finish(sip::scan_headers())
    }

    /// The egress watcher (TC clsact egress): reads, never changes. `TC_ACT_UNSPEC` lets
    /// whatever else is attached after it decide, as if it were not there.
    #[classifier]
    pub fn sipfilter_egress(ctx: TcContext) -> i32 {
        if egress::watch(&ctx) {
            // SAFETY: the context is this program's own.
            unsafe { SF_EGRESS_NEXT.tail_call(&ctx, 0) };
        }
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn sipfilter_egress_read(_ctx: TcContext) -> i32 {
        egress::read();
        TC_ACT_UNSPEC
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable: the verifier rejects a program with a reachable infinite loop, so a
        // panic path that survived optimisation fails at load time, not at run time.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
