//! Ethernet with up to two VLAN tags (802.1Q, and 802.1ad outer tags).

use aya_ebpf::programs::XdpContext;

use super::cursor::{read, span};

const ETH_HEADER: usize = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Q-in-Q is two tags; a third is not a deployment we know of, and passes as unparsed.
const MAX_VLAN_TAGS: usize = 2;

pub struct Frame {
    /// EtherType of the network layer, host order.
    pub ether_type: u16,
    /// Where the network-layer header starts.
    pub l3_offset: usize,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Option<Frame> {
    let mut ether_type = u16::from_be(span::<ETH_HEADER>(ctx, 0)?.u16_at::<12>());
    let mut offset = ETH_HEADER;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // A tag is TCI (2 bytes) then the inner EtherType.
        ether_type = u16::from_be(read::<u16>(ctx, offset + 2)?);
        offset += 4;
    }
    Some(Frame {
        ether_type,
        l3_offset: offset,
    })
}
