//! Ethernet with up to two VLAN tags (802.1Q, and 802.1ad outer tags).

use super::cursor::{Frame, read, span};

const ETH_HEADER: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Q-in-Q is two tags; a third is not a deployment we know of, and passes as unparsed.
const MAX_VLAN_TAGS: usize = 2;

pub struct Ethernet {
    /// EtherType of the network layer, host order.
    pub ether_type: u16,
    /// Where the network-layer header starts.
    pub l3_offset: usize,
}

#[inline(always)]
pub fn parse(ctx: &impl Frame) -> Option<Ethernet> {
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
    Some(Ethernet {
        ether_type,
        l3_offset: offset,
    })
}
