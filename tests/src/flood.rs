//! The SIP flood generator of the flood lab: REGISTER or INVITE floods from one source or from
//! up to 131,072 spoofed IPv4 sources / IPv6 /64s, sent as prebuilt Ethernet frames through an
//! `AF_PACKET` socket with `sendmmsg` (batches of frames per system call, qdisc bypassed).
//!
//! Every frame is a complete, valid SIP request (Via with branch and rport, Max-Forwards, From
//! with tag, To, Call-ID, CSeq, Contact, Expires or SDP body, User-Agent, Content-Length) in a
//! correct UDP/IP packet: a filter has to parse the same bytes a real flood tool would send.
//! The frames are built once, before the clock starts (one per source for spoofed floods, a
//! pool of distinct Call-IDs for single-source ones), so the send loop only points `iovec`s at
//! them: the rate is what the machine can push, not what `format!` can.
//!
//! Safety: frames only leave through an interface of a network namespace. [`flood`] opens its
//! socket inside a namespace the caller owns; [`flood_here`] (for the standalone command) refuses
//! to run in the root namespace. Every address must be a documentation address (192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) or, for spoofed IPv4 sources, the benchmarking
//! range 198.18.0.0/15 (RFC 2544/5735: reserved for exactly this, never routed). 100,000 distinct
//! IPv4 sources do not fit in the documentation ranges (768 addresses); the benchmarking range is
//! used instead of a private range because nothing anywhere can be reached at it. Every run is
//! bounded by [`MAX_DURATION`] and a packet count.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::NetNs;
use crate::packet::Packet;

/// Longest flood one call may run: a flood is a measurement, never a background load.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// Most frames one call may send (about ten minutes at the best rate one core reaches here).
pub const MAX_PACKETS: u64 = 500_000_000;
/// Most distinct spoofed sources: the size of 198.18.0.0/15, and as many /64s for IPv6.
pub const MAX_SOURCES: u32 = 131_072;
/// Frames per `sendmmsg`. 64 amortises the system call (about 1 µs) over the frames; larger
/// batches gain nothing measurable on a veth and make the stop checks coarser.
pub const DEFAULT_BATCH: usize = 64;
/// Distinct messages of a single-source flood (distinct Call-IDs and branches), sent round
/// robin: enough that no cache or retransmission logic sees a repeat within a few ms.
const SINGLE_SOURCE_POOL: usize = 4096;
/// Base of the spoofed IPv4 sources: 198.18.0.0/15 (benchmarking, RFC 2544).
pub const SPOOF_V4_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Spoofed IPv6 sources live in 2001:db8:8000::/33: source `i` owns the /64
/// `2001:db8:(0x8000 | i >> 16):(i & 0xffff)::/64` and varies its interface identifier per
/// message, as an attacker owning a /64 would.
const SPOOF_V6_HEXTET: u16 = 0x8000;

/// Which request floods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodMethod {
    Register,
    Invite,
}

impl FloodMethod {
    pub fn name(self) -> &'static str {
        match self {
            FloodMethod::Register => "REGISTER",
            FloodMethod::Invite => "INVITE",
        }
    }
}

/// Where the flood comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FloodSources {
    /// Every message from this one address.
    Single(IpAddr),
    /// `count` distinct addresses from 198.18.0.0/15, round robin.
    Spoofed4 { count: u32 },
    /// `count` distinct /64s of 2001:db8:8000::/33, round robin.
    Spoofed6 { count: u32 },
}

impl FloodSources {
    /// Distinct sources (IPv6: distinct /64s).
    pub fn count(&self) -> u32 {
        match self {
            FloodSources::Single(_) => 1,
            FloodSources::Spoofed4 { count } | FloodSources::Spoofed6 { count } => *count,
        }
    }

    pub fn is_v6(&self) -> bool {
        match self {
            FloodSources::Single(ip) => ip.is_ipv6(),
            FloodSources::Spoofed4 { .. } => false,
            FloodSources::Spoofed6 { .. } => true,
        }
    }

