//! The one bounds-checked accessor for packet memory. No other code does pointer arithmetic on
//! the packet: every header read is `read::<T>(ctx, offset)`, which the verifier can follow
//! because the comparison against `data_end` sits right before the load.

use aya_ebpf::programs::XdpContext;
use sipfilter_ebpf::swar::opaque;

/// Reads a `T` at `offset` bytes from the start of the frame, or `None` if it runs past the end.
/// Packet headers are not aligned, so the load is unaligned (byte loads, for eBPF).
///
/// The pointer is made opaque before the check: otherwise LLVM folds `ptr + 1 > end` into
/// `ptr >= end`, which is the same test but proves nothing to the verifier (it only credits a
/// pointer with the bytes below a compared `ptr + n`).
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let ptr = opaque(ctx.data() + offset);
    if ptr + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the range [ptr, ptr + size_of::<T>()) is inside the frame.
    Some(unsafe { (ptr as *const T).read_unaligned() })
}

/// Bytes in the frame from `offset` to its end (0 if `offset` is past the end).
#[inline(always)]
pub fn remaining(ctx: &XdpContext, offset: usize) -> usize {
    let len = ctx.data_end() - ctx.data();
    len.saturating_sub(offset)
}
