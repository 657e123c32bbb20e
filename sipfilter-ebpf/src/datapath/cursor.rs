//! The one bounds-checked accessor for packet memory. No other code does pointer arithmetic on
//! the packet: a header is read with `read::<T>(ctx, offset)`, or checked once as a whole with
//! `span::<N>(ctx, offset)` and then read field by field; either way the verifier can follow,
//! because the comparison against `data_end` is on the very pointer the loads use.
//!
//! The parsers take any [`Frame`], so the XDP program and the TC egress watcher share them.

use aya_ebpf::programs::{TcContext, XdpContext};
use sipfilter_ebpf::swar::opaque;

/// A packet whose headers can be read directly: an XDP frame, or the linear part of a socket
/// buffer.
pub trait Frame {
    /// Where the Ethernet header starts.
    fn data(&self) -> usize;
    /// The end of the directly readable bytes.
    fn data_end(&self) -> usize;
    /// Bytes in the whole packet: beyond `data_end` for a socket buffer whose payload sits in
    /// pages (read those with `bpf_skb_load_bytes`).
    fn len(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
}

/// Reads a `T` at `offset` bytes from the start of the frame, or `None` if it runs past the end.
///
/// The pointer is made opaque before the check: otherwise LLVM folds `ptr + 1 > end` into
/// `ptr >= end`, which is the same test but proves nothing to the verifier (it only credits a
/// pointer with the bytes below a compared `ptr + n`).
#[inline(always)]
pub fn read<T: Copy>(ctx: &impl Frame, offset: usize) -> Option<T> {
    let ptr = opaque(ctx.data() + offset);
    if ptr + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the range [ptr, ptr + size_of::<T>()) is inside the frame.
    Some(unsafe { load(ptr) })
}

/// Loads a `T` from packet memory with whole-width loads. Packet headers are not aligned, and
/// for an unaligned read LLVM emits one load per byte on eBPF; the CPUs that run XDP (x86-64,
/// arm64) load unaligned words natively and the verifier allows it for packet memory, so the
/// loads are written out in assembly. (The codegen option that would do it everywhere also
/// misaligns stack accesses, which the verifier refuses.)
///
/// # Safety
/// `[ptr, ptr + size_of::<T>())` must be inside the frame.
#[inline(always)]
unsafe fn load<T: Copy>(ptr: usize) -> T {
    macro_rules! word {
        ($width:literal, $offset:literal) => {{
            let value: u64;
            // Used inside the `unsafe` block below, whose caller guarantees the bounds: a plain
            // load with no other effect.
            core::arch::asm!(
                concat!("{0} = *(", $width, " *)({1} + ", $offset, ")"),
                out(reg) value,
                in(reg) ptr,
                options(pure, readonly, nostack)
            );
            value
        }};
    }
    // SAFETY (each arm): the loads are in bounds per the caller; the loaded integer has the size
    // of `T`, and `T` is plain data; the integer's bytes are the packet's bytes in memory order
    // (little-endian target).
    unsafe {
        match core::mem::size_of::<T>() {
            2 => core::mem::transmute_copy(&(word!("u16", "0") as u16)),
            4 => core::mem::transmute_copy(&(word!("u32", "0") as u32)),
            8 => core::mem::transmute_copy(&word!("u64", "0")),
            16 => core::mem::transmute_copy(&[word!("u64", "0"), word!("u64", "8")]),
            _ => (ptr as *const T).read_unaligned(),
        }
    }
}

/// `N` bytes of the frame whose bounds were checked once: a fixed-size header, read field by
/// field at constant offsets without further checks.
pub struct Span<const N: usize> {
    ptr: usize,
}

/// The `N` bytes at `offset`, or `None` if they run past the end of the frame.
#[inline(always)]
pub fn span<const N: usize>(ctx: &impl Frame, offset: usize) -> Option<Span<N>> {
    let ptr = opaque(ctx.data() + offset);
    if ptr + N > ctx.data_end() {
        return None;
    }
    Some(Span { ptr })
}

macro_rules! field {
    ($name:ident, $type:ty, $width:literal) => {
        /// The field at byte `AT`, in memory order (call `from_be` for network-order numbers).
        #[inline(always)]
        pub fn $name<const AT: usize>(&self) -> $type {
            const { assert!(AT + core::mem::size_of::<$type>() <= N, "field beyond the checked span") };
            let value: u64;
            // SAFETY: `[ptr + AT, ptr + AT + size)` lies inside the span, whose bounds were
            // checked against the frame; a plain load with no other effect.
            unsafe {
                core::arch::asm!(
                    concat!("{0} = *(", $width, " *)({1} + {2})"),
                    out(reg) value,
                    in(reg) self.ptr,
                    const AT,
                    options(pure, readonly, nostack)
                )
            };
            value as $type
        }
    };
}

impl<const N: usize> Span<N> {
    field!(u8_at, u8, "u8");
    field!(u16_at, u16, "u16");
    field!(u32_at, u32, "u32");
    field!(u64_at, u64, "u64");
}

/// Bytes in the packet from `offset` to its end (0 if `offset` is past the end).
#[inline(always)]
pub fn remaining(ctx: &impl Frame, offset: usize) -> usize {
    ctx.len().saturating_sub(offset)
}
