use sipfilter_common::{Method, ResponseClass};

use super::*;
use crate::sip::{find_headers, parse_start_line, tests::buffer};

/// What kamailio's registrar answers to a first REGISTER.
const CHALLENGE: &[u8] = b"SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-1;rport=5060\r\n\
From: <sip:1001@192.0.2.1>;tag=abc\r\n\
To: <sip:1001@192.0.2.1>;tag=b27e1a1d33761e85846fc98f5f3a7e58.ab01\r\n\
Call-ID: 1-2@198.51.100.20\r\n\
CSeq: 1 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"192.0.2.1\", nonce=\"Y2hhbGxlbmdl\"\r\n\
Server: kamailio (5.6.3 (x86_64/linux))\r\n\
Content-Length: 0\r\n\r\n";

const GRANTED: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-2;rport=5060\r\n\
From: <sip:1001@192.0.2.1>;tag=abc\r\n\
To: <sip:1001@192.0.2.1>;tag=b27e1a1d33761e85846fc98f5f3a7e58.ab02\r\n\
Call-ID: 1-2@198.51.100.20\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:1001@198.51.100.20:5060;transport=udp>;expires=600;received=\"sip:198.51.100.20\"\r\n\
Server: kamailio (5.6.3 (x86_64/linux))\r\n\
Content-Length: 0\r\n\r\n";

struct Read {
    status: u16,
    method: Option<Method>,
    user: Option<[u8; TOLL_PREFIX_MAX]>,
    expires: Option<u32>,
}

fn read_response(message: &[u8]) -> Read {
    let (mut buf, len) = buffer(message);
    let start = parse_start_line(&mut buf, len).expect("a status line");
    assert_eq!(start.method, Method::Response);
    let headers =
        find_headers::<ResponseHeaders>(&mut buf, start.headers, len, ResponseHeaders::ALL);
    Read {
        status: start.status,
        method: cseq_method(&mut buf, headers.value(ResponseHeaders::CSEQ)),
        user: to_user(&mut buf, headers.value(ResponseHeaders::TO)),
        expires: granted_expires(
            &mut buf,
            headers.value(ResponseHeaders::EXPIRES),
            headers.value(ResponseHeaders::CONTACT),
        ),
    }
}

fn user(text: &str) -> Option<[u8; TOLL_PREFIX_MAX]> {
    let mut user = [0; TOLL_PREFIX_MAX];
    user[..text.len()].copy_from_slice(text.as_bytes());
    Some(user)
}

#[test]
fn reads_a_registrar_challenge() {
    let read = read_response(CHALLENGE);
    assert_eq!(read.status, 401);
    assert_eq!(read.method, Some(Method::Register));
    assert_eq!(read.user, user("1001"));
    assert_eq!(read.expires, None);
}

#[test]
fn reads_a_granted_registration_from_the_contact_parameter() {
    let read = read_response(GRANTED);
    assert_eq!(read.status, 200);
    assert_eq!(read.method, Some(Method::Register));
    assert_eq!(read.expires, Some(600));
}

#[test]
fn the_expires_header_comes_first() {
    let message = String::from_utf8(GRANTED.to_vec())
        .unwrap()
        .replace("Server:", "Expires: 3600\r\nServer:");
    assert_eq!(read_response(message.as_bytes()).expires, Some(3600));
}

#[test]
fn compact_forms_odd_case_and_blanks_before_the_colon() {
    let message = b"SIP/2.0 404 Not Found\r\n\
v: SIP/2.0/UDP 203.0.113.5:5070;branch=z9hG4bK-3\r\n\
t: \"svwar\" <sip:2042@192.0.2.1>;tag=x\r\n\
cSeQ \t:  17   OPTIONS\r\n\
m: <sip:2042@203.0.113.5> ; Expires = 30\r\n\
Content-Length: 0\r\n\r\n";
    let read = read_response(message);
    assert_eq!(read.status, 404);
    assert_eq!(read.method, Some(Method::Options));
    assert_eq!(read.user, user("2042"));
    assert_eq!(read.expires, Some(30));
}

#[test]
fn to_without_angle_brackets_and_tel_uris() {
    let message = b"SIP/2.0 403 Forbidden\r\nTo: sip:100@192.0.2.1;tag=1\r\nCSeq: 1 INVITE\r\n\r\n";
    let read = read_response(message);
    assert_eq!((read.status, read.method), (403, Some(Method::Invite)));
    assert_eq!(read.user, user("100"));
    let message = b"SIP/2.0 484 Address Incomplete\r\nTo: <tel:+4930123>\r\nCSeq: 9 INVITE\r\n\r\n";
    assert_eq!(read_response(message).user, user("+4930123"));
    let message = b"SIP/2.0 404 Not Found\r\nTo: <http://x/>\r\nCSeq: 9 INVITE\r\n\r\n";
    assert_eq!(read_response(message).user, None);
}

#[test]
fn timestamp_and_topic_are_not_to_content_is_not_contact() {
    let message = b"SIP/2.0 200 OK\r\nTimestamp: 54\r\nTopic: x\r\nContent-Type: a;expires=5\r\nCSeq: 1 REGISTER\r\nTo: <sip:7@h>\r\n\r\n";
    let read = read_response(message);
    assert_eq!(read.user, user("7"));
    assert_eq!(read.expires, None);
}

#[test]
fn malformed_cseq_values_give_no_method() {
    for cseq in ["REGISTER", "1", "x REGISTER", "1 REGISTERREGISTERREGISTER"] {
        let message = format!("SIP/2.0 401 Unauthorized\r\nCSeq: {cseq}\r\n\r\n");
        assert_eq!(
            read_response(message.as_bytes()).method,
            None,
            "CSeq: {cseq}"
        );
    }
    let message = b"SIP/2.0 401 Unauthorized\r\nCSeq: 1 FOO\r\n\r\n";
    assert_eq!(read_response(message).method, Some(Method::Other));
}

#[test]
fn expiry_saturates_and_needs_digits() {
    let message = b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nExpires: 99999999999\r\n\r\n";
    assert_eq!(read_response(message).expires, Some(u32::MAX - 1));
    let message = b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nExpires: soon\r\n\r\n";
    assert_eq!(read_response(message).expires, None);
}

#[test]
fn classes() {
    use Method::*;
    assert_eq!(classify(401, Register), ResponseClass::Challenge);
    assert_eq!(classify(407, Invite), ResponseClass::Challenge);
    for method in [Register, Invite, Options, Subscribe] {
        for status in [403, 404, 484] {
            assert_eq!(classify(status, method), ResponseClass::Rejection);
        }
    }
    assert_eq!(classify(404, Bye), ResponseClass::Other);
    assert_eq!(classify(200, Register), ResponseClass::Success);
    assert_eq!(classify(202, Invite), ResponseClass::Success);
    assert_eq!(classify(200, Options), ResponseClass::Other);
    assert_eq!(classify(486, Invite), ResponseClass::Other);
    assert_eq!(classify(100, Invite), ResponseClass::Other);
}
