use super::*;

pub(super) fn buffer(message: &[u8]) -> (ScanBuf, usize) {
    let mut buf = ScanBuf {
        words: [0x5a5a_5a5a_5a5a_5a5a; SCAN_WORDS],
        found: Headers::default(),
        remaining: 0x5a5a,
        lines: 0x5a5a,
        spill: 0,
    };
    let len = message.len().min(SCAN_BYTES);
    let bytes: &mut [u8] = unsafe {
        core::slice::from_raw_parts_mut(buf.words.as_mut_ptr().cast::<u8>(), SCAN_BYTES + 8)
    };
    bytes[..len].copy_from_slice(&message[..len]);
    seal(&mut buf, len);
    (buf, len)
}

const REGISTER: &[u8] = b"REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: <sip:1001@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 1 REGISTER\r\n\
User-Agent: friendly-scanner\r\n\
Content-Length: 0\r\n\r\n";

fn value(message: &[u8], span: Span) -> &[u8] {
    &message[span.start as usize..span.end as usize]
}

#[test]
fn parses_request_line_and_headers() {
    let (mut buf, len) = buffer(REGISTER);
    let start = parse_start_line(&mut buf, len).expect("start line");
    assert_eq!(start.method, Method::Register);
    assert_eq!(start.uri, 9);
    assert_eq!(&REGISTER[start.headers..start.headers + 4], b"Via:");
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT) | wanted(RequestHeaders::FROM),
    );
    assert_eq!(
        value(REGISTER, headers.value(RequestHeaders::USER_AGENT)),
        b" friendly-scanner\r"
    );
    assert_eq!(
        value(REGISTER, headers.value(RequestHeaders::FROM)),
        b" \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r"
    );
}

#[test]
fn every_method_is_recognised_and_case_sensitive() {
    let methods = [
        ("REGISTER", Method::Register),
        ("INVITE", Method::Invite),
        ("ACK", Method::Ack),
        ("BYE", Method::Bye),
        ("CANCEL", Method::Cancel),
        ("OPTIONS", Method::Options),
        ("SUBSCRIBE", Method::Subscribe),
        ("NOTIFY", Method::Notify),
        ("PUBLISH", Method::Publish),
        ("INFO", Method::Info),
        ("REFER", Method::Refer),
        ("MESSAGE", Method::Message),
        ("PRACK", Method::Prack),
        ("UPDATE", Method::Update),
        ("FOOBAR", Method::Other),
    ];
    for (name, method) in methods {
        let text = format!("{name} sip:1000@192.0.2.1 SIP/2.0\r\n\r\n");
        let (mut buf, len) = buffer(text.as_bytes());
        assert_eq!(
            parse_start_line(&mut buf, len).map(|s| s.method),
            Some(method),
            "{name}"
        );
        let lower = text.to_lowercase();
        let (mut buf, len) = buffer(lower.as_bytes());
        assert_eq!(parse_start_line(&mut buf, len), None, "{lower}");
    }
}

