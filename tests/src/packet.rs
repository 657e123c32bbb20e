//! A builder for crafted Ethernet frames: for `BPF_PROG_TEST_RUN` and for raw sends (see
//! [`crate::raw`]).
//!
//! Frames are correct by default (lengths, IPv4 header checksum, UDP/TCP checksums), and knobs
//! make individual fields lie, because a datapath has to survive exactly the packets no socket
//! would send. Written by hand rather than with a packet library: the lying variants are the
//! point, and a library that refuses to write inconsistent headers would get in the way.
//!
//! ```
//! use sipfilter_tests::Packet;
//! let frame = Packet::udp4([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), 5060, 5060, b"OPTIONS")
//!     .vlan(100)
//!     .ipv4_options(&[0x94, 0x04, 0, 0])
//!     .build();
//! assert_eq!(&frame[12..14], &[0x81, 0x00]);
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service tag (the outer tag of QinQ).
pub const TPID_8021AD: u16 = 0x88a8;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP flag bits, for [`Packet::tcp_flags`].
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Identification of IPv6 fragment headers added by [`Packet::fragment`].
const IPV6_FRAGMENT_ID: u32 = 0x5f1f_0001;

/// An IPv6 extension header. Option-carrying headers are filled with options every receiver
/// skips (padding, and RFC 4727's experimental option 0x1e), so only the shape of the chain
/// matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Next header 0. `len` is the Hdr Ext Len field: the header is `8 * (len + 1)` bytes.
    HopByHop { len: u8 },
    /// Next header 43, with zeroed type-specific data. `len` as for [`ExtHeader::HopByHop`].
    Routing {
        routing_type: u8,
        segments_left: u8,
        len: u8,
    },
    /// Next header 60. `len` as for [`ExtHeader::HopByHop`].
    DestinationOptions { len: u8 },
    /// Next header 44. `offset` is in bytes and must be a multiple of 8.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl ExtHeader {
    /// The Next Header value that announces this header.
    pub const fn protocol(self) -> u8 {
        match self {
            ExtHeader::HopByHop { .. } => 0,
            ExtHeader::Routing { .. } => 43,
            ExtHeader::DestinationOptions { .. } => 60,
            ExtHeader::Fragment { .. } => 44,
        }
    }

    #[track_caller]
    fn write(self, next_header: u8, out: &mut Vec<u8>) {
        match self {
            ExtHeader::HopByHop { len } | ExtHeader::DestinationOptions { len } => {
                out.extend_from_slice(&[next_header, len]);
                write_filler_options(8 * (usize::from(len) + 1) - 2, out);
            }
            ExtHeader::Routing {
                routing_type,
                segments_left,
                len,
            } => {
                out.extend_from_slice(&[next_header, len, routing_type, segments_left]);
                out.resize(out.len() + 4 + 8 * usize::from(len), 0);
            }
            ExtHeader::Fragment { offset, more, id } => {
                assert!(
                    offset.is_multiple_of(8),
                    "fragment offset {offset} is not a multiple of 8"
                );
                let field = offset | u16::from(more);
                out.extend_from_slice(&[next_header, 0]);
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
    }
}

/// Option type of the filler: RFC 4727's experimental option whose top bits say "skip if
/// unknown", so every receiver steps over it.
const FILLER_OPTION: u8 = 0x1e;

/// Fills `len` bytes of an options area with options every receiver skips: padding for up to
/// 7 bytes, filler options beyond, because Linux rejects more than 7 consecutive padding bytes.
fn write_filler_options(mut len: usize, out: &mut Vec<u8>) {
    while len >= 8 {
        let chunk = len.min(2 + usize::from(u8::MAX));
        out.extend_from_slice(&[FILLER_OPTION, (chunk - 2) as u8]);
        out.resize(out.len() + chunk - 2, 0);
        len -= chunk;
    }
    match len {
        0 => {}
        1 => out.push(0),
        _ => {
            out.extend_from_slice(&[1, (len - 2) as u8]);
            out.resize(out.len() + len - 2, 0);
        }
    }
}

#[derive(Clone, Debug)]
enum Ip {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        identification: u16,
        more_fragments: bool,
        /// Bytes.
        fragment_offset: u16,
        options: Vec<u8>,
        total_len: Option<u16>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        extensions: Vec<ExtHeader>,
        payload_len: Option<u16>,
    },
}

