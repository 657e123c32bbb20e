//! The flood lab's frame source, not part of the filter. Userspace runs `xdp_flood` with
//! `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): each run writes the
//! next frame of a pool into the packet and redirects it out of the attacker's interface. The
//! frames then travel in pages with XDP's headroom, as a NIC driver's receive buffers are, so
//! veth's XDP on the PBX runs on them as they are, where it must first copy every frame an
//! `AF_PACKET` socket sent into a page of its own (a cost no NIC has).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::generated::{bpf_redirect, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
        macros::{map, xdp},
        maps::Array,
        programs::XdpContext,
    };
    use sipfilter_common::flood::{FRAME_BYTES, FloodConfig, FloodFrame};

    /// Resized by the loader to the pool.
    #[map]
    static SF_FLOOD_FRAMES: Array<FloodFrame> = Array::with_max_entries(1, 0);

    #[map]
    static SF_FLOOD_CONFIG: Array<FloodConfig> = Array::with_max_entries(1, 0);

    #[xdp]
    pub fn xdp_flood(ctx: XdpContext) -> u32 {
        let Some(config) = SF_FLOOD_CONFIG.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: a live map value; one test run at a time uses it.
        let config = unsafe { &mut *config };
        if config.frames == 0 {
            return xdp_action::XDP_ABORTED;
        }
        let index = config.next % u64::from(config.frames);
        config.next += 1;
        let Some(frame) = SF_FLOOD_FRAMES.get(index as u32) else {
            return xdp_action::XDP_ABORTED;
        };
        let len = frame.len as usize;
        if !(14..=FRAME_BYTES).contains(&len) {
            return xdp_action::XDP_ABORTED;
        }
        // From the configured length rather than the packet's pointers: the verifier refuses
        // the 32-bit pointer arithmetic LLVM makes of `data_end - data` here.
        let trim = len as i32 - config.packet_len as i32;
        // SAFETY: helpers on the program's own context; `frame.bytes` holds `len` bytes.
        unsafe {
            if bpf_xdp_adjust_tail(ctx.ctx, trim) != 0
                || bpf_xdp_store_bytes(ctx.ctx, 0, frame.bytes.as_ptr() as *mut _, len as u32) != 0
            {
                return xdp_action::XDP_ABORTED;
            }
            bpf_redirect(config.ifindex, 0) as u32
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
