//! Decoding of the datapath's event records, and the task that reads them from the ring buffer.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::{MapData, RingBuf};
use sipfilter_common::{EVENT_VERSION, EXPIRES_ABSENT, Event, EventKind, Method, Reason};
use tokio::io::unix::AsyncFd;

/// An event as the daemon uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathEvent {
    pub kind: EventKind,
    pub reason: Reason,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    pub source: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub method: Method,
    pub monitored: bool,
    /// The dialled user of a toll-fraud attempt, the To user of a response.
    pub detail: String,
    /// Response events: the status code (0 for request events).
    pub status: u16,
    /// Success events for REGISTER: the registration lifetime the PBX granted, if it said.
    pub expires_s: Option<u32>,
}

impl DatapathEvent {
    /// Decodes a ring-buffer record; `None` for a record of another layout version or kind,
    /// which a newer datapath may send.
    pub fn decode(bytes: &[u8]) -> Option<DatapathEvent> {
        if bytes.len() < size_of::<Event>() {
            return None;
        }
        // SAFETY: length checked; `Event` is plain old data and read unaligned.
        let raw: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
        if raw.version != EVENT_VERSION {
            return None;
        }
        let v6 = Ipv6Addr::from(raw.addr);
        let source = match v6.to_ipv4_mapped() {
            Some(v4) if raw.ip_version == 4 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        };
        let detail_len = usize::from(raw.detail_len).min(raw.detail.len());
        let detail = &raw.detail[..detail_len];
        let detail = detail.split(|&b| b == 0).next().unwrap_or_default();
        Some(DatapathEvent {
            kind: EventKind::from_u16(raw.kind)?,
            reason: Reason::from_u32(raw.reason)?,
            time_ns: raw.time_ns,
            source,
            src_port: raw.src_port,
            dst_port: raw.dst_port,
            method: Method::from_u8(raw.method)?,
            monitored: raw.monitored != 0,
            detail: String::from_utf8_lossy(detail).into_owned(),
            status: raw.status,
            expires_s: (raw.expires_s != EXPIRES_ABSENT).then_some(raw.expires_s),
        })
    }
}

impl DatapathEvent {
    /// Whether the event reports a response the host sent (from the egress watcher) rather
    /// than a request the filter inspected.
    pub fn is_response(&self) -> bool {
        matches!(
            self.kind,
            EventKind::Challenge | EventKind::Rejection | EventKind::Success
        )
    }
}

impl fmt::Display for DatapathEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            IpAddr::V4(v4) => format!("{v4}:{}", self.src_port),
            IpAddr::V6(v6) => format!("[{v6}]:{}", self.src_port),
        };
        if self.is_response() {
            write!(
                f,
                "{}: {} to {} of {source} from port {}",
                self.kind.name(),
                self.status,
                self.method.name(),
                self.dst_port
            )?;
            if !self.detail.is_empty() {
                write!(f, " user={}", self.detail.escape_debug())?;
            }
            if let Some(expires) = self.expires_s {
                write!(f, " expires={expires}s")?;
            }
            return Ok(());
        }
        write!(
            f,
            "{} from {source} to port {} {} ({})",
            self.kind.name(),
            self.dst_port,
            self.method.name(),
            self.reason.name()
        )?;
        if !self.detail.is_empty() {
            write!(f, " user={}", self.detail.escape_debug())?;
        }
        if self.monitored {
            write!(f, " [monitor: passed]")?;
        }
        Ok(())
    }
}

/// Reads events until the ring closes, handing each to `sink`. Undecodable records are counted
/// and logged once, never fatal.
pub async fn read_events(
    ring: RingBuf<MapData>,
    mut sink: impl FnMut(DatapathEvent),
) -> anyhow::Result<()> {
    // SAFETY: the ring owns its fd and lives inside the AsyncFd until it is dropped, so the fd
    // stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }?;
    let mut undecodable = 0u64;
    loop {
        let mut guard = ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(record) = ring.next() {
            match DatapathEvent::decode(&record) {
                Some(event) => sink(event),
                None => {
                    undecodable += 1;
                    if undecodable == 1 {
                        log::warn!(
                            "ignoring an event record this build cannot decode ({} bytes)",
                            record.len()
                        );
                    }
                }
            }
        }
        guard.clear_ready();
    }
}
