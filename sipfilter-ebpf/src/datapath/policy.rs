//! The pipeline: parse, source checks, port class, rate limit, SIP checks. Each stage returns
//! the reason that decides the packet, or lets the next stage run; `main.rs` counts the one
//! final reason.

use aya_ebpf::programs::XdpContext;
use sipfilter_common::{Config, Reason, RuleKind, port_class};

use super::{
    eth::{self, ETH_P_IP, ETH_P_IPV6},
    ip::{Fragment, Header, IPPROTO_TCP, IPPROTO_UDP, Network, Peer},
    ipv4, ipv6, l4,
    maps::{SF_CONFIG, SF_PORTS},
    sip::{self, Stage},
    source,
};

/// The class of `port` for `transport` ([`port_class`]).
#[inline(always)]
pub fn port_class(transport: u32, port: u16) -> u8 {
    match SF_PORTS.get(transport * 256 + (port >> 8) as u32) {
        Some(block) => block.class[(port & 0xff) as usize],
        None => port_class::NONE,
    }
}

#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Stage {
    match decide_inner(ctx) {
        Ok(stage) => stage,
        Err(reason) => Stage::Done(reason),
    }
}

/// `Err(reason)` for every verdict reached before the SIP stage, so `?`-style early returns
/// read as what they are.
#[inline(always)]
fn decide_inner(ctx: &XdpContext) -> Result<Stage, Reason> {
    let frame = eth::parse(ctx).ok_or(Reason::Unparsed)?;
    let config = SF_CONFIG.get(0).ok_or(Reason::Unparsed)?;
    let net = match frame.ether_type {
        ETH_P_IP => checked_source(ctx, ipv4::header(ctx, frame.l3_offset), config),
        ETH_P_IPV6 => checked_source(ctx, ipv6::header(ctx, frame.l3_offset), config),
        _ => Err(Reason::Unparsed),
    }?;
    if net.fragment == Fragment::Later {
        return Err(Reason::Fragment);
    }
    if net.too_deep {
        return Err(Reason::Ipv6ExtensionLimit);
    }
    if net.protocol != IPPROTO_UDP && net.protocol != IPPROTO_TCP {
        return Err(Reason::Unprotected);
    }
    let ports = l4::ports(ctx, &net).ok_or(Reason::Unparsed)?;
    let class = port_class(ports.transport, ports.dst_port);
    if class == port_class::NONE {
        return Err(Reason::Unprotected);
    }
    let transport = l4::parse(ctx, &net, ports);
    if !transport.consistent {
        return Err(Reason::Malformed);
    }
    match class {
        port_class::RESTRICTED => {
            Err(
                sip::enforce(config, RuleKind::Restricted, Reason::RestrictedPort)
                    .unwrap_or(Reason::Unprotected),
            )
        }
        port_class::TLS => Err(Reason::Tls),
        _ => match sip::limit_rate(ctx, &net, &transport, config) {
            Some(reason) => Err(reason),
            None => Ok(sip::hand_over(&net, &transport)),
        },
    }
}

/// The source checks, then the rest of the network header: `Err` with the reason when the
/// source decides the packet, or the header is cut short or malformed.
#[inline(always)]
fn checked_source(
    ctx: &XdpContext,
    header: Option<impl Header>,
    config: &Config,
) -> Result<Network, Reason> {
    let header = header.ok_or(Reason::Unparsed)?;
    let host = header.host(Peer::Source);
    if let Some(reason) = source::check(&host, config) {
        return Err(reason);
    }
    header.network(ctx, host).ok_or(Reason::Unparsed)
}
