//! Bounded TCP exchanges between namespaces: a connection carries one message, the listener
//! accepts one connection and reads it to the end, and every wait has a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// A listener on `addr` inside `ns`.
pub fn tcp_listener(ns: &NetNs, addr: SocketAddr) -> Result<TcpListener> {
    ns.run(|| TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on TCP {addr} in {}", ns.name()))
}

/// Connects from inside `ns` to `to`, giving up after `timeout` (e.g. when a filter drops the
/// SYN). Reads and writes on the stream time out after `timeout` too.
pub fn tcp_connect(ns: &NetNs, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = ns
        .run(|| TcpStream::connect_timeout(&to, timeout))
        .with_context(|| format!("cannot connect to TCP {to} from {}", ns.name()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // Each write goes out as its own segment, so a test controls segment boundaries.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects from inside `ns` to `to`, sends `message` and closes the sending side.
pub fn tcp_send(ns: &NetNs, to: SocketAddr, message: &[u8], timeout: Duration) -> Result<()> {
    let mut stream = tcp_connect(ns, to, timeout)?;
    stream
        .write_all(message)
        .with_context(|| format!("sending {} bytes to {to}", message.len()))?;
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Accepts one connection within `timeout` and reads it until the peer closes its side, all
/// within the same deadline. Returns the peer's address and the bytes read.
pub fn accept_and_read(listener: &TcpListener, timeout: Duration) -> Result<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    if !wait_readable(listener, deadline)? {
        bail!("no connection accepted within {timeout:?}");
    }
    let (mut stream, peer) = listener.accept().context("accept")?;
    let mut data = Vec::new();
    let mut buffer = [0u8; 16_384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{peer} did not close within {timeout:?} ({} bytes read)",
                data.len()
            );
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok((peer, data)),
            Ok(len) => data.extend_from_slice(&buffer[..len]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!(
                    "{peer} did not close within {timeout:?} ({} bytes read)",
                    data.len()
                );
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context(format!("reading from {peer}")),
        }
    }
}

/// Waits until `socket` is readable (for a listener: a connection is pending) or `deadline`.
fn wait_readable(socket: &impl AsRawFd, deadline: Instant) -> Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = left.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd, and the count says one.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        match ready {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != ErrorKind::Interrupted {
                    return Err(err).context("poll");
                }
            }
        }
    }
}
