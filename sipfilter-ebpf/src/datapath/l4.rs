//! UDP and TCP: ports and where the payload is.

use aya_ebpf::programs::XdpContext;
use sipfilter_common::{TRANSPORT_TCP, TRANSPORT_UDP};

use super::{
    cursor::{read, remaining},
    ip::{Fragment, IPPROTO_TCP, IPPROTO_UDP, Network},
};

const UDP_HEADER: usize = 8;
const TCP_MIN_HEADER: usize = 20;

pub struct Transport {
    /// `TRANSPORT_UDP` or `TRANSPORT_TCP`: selects the port table.
    pub transport: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_offset: usize,
    /// Payload bytes present in this frame.
    pub payload_len: usize,
    /// The transport header is complete and agrees with the IP header.
    pub consistent: bool,
}

/// `None` when the packet is neither UDP nor TCP, or too short to hold the ports.
#[inline(always)]
pub fn parse(ctx: &XdpContext, net: &Network) -> Option<Transport> {
    let transport = match net.protocol {
        IPPROTO_UDP => TRANSPORT_UDP,
        IPPROTO_TCP => TRANSPORT_TCP,
        _ => return None,
    };
    let offset = net.l4_offset;
    let ports = read::<[u16; 2]>(ctx, offset)?;
    let mut parsed = Transport {
        transport,
        src_port: u16::from_be(ports[0]),
        dst_port: u16::from_be(ports[1]),
        payload_offset: offset,
        payload_len: 0,
        consistent: false,
    };
    if transport == TRANSPORT_UDP {
        let Some(udp_len) = read::<u16>(ctx, offset + 4) else {
            return Some(parsed);
        };
        let udp_len = u16::from_be(udp_len) as usize;
        // A first fragment's UDP length covers the whole datagram, beyond this frame.
        let fits = net.fragment == Fragment::First || udp_len <= net.l4_len;
        parsed.consistent = net.consistent && udp_len >= UDP_HEADER && fits;
        parsed.payload_offset = offset + UDP_HEADER;
        parsed.payload_len =
            (udp_len.saturating_sub(UDP_HEADER)).min(remaining(ctx, parsed.payload_offset));
    } else {
        let Some(data_offset) = read::<u8>(ctx, offset + 12) else {
            return Some(parsed);
        };
        let header_len = ((data_offset >> 4) as usize) * 4;
        parsed.consistent =
            net.consistent && header_len >= TCP_MIN_HEADER && header_len <= net.l4_len;
        parsed.payload_offset = offset + header_len;
        parsed.payload_len =
            (net.l4_len.saturating_sub(header_len)).min(remaining(ctx, parsed.payload_offset));
    }
    Some(parsed)
}
