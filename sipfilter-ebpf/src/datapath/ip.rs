//! What the network layer tells the rest of the pipeline, for either family.

use super::cursor::Frame;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    Whole,
    /// The first fragment: carries the transport header and the start of the payload.
    First,
    /// A later fragment: no transport header, decided by source alone.
    Later,
}

/// Which address of a packet names the remote party: the source of what arrives, the
/// destination of what the host sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Source,
    Destination,
}

/// A source address, IPv4 as IPv4-mapped IPv6. Aligned, so LLVM copies and compares it a word
/// at a time rather than byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Address(pub [u8; 16]);

impl Address {
    /// The address whose bytes, in memory order, the two words hold.
    #[inline(always)]
    pub fn from_words(high: u64, low: u64) -> Address {
        // SAFETY: two words are sixteen plain bytes.
        Address(unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([high, low]) })
    }

    /// `::ffff:a.b.c.d` for the IPv4 address whose bytes, in memory order, `raw` holds.
    #[inline(always)]
    pub fn mapped_v4(raw: u32) -> Address {
        Address::from_words(0, (u64::from(raw) << 32) | 0xffff_0000)
    }
}

/// The remote party of a packet ([`Peer`]: the source, except for the egress watcher, which
/// reads the destination): all that the source checks need.
#[derive(Clone, Copy)]
pub struct Host {
    /// 4 or 6.
    pub version: u8,
    /// IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub address: Address,
}

impl Host {
    /// The IPv4 address of an IPv4 host.
    #[inline(always)]
    pub fn v4(&self) -> [u8; 4] {
        // SAFETY: sixteen plain bytes are two words.
        let words = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(self.address.0) };
        ((words[1] >> 32) as u32).to_ne_bytes()
    }
}

/// A network header whose fixed part was found in the frame. The remote party's address is
/// read from it first, and the rest (options, extension headers, lengths) only for a packet
/// that the source checks did not decide: a denied source costs the fewest reads.
pub trait Header {
    fn host(&self, peer: Peer) -> Host;
    /// The rest of the header, for `host` (what [`Header::host`] returned); `None` if it is
    /// malformed or runs past the frame.
    fn network(&self, ctx: &impl Frame, host: Host) -> Option<Network>;
}

/// The whole network header at once, for a reader that checks no source first.
#[inline(always)]
pub fn parse(ctx: &impl Frame, header: Option<impl Header>, peer: Peer) -> Option<Network> {
    let header = header?;
    header.network(ctx, header.host(peer))
}

pub struct Network {
    pub host: Host,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    pub l4_offset: usize,
    /// Where the datagram ends in the frame according to its IP header's length field. The
    /// lengths are checked only for packets to or from a protected port ([`Network::l4_len`],
    /// [`Network::consistent`]); most packets are decided before.
    pub end: usize,
    pub fragment: Fragment,
    /// IPv6 only: the transport header lies beyond the extension headers we follow.
    pub too_deep: bool,
}

impl Network {
    /// Transport bytes according to the IP header (meaningful when [`Network::consistent`]).
    #[inline(always)]
    pub fn l4_len(&self) -> usize {
        self.end.saturating_sub(self.l4_offset)
    }

    /// The IP header's length covers its own headers and lies within the frame.
    #[inline(always)]
    pub fn consistent(&self, ctx: &impl Frame) -> bool {
        self.l4_offset <= self.end && self.end <= ctx.len()
    }
}

/// Where a packet came from, as events report it. Copied into the hand-off to the header-scan
/// program, so it is a plain, aligned value.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Origin {
    pub source: Address,
    pub src_port: u16,
    pub dst_port: u16,
    /// 4 or 6.
    pub version: u8,
    _pad: [u8; 3],
}

impl Origin {
    #[inline(always)]
    pub fn new(host: &Host, src_port: u16, dst_port: u16) -> Origin {
        Origin {
            source: host.address,
            src_port,
            dst_port,
            version: host.version,
            _pad: [0; 3],
        }
    }
}