#[test]
fn response_status_line() {
    let (mut buf, len) = buffer(b"SIP/2.0 401 Unauthorized\r\nCSeq: 1 REGISTER\r\n\r\n");
    let start = parse_start_line(&mut buf, len).unwrap();
    assert_eq!(start.method, Method::Response);
    assert_eq!(start.headers, 26);
    for bad in [
        &b"SIP/2.0 4x1 Bad\r\n\r\n"[..],
        b"SIP/2.0 099 Bad\r\n\r\n",
        b"SIP/2.0 ",
    ] {
        let (mut buf, len) = buffer(bad);
        assert_eq!(
            parse_start_line(&mut buf, len),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn rejects_what_is_not_a_start_line() {
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"REGISTER sip:x SIP/3.0\r\n",
        b"REGISTER  sip:x SIP/2.0\r\n",
        b"REGISTER sip:x SIP/2.0",
        b"\0\0\0\0\0\0\0\0\0\0",
        b"\xff\xfe\xfd INVITE",
        b"ABCDEFGHIJKLMNOPQRS sip:x SIP/2.0\r\n",
        b"",
    ] {
        let (mut buf, len) = buffer(bad);
        assert_eq!(
            parse_start_line(&mut buf, len),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn bare_lf_line_ends_are_tolerated() {
    let message = b"OPTIONS sip:100@192.0.2.1 SIP/2.0\nuser-agent:sipvicious\n\n";
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT),
    );
    assert_eq!(
        value(message, headers.value(RequestHeaders::USER_AGENT)),
        b"sipvicious"
    );
}

#[test]
fn header_names_fold_case_allow_blanks_and_compact_forms() {
    let message =
        b"INVITE sip:1@x SIP/2.0\r\nuSeR-aGeNt \t : sipcli/v1.8\r\nf: <sip:100@1.1.1.1>\r\n\r\n";
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT) | wanted(RequestHeaders::FROM),
    );
    assert_eq!(
        value(message, headers.value(RequestHeaders::USER_AGENT)),
        b" sipcli/v1.8\r"
    );
    assert_eq!(
        value(message, headers.value(RequestHeaders::FROM)),
        b" <sip:100@1.1.1.1>\r"
    );
}

#[test]
fn headers_after_the_blank_line_are_body_not_headers() {
    let message =
        b"MESSAGE sip:1@x SIP/2.0\r\nContent-Length: 24\r\n\r\nUser-Agent: sipvicious\r\n";
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT),
    );
    assert!(!headers.value(RequestHeaders::USER_AGENT).is_present());
}

#[test]
fn similar_names_are_not_matched() {
    let message = b"OPTIONS sip:1@x SIP/2.0\r\nUser-Agents: a\r\nUser-Agen: b\r\nFromage: c\r\nFrom-X: d\r\n\r\n";
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT) | wanted(RequestHeaders::FROM),
    );
    assert_eq!(
        (
            headers.value(RequestHeaders::USER_AGENT),
            headers.value(RequestHeaders::FROM)
        ),
        (Span::default(), Span::default())
    );
}

#[test]
fn truncated_header_value_ends_at_the_message_end() {
    let message = b"OPTIONS sip:1@x SIP/2.0\r\nUser-Agent: sipvici";
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT),
    );
    assert_eq!(
        value(message, headers.value(RequestHeaders::USER_AGENT)),
        b" sipvici"
    );
}

#[test]
fn the_scan_reaches_a_header_at_the_end_of_a_full_window() {
    let mut message = b"REGISTER sip:x SIP/2.0\r\n".to_vec();
    // As many header lines as the scan follows, long enough to fill the window.
    let filler = b"X-Filler: 0123456789\r\n";
    while message.len() + filler.len() < SCAN_BYTES - 24 {
        message.extend_from_slice(filler);
    }
    message.extend_from_slice(b"User-Agent: pplsip\r\n");
    let (mut buf, len) = buffer(&message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT),
    );
    assert!(headers.is_complete());
    assert!(value(&message, headers.value(RequestHeaders::USER_AGENT)).starts_with(b" pplsip"));
}

#[test]
fn too_many_header_lines_leave_the_scan_incomplete() {
    let mut message = b"REGISTER sip:x SIP/2.0\r\n".to_vec();
    // The User-Agent is the 129th header line.
    for _ in 0..MAX_HEADER_LINES {
        message.extend_from_slice(b"x:\n");
    }
    message.extend_from_slice(b"User-Agent: pplsip\r\n\r\n");
    let (mut buf, len) = buffer(&message);
    let start = parse_start_line(&mut buf, len).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        len,
        wanted(RequestHeaders::USER_AGENT),
    );
    assert!(!headers.is_complete());
    let mut few = b"REGISTER sip:x SIP/2.0\r\n".to_vec();
    // The User-Agent is the 128th.
    for _ in 0..MAX_HEADER_LINES - 1 {
        few.extend_from_slice(b"x:\n");
    }
    few.extend_from_slice(b"User-Agent: pplsip\r\n\r\n");
    let (mut buf, len) = buffer(&few);
    let first = parse_start_line(&mut buf, len).unwrap().headers;
    let headers =
        find_headers::<RequestHeaders>(&mut buf, first, len, wanted(RequestHeaders::USER_AGENT));
    assert!(headers.is_complete());
    assert!(headers.value(RequestHeaders::USER_AGENT).is_present());
}

