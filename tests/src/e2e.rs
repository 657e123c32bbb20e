//! What the end-to-end tests share: the two address families of the client/server topology,
//! bounded UDP bursts and receives that survive signals, counter deltas, the SIP messages they
//! send, polling, time stamps, temporary directories and commands bounded in time.

use std::{
    fs,
    io::{ErrorKind, Read},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sipfilter_common::{Reason, stats};

use crate::{
    Topology,
    sip_messages::{options_message, register},
};

/// Send timeout of a burst.
pub const SEND: Duration = Duration::from_secs(2);

/// The address family of a test's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    pub fn client(self) -> IpAddr {
        match self {
            Family::V4 => Topology::CLIENT_V4.into(),
            Family::V6 => Topology::CLIENT_V6.into(),
        }
    }

    pub fn server(self) -> IpAddr {
        match self {
            Family::V4 => Topology::SERVER_V4.into(),
            Family::V6 => Topology::SERVER_V6.into(),
        }
    }

    pub fn server_at(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server(), port)
    }

    pub fn client_any_port(self) -> SocketAddr {
        SocketAddr::new(self.client(), 0)
    }

    /// The client's address as `list` shows a host entry: with its prefix length.
    pub fn client_net(self) -> String {
        match self {
            Family::V4 => format!("{}/32", self.client()),
            Family::V6 => format!("{}/128", self.client()),
        }
    }
}

/// A directory `<tmp>/sft-<tag>-<pid>-<n>` (the pattern the library cleans up after dead test
/// processes), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static DIRS: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sft-{tag}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: removing {}: {err}", self.0.display());
        }
    }
}

/// Sends each payload as one datagram to `to`, back to back, within [`SEND`]; retries a send
/// interrupted by a signal.
pub fn send_burst(socket: &UdpSocket, to: SocketAddr, payloads: &[Vec<u8>]) {
    socket.set_write_timeout(Some(SEND)).expect("write timeout");
    let deadline = Instant::now() + SEND;
    for (index, payload) in payloads.iter().enumerate() {
        loop {
            assert!(
                Instant::now() < deadline,
                "sending datagram {index} to {to} took longer than {SEND:?}"
            );
            match socket.send_to(payload, to) {
                Ok(written) => {
                    assert_eq!(written, payload.len(), "datagram {index} to {to} truncated");
                    break;
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!("sending datagram {index} to {to}: {err}"),
            }
        }
    }
}

/// Receives datagrams on `listener` until `expected` have arrived or `timeout` passes.
pub fn receive(listener: &UdpSocket, expected: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 65_536];
    let mut datagrams = Vec::new();
    while datagrams.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        listener.set_read_timeout(Some(left)).expect("read timeout");
        match listener.recv_from(&mut buffer) {
            Ok((len, _)) => datagrams.push(buffer[..len].to_vec()),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("receiving UDP: {err}"),
        }
    }
    datagrams
}

/// Counter `reason` grew by this much from `before` to `after`.
pub fn grew(before: &[u64], after: &[u64], reason: Reason) -> u64 {
    let slot = (stats::REASON_BASE + reason as u32) as usize;
    after[slot] - before[slot]
}

/// A REGISTER from a normal user agent; `id` makes its Call-ID unique.
pub fn legit_register(id: &str) -> Vec<u8> {
    register(
        "alice",
        "example.com",
        &format!("legit-{id}@192.0.2.1"),
        1,
        Some("Zoiper rv2.10.20.2"),
        None,
    )
}

/// An OPTIONS probe whose only scanner trait is `User-Agent: friendly-scanner`.
pub fn scanner_options(id: &str) -> Vec<u8> {
    options_message("100", "example.com", &format!("scan-{id}@192.0.2.1"), 1)
        .header("User-Agent", "friendly-scanner")
        .build()
}

/// Polls `done` every `step` until it is true (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(step);
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time as the daemon writes it
/// (`2026-01-02T03:04:05Z`, optionally with a fraction). Panics on anything else.
#[track_caller]
pub fn rfc3339_seconds(text: &str) -> i64 {
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && text.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && b[20..b.len() - 1].iter().all(u8::is_ascii_digit)));
    assert!(shape, "{text:?} is not an RFC 3339 UTC time");
    let number = |from: usize, to: usize| -> i64 {
        text[from..to]
            .parse()
            .unwrap_or_else(|_| panic!("{text:?} is not an RFC 3339 UTC time"))
    };
    let (year, month, day) = (number(0, 4), number(5, 7), number(8, 10));
    let (hour, minute, second) = (number(11, 13), number(14, 16), number(17, 19));
    assert!(
        (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60,
        "{text:?} is not a valid time"
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hour * 3600 + minute * 60 + second
}

/// Runs `command` to completion with its output captured. A watchdog kills it (by pid, before
/// it can have been reaped) after `timeout`, and the run then fails. Returns the output and the
/// instant the exit was observed: waitid(2) blocks until the exit, without polling delays, so a
/// test can measure what happens right after a command returns.
pub fn run_bounded(
    mut command: Command,
    what: &str,
    timeout: Duration,
) -> Result<(Output, Instant), String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|err| format!("cannot start `{what}`: {err}"))?;
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    // (exited, killed by the watchdog)
    let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let watchdog = {
        let state = Arc::clone(&state);
        thread::spawn(move || {
            let (lock, changed) = &*state;
            let deadline = Instant::now() + timeout;
            let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !guard.0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // SAFETY: kill(2) on our child, which is not reaped until `exited` is set
                    // under this lock: the pid cannot have been reused.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    guard.1 = true;
                    break;
                }
                guard = changed
                    .wait_timeout(guard, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        })
    };
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child without reaping it (WNOWAIT).
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != ErrorKind::Interrupted {
            return Err(format!("waitid for `{what}`: {error}"));
        }
    }
    let exited = Instant::now();
    let killed = {
        let (lock, changed) = &*state;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        guard.0 = true;
        changed.notify_all();
        guard.1
    };
    watchdog.join().expect("watchdog thread");
    let status = child
        .wait()
        .map_err(|err| format!("reaping `{what}`: {err}"))?;
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if killed {
        return Err(format!(
            "`{what}` did not finish within {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((output, exited))
}