    /// The source of message `seq`: source `seq % count`; for IPv6 the interface identifier
    /// also varies with `seq`.
    pub fn addr(&self, seq: u64) -> IpAddr {
        match self {
            FloodSources::Single(ip) => *ip,
            FloodSources::Spoofed4 { count } => {
                let index = (seq % u64::from(*count)) as u32;
                IpAddr::V4(Ipv4Addr::from(u32::from(SPOOF_V4_BASE) + index))
            }
            FloodSources::Spoofed6 { count } => {
                let index = (seq % u64::from(*count)) as u32;
                let iid = (seq / u64::from(*count)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0x0db8,
                    SPOOF_V6_HEXTET | (index >> 16) as u16,
                    index as u16,
                    (iid >> 48) as u16,
                    (iid >> 32) as u16,
                    (iid >> 16) as u16,
                    iid as u16,
                ))
            }
        }
    }

    /// The IPv6 /64 (or IPv4 address) of source `index`, as a filter keys it.
    pub fn source_key(&self, index: u32) -> IpAddr {
        match self.addr(u64::from(index)) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// True when `ip` is one of this flood's sources (IPv6: in one of its /64s).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (FloodSources::Single(source), ip) => *source == ip,
            (FloodSources::Spoofed4 { count }, IpAddr::V4(v4)) => u32::from(v4)
                .checked_sub(u32::from(SPOOF_V4_BASE))
                .is_some_and(|index| index < *count),
            (FloodSources::Spoofed6 { count }, IpAddr::V6(v6)) => {
                let s = v6.segments();
                let index = (u32::from(s[2] & !SPOOF_V6_HEXTET) << 16) | u32::from(s[3]);
                s[0] == 0x2001 && s[1] == 0x0db8 && s[2] & SPOOF_V6_HEXTET != 0 && index < *count
            }
            _ => false,
        }
    }
}

/// What one flood sends.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    pub method: FloodMethod,
    pub sources: FloodSources,
    /// The PBX: destination address and port.
    pub target: SocketAddr,
    pub src_mac: [u8; 6],
    /// The next hop's (the PBX's) Ethernet address.
    pub dst_mac: [u8; 6],
    pub user_agent: String,
    /// Stop after this long ...
    pub duration: Duration,
    /// ... or after this many frames, whichever comes first.
    pub max_packets: u64,
    /// Frames per second to aim at; `None` sends as fast as the machine allows.
    pub rate: Option<u64>,
    pub batch: usize,
}

impl FloodSpec {
    /// A REGISTER flood as fast as possible, for `duration`, with a common softphone's
    /// User-Agent (floods are rarely polite enough to announce a scanner).
    pub fn new(
        method: FloodMethod,
        sources: FloodSources,
        target: SocketAddr,
        macs: ([u8; 6], [u8; 6]),
        duration: Duration,
    ) -> FloodSpec {
        FloodSpec {
            method,
            sources,
            target,
            src_mac: macs.0,
            dst_mac: macs.1,
            user_agent: "Zoiper rv2.10.20.2".to_owned(),
            duration,
            max_packets: MAX_PACKETS,
            rate: None,
            batch: DEFAULT_BATCH,
        }
    }

    /// Refuses anything outside the lab's address plan and limits.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.duration <= MAX_DURATION,
            "flood duration {:?} above {MAX_DURATION:?}",
            self.duration
        );
        ensure!(
            (1..=MAX_PACKETS).contains(&self.max_packets),
            "packet limit {} outside 1..={MAX_PACKETS}",
            self.max_packets
        );
        ensure!(
            (1..=1024).contains(&self.batch),
            "batch {} outside 1..=1024",
            self.batch
        );
        ensure!(
            (1..=MAX_SOURCES).contains(&self.sources.count()),
            "{} sources outside 1..={MAX_SOURCES}",
            self.sources.count()
        );
        ensure!(
            self.rate.is_none_or(|rate| rate > 0),
            "a rate must be above zero"
        );
        ensure!(
            is_documentation(self.target.ip()),
            "target {} is not a documentation address",
            self.target.ip()
        );
        ensure!(
            self.sources.is_v6() == self.target.is_ipv6(),
            "sources and target are of different address families"
        );
        if let FloodSources::Single(ip) = self.sources {
            ensure!(
                is_documentation(ip),
                "source {ip} is not a documentation address"
            );
        }
        ensure!(
            !self.user_agent.contains(['\r', '\n']),
            "User-Agent spans lines"
        );
        Ok(())
    }
}

/// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32.
pub fn is_documentation(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            matches!(
                (o[0], o[1], o[2]),
                (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
            )
        }
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8,
    }
}

/// `192.0.2.2` or `[2001:db8::2]`.
fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// 64 bits of hex derived from `seq` and a salt: tags, branches and Call-IDs that look random
/// and never repeat within a flood.
fn token(seq: u64, salt: u64) -> String {
    let mut x = seq.wrapping_add(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    format!("{x:016x}")
}

/// The SIP request of message `seq` from `source` to `target`: a REGISTER for one of 100
/// extensions (1000-1099: a few exist on the lab registrar, most do not, as in a brute-force
/// run), or an INVITE to an international number with an SDP offer, as toll-fraud floods send.
pub fn flood_message(
    method: FloodMethod,
    source: SocketAddr,
    target: SocketAddr,
    user_agent: &str,
    seq: u64,
) -> Vec<u8> {
    let src = host(source.ip());
    let dst = host(target.ip());
    let sport = source.port();
    let ext = 1000 + seq % 100;
    let branch = token(seq, 1);
    let tag = &token(seq, 2)[..10];
    let call_id = token(seq, 3);
    let mut text = String::with_capacity(640);
    match method {
        FloodMethod::Register => {
            let _ = write!(
                text,
                "REGISTER sip:{dst} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{branch};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: \"{ext}\" <sip:{ext}@{dst}>;tag={tag}\r\n\
                 To: \"{ext}\" <sip:{ext}@{dst}>\r\n\
                 Call-ID: {call_id}@{src}\r\n\
                 CSeq: 1 REGISTER\r\n\
                 Contact: <sip:{ext}@{src}:{sport};transport=udp>\r\n\
                 Expires: 3600\r\n\
                 Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, MESSAGE\r\n\
                 User-Agent: {user_agent}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
        }
        FloodMethod::Invite => {
            let (family, bare) = match source.ip() {
                IpAddr::V4(v4) => ("IP4", v4.to_string()),
                IpAddr::V6(v6) => ("IP6", v6.to_string()),
            };
            let number = format!("00972592{:06}", seq % 1_000_000);
            let sdp = format!(
                "v=0\r\no=- {seq} 1 IN {family} {bare}\r\ns=-\r\nc=IN {family} {bare}\r\n\
                 t=0 0\r\nm=audio {} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
                 a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
                10_000 + 2 * (seq % 10_000)
            );
            let _ = write!(
                text,
                "INVITE sip:{number}@{dst} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{branch};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: \"{ext}\" <sip:{ext}@{dst}>;tag={tag}\r\n\
                 To: <sip:{number}@{dst}>\r\n\
                 Call-ID: {call_id}@{src}\r\n\
                 CSeq: 1 INVITE\r\n\
                 Contact: <sip:{ext}@{src}:{sport}>\r\n\
                 Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
                 User-Agent: {user_agent}\r\n\
                 Content-Type: application/sdp\r\n\
                 Content-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            );
        }
    }
    text.into_bytes()
}

/// Source port of message `seq`: 5060 for a single source (as SIP tools bind), spread over
/// 1024-65535 for spoofed ones.
fn source_port(sources: &FloodSources, seq: u64) -> u16 {
    match sources {
        FloodSources::Single(_) => 5060,
        _ => 1024 + ((seq.wrapping_mul(7919)) % 64_512) as u16,
    }
}

/// The Ethernet frame of message `seq` (checksums correct).
pub fn flood_frame(spec: &FloodSpec, seq: u64) -> Vec<u8> {
    let ip = spec.sources.addr(seq);
    let sport = source_port(&spec.sources, seq);
    let payload = flood_message(
        spec.method,
        SocketAddr::new(ip, sport),
        spec.target,
        &spec.user_agent,
        seq,
    );
    let packet = match (ip, spec.target.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            Packet::udp4(src, dst, sport, spec.target.port(), &payload)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            Packet::udp6(src, dst, sport, spec.target.port(), &payload)
        }
        _ => unreachable!("validate() checks the families"),
    };
    packet.macs(spec.src_mac, spec.dst_mac).build()
}

/// The frames the send loop cycles through: one per source (spoofed), or
/// [`SINGLE_SOURCE_POOL`] distinct messages (single source).
pub fn frame_pool(spec: &FloodSpec) -> Vec<Vec<u8>> {
    let len = match spec.sources {
        FloodSources::Single(_) => SINGLE_SOURCE_POOL,
        _ => spec.sources.count() as usize,
    };
    (0..len as u64).map(|seq| flood_frame(spec, seq)).collect()
}

/// What a flood achieved.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    /// Frames the kernel accepted.
    pub sent: u64,
    pub bytes: u64,
    /// `sendmmsg` calls that failed (ENOBUFS and the like), each retried.
    pub errors: u64,
    /// From the first send to the end of the last.
    pub elapsed: Duration,
    /// Distinct sources cycled through.
    pub sources: u32,
    /// CPU time of the sending thread (`CLOCK_THREAD_CPUTIME_ID`, exact, not sampled). On a
    /// veth the receiver's softirq work (the bridge, the PBX's receive path, the filter) runs
    /// inline in the sender's system calls, so this is the flood's whole packet path unless
    /// the kernel deferred some of it to ksoftirqd.
    pub thread_cpu: Duration,
}

