//! The flood generator's second frame source: `xdp_flood` (sipfilter-ebpf's `xdp-flood`
//! object) run by `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! Linux 5.18). Each run of the program writes the next frame of the pool into a page-pool
//! page and redirects it out of the attacker's interface, so the frames travel in pages with
//! XDP's 256 bytes of headroom, as a NIC driver's receive buffers are. veth's XDP (sipfilter's
//! driver mode in the lab) then runs on them as they are; frames an `AF_PACKET` socket sent
//! have a few dozen bytes of headroom, and veth copies each into a page of its own first, a
//! cost no NIC has. The frames are the same ones [`crate::flood::frame_pool`] builds.
//!
//! The receiving end of the attacker's veth must run NAPI for redirected frames to be accepted
//! (GRO on, see [`crate::floodlab::FloodLab::flood_frames`]).

use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, ensure};
use aya::maps::Array;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use sipfilter::datapath::XDP_FLOOD_OBJECT;
use sipfilter_common::flood::{FRAME_BYTES, FloodConfig, FloodFrame, map_names};

use crate::flood::{FloodReport, FloodSpec, paced_sends};
use crate::netns::NetNs;

/// Frames per `BPF_PROG_TEST_RUN` call. A call waits about 25 ms in the kernel whatever it
/// sends (the XDP dispatcher is switched in and out), so smaller calls cannot keep up with
/// 100,000 frames per second.
const FRAMES_PER_CALL: usize = 4096;

/// Frames the kernel sends per batch of a call, each batch flushed before the next: they fit
/// in a veth's ring of 256.
const BATCH: u32 = 64;

/// Loads `xdp_flood` with `pool` in its frame map.
fn load(pool: &[Vec<u8>]) -> Result<Ebpf> {
    ensure!(!pool.is_empty(), "no frames to send");
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::FRAMES, pool.len() as u32)
        .load(XDP_FLOOD_OBJECT)
        .context("loading the xdp-flood object")?;
    let program: &mut Xdp = ebpf
        .program_mut("xdp_flood")
        .context("no program xdp_flood")?
        .try_into()?;
    program
        .load()
        .context("loading xdp_flood into the kernel")?;
    let mut frames: Array<_, FloodFrame> =
        Array::try_from(ebpf.map_mut(map_names::FRAMES).context("no frame map")?)?;
    for (index, bytes) in pool.iter().enumerate() {
        ensure!(
            bytes.len() <= FRAME_BYTES,
            "frame {index} has {} bytes, more than {FRAME_BYTES}",
            bytes.len()
        );
        let mut frame = FloodFrame {
            len: bytes.len() as u64,
            bytes: [0; FRAME_BYTES],
        };
        frame.bytes[..bytes.len()].copy_from_slice(bytes);
        frames.set(index as u32, frame, 0)?;
    }
    Ok(ebpf)
}

/// Sends `spec`'s flood of `pool` out of `ifname` in `ns` (see the module documentation).
pub fn flood_live(
    ns: &NetNs,
    ifname: &str,
    spec: &FloodSpec,
    pool: &[Vec<u8>],
    stop: &AtomicBool,
) -> Result<FloodReport> {
    spec.validate()?;
    let mut ebpf = load(pool)?;
    // Every run starts from this packet, which the program trims to its frame's length.
    let packet = vec![0u8; pool.iter().map(Vec::len).max().unwrap_or(0)];
    // The test run injects into the namespace of the thread that calls it, and redirects to
    // an interface index of that namespace.
    ns.run(|| {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(
            ifindex != 0,
            "no interface {ifname} in {}: {}",
            ns.name(),
            std::io::Error::last_os_error()
        );
        let mut config: Array<_, FloodConfig> =
            Array::try_from(ebpf.map_mut(map_names::CONFIG).context("no config map")?)?;
        config.set(
            0,
            FloodConfig {
                ifindex,
                frames: pool.len() as u32,
                next: 0,
                packet_len: packet.len() as u32,
                padding: 0,
            },
            0,
        )?;
        let program: &mut Xdp = ebpf
            .program_mut("xdp_flood")
            .context("no program xdp_flood")?
            .try_into()?;
        send_loop(program, &packet, pool, spec, stop)
    })
}

fn send_loop(
    program: &mut Xdp,
    data_in: &[u8],
    pool: &[Vec<u8>],
    spec: &FloodSpec,
    stop: &AtomicBool,
) -> Result<FloodReport> {
    paced_sends(pool, spec, stop, FRAMES_PER_CALL, |_, count| {
        program
            .test_run(TestRunOptions {
                data_in: Some(data_in),
                repeat: count as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN of xdp_flood in live-frames mode")?;
        Ok(Some(count))
    })
}