#[derive(Clone, Debug)]
enum L4 {
    Udp {
        sport: u16,
        dport: u16,
        len: Option<u16>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        options: Vec<u8>,
        data_offset: Option<u8>,
    },
    /// No transport header: the payload follows the IP header(s) as-is.
    Raw { protocol: u8 },
}

impl L4 {
    fn protocol(&self) -> u8 {
        match self {
            L4::Udp { .. } => PROTO_UDP,
            L4::Tcp { .. } => PROTO_TCP,
            L4::Raw { protocol } => *protocol,
        }
    }
}

/// One Ethernet frame under construction; see the module documentation.
#[derive(Clone, Debug)]
pub struct Packet {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// Outermost first: (TPID, or `None` to pick the usual one, VLAN id).
    vlans: Vec<(Option<u16>, u16)>,
    ip: Ip,
    l4: L4,
    payload: Vec<u8>,
    truncate: Option<usize>,
}

impl Packet {
    fn new(ip: Ip, l4: L4, payload: &[u8]) -> Packet {
        Packet {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            ip,
            l4,
            payload: payload.to_vec(),
            truncate: None,
        }
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Ip {
        Ip::V4 {
            src,
            dst,
            identification: 0x1234,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
            total_len: None,
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> Ip {
        Ip::V6 {
            src,
            dst,
            extensions: Vec::new(),
            payload_len: None,
        }
    }

    fn tcp(sport: u16, dport: u16) -> L4 {
        L4::Tcp {
            sport,
            dport,
            seq: 1,
            ack: 1,
            flags: tcp_flags::PSH | tcp_flags::ACK,
            options: Vec::new(),
            data_offset: None,
        }
    }

    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Packet {
        let udp = L4::Udp {
            sport,
            dport,
            len: None,
        };
        Packet::new(Packet::v4(src, dst), udp, payload)
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Packet {
        let udp = L4::Udp {
            sport,
            dport,
            len: None,
        };
        Packet::new(Packet::v6(src, dst), udp, payload)
    }

    /// A data segment (PSH|ACK, seq and ack 1) of an established connection.
    pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Packet {
        Packet::new(Packet::v4(src, dst), Packet::tcp(sport, dport), payload)
    }

    /// A data segment (PSH|ACK, seq and ack 1) of an established connection.
    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Packet {
        Packet::new(Packet::v6(src, dst), Packet::tcp(sport, dport), payload)
    }

    /// IPv4 carrying `payload` with no transport header, e.g. a non-first fragment.
    pub fn raw4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Packet {
        Packet::new(Packet::v4(src, dst), L4::Raw { protocol }, payload)
    }

    /// IPv6 carrying `payload` with no transport header, e.g. a non-first fragment.
    pub fn raw6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, payload: &[u8]) -> Packet {
        Packet::new(Packet::v6(src, dst), L4::Raw { protocol }, payload)
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Packet {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag inside those already added. The innermost tag gets TPID 0x8100 and outer
    /// ones 0x88a8, as in 802.1ad QinQ.
    pub fn vlan(mut self, id: u16) -> Packet {
        self.vlans.push((None, id));
        self
    }

    /// Adds a VLAN tag with an explicit TPID (e.g. a double 0x8100 stack, or the old 0x9100).
    pub fn vlan_tpid(mut self, tpid: u16, id: u16) -> Packet {
        self.vlans.push((Some(tpid), id));
        self
    }

    /// IPv4 options, zero-padded to a multiple of 4 bytes (IHL grows accordingly).
    #[track_caller]
    pub fn ipv4_options(mut self, bytes: &[u8]) -> Packet {
        let Ip::V4 { options, .. } = &mut self.ip else {
            panic!("ipv4_options on an IPv6 packet");
        };
        assert!(bytes.len() <= 40, "IPv4 options are at most 40 bytes");
        *options = padded_to_words(bytes);
        self
    }

    /// Marks the packet as a fragment: `offset` in bytes (a multiple of 8) and the
    /// more-fragments flag. IPv4 sets the header fields; IPv6 appends a fragment header to the
    /// extension chain. The transport header, if any, stays: use `raw4`/`raw6` for non-first
    /// fragments, which carry none.
    #[track_caller]
    pub fn fragment(mut self, offset: u16, more: bool) -> Packet {
        assert!(
            offset.is_multiple_of(8),
            "fragment offset {offset} is not a multiple of 8"
        );
        match &mut self.ip {
            Ip::V4 {
                more_fragments,
                fragment_offset,
                ..
            } => {
                *more_fragments = more;
                *fragment_offset = offset;
            }
            Ip::V6 { extensions, .. } => extensions.push(ExtHeader::Fragment {
                offset,
                more,
                id: IPV6_FRAGMENT_ID,
            }),
        }
        self
    }

    /// Appends an IPv6 extension header to the chain (in the order added).
    #[track_caller]
    pub fn ext_header(mut self, header: ExtHeader) -> Packet {
        let Ip::V6 { extensions, .. } = &mut self.ip else {
            panic!("ext_header on an IPv4 packet");
        };
        extensions.push(header);
        self
    }

    /// Writes `len` into the IPv4 Total Length field instead of the real length (the header
    /// checksum is computed over the lie, so only the length is wrong).
    #[track_caller]
    pub fn ip_total_len(mut self, len: u16) -> Packet {
        let Ip::V4 { total_len, .. } = &mut self.ip else {
            panic!("ip_total_len on an IPv6 packet: use ipv6_payload_len");
        };
        *total_len = Some(len);
        self
    }

    /// Writes `len` into the IPv6 Payload Length field instead of the real length.
    #[track_caller]
    pub fn ipv6_payload_len(mut self, len: u16) -> Packet {
        let Ip::V6 { payload_len, .. } = &mut self.ip else {
            panic!("ipv6_payload_len on an IPv4 packet: use ip_total_len");
        };
        *payload_len = Some(len);
        self
    }

    /// Writes `len` into the UDP Length field instead of the real length. The checksum still
    /// covers the bytes actually present.
    #[track_caller]
    pub fn udp_len(mut self, value: u16) -> Packet {
        let L4::Udp { len, .. } = &mut self.l4 else {
            panic!("udp_len on a packet without a UDP header");
        };
        *len = Some(value);
        self
    }

    #[track_caller]
    pub fn tcp_flags(mut self, value: u8) -> Packet {
        let L4::Tcp { flags, .. } = &mut self.l4 else {
            panic!("tcp_flags on a packet without a TCP header");
        };
        *flags = value;
        self
    }

    #[track_caller]
    pub fn tcp_seq(mut self, seq_value: u32, ack_value: u32) -> Packet {
        let L4::Tcp { seq, ack, .. } = &mut self.l4 else {
            panic!("tcp_seq on a packet without a TCP header");
        };
        *seq = seq_value;
        *ack = ack_value;
        self
    }

    /// TCP options, zero-padded to a multiple of 4 bytes (the data offset grows accordingly).
    #[track_caller]
    pub fn tcp_options(mut self, bytes: &[u8]) -> Packet {
        let L4::Tcp { options, .. } = &mut self.l4 else {
            panic!("tcp_options on a packet without a TCP header");
        };
        assert!(bytes.len() <= 40, "TCP options are at most 40 bytes");
        *options = padded_to_words(bytes);
        self
    }

    /// Writes `words` (4-bit, in 32-bit words) into the TCP Data Offset field instead of the
    /// real header length.
    #[track_caller]
    pub fn tcp_data_offset(mut self, words: u8) -> Packet {
        let L4::Tcp { data_offset, .. } = &mut self.l4 else {
            panic!("tcp_data_offset on a packet without a TCP header");
        };
        assert!(words < 16, "the data offset field has 4 bits");
        *data_offset = Some(words);
        self
    }

    /// Cuts the finished frame to at most `len` bytes, after every length and checksum was
    /// computed for the whole packet.
    pub fn truncate(mut self, len: usize) -> Packet {
        self.truncate = Some(len);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(64 + self.payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        let last = self.vlans.len().saturating_sub(1);
        for (index, (tpid, id)) in self.vlans.iter().enumerate() {
            let default = if index == last {
                TPID_8021Q
            } else {
                TPID_8021AD
            };
            frame.extend_from_slice(&tpid.unwrap_or(default).to_be_bytes());
            frame.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let ethertype = match self.ip {
            Ip::V4 { .. } => ETHERTYPE_IPV4,
            Ip::V6 { .. } => ETHERTYPE_IPV6,
        };
        frame.extend_from_slice(&ethertype.to_be_bytes());

        let protocol = self.l4.protocol();
        let pseudo = match &self.ip {
            Ip::V4 { src, dst, .. } => PseudoHeader::V4(*src, *dst),
            Ip::V6 { src, dst, .. } => PseudoHeader::V6(*src, *dst),
        };
        let transport = self.transport(pseudo);
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                identification,
                more_fragments,
                fragment_offset,
                options,
                total_len,
            } => {
                let header_len = 20 + options.len();
                let real_len = header_len + transport.len();
                let flags_offset = (u16::from(*more_fragments) << 13) | (fragment_offset / 8);
                let start = frame.len();
                frame.push(0x40 | (header_len / 4) as u8);
                frame.push(0);
                frame.extend_from_slice(&total_len.unwrap_or(real_len as u16).to_be_bytes());
                frame.extend_from_slice(&identification.to_be_bytes());
                frame.extend_from_slice(&flags_offset.to_be_bytes());
                frame.extend_from_slice(&[64, protocol, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(options);
                let checksum = checksum(&[&frame[start..]]);
                frame[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
            }
            Ip::V6 {
                src,
                dst,
                extensions,
                payload_len,
            } => {
                let mut chain = Vec::new();
                for (index, header) in extensions.iter().enumerate() {
                    let next = extensions.get(index + 1).map_or(protocol, |h| h.protocol());
                    header.write(next, &mut chain);
                }
                let first = extensions.first().map_or(protocol, |h| h.protocol());
                let real_len = chain.len() + transport.len();
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&payload_len.unwrap_or(real_len as u16).to_be_bytes());
                frame.extend_from_slice(&[first, 64]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&chain);
            }
        }
        frame.extend_from_slice(&transport);
        if let Some(len) = self.truncate {
            frame.truncate(len);
        }
        frame
    }

    /// The transport header and payload, with the checksum filled in.
    fn transport(&self, pseudo: PseudoHeader) -> Vec<u8> {
        let mut segment = Vec::with_capacity(60 + self.payload.len());
        let checksum_at = match &self.l4 {
            L4::Udp { sport, dport, len } => {
                let real_len = (8 + self.payload.len()) as u16;
                segment.extend_from_slice(&sport.to_be_bytes());
                segment.extend_from_slice(&dport.to_be_bytes());
                segment.extend_from_slice(&len.unwrap_or(real_len).to_be_bytes());
                segment.extend_from_slice(&[0, 0]);
                Some(6)
            }
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                options,
                data_offset,
            } => {
                let real_offset = ((20 + options.len()) / 4) as u8;
                segment.extend_from_slice(&sport.to_be_bytes());
                segment.extend_from_slice(&dport.to_be_bytes());
                segment.extend_from_slice(&seq.to_be_bytes());
                segment.extend_from_slice(&ack.to_be_bytes());
                segment.push(data_offset.unwrap_or(real_offset) << 4);
                segment.push(*flags);
                segment.extend_from_slice(&u16::MAX.to_be_bytes());
                segment.extend_from_slice(&[0, 0, 0, 0]);
                segment.extend_from_slice(options);
                Some(16)
            }
            L4::Raw { .. } => None,
        };
        segment.extend_from_slice(&self.payload);
        if let Some(at) = checksum_at {
            let protocol = self.l4.protocol();
            let mut sum = pseudo.checksum(protocol, &segment);
            // UDP sends a computed zero as all ones: zero means "no checksum".
            if sum == 0 && protocol == PROTO_UDP {
                sum = 0xffff;
            }
            segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        segment
    }
}

fn padded_to_words(bytes: &[u8]) -> Vec<u8> {
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0);
    padded
}

#[derive(Clone, Copy)]
enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl PseudoHeader {
    /// The transport checksum of `segment` (its checksum field zero).
    fn checksum(self, protocol: u8, segment: &[u8]) -> u16 {
        let len = segment.len() as u32;
        match self {
            PseudoHeader::V4(src, dst) => {
                let tail = [0, protocol, (len >> 8) as u8, len as u8];
                checksum(&[&src.octets(), &dst.octets(), &tail, segment])
            }
            PseudoHeader::V6(src, dst) => {
                let mut tail = [0u8; 8];
                tail[..4].copy_from_slice(&len.to_be_bytes());
                tail[7] = protocol;
                checksum(&[&src.octets(), &dst.octets(), &tail, segment])
            }
        }
    }
}

/// The Internet checksum (RFC 1071) of the concatenated parts; every part but the last must
/// have even length, which holds for the headers this module writes.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Ipv6ExtensionSlice, Ipv6FragmentHeaderSlice, LinkExtSlice, NetSlice, SlicedPacket,
        TransportSlice,
    };

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const SIP: &[u8] = b"OPTIONS sip:100@192.0.2.2 SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    #[track_caller]
    fn parse(frame: &[u8]) -> SlicedPacket<'_> {
        SlicedPacket::from_ethernet(frame)
            .unwrap_or_else(|err| panic!("etherparse rejects the frame: {err:?}"))
    }

    /// Checksums verify when recomputing over the finished bytes (field included) gives zero.
    #[track_caller]
    fn assert_transport_checksum_ok(frame: &[u8]) {
        let sliced = parse(frame);
        let (pseudo, protocol, segment) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                PseudoHeader::V4(ip.header().source_addr(), ip.header().destination_addr()),
                ip.header().protocol().0,
                ip.payload().payload,
            ),
            Some(NetSlice::Ipv6(ip)) => (
                PseudoHeader::V6(ip.header().source_addr(), ip.header().destination_addr()),
                ip.payload().ip_number.0,
                ip.payload().payload,
            ),
            other => panic!("not IP: {other:?}"),
        };
        assert_eq!(
            pseudo.checksum(protocol, segment),
            0,
            "transport checksum does not verify"
        );
    }

    #[track_caller]
    fn assert_udp(frame: &[u8], sport: u16, dport: u16, payload: &[u8]) {
        let sliced = parse(frame);
        let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("no UDP header: {:?}", sliced.transport);
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (sport, dport));
        assert_eq!(udp.length() as usize, 8 + payload.len());
        assert_eq!(udp.payload(), payload);
        assert_transport_checksum_ok(frame);
    }