impl FloodReport {
    /// Frames per second achieved.
    pub fn pps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent as f64 / secs
        } else {
            0.0
        }
    }
}

/// Sends `spec`'s flood out of `ifname` in `ns` until its duration or packet count is reached
/// or `stop` is set. The socket is created inside `ns`, so frames cannot leave anywhere else.
pub fn flood(ns: &NetNs, ifname: &str, spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport> {
    spec.validate()?;
    flood_frames(ns, ifname, spec, &frame_pool(spec), stop)
}

/// [`flood`] of frames built beforehand with [`frame_pool`]: building 100,000 frames takes a
/// good part of a second of CPU, which a measurement should not see as the flood's.
pub fn flood_frames(
    ns: &NetNs,
    ifname: &str,
    spec: &FloodSpec,
    pool: &[Vec<u8>],
    stop: &AtomicBool,
) -> Result<FloodReport> {
    spec.validate()?;
    let socket = ns
        .run(|| packet_socket(ifname))
        .with_context(|| format!("cannot open a packet socket on {ifname} in {}", ns.name()))?;
    send_loop(&socket, pool, spec, stop)
}

/// [`flood`] from the current network namespace, for the standalone command. Refuses to run
/// in the root namespace: a flood there would reach a real network.
pub fn flood_here(ifname: &str, spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport> {
    spec.validate()?;
    ensure!(
        !in_root_netns()?,
        "refusing to flood from the root network namespace: run it inside a lab namespace \
         (ip netns exec NS ...)"
    );
    let socket = packet_socket(ifname)?;
    let pool = frame_pool(spec);
    send_loop(&socket, &pool, spec, stop)
}

/// True when this thread's network namespace is init's (the machine's own network).
pub fn in_root_netns() -> Result<bool> {
    let ours = fs::metadata("/proc/thread-self/ns/net").context("reading our netns")?;
    let init = fs::metadata("/proc/1/ns/net").context("reading init's netns")?;
    Ok(ours.ino() == init.ino() && ours.dev() == init.dev())
}

fn send_loop(
    socket: &OwnedFd,
    pool: &[Vec<u8>],
    spec: &FloodSpec,
    stop: &AtomicBool,
) -> Result<FloodReport> {
    let batch = spec.batch;
    let mut iovecs: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        batch
    ];
    // SAFETY: mmsghdr is plain data, valid when zeroed (no name, no control data).
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    paced_sends(pool, spec, stop, batch, |next, count| {
        for k in 0..count {
            let frame = &pool[(next + k) % pool.len()];
            iovecs[k] = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            headers[k].msg_hdr.msg_iov = &mut iovecs[k];
            headers[k].msg_hdr.msg_iovlen = 1;
            headers[k].msg_len = 0;
        }
        // SAFETY: `headers[..count]` point at `iovecs[..count]`, which point into `pool`; all
        // outlive the call. The socket is bound, so no destination address is needed.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            return Ok(Some(rc as usize));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => Ok(None),
            _ => Err(err).context("sendmmsg on the flood socket"),
        }
    })
}