#[test]
fn stale_bytes_beyond_the_message_are_never_seen() {
    // A long message first, then a short one in the same buffer.
    let (mut buf, _) = buffer(REGISTER);
    let short = b"OPTIONS sip:1@x SIP/2.0\r\nUser-Ag";
    let bytes: &mut [u8] = unsafe {
        core::slice::from_raw_parts_mut(buf.words.as_mut_ptr().cast::<u8>(), SCAN_BYTES + 8)
    };
    bytes[..short.len()].copy_from_slice(short);
    seal(&mut buf, short.len());
    let start = parse_start_line(&mut buf, short.len()).unwrap();
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        start.headers,
        short.len(),
        wanted(RequestHeaders::USER_AGENT),
    );
    assert!(!headers.value(RequestHeaders::USER_AGENT).is_present());
}

#[test]
fn keepalives_and_stun() {
    let (buf, len) = buffer(b"\r\n\r\n");
    assert!(is_keepalive(&buf, len));
    let (buf, len) = buffer(b"\r\n");
    assert!(is_keepalive(&buf, len));
    let (buf, len) = buffer(b"\r\n\r\nX");
    assert!(!is_keepalive(&buf, len));
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    let (buf, len) = buffer(&stun);
    assert!(is_stun(&buf, len));
    stun[4] = 0x22;
    let (buf, len) = buffer(&stun);
    assert!(!is_stun(&buf, len));
}

#[test]
fn uri_user_for_toll_fraud() {
    let cases: [(&[u8], Option<&[u8]>); 7] = [
        (b"sip:011441234@pbx SIP/2.0", Some(b"011441234")),
        (b"SIP:+4420123;user=phone@x", Some(b"+4420123")),
        (b"sips:00972123456789012345@x", Some(b"0097212345678901")),
        (b"tel:+15551234 SIP/2.0", Some(b"+15551234")),
        (b"sip:alice:secret@pbx", Some(b"alice")),
        (b"sip:pbx.example.com SIP/2.0", Some(b"pbx.example.com")),
        (b"http://x", None),
    ];
    for (uri, expected) in cases {
        let (buf, _) = buffer(uri);
        let got = uri_user(&buf, 0);
        let expected = expected.map(|e| {
            let mut user = [0u8; TOLL_PREFIX_MAX];
            user[..e.len()].copy_from_slice(e);
            user
        });
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(uri));
    }
}

/// Property: for any bytes, the parser never panics and every span it reports lies inside the
/// message, after the start line.
/// A small deterministic generator (xorshift64) for the randomised tests.
struct Xorshift(u64);

