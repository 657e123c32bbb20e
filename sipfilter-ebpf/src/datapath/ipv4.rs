//! IPv4, with options (IHL > 5) and fragments.

use super::{
    cursor::{Frame, read, remaining, span},
    ip::{Address, Fragment, Network, Peer},
};

const MIN_HEADER: usize = 20;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

#[inline(always)]
pub fn parse(ctx: &impl Frame, offset: usize, peer: Peer) -> Option<Network> {
    let header = span::<MIN_HEADER>(ctx, offset)?;
    let version_ihl = header.u8_at::<0>();
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < MIN_HEADER {
        return None;
    }
    let total_len = u16::from_be(header.u16_at::<2>()) as usize;
    let fragment_field = u16::from_be(header.u16_at::<6>());
    let protocol = header.u8_at::<9>();
    let source = match peer {
        Peer::Source => header.u32_at::<12>(),
        Peer::Destination => header.u32_at::<16>(),
    }
    .to_ne_bytes();
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
    let consistent = total_len >= header_len && total_len <= remaining(ctx, offset);
    Some(Network {
        version: 4,
        source: Address([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, source[0], source[1], source[2], source[3],
        ]),
        protocol,
        l4_offset: offset + header_len,
        l4_len: total_len.saturating_sub(header_len),
        fragment,
        consistent,
        too_deep: false,
    })
}
