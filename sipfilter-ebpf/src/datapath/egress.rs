//! The egress watcher: reads the SIP responses the host sends from its SIP ports, counts them by
//! class, and reports challenges, rejections and successes to the daemon, which turns them into
//! bans and learned trust. It only reads: every packet leaves unchanged and undelayed.
//!
//! The parsers are the XDP program's (`eth`, `ipv4`, `ipv6`, `l4`, `sipfilter_ebpf::sip`), read
//! from the peer's side: the remote party is the destination of a response. Like the XDP
//! pipeline it runs as two programs: `watch` parses the frame and copies the payload, then
//! tail-calls the reader (`read`), which the verifier then checks from one state instead of
//! once per way through the parsers.

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use sipfilter_common::{EventKind, Method, ResponseClass, port_class};
use sipfilter_ebpf::sip::{
    self as parser, SCAN_BYTES, ScanBuf, copy_len,
    response::{self, ResponseHeaders},
};

use super::{
    eth::{self, ETH_P_IP, ETH_P_IPV6},
    events::{Answer, emit_answer},
    ip::{self, Fragment, Origin, Peer},
    ipv4, ipv6, l4,
    maps::{SF_EGRESS_BUF, SF_EGRESS_HAND},
    policy::port_class,
    stats::count_response,
};

/// What `watch` tells `read` about the payload it copied.
#[repr(C)]
pub struct EgressHandoff {
    /// The peer (the response's destination) and the local SIP port.
    pub origin: Origin,
    /// Bytes copied into `SF_EGRESS_BUF`.
    pub len: u64,
}

/// Parses a frame the host sends; for a packet from a SIP port, copies its payload and hands
/// it to the reader. `false` when there is nothing to read.
#[inline(always)]
pub fn watch(ctx: &TcContext) -> bool {
    let Some(frame) = eth::parse(ctx) else {
        return false;
    };
    let net = match frame.ether_type {
        ETH_P_IP => ip::parse(ctx, ipv4::header(ctx, frame.l3_offset), Peer::Destination),
        ETH_P_IPV6 => ip::parse(ctx, ipv6::header(ctx, frame.l3_offset), Peer::Destination),
        _ => None,
    };
    let Some(net) = net else {
        return false;
    };
    if net.fragment == Fragment::Later || net.too_deep {
        return false;
    }
    // `None` for anything but UDP and TCP.
    let Some(ports) = l4::ports(ctx, &net) else {
        return false;
    };
    if port_class(ports.transport, ports.src_port) != port_class::SIP {
        return false;
    }
    let transport = l4::parse(ctx, &net, ports);
    if !transport.consistent {
        return false;
    }
    let (Some(buf), Some(handoff)) = (SF_EGRESS_BUF.get_ptr_mut(0), SF_EGRESS_HAND.get_ptr_mut(0))
    else {
        return false;
    };
    // SAFETY: this CPU's slots, used by one packet at a time.
    let (buf, handoff) = unsafe { (&mut *buf, &mut *handoff) };
    let Some(len) = copy_len(transport.payload_len) else {
        return false;
    };
    // SAFETY: `len` is in 1..=SCAN_BYTES and the buffer holds SCAN_BYTES + 8 bytes; the helper
    // also reads payload that lies in pages beyond the linear part.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            (transport.payload_offset & 0xffff) as u32,
            buf.words.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if copied != 0 {
        return false;
    }
    handoff.origin = Origin::new(
        &net.host,
        transport.ports.dst_port,
        transport.ports.src_port,
    );
    handoff.len = len as u64;
    true
}

/// The reader's body: the response `watch` copied.
#[inline(always)]
pub fn read() {
    let (Some(buf), Some(handoff)) = (SF_EGRESS_BUF.get_ptr_mut(0), SF_EGRESS_HAND.get(0)) else {
        return;
    };
    // SAFETY: this CPU's slot, filled by `watch` for this packet.
    let buf = unsafe { &mut *buf };
    let len = handoff.len as usize;
    if len == 0 || len > SCAN_BYTES {
        return;
    }
    read_response(buf, len, &handoff.origin);
}

/// Classifies the response in `buf`, counts it, and reports it when it matters to the daemon.
/// Anything that is not a SIP response (a request the host sends, a TCP segment in the middle
/// of a message) is ignored.
#[inline(always)]
fn read_response(buf: &mut ScanBuf, len: usize, origin: &Origin) {
    parser::seal(buf, len);
    let Some(start) = parser::parse_start_line(buf, len) else {
        return;
    };
    if start.method != Method::Response {
        return;
    }
    // Widened, like the XDP stages' hand-off: otherwise every way through the start line's
    // parse enters the header scan as a state of its own, and the verifier gives up.
    let status = buf.widen(start.status as usize) as u16;
    let first_line = buf.widen(start.headers) & (SCAN_BYTES - 1);
    let len = parser::widened_len(buf, len);
    let headers =
        parser::find_headers::<ResponseHeaders>(buf, first_line, len, ResponseHeaders::ALL);
    let method = response::cseq_method(buf, headers.value(ResponseHeaders::CSEQ));
    let class = match method {
        Some(method) => response::classify(status, method),
        None => ResponseClass::Other,
    };
    count_response(class);
    let kind = match class {
        ResponseClass::Challenge => EventKind::Challenge,
        ResponseClass::Rejection => EventKind::Rejection,
        ResponseClass::Success => EventKind::Success,
        ResponseClass::Other => return,
    };
    let method = method.unwrap_or(Method::Other);
    let expires_s = if class == ResponseClass::Success && method == Method::Register {
        response::granted_expires(
            buf,
            headers.value(ResponseHeaders::EXPIRES),
            headers.value(ResponseHeaders::CONTACT),
        )
    } else {
        None
    };
    let user = response::to_user(buf, headers.value(ResponseHeaders::TO));
    emit_answer(&Answer {
        kind,
        origin,
        method,
        status,
        expires_s,
        user: user.as_ref(),
    });
}