impl Xorshift {
    /// The next number below `bound`.
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

#[test]
fn arbitrary_bytes_never_escape_the_message() {
    let mut random = Xorshift(0x2545_f491_4f6c_dd1d);
    let alphabet = b"REGISTER INVITE sip:SIP/2.0\r\n:User-Agent f From \t\0\xff@;";
    for round in 0..20_000 {
        let mut message = b"REGISTER sip:a SIP/2.0\r\n".to_vec();
        let extra = (round * 7) % 600;
        for _ in 0..extra {
            message.push(alphabet[random.below(alphabet.len())]);
        }
        let (mut buf, len) = buffer(&message);
        if let Some(start) = parse_start_line(&mut buf, len) {
            assert!(start.headers <= len);
            let headers = find_headers::<RequestHeaders>(
                &mut buf,
                start.headers,
                len,
                wanted(RequestHeaders::USER_AGENT) | wanted(RequestHeaders::FROM),
            );
            for span in [
                headers.value(RequestHeaders::USER_AGENT),
                headers.value(RequestHeaders::FROM),
            ] {
                if span.is_present() {
                    assert!(
                        span.start as usize >= start.headers
                            && span.start <= span.end
                            && span.end as usize <= len,
                        "{span:?} {len}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_line_count_starts_afresh_for_each_message() {
    let mut long = b"REGISTER sip:x SIP/2.0\r\n".to_vec();
    for _ in 0..MAX_HEADER_LINES - 8 {
        long.extend_from_slice(b"x:\n");
    }
    long.extend_from_slice(b"\r\n");
    let (mut buf, len) = buffer(&long);
    let first = parse_start_line(&mut buf, len).unwrap().headers;
    assert!(
        find_headers::<RequestHeaders>(&mut buf, first, len, wanted(RequestHeaders::USER_AGENT))
            .is_complete()
    );
    // The same per-CPU buffer serves the next packet: its count must not carry over.
    let short = b"REGISTER sip:x SIP/2.0\r\nx:\nx:\nx:\nx:\nx:\nx:\nx:\nx:\nx:\nx:\nUser-Agent: sipcli\r\n\r\n";
    let bytes: &mut [u8] = unsafe {
        core::slice::from_raw_parts_mut(buf.words.as_mut_ptr().cast::<u8>(), SCAN_BYTES + 8)
    };
    bytes[..short.len()].copy_from_slice(short);
    seal(&mut buf, short.len());
    let first = parse_start_line(&mut buf, short.len()).unwrap().headers;
    let headers = find_headers::<RequestHeaders>(
        &mut buf,
        first,
        short.len(),
        wanted(RequestHeaders::USER_AGENT),
    );
    assert!(headers.is_complete());
    assert!(headers.value(RequestHeaders::USER_AGENT).is_present());
}

#[test]
fn lead_map_holds_the_wanted_first_letters_in_both_cases_and_the_line_ends() {
    let map = RequestHeaders::LEAD_MAP;
    let marked: Vec<u8> = (0..=255u8).filter(|&b| may_matter(map, b)).collect();
    // Bytes that share the low six bits with one of them share its bit; classify turns those
    // down.
    let expected: Vec<u8> = [b'\n', b'\r', b'F', b'U', b'f', b'u']
        .iter()
        .flat_map(|&b| [b & 63, b & 63 | 64, b & 63 | 128, b & 63 | 192])
        .collect::<std::collections::BTreeSet<u8>>()
        .into_iter()
        .collect();
    assert_eq!(marked, expected);
}

/// The User-Agent and From of the request `message`, as the ingress scan finds them.
fn user_agent_and_from(message: &[u8]) -> Headers {
    let (mut buf, len) = buffer(message);
    let first = parse_start_line(&mut buf, len).unwrap().headers;
    find_headers::<RequestHeaders>(
        &mut buf,
        first,
        len,
        wanted(RequestHeaders::USER_AGENT) | wanted(RequestHeaders::FROM),
    )
}

#[test]
fn a_line_whose_first_byte_aliases_a_wanted_letter_is_not_taken_for_it() {
    // 0xd5 shares 'U''s bit in the lead map; 0xc6 shares 'F''s.
    let message = b"REGISTER sip:x SIP/2.0\r\n\xd5ser-Agent: pplsip\r\n\xc6rom: sipvicious\r\n\r\n";
    let headers = user_agent_and_from(message);
    assert!(headers.is_complete());
    assert!(!headers.value(RequestHeaders::USER_AGENT).is_present());
    assert!(!headers.value(RequestHeaders::FROM).is_present());
}

#[test]
fn a_value_longer_than_the_matched_bytes_ends_where_matching_stops() {
    let long = "x".repeat(300);
    let message =
        format!("REGISTER sip:x SIP/2.0\r\nUser-Agent: {long}\r\nFrom: <sip:a@b>\r\n\r\n");
    let headers = user_agent_and_from(message.as_bytes());
    let user_agent = headers.value(RequestHeaders::USER_AGENT);
    assert_eq!(user_agent.end - user_agent.start, MAX_VALUE_BYTES as u64);
    // The line after it is still found, and its value ends at its own line end.
    assert_eq!(
        value(message.as_bytes(), headers.value(RequestHeaders::FROM)),
        b" <sip:a@b>\r"
    );
}

#[test]
fn line_ends_in_stale_words_past_the_message_are_never_taken() {
    // The scan looks up to four words ahead; fill the buffer with header lines first, as an earlier
    // packet would have, then put a message in that ends mid-word.
    let stale = b"\nUser-Agent: pplsip\r".repeat(SCAN_BYTES / 20);
    let (mut buf, _) = buffer(&stale);
    for len in 25..=45 {
        let message = &b"REGISTER sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"[..len];
        let bytes: &mut [u8] = unsafe {
            core::slice::from_raw_parts_mut(buf.words.as_mut_ptr().cast::<u8>(), SCAN_BYTES + 8)
        };
        bytes[..stale.len()].copy_from_slice(&stale);
        bytes[..len].copy_from_slice(message);
        seal(&mut buf, len);
        let first = parse_start_line(&mut buf, len).unwrap().headers;
        let headers = find_headers::<RequestHeaders>(
            &mut buf,
            first,
            len,
            wanted(RequestHeaders::USER_AGENT),
        );
        assert!(headers.is_complete(), "len {len}");
        assert!(
            !headers.value(RequestHeaders::USER_AGENT).is_present(),
            "len {len}"
        );
    }
}

/// What [`find_headers`] must find, the slow way: split the header block into lines, compare
/// each name case-insensitively. Values here are shorter than [`MAX_VALUE_BYTES`].
fn reference_user_agent_and_from(message: &[u8], first: usize) -> [Option<(usize, usize)>; 2] {
    let mut found = [None; 2];
    let mut pos = first;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |at| pos + at);
        let line = &message[pos..end];
        if line.is_empty() || line == b"\r" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        let (index, name_len) = if lower.starts_with(b"user-agent") {
            (RequestHeaders::USER_AGENT, 10)
        } else if lower.starts_with(b"from") {
            (RequestHeaders::FROM, 4)
        } else if lower.starts_with(b"f") {
            (RequestHeaders::FROM, 1)
        } else {
            pos = end + 1;
            continue;
        };
        let rest = &line[name_len..];
        let blanks = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if found[index].is_none() && blanks < 8 && rest.get(blanks) == Some(&b':') {
            found[index] = Some((pos + name_len + blanks + 1, end));
        }
        pos = end + 1;
    }
    found
}

#[test]
fn headers_are_found_whatever_the_line_lengths_and_bytes() {
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut next = |bound: usize| random.below(bound);
    // No LF: lines end only where the generator ends them. TAB, NUL and CR stop the walk's
    // quick test for LF without being one.
    let filler = b"abcdexyzABCDEXYZ0123 \t\0\r\xff\x80:;<>@=-";
    let names: [&[u8]; 6] = [
        b"User-Agent",
        b"user-agent",
        b"USER-AGENT \t",
        b"From",
        b"f",
        b"FROM",
    ];
    let mut found = 0;
    for round in 0..3_000 {
        let mut message = b"REGISTER sip:a SIP/2.0\r\n".to_vec();
        for _ in 0..next(12) {
            let line_len = if next(3) == 0 { next(700) } else { next(60) };
            // A filler line never starts like a wanted header.
            message.push(b"ABXYZ"[next(5)]);
            for _ in 0..line_len {
                message.push(filler[next(filler.len())]);
            }
            if next(4) == 0 {
                message.push(b':');
                let name = names[next(names.len())];
                let value_len = next(120);
                message.extend_from_slice(b"\n");
                message.extend_from_slice(name);
                message.push(b':');
                for _ in 0..value_len {
                    message.push(filler[next(filler.len())]);
                }
            }
            message.extend_from_slice(if next(2) == 0 { b"\r\n" } else { b"\n" });
        }
        message.extend_from_slice(b"\r\n");
        if message.len() > SCAN_BYTES {
            continue;
        }
        let first = b"REGISTER sip:a SIP/2.0\r\n".len();
        let headers = user_agent_and_from(&message);
        assert!(headers.is_complete(), "round {round}");
        let expected = reference_user_agent_and_from(&message, first);
        for index in [RequestHeaders::USER_AGENT, RequestHeaders::FROM] {
            let span = headers.value(index);
            let got = span
                .is_present()
                .then_some((span.start as usize, span.end as usize));
            assert_eq!(got, expected[index], "round {round}, header {index}");
            found += usize::from(got.is_some());
        }
    }
    // The generator puts the headers in often enough for the comparison to mean something.
    assert!(found > 1_000, "{found}");
}

#[test]
fn copy_len_is_the_payload_up_to_the_window_and_never_zero() {
    assert_eq!(copy_len(0), None);
    for len in [1, 2, 400, SCAN_BYTES - 1, SCAN_BYTES] {
        assert_eq!(copy_len(len), Some(len));
    }
    for len in [SCAN_BYTES + 1, 65_535, usize::MAX] {
        assert_eq!(copy_len(len), Some(SCAN_BYTES));
    }
}
