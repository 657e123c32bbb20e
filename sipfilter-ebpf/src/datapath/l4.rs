//! UDP and TCP: ports and where the payload is.
//!
//! In two steps: the ports first, which decide most packets (a port that is not protected
//! passes), then the lengths and the payload, only for a packet to or from a protected port.

use sipfilter_common::{TRANSPORT_TCP, TRANSPORT_UDP};

use super::{
    cursor::{Frame, read, remaining, span},
    ip::{Fragment, IPPROTO_TCP, IPPROTO_UDP, Network},
};

const UDP_HEADER: usize = 8;
const TCP_MIN_HEADER: usize = 20;

/// The first four bytes of a UDP or TCP header.
#[derive(Clone, Copy)]
pub struct Ports {
    /// `TRANSPORT_UDP` or `TRANSPORT_TCP`: selects the port table.
    pub transport: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

pub struct Transport {
    pub ports: Ports,
    pub payload_offset: usize,
    /// Payload bytes present in this frame.
    pub payload_len: usize,
    /// The transport header is complete and agrees with the IP header.
    pub consistent: bool,
}

/// `None` when the packet is neither UDP nor TCP, or too short to hold the ports.
#[inline(always)]
pub fn ports(ctx: &impl Frame, net: &Network) -> Option<Ports> {
    let transport = match net.protocol {
        IPPROTO_UDP => TRANSPORT_UDP,
        IPPROTO_TCP => TRANSPORT_TCP,
        _ => return None,
    };
    let ports = read::<[u16; 2]>(ctx, net.l4_offset)?;
    Some(Ports {
        transport,
        src_port: u16::from_be(ports[0]),
        dst_port: u16::from_be(ports[1]),
    })
}

/// The rest of the header that `ports` came from.
#[inline(always)]
pub fn parse(ctx: &impl Frame, net: &Network, ports: Ports) -> Transport {
    let offset = net.l4_offset;
    let l4_len = net.l4_len();
    let consistent = net.consistent(ctx);
    let transport = |payload_offset, payload_len, consistent| Transport {
        ports,
        payload_offset,
        payload_len,
        consistent,
    };
    if ports.transport == TRANSPORT_UDP
        && let Some(header) = span::<UDP_HEADER>(ctx, offset)
    {
        let udp_len = u16::from_be(header.u16_at::<4>()) as usize;
        // A first fragment's UDP length covers the whole datagram, beyond this frame.
        let fits = net.fragment == Fragment::First || udp_len <= l4_len;
        let payload_offset = offset + UDP_HEADER;
        return transport(
            payload_offset,
            (udp_len.saturating_sub(UDP_HEADER)).min(remaining(ctx, payload_offset)),
            consistent && udp_len >= UDP_HEADER && fits,
        );
    }
    if ports.transport == TRANSPORT_TCP
        && let Some(header) = span::<TCP_MIN_HEADER>(ctx, offset)
    {
        let header_len = ((header.u8_at::<12>() >> 4) as usize) * 4;
        let payload_offset = offset + header_len;
        return transport(
            payload_offset,
            (l4_len.saturating_sub(header_len)).min(remaining(ctx, payload_offset)),
            consistent && header_len >= TCP_MIN_HEADER && header_len <= l4_len,
        );
    }
    // A header cut short after the ports: a protected port drops it.
    transport(offset, 0, false)
}
