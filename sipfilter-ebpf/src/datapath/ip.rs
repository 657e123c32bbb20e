//! What the network layer tells the rest of the pipeline, for either family.

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

pub struct Network {
    /// 4 or 6.
    pub version: u8,
    /// The remote party's address ([`Peer`]: the source, except for the egress watcher, which
    /// reads the destination); IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub source: Address,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    pub l4_offset: usize,
    /// Transport bytes according to the IP header (valid when `consistent`).
    pub l4_len: usize,
    pub fragment: Fragment,
    /// Lengths in the IP header agree with each other and with the frame.
    pub consistent: bool,
    /// IPv6 only: the transport header lies beyond the extension headers we follow.
    pub too_deep: bool,
}

impl Network {
    /// The IPv4 address of an IPv4 source.
    #[inline(always)]
    pub fn source_v4(&self) -> [u8; 4] {
        let bytes = &self.source.0;
        [bytes[12], bytes[13], bytes[14], bytes[15]]
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
    pub fn new(net: &Network, src_port: u16, dst_port: u16) -> Origin {
        Origin {
            source: net.source,
            src_port,
            dst_port,
            version: net.version,
            _pad: [0; 3],
        }
    }
}