/// The send loop every frame source shares: calls `send(next, count)` to send up to `count`
/// frames of `pool` from index `next` on (wrapping), which answers how many went out, or
/// `None` for a transient failure to retry; keeps to the flood's rate and duration (and
/// `stop`), and accounts for what was sent and the thread's CPU time.
pub(crate) fn paced_sends(
    pool: &[Vec<u8>],
    spec: &FloodSpec,
    stop: &AtomicBool,
    per_call: usize,
    mut send: impl FnMut(usize, usize) -> Result<Option<usize>>,
) -> Result<FloodReport> {
    ensure!(!pool.is_empty(), "no frames to send");
    let mut report = FloodReport {
        sources: spec.sources.count(),
        ..FloodReport::default()
    };
    let mut next = 0usize;
    let cpu_before = thread_cpu_time();
    let started = Instant::now();
    let pacer = Pacer::new(spec, started);
    while report.sent < spec.max_packets && pacer.wait(report.sent, stop) {
        let count = per_call.min((spec.max_packets - report.sent) as usize);
        let Some(done) = send(next, count)? else {
            report.errors += 1;
            thread::yield_now();
            continue;
        };
        report.bytes += (0..done)
            .map(|k| pool[(next + k) % pool.len()].len() as u64)
            .sum::<u64>();
        report.sent += done as u64;
        next = (next + done) % pool.len();
    }
    report.elapsed = started.elapsed();
    report.thread_cpu = thread_cpu_time().saturating_sub(cpu_before);
    Ok(report)
}

/// Holds a send loop to its flood's rate (when it has one) and duration.
struct Pacer {
    started: Instant,
    deadline: Instant,
    rate: Option<u64>,
}

impl Pacer {
    fn new(spec: &FloodSpec, started: Instant) -> Pacer {
        Pacer {
            started,
            deadline: started + spec.duration,
            rate: spec.rate,
        }
    }

    /// Waits until the frame after `sent` is due; false once the flood is over (its duration
    /// is up, or `stop` is set).
    fn wait(&self, sent: u64, stop: &AtomicBool) -> bool {
        loop {
            let now = Instant::now();
            if stop.load(Ordering::Relaxed) || now >= self.deadline {
                return false;
            }
            let Some(rate) = self.rate else {
                return true;
            };
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = now - self.started;
            if due <= elapsed {
                return true;
            }
            thread::sleep((due - elapsed).min(self.deadline - now));
        }
    }
}

/// CPU time of the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// [`crate::raw::packet_socket`] (an `AF_PACKET` socket bound to `ifname`, sending only),
/// bypassing the qdisc (`PACKET_QDISC_BYPASS`), as packet generators do.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let socket = crate::raw::packet_socket(ifname)?;
    let one: libc::c_int = 1;
    // SAFETY: the pointer and length describe `one`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    Ok(socket)
}

/// A request as [`parse_request`] returns it: method, headers (lower-cased names), body.
pub type ParsedRequest = (String, Vec<(String, String)>, Vec<u8>);

