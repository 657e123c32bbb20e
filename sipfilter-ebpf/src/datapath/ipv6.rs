//! IPv6 and its extension headers (hop-by-hop, routing, destination options, fragment).

use super::{
    cursor::{Frame, Span, read, span},
    ip::{Address, Fragment, Header, Host, Network, Peer},
};

const HEADER: usize = 40;
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
/// Extension headers followed before giving up. RFC 8200 recommends an order with each at most
/// once (twice for destination options): four covers every real chain.
const MAX_EXTENSION_HEADERS: usize = 4;

#[inline(always)]
fn is_extension(next: u8) -> bool {
    next == HOP_BY_HOP || next == ROUTING || next == FRAGMENT || next == DESTINATION_OPTIONS
}

/// The fixed header of IPv6, in the frame, with version 6.
pub struct Ipv6 {
    header: Span<HEADER>,
    offset: usize,
}

#[inline(always)]
pub fn header(ctx: &impl Frame, offset: usize) -> Option<Ipv6> {
    let header = span::<HEADER>(ctx, offset)?;
    (header.u8_at::<0>() >> 4 == 6).then_some(Ipv6 { header, offset })
}

impl Header for Ipv6 {
    #[inline(always)]
    fn host(&self, peer: Peer) -> Host {
        let (high, low) = match peer {
            Peer::Source => (self.header.u64_at::<8>(), self.header.u64_at::<16>()),
            Peer::Destination => (self.header.u64_at::<24>(), self.header.u64_at::<32>()),
        };
        Host {
            version: 6,
            address: Address::from_words(high, low),
        }
    }

    /// Follows the extension headers to the transport header.
    #[inline(always)]
    fn network(&self, ctx: &impl Frame, host: Host) -> Option<Network> {
        let (header, offset) = (&self.header, self.offset);
        let payload_len = u16::from_be(header.u16_at::<4>()) as usize;
        let mut next = header.u8_at::<6>();
        let mut l4_offset = offset + HEADER;
        let mut fragment = Fragment::Whole;
        for _ in 0..MAX_EXTENSION_HEADERS {
            if !is_extension(next) || fragment == Fragment::Later {
                break;
            }
            let following = read::<u8>(ctx, l4_offset)?;
            if next == FRAGMENT {
                let offset_flags = u16::from_be(read::<u16>(ctx, l4_offset + 2)?);
                fragment = if offset_flags & 0xfff8 != 0 {
                    Fragment::Later
                } else if offset_flags & 1 != 0 {
                    Fragment::First
                } else {
                    Fragment::Whole
                };
                l4_offset += 8;
            } else {
                // Hdr Ext Len counts 8-octet units after the first 8 octets.
                l4_offset += (read::<u8>(ctx, l4_offset + 1)? as usize + 1) * 8;
            }
            next = following;
        }

        Some(Network {
            host,
            protocol: next,
            l4_offset,
            end: offset + HEADER + payload_len,
            fragment,
            too_deep: is_extension(next) && fragment != Fragment::Later,
        })
    }
}
