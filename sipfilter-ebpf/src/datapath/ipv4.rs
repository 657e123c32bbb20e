//! IPv4, with options (IHL > 5) and fragments.

use super::{
    cursor::{Frame, Span, read, span},
    ip::{Address, Fragment, Header, Host, Network, Peer},
};

const MIN_HEADER: usize = 20;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// The fixed part of an IPv4 header, in the frame, with version 4.
pub struct Ipv4 {
    header: Span<MIN_HEADER>,
    offset: usize,
}

#[inline(always)]
pub fn header(ctx: &impl Frame, offset: usize) -> Option<Ipv4> {
    let header = span::<MIN_HEADER>(ctx, offset)?;
    (header.u8_at::<0>() >> 4 == 4).then_some(Ipv4 { header, offset })
}

impl Header for Ipv4 {
    #[inline(always)]
    fn host(&self, peer: Peer) -> Host {
        let raw = match peer {
            Peer::Source => self.header.u32_at::<12>(),
            Peer::Destination => self.header.u32_at::<16>(),
        };
        Host {
            version: 4,
            address: Address::mapped_v4(raw),
        }
    }

    #[inline(always)]
    fn network(&self, ctx: &impl Frame, host: Host) -> Option<Network> {
        let (header, offset) = (&self.header, self.offset);
        let header_len = ((header.u8_at::<0>() & 0x0f) as usize) * 4;
        if header_len < MIN_HEADER {
            return None;
        }
        let total_len = u16::from_be(header.u16_at::<2>()) as usize;
        let fragment_field = u16::from_be(header.u16_at::<6>());
        // Options, if any, must be in the frame before anything behind them is read.
        if header_len > MIN_HEADER {
            read::<u8>(ctx, offset + header_len - 1)?;
        }

        let fragment = if fragment_field & FRAGMENT_OFFSET != 0 {
            Fragment::Later
        } else if fragment_field & FLAG_MORE_FRAGMENTS != 0 {
            Fragment::First
        } else {
            Fragment::Whole
        };
        Some(Network {
            host,
            protocol: header.u8_at::<9>(),
            l4_offset: offset + header_len,
            end: offset + total_len,
            fragment,
            too_deep: false,
        })
    }
}
