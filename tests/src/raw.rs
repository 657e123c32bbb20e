//! Injecting crafted Ethernet frames (see [`crate::packet`]) on an interface inside a
//! namespace, for headers no socket API would produce: VLAN tags, IP options, lying lengths.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::NetNs;

/// Sends each frame as-is out of `ifname` in `ns`, stopping early at `timeout`. Returns how many
/// were sent. Frames leave through the interface's queue, so on a veth they arrive at the peer
/// (and its XDP program) exactly as built.
pub fn send_frames<F: AsRef<[u8]>>(
    ns: &NetNs,
    ifname: &str,
    frames: &[F],
    timeout: Duration,
) -> Result<usize> {
    let socket = ns
        .run(|| packet_socket(ifname))
        .with_context(|| format!("cannot open a packet socket on {ifname} in {}", ns.name()))?;
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    for frame in frames {
        if Instant::now() >= deadline {
            break;
        }
        let frame = frame.as_ref();
        // SAFETY: the pointer and length describe `frame`; the socket is bound, so no address.
        let written =
            unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if written < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending frame {sent} ({} bytes)", frame.len()));
        }
        if written as usize != frame.len() {
            bail!("frame {sent}: sent {written} of {} bytes", frame.len());
        }
        sent += 1;
    }
    Ok(sent)
}

/// An `AF_PACKET` socket bound to `ifname` for sending only (protocol 0 receives nothing, so it
/// cannot fill up with the interface's traffic). Must run inside the interface's namespace:
/// the name is resolved there.
pub(crate) fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let name = CString::new(ifname)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(
        ifindex != 0,
        "no interface {ifname}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: plain socket creation; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data, valid when zeroed.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: the pointer and length describe `addr`.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    Ok(socket)
}