    /// The extension headers of an IPv6 frame, as Next Header values in chain order.
    fn ipv6_chain(frame: &[u8]) -> Vec<u8> {
        let Some(NetSlice::Ipv6(ip)) = parse(frame).net else {
            panic!("not IPv6");
        };
        ip.extensions()
            .clone()
            .into_iter()
            .map(|ext| match ext {
                Ipv6ExtensionSlice::HopByHop(_) => 0,
                Ipv6ExtensionSlice::Routing(_) => 43,
                Ipv6ExtensionSlice::Fragment(_) => 44,
                Ipv6ExtensionSlice::DestinationOptions(_) => 60,
                Ipv6ExtensionSlice::Authentication(_) => 51,
            })
            .collect()
    }

    #[track_caller]
    fn ipv6_fragment(frame: &[u8]) -> Ipv6FragmentHeaderSlice<'_> {
        let Some(NetSlice::Ipv6(ip)) = parse(frame).net else {
            panic!("not IPv6");
        };
        assert!(ip.payload().fragmented);
        ip.extensions()
            .clone()
            .into_iter()
            .find_map(|ext| match ext {
                Ipv6ExtensionSlice::Fragment(fragment) => Some(fragment),
                _ => None,
            })
            .expect("fragment header")
    }

    fn vlan_ids(sliced: &SlicedPacket<'_>) -> Vec<u16> {
        sliced
            .link_exts
            .iter()
            .filter_map(|ext| match ext {
                LinkExtSlice::Vlan(vlan) => Some(vlan.vlan_identifier().value()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn udp4_parses_with_valid_checksums() {
        let frame = Packet::udp4(SRC4, DST4, 40000, 5060, SIP).build();
        assert_udp(&frame, 40000, 5060, SIP);
        let Some(NetSlice::Ipv4(ip)) = parse(&frame).net else {
            panic!("not IPv4");
        };
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        assert_eq!(ip.header().total_len() as usize, frame.len() - 14);
    }

    #[test]
    fn udp_checksum_covers_odd_payloads() {
        let odd = b"OPTIONS x";
        assert_udp(
            &Packet::udp4(SRC4, DST4, 1, 5060, odd).build(),
            1,
            5060,
            odd,
        );
        assert_udp(
            &Packet::udp6(SRC6, DST6, 1, 5060, odd).build(),
            1,
            5060,
            odd,
        );
    }

    #[test]
    fn vlan_tags_single_and_qinq() {
        let single = Packet::udp4(SRC4, DST4, 5060, 5060, SIP).vlan(100).build();
        assert_eq!(&single[12..14], &TPID_8021Q.to_be_bytes());
        assert_eq!(vlan_ids(&parse(&single)), [100]);
        assert_udp(&single, 5060, 5060, SIP);

        let double = Packet::udp6(SRC6, DST6, 5060, 5060, SIP)
            .vlan(10)
            .vlan(20)
            .build();
        assert_eq!(&double[12..14], &TPID_8021AD.to_be_bytes());
        assert_eq!(&double[16..18], &TPID_8021Q.to_be_bytes());
        assert_eq!(vlan_ids(&parse(&double)), [10, 20]);
        assert_udp(&double, 5060, 5060, SIP);
    }

    #[test]
    fn ipv4_options_grow_ihl() {
        let frame = Packet::udp4(SRC4, DST4, 5060, 5060, SIP)
            .ipv4_options(&[0x94, 0x04, 0, 0, 0x01])
            .build();
        let Some(NetSlice::Ipv4(ip)) = parse(&frame).net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().ihl(), 7);
        assert_eq!(ip.header().options(), &[0x94, 0x04, 0, 0, 0x01, 0, 0, 0]);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        assert_udp(&frame, 5060, 5060, SIP);
    }

    #[test]
    fn ipv4_fragment_fields() {
        let frame = Packet::raw4(SRC4, DST4, PROTO_UDP, &[0xaa; 16])
            .fragment(1480, true)
            .build();
        let Some(NetSlice::Ipv4(ip)) = parse(&frame).net else {
            panic!("not IPv4");
        };
        assert!(ip.header().more_fragments());
        assert_eq!(ip.header().fragments_offset().value(), 1480 / 8);
        assert!(ip.payload().fragmented);
        assert_eq!(ip.payload().payload, &[0xaa; 16]);
    }

    #[test]
    fn ipv6_extension_chain() {
        let frame = Packet::udp6(SRC6, DST6, 5060, 5060, SIP)
            .ext_header(ExtHeader::HopByHop { len: 0 })
            .ext_header(ExtHeader::Routing {
                routing_type: 0,
                segments_left: 0,
                len: 2,
            })
            .ext_header(ExtHeader::DestinationOptions { len: 1 })
            .build();
        // 40 fixed + 8 hop-by-hop + 24 routing + 16 destination options.
        assert_eq!(frame.len(), 14 + 40 + 8 + 24 + 16 + 8 + SIP.len());
        assert_eq!(ipv6_chain(&frame), [0, 43, 60]);
        assert_udp(&frame, 5060, 5060, SIP);
    }

    #[test]
    fn ipv6_fragment_header() {
        let first = Packet::udp6(SRC6, DST6, 5060, 5060, SIP)
            .ext_header(ExtHeader::HopByHop { len: 0 })
            .fragment(0, true)
            .build();
        assert_eq!(ipv6_chain(&first), [0, 44]);
        let fragment = ipv6_fragment(&first);
        assert!(fragment.more_fragments());
        assert_eq!(fragment.fragment_offset().value(), 0);

        let later = Packet::raw6(SRC6, DST6, PROTO_UDP, &[0x55; 8]).fragment(2048, false);
        let later = later.build();
        let fragment = ipv6_fragment(&later);
        assert!(!fragment.more_fragments());
        assert_eq!(fragment.fragment_offset().value(), 2048 / 8);
    }

    #[test]
    fn tcp_parses_with_options_and_valid_checksums() {
        for frame in [
            Packet::tcp4(SRC4, DST4, 40000, 5060, SIP).build(),
            Packet::tcp6(SRC6, DST6, 40000, 5060, SIP)
                .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                .tcp_flags(tcp_flags::ACK)
                .tcp_seq(1000, 2000)
                .build(),
        ] {
            let sliced = parse(&frame);
            let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
                panic!("no TCP header");
            };
            assert_eq!((tcp.source_port(), tcp.destination_port()), (40000, 5060));
            assert_eq!(tcp.payload(), SIP);
            assert!(tcp.ack());
            assert_transport_checksum_ok(&frame);
        }
        let with_options = Packet::tcp4(SRC4, DST4, 1, 2, b"")
            .tcp_options(&[2, 4, 5, 0xb4])
            .build();
        let sliced = parse(&with_options);
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
            panic!("no TCP header");
        };
        assert_eq!(tcp.data_offset(), 6);
        assert_eq!(tcp.options(), &[2, 4, 5, 0xb4]);
    }

    #[test]
    fn lying_lengths_are_written_verbatim() {
        let frame = Packet::udp4(SRC4, DST4, 5060, 5060, SIP)
            .ip_total_len(1500)
            .udp_len(3)
            .build();
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 1500);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 3);
        // The header checksum is computed over the lie, so only the length is wrong.
        assert_eq!(checksum(&[&frame[14..34]]), 0);

        let frame = Packet::udp6(SRC6, DST6, 5060, 5060, SIP)
            .ipv6_payload_len(7)
            .build();
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]), 7);

        let frame = Packet::tcp4(SRC4, DST4, 5060, 5060, SIP)
            .tcp_data_offset(15)
            .build();
        assert_eq!(frame[14 + 20 + 12] >> 4, 15);
    }

    #[test]
    fn truncate_cuts_after_lengths_are_computed() {
        let full = Packet::udp4(SRC4, DST4, 5060, 5060, SIP).build();
        let cut = Packet::udp4(SRC4, DST4, 5060, 5060, SIP)
            .truncate(40)
            .build();
        assert_eq!(cut, full[..40]);
    }

    #[test]
    fn option_headers_fill_exactly_with_acceptable_options() {
        for len in 0u8..=255 {
            let mut out = Vec::new();
            ExtHeader::DestinationOptions { len }.write(PROTO_UDP, &mut out);
            assert_eq!(out.len(), 8 * (usize::from(len) + 1), "len {len}");
            // Walk the TLVs as Linux does: every option ends inside the header, and no run of
            // padding is longer than 7 bytes.
            let (mut at, mut padding) = (2, 0);
            while at < out.len() {
                let (kind, size) = match out[at] {
                    0 => (0, 1),
                    kind => (kind, 2 + usize::from(out[at + 1])),
                };
                assert!(
                    at + size <= out.len(),
                    "len {len}: option overruns the header"
                );
                if kind == FILLER_OPTION {
                    padding = 0;
                } else {
                    padding += size;
                    assert!(
                        padding <= 7,
                        "len {len}: {padding} bytes of padding in a row"
                    );
                }
                at += size;
            }
        }
    }
}
