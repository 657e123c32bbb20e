//! Bounded UDP traffic between namespaces: sockets are created inside a namespace (see
//! [`NetNs::run`]) and then used from the calling thread. Every loop stops after a fixed number
//! of datagrams or at a deadline, whichever comes first.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// Receive buffer of listeners: large enough that a test's burst is not dropped by the socket
/// before the receiver reads it, so a shortfall means the filter dropped it.
const LISTENER_RCVBUF: libc::c_int = 8 << 20;

/// A UDP socket bound to `bind` inside `ns` (port 0 picks a free port).
pub fn udp_socket(ns: &NetNs, bind: SocketAddr) -> Result<UdpSocket> {
    ns.run(|| UdpSocket::bind(bind))
        .with_context(|| format!("cannot bind UDP {bind} in {}", ns.name()))
}

/// A UDP socket bound to `addr` inside `ns`, with a receive buffer big enough for test bursts.
pub fn udp_listener(ns: &NetNs, addr: SocketAddr) -> Result<UdpSocket> {
    let socket = udp_socket(ns, addr)?;
    // SO_RCVBUFFORCE (root) ignores net.core.rmem_max, which differs between machines.
    set_int_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        LISTENER_RCVBUF,
    )
    .context("cannot enlarge the listener's receive buffer")?;
    Ok(socket)
}

/// Sends each of `payloads` as one datagram from `from` (inside `ns`) to `to`, back to back,
/// stopping early at `timeout`. Returns how many were sent.
pub fn send_udp<P: AsRef<[u8]>>(
    ns: &NetNs,
    from: SocketAddr,
    to: SocketAddr,
    payloads: &[P],
    timeout: Duration,
) -> Result<usize> {
    let socket = udp_socket(ns, from)?;
    socket.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    for payload in payloads {
        if Instant::now() >= deadline {
            break;
        }
        let payload = payload.as_ref();
        // A signal (a test stopping a daemon it started) may interrupt the call: retry it.
        let written = loop {
            match socket.send_to(payload, to) {
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        }
        .with_context(|| format!("sending datagram {sent} from {from} to {to}"))?;
        if written != payload.len() {
            bail!(
                "datagram {sent} to {to}: sent {written} of {} bytes",
                payload.len()
            );
        }
        sent += 1;
    }
    Ok(sent)
}

/// Counts datagrams arriving on `listener` until `expected` have arrived or `timeout` passes.
/// A test expecting drops waits the whole timeout, so keep it short there.
pub fn count_received(listener: &UdpSocket, expected: usize, timeout: Duration) -> Result<usize> {
    let mut count = 0;
    receive_loop(listener, expected, timeout, |_, _| count += 1)?;
    Ok(count)
}

/// Like [`count_received`], but returns each datagram with its source.
pub fn receive_udp(
    listener: &UdpSocket,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<(SocketAddr, Vec<u8>)>> {
    let mut datagrams = Vec::new();
    receive_loop(listener, expected, timeout, |from, data| {
        datagrams.push((from, data.to_vec()));
    })?;
    Ok(datagrams)
}

fn receive_loop(
    listener: &UdpSocket,
    expected: usize,
    timeout: Duration,
    mut on_datagram: impl FnMut(SocketAddr, &[u8]),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65_536];
    let mut received = 0;
    while received < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        listener.set_read_timeout(Some(left))?;
        match listener.recv_from(&mut buffer) {
            Ok((len, from)) => {
                on_datagram(from, &buffer[..len]);
                received += 1;
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("receiving UDP"),
        }
    }
    Ok(())
}

pub(crate) fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `value`, which lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
