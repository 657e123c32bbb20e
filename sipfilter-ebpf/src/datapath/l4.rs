//! UDP and TCP: ports and where the payload is.

use sipfilter_common::{TRANSPORT_TCP, TRANSPORT_UDP};

use super::{
    cursor::{Frame, read, remaining, span},
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
pub fn parse(ctx: &impl Frame, net: &Network) -> Option<Transport> {
    let transport = match net.protocol {
        IPPROTO_UDP => TRANSPORT_UDP,
        IPPROTO_TCP => TRANSPORT_TCP,
        _ => return None,
    };
    let offset = net.l4_offset;
    if transport == TRANSPORT_UDP
        && let Some(header) = span::<UDP_HEADER>(ctx, offset)
    {
        let udp_len = u16::from_be(header.u16_at::<4>()) as usize;
        // A first fragment's UDP length covers the whole datagram, beyond this frame.
        let fits = net.fragment == Fragment::First || udp_len <= net.l4_len;
        let payload_offset = offset + UDP_HEADER;
        return Some(Transport {
            transport,
            src_port: u16::from_be(header.u16_at::<0>()),
            dst_port: u16::from_be(header.u16_at::<2>()),
            payload_offset,
            payload_len: (udp_len.saturating_sub(UDP_HEADER)).min(remaining(ctx, payload_offset)),
            consistent: net.consistent && udp_len >= UDP_HEADER && fits,
        });
    }
    if transport == TRANSPORT_TCP
        && let Some(header) = span::<TCP_MIN_HEADER>(ctx, offset)
    {
        let header_len = ((header.u8_at::<12>() >> 4) as usize) * 4;
        let payload_offset = offset + header_len;
        return Some(Transport {
            transport,
            src_port: u16::from_be(header.u16_at::<0>()),
            dst_port: u16::from_be(header.u16_at::<2>()),
            payload_offset,
            payload_len: (net.l4_len.saturating_sub(header_len))
                .min(remaining(ctx, payload_offset)),
            consistent: net.consistent && header_len >= TCP_MIN_HEADER && header_len <= net.l4_len,
        });
    }
    // A header cut short: the ports may still say the packet was meant for a protected port,
    // where a truncated header is dropped.
    let ports = read::<[u16; 2]>(ctx, offset)?;
    Some(Transport {
        transport,
        src_port: u16::from_be(ports[0]),
        dst_port: u16::from_be(ports[1]),
        payload_offset: offset,
        payload_len: 0,
        consistent: false,
    })
}