/// Parses `text` as a SIP request the way a strict registrar would: start line, headers with
/// names, CRLF line ends, Content-Length equal to the body. Returns the method and the headers
/// (lower-cased names). For tests of the generator and of what it sends.
pub fn parse_request(text: &[u8]) -> Result<ParsedRequest> {
    let text_str = std::str::from_utf8(text).context("request is not UTF-8")?;
    let (head, body) = text_str
        .split_once("\r\n\r\n")
        .context("no empty line after the headers")?;
    let mut lines = head.split("\r\n");
    let start = lines.next().context("empty request")?;
    let parts: Vec<&str> = start.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        bail!("bad request line {start:?}");
    };
    ensure!(*version == "SIP/2.0", "bad version in {start:?}");
    ensure!(uri.starts_with("sip:"), "bad Request-URI in {start:?}");
    ensure!(
        !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
        "bad method in {start:?}"
    );
    let mut headers = Vec::new();
    for line in lines {
        ensure!(!line.contains('\n'), "bare LF in {line:?}");
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("header line without a colon: {line:?}"))?;
        ensure!(
            !name.is_empty() && !name.contains(' '),
            "bad header name {name:?}"
        );
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .context("no Content-Length")?
        .1
        .parse()
        .context("bad Content-Length")?;
    ensure!(
        length == body.len(),
        "Content-Length {length} but body of {} bytes",
        body.len()
    );
    Ok((method.to_string(), headers, body.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sources: FloodSources, method: FloodMethod) -> FloodSpec {
        let target: IpAddr = if sources.is_v6() {
            "2001:db8::2".parse().unwrap()
        } else {
            "192.0.2.2".parse().unwrap()
        };
        FloodSpec::new(
            method,
            sources,
            SocketAddr::new(target, 5060),
            ([2, 0, 0, 0, 0, 0x66], [2, 0, 0, 0, 0, 2]),
            Duration::from_secs(1),
        )
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        &headers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    #[test]
    fn messages_are_valid_sip_with_every_realistic_header() {
        let source: SocketAddr = "203.0.113.66:5060".parse().unwrap();
        let target: SocketAddr = "192.0.2.2:5060".parse().unwrap();
        for method in [FloodMethod::Register, FloodMethod::Invite] {
            for seq in [0, 1, 99, 123_456] {
                let bytes = flood_message(method, source, target, "Zoiper rv2.10.20.2", seq);
                let (parsed, headers, body) = parse_request(&bytes).unwrap();
                assert_eq!(parsed, method.name());
                for name in [
                    "via",
                    "max-forwards",
                    "from",
                    "to",
                    "call-id",
                    "cseq",
                    "contact",
                    "user-agent",
                    "content-length",
                ] {
                    assert!(!header(&headers, name).is_empty(), "{name} empty");
                }
                assert_eq!(header(&headers, "cseq"), format!("1 {}", method.name()));
                assert!(header(&headers, "via").starts_with("SIP/2.0/UDP 203.0.113.66:5060;"));
                assert!(header(&headers, "via").contains(";branch=z9hG4bK"));
                assert!(header(&headers, "from").contains(";tag="));
                assert_eq!(header(&headers, "user-agent"), "Zoiper rv2.10.20.2");
                if method == FloodMethod::Invite {
                    assert!(body.starts_with(b"v=0\r\n"));
                    assert_eq!(header(&headers, "content-type"), "application/sdp");
                } else {
                    assert!(body.is_empty());
                }
                // Realistic size: between a minimal request and one MTU.
                assert!((350..1400).contains(&bytes.len()), "{}", bytes.len());
            }
        }
    }

    #[test]
    fn ipv6_messages_bracket_addresses() {
        let source: SocketAddr = "[2001:db8:8000:1::1]:4000".parse().unwrap();
        let target: SocketAddr = "[2001:db8::2]:5060".parse().unwrap();
        let bytes = flood_message(FloodMethod::Invite, source, target, "x", 7);
        let (_, headers, body) = parse_request(&bytes).unwrap();
        assert!(header(&headers, "via").starts_with("SIP/2.0/UDP [2001:db8:8000:1::1]:4000;"));
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("c=IN IP6 2001:db8:8000:1::1\r\n")
        );
    }

    #[test]
    fn call_ids_and_branches_do_not_repeat() {
        let s = spec(
            FloodSources::Single("203.0.113.66".parse().unwrap()),
            FloodMethod::Register,
        );
        let mut ids = std::collections::BTreeSet::new();
        let mut branches = std::collections::BTreeSet::new();
        for seq in 0..2000 {
            let bytes = flood_message(
                s.method,
                "203.0.113.66:5060".parse().unwrap(),
                s.target,
                "x",
                seq,
            );
            let (_, headers, _) = parse_request(&bytes).unwrap();
            assert!(ids.insert(header(&headers, "call-id").to_owned()));
            assert!(branches.insert(header(&headers, "via").to_owned()));
        }
    }

    #[test]
    fn frames_parse_back_with_correct_headers() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        for sources in [
            FloodSources::Single("203.0.113.66".parse().unwrap()),
            FloodSources::Spoofed4 { count: 100_000 },
            FloodSources::Spoofed6 { count: 100_000 },
        ] {
            let s = spec(sources.clone(), FloodMethod::Register);
            s.validate().unwrap();
            for seq in [0u64, 5, 99_999, 100_000, 250_001] {
                let frame = flood_frame(&s, seq);
                let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
                let src: IpAddr = match sliced.net.unwrap() {
                    NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().source_addr()),
                    NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().source_addr()),
                    _ => panic!("not IP"),
                };
                assert_eq!(src, sources.addr(seq));
                assert!(sources.contains(src));
                let Some(TransportSlice::Udp(udp)) = sliced.transport else {
                    panic!("not UDP");
                };
                assert_eq!(udp.destination_port(), 5060);
                parse_request(udp.payload()).unwrap();
            }
        }
    }

    #[test]
    fn spoofed_sources_are_distinct_and_in_their_ranges() {
        let v4 = FloodSources::Spoofed4 { count: 100_000 };
        let keys: std::collections::BTreeSet<IpAddr> =
            (0..100_000).map(|i| v4.source_key(i)).collect();
        assert_eq!(keys.len(), 100_000);
        assert_eq!(v4.addr(0), "198.18.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(v4.addr(99_999), "198.19.134.159".parse::<IpAddr>().unwrap());
        assert_eq!(v4.addr(100_000), v4.addr(0), "round robin");
        assert!(!v4.contains("198.19.134.160".parse().unwrap()));

        let v6 = FloodSources::Spoofed6 { count: 100_000 };
        let keys: std::collections::BTreeSet<IpAddr> =
            (0..100_000).map(|i| v6.source_key(i)).collect();
        assert_eq!(keys.len(), 100_000, "distinct /64s");
        for seq in [0u64, 65_536, 99_999, 100_000, 1_000_000] {
            let ip = v6.addr(seq);
            assert!(is_documentation(ip), "{ip}");
            assert!(v6.contains(ip), "{ip}");
        }
        // Same /64, another interface identifier on the next round.
        assert_ne!(v6.addr(3), v6.addr(100_003));
        assert!(!v6.contains("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn validate_refuses_what_leaves_the_lab() {
        let mut s = spec(
            FloodSources::Single("203.0.113.66".parse().unwrap()),
            FloodMethod::Register,
        );
        s.validate().unwrap();
        s.target = "10.0.0.1:5060".parse().unwrap();
        assert!(s.validate().is_err());
        s.target = "192.0.2.2:5060".parse().unwrap();
        s.sources = FloodSources::Single("8.8.8.8".parse().unwrap());
        assert!(s.validate().is_err());
        s.sources = FloodSources::Spoofed4 {
            count: MAX_SOURCES + 1,
        };
        assert!(s.validate().is_err());
        s.sources = FloodSources::Spoofed6 { count: 10 };
        assert!(s.validate().is_err(), "family mismatch");
        s.sources = FloodSources::Spoofed4 { count: 10 };
        s.duration = MAX_DURATION + Duration::from_secs(1);
        assert!(s.validate().is_err());
    }

    #[test]
    fn parse_request_rejects_broken_messages() {
        assert!(parse_request(b"REGISTER sip:x SIP/2.0\r\nContent-Length: 5\r\n\r\n").is_err());
        assert!(parse_request(b"REGISTER sip:x SIP/2.0\r\nVia x\r\n\r\n").is_err());
        assert!(parse_request(b"REGISTER sip:x SIP/2.0\r\nContent-Length: 0\r\n").is_err());
        assert!(parse_request(b"register sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n").is_err());
    }
}
