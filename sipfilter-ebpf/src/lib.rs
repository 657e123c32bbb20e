//! The parts of the sipfilter datapath that are plain computation on bytes: word-at-a-time
//! search and the SIP parser. They build for the host too, where they are unit-tested; the XDP
//! program (`main.rs`) calls them on the per-CPU scan buffer.
#![cfg_attr(not(test), no_std)]
// `swar::opaque` needs inline assembly on the eBPF target (built with the nightly toolchain).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod matcher;
pub mod sip;
pub mod swar;
