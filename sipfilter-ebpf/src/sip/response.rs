//! SIP responses the host sends, as the egress watcher reads them (RFC 3261 sections 8.2.6,
//! 10.3 and 22): the status, the method of the request answered (CSeq), the user it concerned
//! (the To URI's user part), and for a granted registration its lifetime. Built on the same
//! start-line parser and header scan as the ingress checks.

use sipfilter_common::{Method, ResponseClass, TOLL_PREFIX_MAX};

use super::{
    HeaderSet, ScanBuf, Span, after_colon, byte_at, find_in_value, load8, match_method, uri_user,
};
use crate::swar::{bytes_equal, first_flagged, fold_case, low_bytes, word_of};

/// The headers a response is read for.
pub struct ResponseHeaders;

impl ResponseHeaders {
    pub const CSEQ: usize = 0;
    pub const TO: usize = 1;
    pub const CONTACT: usize = 2;
    pub const EXPIRES: usize = 3;
    /// `wanted` bits of all four.
    pub const ALL: u64 = 0b1111;
}

const CSEQ: u64 = word_of(b"cseq");
const CONTACT: u64 = word_of(b"contact");
const EXPIRES: u64 = word_of(b"expires");
const TO: u64 = word_of(b"to");

impl HeaderSet for ResponseHeaders {
    // `m` is Contact's compact form, `t` To's and also its full name's first letter.
    const LEADS: &'static [u8] = b"cmte";

    #[inline(always)]
    fn classify(buf: &ScanBuf, line: usize, head: u64, wanted: u64) -> Option<(usize, usize)> {
        let name = fold_case(head);
        // The header and its name's length first, the colon once: every way through the names
        // then shares one copy of `after_colon` (fewer instructions for the verifier to walk).
        let (index, name_len) = match name as u8 {
            b'c' if name & low_bytes(4) == CSEQ => (Self::CSEQ, 4),
            b'c' if name & low_bytes(7) == CONTACT => (Self::CONTACT, 7),
            // `m` is Contact's compact form, `t` To's (RFC 3261 section 7.3.3).
            b'm' => (Self::CONTACT, 1),
            b't' if name & low_bytes(2) == TO => (Self::TO, 2),
            b't' => (Self::TO, 1),
            b'e' if name & low_bytes(7) == EXPIRES => (Self::EXPIRES, 7),
            _ => return None,
        };
        if wanted & super::wanted(index) == 0 {
            return None;
        }
        after_colon(buf, line + name_len).map(|value| (index, value))
    }
}

/// What a response means for the source of the request it answers.
#[inline(always)]
pub fn classify(status: u16, method: Method) -> ResponseClass {
    let refusable = matches!(
        method,
        Method::Register | Method::Invite | Method::Options | Method::Subscribe
    );
    match status {
        401 | 407 => ResponseClass::Challenge,
        403 | 404 | 484 if refusable => ResponseClass::Rejection,
        200..=299 if matches!(method, Method::Register | Method::Invite) => ResponseClass::Success,
        _ => ResponseClass::Other,
    }
}

/// Where the first byte after up to 8 blanks (SP, HTAB) at `pos` lies.
#[inline(always)]
fn skip_blanks(buf: &ScanBuf, pos: usize) -> usize {
    let text = load8(buf, pos);
    let blanks = bytes_equal(text, b' ') | bytes_equal(text, b'\t');
    let others = !blanks & 0x8080_8080_8080_8080;
    if others == 0 {
        pos + 8
    } else {
        pos + first_flagged(others)
    }
}

/// The method of `CSeq: 1 REGISTER`. `None` when the value is not a sequence number and a
/// method.
#[inline(always)]
pub fn cseq_method(buf: &mut ScanBuf, value: Span) -> Option<Method> {
    if !value.is_present() {
        return None;
    }
    let end = value.end as usize;
    let number = skip_blanks(buf, value.start as usize);
    if !byte_at(buf, number).is_ascii_digit() {
        return None;
    }
    let gap =
        find_in_value(buf, number, end, b' ').or_else(|| find_in_value(buf, number, end, b'\t'))?;
    let method = skip_blanks(buf, gap);
    // The method token ends the value: make it end in one space, as `match_method` expects
    // of a request line.
    let mut first = load8(buf, method);
    let mut second = load8(buf, method + 8);
    let stop = |word: u64| {
        bytes_equal(word, b'\r')
            | bytes_equal(word, b'\n')
            | bytes_equal(word, b' ')
            | bytes_equal(word, b'\t')
    };
    let stop_first = stop(first);
    if stop_first != 0 {
        let at = first_flagged(stop_first);
        first = first & low_bytes(at) | u64::from(b' ') << (at * 8);
        second = 0;
    } else {
        let stop_second = stop(second);
        if stop_second == 0 {
            return None;
        }
        let at = first_flagged(stop_second);
        second = second & low_bytes(at) | u64::from(b' ') << (at * 8);
    }
    match_method(first, second).map(|(method, _)| method)
}

/// The user part of the To URI (`"Bob" <sip:100@pbx>;tag=x` gives `100`), zero-filled, cut at
/// [`TOLL_PREFIX_MAX`] bytes. A response's To is the request's To, which for REGISTER names
/// the account being registered and for a request outside a dialog is normally its
/// Request-URI. `None` for other URI schemes.
#[inline(always)]
pub fn to_user(buf: &mut ScanBuf, value: Span) -> Option<[u8; TOLL_PREFIX_MAX]> {
    if !value.is_present() {
        return None;
    }
    let uri = match find_in_value(buf, value.start as usize, value.end as usize, b'<') {
        Some(open) => open + 1,
        None => skip_blanks(buf, value.start as usize),
    };
    uri_user(buf, uri)
}

/// Digits at `pos` as a number of seconds (at most 10 digits; saturates below
/// `EXPIRES_ABSENT`). `None` if `pos` holds no digit.
#[inline(always)]
fn seconds(buf: &ScanBuf, pos: usize) -> Option<u32> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for offset in 0..10 {
        let byte = byte_at(buf, pos + offset);
        if !byte.is_ascii_digit() {
            break;
        }
        value = value * 10 + u64::from(byte - b'0');
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    Some(value.min(u64::from(u32::MAX - 1)) as u32)
}

/// Parameters of a Contact value examined for `expires` (within its first
/// [`super::MAX_VALUE_BYTES`] bytes after each `;`).
const MAX_CONTACT_PARAMS: usize = 8;

/// The granted registration lifetime: the `Expires` header, else the first `expires` parameter
/// of the Contact header.
#[inline(always)]
pub fn granted_expires(buf: &mut ScanBuf, expires: Span, contact: Span) -> Option<u32> {
    if expires.is_present() {
        return seconds(buf, skip_blanks(buf, expires.start as usize));
    }
    if !contact.is_present() {
        return None;
    }
    let end = contact.end as usize;
    let mut pos = contact.start as usize;
    for _ in 0..MAX_CONTACT_PARAMS {
        let semicolon = find_in_value(buf, pos, end, b';')?;
        let name = skip_blanks(buf, semicolon + 1);
        if fold_case(load8(buf, name)) & low_bytes(7) == EXPIRES {
            let equals = skip_blanks(buf, name + 7);
            if byte_at(buf, equals) == b'=' {
                return seconds(buf, skip_blanks(buf, equals + 1));
            }
        }
        pos = semicolon + 1;
    }
    None
}

#[cfg(test)]
mod tests;
