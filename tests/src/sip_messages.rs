//! Realistic SIP messages (RFC 3261 shape, CRLF line ends) for datapath tests and benchmarks.
//!
//! Each generator has a `*_message` form returning a [`SipMessage`], for tests that add,
//! replace or reorder headers, and a short form returning the bytes. Branches and tags are
//! derived from the Call-ID and CSeq, so the same arguments give the same bytes.

/// Where the generated requests claim to come from: the client of [`crate::Topology`].
pub const CLIENT_HOST: &str = "192.0.2.1:5060";

/// Name of the header [`SipMessage::pad_to`] adds.
pub const PADDING_HEADER: &str = "X-Padding";

/// A SIP message under construction.
#[derive(Clone, Debug)]
pub struct SipMessage {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    pad_to: Option<usize>,
    user_agent_last: bool,
}

impl SipMessage {
    /// A request: `METHOD uri SIP/2.0`.
    pub fn request(method: &str, uri: &str) -> SipMessage {
        SipMessage::with_start_line(format!("{method} {uri} SIP/2.0"))
    }

    /// A response: `SIP/2.0 code reason`.
    pub fn response(code: u16, reason: &str) -> SipMessage {
        SipMessage::with_start_line(format!("SIP/2.0 {code} {reason}"))
    }

    fn with_start_line(start_line: String) -> SipMessage {
        SipMessage {
            start_line,
            headers: Vec::new(),
            body: Vec::new(),
            pad_to: None,
            user_agent_last: false,
        }
    }

    /// Appends a header (a repeated name gives a repeated header, as SIP allows for Via).
    pub fn header(mut self, name: &str, value: &str) -> SipMessage {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the value of every header called `name` (case-insensitive), or appends one.
    pub fn set_header(mut self, name: &str, value: &str) -> SipMessage {
        let mut found = false;
        for (existing, old) in &mut self.headers {
            if existing.eq_ignore_ascii_case(name) {
                *old = value.to_owned();
                found = true;
            }
        }
        if found {
            self
        } else {
            self.header(name, value)
        }
    }

    /// Removes every header called `name` (case-insensitive).
    pub fn remove_header(mut self, name: &str) -> SipMessage {
        self.headers
            .retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
        self
    }

    /// Sets the body and its Content-Type. Content-Length is always written by [`build`].
    ///
    /// [`build`]: SipMessage::build
    pub fn body(self, content_type: &str, body: &[u8]) -> SipMessage {
        let mut message = self.set_header("Content-Type", content_type);
        message.body = body.to_vec();
        message
    }

    /// Makes the built message exactly `size` bytes by adding an `X-Padding` header (before the
    /// User-Agent when that is last). [`build`] panics if the message is already larger, or
    /// smaller by less than the shortest padding header.
    ///
    /// [`build`]: SipMessage::build
    pub fn pad_to(mut self, size: usize) -> SipMessage {
        self.pad_to = Some(size);
        self
    }

    /// Moves the User-Agent header to the end, after Content-Length: the worst case for a
    /// filter that scans headers in order.
    pub fn user_agent_last(mut self) -> SipMessage {
        self.user_agent_last = true;
        self
    }

    /// The message bytes: start line, headers, Content-Length, a blank line and the body.
    #[track_caller]
    pub fn build(&self) -> Vec<u8> {
        let is_user_agent = |name: &str| name.eq_ignore_ascii_case("User-Agent");
        let mut head = Vec::new();
        let mut tail = Vec::new();
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let line = format!("{name}: {value}\r\n");
            if self.user_agent_last && is_user_agent(name) {
                tail.push(line);
            } else {
                head.push(line);
            }
        }
        head.push(format!("Content-Length: {}\r\n", self.body.len()));
        let assemble = |padding: Option<&str>| {
            let mut out = format!("{}\r\n", self.start_line).into_bytes();
            for line in &head {
                out.extend_from_slice(line.as_bytes());
            }
            if let Some(padding) = padding {
                out.extend_from_slice(padding.as_bytes());
            }
            for line in &tail {
                out.extend_from_slice(line.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&self.body);
            out
        };
        let unpadded = assemble(None);
        let Some(target) = self.pad_to else {
            return unpadded;
        };
        if target == unpadded.len() {
            return unpadded;
        }
        let empty_padding = format!("{PADDING_HEADER}: \r\n");
        assert!(
            target >= unpadded.len() + empty_padding.len(),
            "cannot pad a {}-byte message to {target} bytes (padding needs at least {})",
            unpadded.len(),
            empty_padding.len()
        );
        let fill = "x".repeat(target - unpadded.len() - empty_padding.len());
        let padded = assemble(Some(&format!("{PADDING_HEADER}: {fill}\r\n")));
        debug_assert_eq!(padded.len(), target);
        padded
    }
}

/// FNV-1a: deterministic across runs and platforms, unlike the std hasher.
fn fnv(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.as_bytes().iter().chain(b"\0") {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

fn branch(call_id: &str, cseq: u32) -> String {
    format!("z9hG4bK{:016x}", fnv(&[call_id, &cseq.to_string()]))
}

fn tag(call_id: &str) -> String {
    format!("{:08x}", fnv(&[call_id]) as u32)
}

/// The headers every request from the client starts with.
fn request_from_client(
    method: &str,
    uri: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
) -> SipMessage {
    SipMessage::request(method, uri)
        .header(
            "Via",
            &format!(
                "SIP/2.0/UDP {CLIENT_HOST};branch={};rport",
                branch(call_id, cseq)
            ),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("{from};tag={}", tag(call_id)))
        .header("To", to)
        .header("Call-ID", call_id)
        .header("CSeq", &format!("{cseq} {method}"))
}

/// A REGISTER of `user@domain` with Contact, Expires and (when given) User-Agent. Kept lean
/// (about 330 bytes for short names) so benchmarks can pad it to 400 bytes.
pub fn register_message(
    user: &str,
    domain: &str,
    call_id: &str,
    cseq: u32,
    user_agent: Option<&str>,
) -> SipMessage {
    let aor = format!("<sip:{user}@{domain}>");
    let mut message = request_from_client(
        "REGISTER",
        &format!("sip:{domain}"),
        &aor,
        &aor,
        call_id,
        cseq,
    )
    .header(
        "Contact",
        &format!("<sip:{user}@{CLIENT_HOST};transport=udp>"),
    );
    if let Some(user_agent) = user_agent {
        message = message.header("User-Agent", user_agent);
    }
    message.header("Expires", "3600")
}

/// [`register_message`], padded to `pad_to` bytes when given.
#[track_caller]
pub fn register(
    user: &str,
    domain: &str,
    call_id: &str,
    cseq: u32,
    user_agent: Option<&str>,
    pad_to: Option<usize>,
) -> Vec<u8> {
    let message = register_message(user, domain, call_id, cseq, user_agent);
    match pad_to {
        Some(size) => message.pad_to(size).build(),
        None => message.build(),
    }
}

/// An INVITE from `from_user@domain` to `sip:to_user@domain` with an audio SDP offer.
pub fn invite_message(
    from_user: &str,
    to_user: &str,
    domain: &str,
    call_id: &str,
    cseq: u32,
) -> SipMessage {
    let (client_ip, _) = CLIENT_HOST.split_once(':').expect("CLIENT_HOST has a port");
    let sdp = format!(
        "v=0\r\n\
         o={from_user} 2890844526 2890844526 IN IP4 {client_ip}\r\n\
         s=-\r\n\
         c=IN IP4 {client_ip}\r\n\
         t=0 0\r\n\
         m=audio 49170 RTP/AVP 0 8 101\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=sendrecv\r\n"
    );
    request_from_client(
        "INVITE",
        &format!("sip:{to_user}@{domain}"),
        &format!("<sip:{from_user}@{domain}>"),
        &format!("<sip:{to_user}@{domain}>"),
        call_id,
        cseq,
    )
    .header("Contact", &format!("<sip:{from_user}@{CLIENT_HOST}>"))
    .header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")
    .body("application/sdp", sdp.as_bytes())
}

pub fn invite(from_user: &str, to_user: &str, domain: &str, call_id: &str, cseq: u32) -> Vec<u8> {
    invite_message(from_user, to_user, domain, call_id, cseq).build()
}

/// An OPTIONS keep-alive probe from `user@domain` to `sip:domain`.
pub fn options_message(user: &str, domain: &str, call_id: &str, cseq: u32) -> SipMessage {
    request_from_client(
        "OPTIONS",
        &format!("sip:{domain}"),
        &format!("<sip:{user}@{domain}>"),
        &format!("<sip:{domain}>"),
        call_id,
        cseq,
    )
    .header("Accept", "application/sdp")
}

pub fn options(user: &str, domain: &str, call_id: &str, cseq: u32) -> Vec<u8> {
    options_message(user, domain, call_id, cseq).build()
}

/// What SIPVicious `svmap` sends when it sweeps for SIP servers: its fixed From/To, the
/// `friendly-scanner` User-Agent, and its header order.
pub fn sipvicious_options_message() -> SipMessage {
    SipMessage::request("OPTIONS", "sip:100@1.1.1.1")
        .header(
            "Via",
            &format!("SIP/2.0/UDP {CLIENT_HOST};branch=z9hG4bK-2158711447;rport"),
        )
        .header(
            "From",
            "\"sipvicious\"<sip:100@1.1.1.1>;tag=6132373337373838313363340131353731363731353738",
        )
        .header("Accept", "application/sdp")
        .header("User-Agent", "friendly-scanner")
        .header("To", "\"sipvicious\"<sip:100@1.1.1.1>")
        .header("Contact", &format!("sip:100@{CLIENT_HOST}"))
        .header("CSeq", "1 OPTIONS")
        .header("Call-ID", "623846710289317451416917")
        .header("Max-Forwards", "70")
}

pub fn sipvicious_options() -> Vec<u8> {
    sipvicious_options_message().build()
}

/// A response to a request with `call_id` and `cseq cseq_method`, as the server would send it.
pub fn response_message(
    code: u16,
    reason: &str,
    cseq_method: &str,
    call_id: &str,
    cseq: u32,
) -> SipMessage {
    SipMessage::response(code, reason)
        .header(
            "Via",
            &format!(
                "SIP/2.0/UDP {CLIENT_HOST};branch={};rport=5060;received=192.0.2.1",
                branch(call_id, cseq)
            ),
        )
        .header(
            "From",
            &format!("<sip:client@example.com>;tag={}", tag(call_id)),
        )
        .header(
            "To",
            &format!("<sip:server@example.com>;tag={}", tag(reason)),
        )
        .header("Call-ID", call_id)
        .header("CSeq", &format!("{cseq} {cseq_method}"))
        .header("Server", "sipfilter-tests")
}

pub fn response(code: u16, reason: &str, cseq_method: &str, call_id: &str, cseq: u32) -> Vec<u8> {
    response_message(code, reason, cseq_method, call_id, cseq).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a message into start line, header lines and body, checking the framing: CRLF
    /// line ends only and a Content-Length that matches the body.
    #[track_caller]
    fn split(message: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let end = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no blank line after the headers");
        let head = std::str::from_utf8(&message[..end]).expect("headers are UTF-8");
        let body = message[end + 4..].to_vec();
        assert!(
            !head.replace("\r\n", "").contains(['\r', '\n']),
            "bare CR or LF in the headers"
        );
        let mut lines = head.split("\r\n");
        let start = lines.next().expect("start line").to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("`Name: value` header");
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let length = header_value(&headers, "Content-Length").expect("Content-Length");
        assert_eq!(
            length.parse::<usize>().unwrap(),
            body.len(),
            "Content-Length"
        );
        (start, headers, body)
    }

    fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn assert_has_headers(headers: &[(String, String)], names: &[&str]) {
        for name in names {
            assert!(header_value(headers, name).is_some(), "missing {name}");
        }
    }

    #[test]
    fn register_has_the_rfc3261_headers() {
        let message = register(
            "alice",
            "example.com",
            "reg-1@192.0.2.1",
            7,
            Some("Zoiper"),
            None,
        );
        let (start, headers, body) = split(&message);
        assert_eq!(start, "REGISTER sip:example.com SIP/2.0");
        assert_has_headers(
            &headers,
            &[
                "Via",
                "Max-Forwards",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Contact",
                "Expires",
            ],
        );
        assert_eq!(header_value(&headers, "CSeq"), Some("7 REGISTER"));
        assert_eq!(header_value(&headers, "User-Agent"), Some("Zoiper"));
        assert!(
            header_value(&headers, "Via")
                .unwrap()
                .contains(";branch=z9hG4bK")
        );
        assert!(body.is_empty());
        assert_eq!(headers.last().unwrap().0, "Content-Length");
        let again = register(
            "alice",
            "example.com",
            "reg-1@192.0.2.1",
            7,
            Some("Zoiper"),
            None,
        );
        assert_eq!(message, again, "generation is deterministic");
    }

    #[test]
    fn register_without_user_agent() {
        let message = register("bob", "example.com", "c", 1, None, None);
        let (_, headers, _) = split(&message);
        assert!(header_value(&headers, "User-Agent").is_none());
    }

    #[test]
    fn padding_reaches_the_exact_size() {
        let natural = register("alice", "example.com", "pad", 1, Some("Linphone"), None);
        assert!(
            natural.len() < 380,
            "REGISTER grew to {} bytes",
            natural.len()
        );
        for size in [400, 1024, 1500] {
            let message = register(
                "alice",
                "example.com",
                "pad",
                1,
                Some("Linphone"),
                Some(size),
            );
            assert_eq!(message.len(), size);
            let (_, headers, _) = split(&message);
            assert!(header_value(&headers, PADDING_HEADER).is_some());
        }
    }

    #[test]
    fn user_agent_last_after_padding() {
        let message = register_message("alice", "example.com", "ua", 1, Some("friendly-scanner"))
            .user_agent_last()
            .pad_to(1024)
            .build();
        assert_eq!(message.len(), 1024);
        let (_, headers, _) = split(&message);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[names.len() - 2..], [PADDING_HEADER, "User-Agent"]);
        assert!(message.ends_with(b"User-Agent: friendly-scanner\r\n\r\n"));
    }

    #[test]
    #[should_panic(expected = "cannot pad")]
    fn padding_below_the_natural_size_panics() {
        register("alice", "example.com", "small", 1, None, Some(100));
    }

    #[test]
    fn invite_carries_sdp() {
        let message = invite("alice", "0044123456789", "example.com", "inv-1", 1);
        let (start, headers, body) = split(&message);
        assert_eq!(start, "INVITE sip:0044123456789@example.com SIP/2.0");
        assert_eq!(
            header_value(&headers, "Content-Type"),
            Some("application/sdp")
        );
        assert_eq!(header_value(&headers, "CSeq"), Some("1 INVITE"));
        let sdp = String::from_utf8(body).unwrap();
        assert!(sdp.starts_with("v=0\r\n"));
        assert!(sdp.contains("m=audio "));
    }

    #[test]
    fn options_and_sipvicious() {
        let (start, headers, _) = split(&options("alice", "example.com", "opt", 3));
        assert_eq!(start, "OPTIONS sip:example.com SIP/2.0");
        assert_eq!(header_value(&headers, "CSeq"), Some("3 OPTIONS"));

        let (start, headers, _) = split(&sipvicious_options());
        assert_eq!(start, "OPTIONS sip:100@1.1.1.1 SIP/2.0");
        assert_eq!(
            header_value(&headers, "User-Agent"),
            Some("friendly-scanner")
        );
        assert!(
            header_value(&headers, "From")
                .unwrap()
                .starts_with("\"sipvicious\"<sip:100@1.1.1.1>")
        );
    }

    #[test]
    fn response_status_line() {
        let (start, headers, _) = split(&response(200, "OK", "REGISTER", "reg-1", 7));
        assert_eq!(start, "SIP/2.0 200 OK");
        assert_eq!(header_value(&headers, "CSeq"), Some("7 REGISTER"));
    }

    #[test]
    fn header_edits() {
        let message = options_message("a", "example.com", "e", 1)
            .set_header("max-forwards", "0")
            .remove_header("Accept")
            .header("Via", "SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKsecond")
            .build();
        let (_, headers, _) = split(&message);
        assert_eq!(header_value(&headers, "Max-Forwards"), Some("0"));
        assert!(header_value(&headers, "Accept").is_none());
        assert_eq!(headers.iter().filter(|(n, _)| n == "Via").count(), 2);
    }
}
