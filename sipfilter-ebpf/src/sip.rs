//! SIP message inspection (RFC 3261) on the per-CPU scratch copy of a message.
//!
//! Everything here works on a [`ScanBuf`] of 8-byte words and a length, so the same code runs
//! in the kernel and in host unit tests. Every index is masked into the buffer, so the verifier
//! can prove each read in bounds without following the parse, and every loop has a named bound.
//! The caller copies at most [`SCAN_BYTES`] of the message and calls [`seal`] first.

use sipfilter_common::{Method, TOLL_PREFIX_MAX};

use self::walk::{Stop, Walk};
use crate::swar::{
    Budget, bytes_equal, first_flagged, fold_case, from_byte, low_bytes, opaque, word_of,
};

/// Bytes of a SIP message the datapath copies and inspects. A power of two, so masking keeps
/// every index provably inside the buffer. Headers beyond it are not inspected.
pub const SCAN_BYTES: usize = 2048;
/// Words of the scan window, plus four so a read of the four words after any masked index
/// stays inside.
pub const SCAN_WORDS: usize = SCAN_BYTES / 8 + 4;

/// Per-CPU scratch space of the SIP stage (`SF_SCRATCH`), too large for the 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanBuf {
    /// The message's first bytes, as little-endian words.
    pub words: [u64; SCAN_WORDS],
    /// Results of the header scan. They live in the map value, not in locals: the verifier does
    /// not track map memory, so a header found in one iteration does not split its state for
    /// every iteration after it (which would make verification quadratic in the loop length).
    pub found: Headers,
    /// `wanted` bits of the headers the scan still looks for; in memory for the same reason
    /// (read and written only on the few lines [`HeaderSet::classify`] looks at).
    remaining: u64,
    /// Header lines the scan has seen; in memory, to keep the line walk's registers free.
    lines: u64,
    /// Round trip through memory for [`ScanBuf::widen`].
    pub spill: u64,
}

/// Fields of [`ScanBuf::found`] and the scan state (`remaining`, `lines`) are read and written
/// through these volatile accessors: with plain accesses LLVM keeps them in registers across the
/// scan loop (the buffer is `&mut`, nothing else can write it), and the verifier is back to one
/// state per combination of found headers.
impl ScanBuf {
    #[inline(always)]
    fn value_start(&mut self, index: usize) -> *mut u64 {
        &raw mut self.found.values[index & (MAX_HEADERS - 1)].start
    }

    #[inline(always)]
    fn value_end(&mut self, index: usize) -> *mut u64 {
        &raw mut self.found.values[index & (MAX_HEADERS - 1)].end
    }

    #[inline(always)]
    fn get(slot: *mut u64) -> u64 {
        // SAFETY: callers pass a field of a live `ScanBuf`.
        unsafe { slot.read_volatile() }
    }

    #[inline(always)]
    fn set(slot: *mut u64, value: u64) {
        // SAFETY: callers pass a field of a live `ScanBuf`.
        unsafe { slot.write_volatile(value) }
    }

    #[inline(always)]
    fn remaining(&mut self) -> u64 {
        Self::get(&raw mut self.remaining)
    }

    #[inline(always)]
    fn set_remaining(&mut self, remaining: u64) {
        Self::set(&raw mut self.remaining, remaining);
    }

    #[inline(always)]
    fn lines(&mut self) -> u64 {
        Self::get(&raw mut self.lines)
    }

    #[inline(always)]
    fn set_lines(&mut self, lines: u64) {
        Self::set(&raw mut self.lines, lines);
    }

    #[inline(always)]
    fn set_complete(&mut self, complete: bool) {
        Self::set(&raw mut self.found.complete, u64::from(complete));
    }

    /// Returns `value` unchanged, but as far as the verifier knows, any value: it does not track
    /// what a map value holds. Used where several branches meet with values the verifier knows
    /// exactly (a method, a position found in a given loop iteration): unless they are widened,
    /// the verifier walks all that follows once per branch instead of once in all.
    #[inline(always)]
    pub fn widen(&mut self, value: usize) -> usize {
        let slot = &raw mut self.spill;
        // SAFETY: a field of `self`, written then read.
        unsafe {
            slot.write_volatile(value as u64);
            slot.read_volatile() as usize
        }
    }
}

const _: () = assert!(SCAN_BYTES.is_power_of_two());

/// Keeps a word index inside the window; the buffer has one extra word so `index + 1` is
/// always in bounds too.
const WORD_INDEX_MASK: usize = SCAN_BYTES / 8 - 1;

/// Keeps a loop-carried position bounded for the verifier (every position is below
/// `SCAN_BYTES`, so the mask never changes a value).
///
/// Why loops look the way they do: the verifier walks a bounded loop once per iteration unless
/// the state at the loop head repeats. A counter that starts at a constant is tracked exactly,
/// so nothing ever repeats and a 900-step scan costs the full 1M-instruction budget. So each
/// loop counts down a budget computed from the message length (a value the verifier only knows
/// as a range), and every position it carries is masked: after two or three iterations the
/// states repeat and the rest is pruned.
const POS_MASK: usize = 2 * SCAN_BYTES - 1;

#[inline(always)]
fn bounded(pos: usize) -> usize {
    opaque(pos) & POS_MASK
}

/// Range of the header scan's word index, as the verifier must see it: a power of two minus one,
/// above the last word (`SCAN_BYTES / 8`).
const INDEX_RANGE: usize = 2 * SCAN_BYTES / 8 - 1;

/// Header lines the scan follows within the window. Real messages have a few dozen, even
/// through several proxies; a message with more is not inspected further, and the caller
/// learns so from [`Headers::complete`].
pub const MAX_HEADER_LINES: usize = 128;

/// Steps of the header scan for a message of `len` bytes: each step either moves on by at least
/// one word or takes one line end (the start line's first), so this many steps reach the end of
/// the window or the line limit, whichever comes first. It also bounds the verifier's walk of
/// the loop.
#[inline(always)]
fn header_scan_steps(len: usize) -> usize {
    len.min(SCAN_BYTES) / 8 + 2 + MAX_HEADER_LINES
}

/// Bytes of a header value the scanner patterns are matched in (`crate::matcher`). User-Agent
/// and From values are far shorter; a longer value is inspected up to here.
pub const MAX_VALUE_BYTES: usize = 256;

/// Longest method token we accept for an extension method; the longest standard one is
/// `SUBSCRIBE` (9).
const MAX_METHOD_BYTES: usize = 16;

const _: () = assert!(SCAN_WORDS == WORD_INDEX_MASK + 5);
// The line walk addresses the words from the start of the buffer.
const _: () = assert!(core::mem::offset_of!(ScanBuf, words) == 0);

/// Bytes of a payload of `payload_len` bytes to copy into the scan buffer: `None` for an empty
/// payload, else 1 to [`SCAN_BYTES`]. The copy helpers refuse a size the verifier cannot prove
/// positive, and the verifier of Linux 6.1 learns nothing from a `!= 0` test on a range that
/// starts at zero (6.12's does); a mask and an add give it the range 1 to `SCAN_BYTES` on both.
#[inline(always)]
pub fn copy_len(payload_len: usize) -> Option<usize> {
    if payload_len == 0 {
        return None;
    }
    Some((opaque(payload_len.min(SCAN_BYTES) - 1) & (SCAN_BYTES - 1)) + 1)
}

/// Zeroes the bytes after `len` up to the end of the next word, so reads that run past the
/// message see zeros, never bytes of a previous packet.
#[inline(always)]
pub fn seal(buf: &mut ScanBuf, len: usize) {
    let index = len >> 3;
    if index <= WORD_INDEX_MASK {
        buf.words[index] &= low_bytes(len & 7);
        buf.words[index + 1] = 0;
    } else {
        buf.words[WORD_INDEX_MASK + 1] = 0;
    }
}

/// Word `index` of the window (masked into it).
#[inline(always)]
pub fn word(buf: &ScanBuf, index: usize) -> u64 {
    buf.words[opaque(index) & WORD_INDEX_MASK]
}

/// The 8 bytes starting at `pos`, as a little-endian word (byte `pos` lowest).
#[inline(always)]
pub fn load8(buf: &ScanBuf, pos: usize) -> u64 {
    let index = opaque(pos >> 3) & WORD_INDEX_MASK;
    let shift = ((pos & 7) * 8) as u32;
    let low = buf.words[index] >> shift;
    // Two shifts so that `shift == 0` shifts the next word out entirely (a single shift by 64
    // would be undefined).
    let high = (buf.words[index + 1] << 1) << (63 - shift);
    low | high
}

#[inline(always)]
pub fn byte_at(buf: &ScanBuf, pos: usize) -> u8 {
    (word(buf, pos >> 3) >> ((pos & 7) * 8)) as u8
}

/// Position of the first `byte` (not zero) at or after `from` and before `len`.
#[inline(always)]
pub fn find_byte(buf: &mut ScanBuf, from: usize, len: usize, byte: u8) -> Option<usize> {
    // Bounded for the verifier whatever `len` the caller passes: it walks the loop until the
    // budget runs out on its first path.
    scan_for(buf, from, len, byte, len.min(SCAN_BYTES) / 8 + 1)
}

/// [`find_byte`] within a header value (`from..end`), looking at most [`MAX_VALUE_BYTES`]
/// bytes ahead: a loop of a few steps instead of one sized for the whole window, which keeps
/// programs that search several values well within the verifier's budget.
#[inline(always)]
pub fn find_in_value(buf: &mut ScanBuf, from: usize, end: usize, byte: u8) -> Option<usize> {
    scan_for(
        buf,
        from,
        end,
        byte,
        end.saturating_sub(from).min(MAX_VALUE_BYTES) / 8 + 2,
    )
}

#[inline(always)]
fn scan_for(buf: &mut ScanBuf, from: usize, len: usize, byte: u8, steps: usize) -> Option<usize> {
    let mut index = from >> 3;
    let mut mask = bytes_equal(word(buf, index), byte) & from_byte(from & 7);
    let mut budget = Budget::new(steps);
    while budget.take() {
        if mask != 0 {
            let pos = bounded(buf.widen(index * 8 + first_flagged(mask)));
            return if pos < len { Some(pos) } else { None };
        }
        index = bounded(index + 1);
        if index * 8 >= len {
            return None;
        }
        mask = bytes_equal(word(buf, index), byte);
    }
    None
}

/// `\r\n\r\n` or `\r\n` alone: a keep-alive (RFC 5626 section 4.4.1).
#[inline(always)]
pub fn is_keepalive(buf: &ScanBuf, len: usize) -> bool {
    let head = buf.words[0];
    (len == 4 && head & low_bytes(4) == word_of(b"\r\n\r\n"))
        || (len == 2 && head & low_bytes(2) == word_of(b"\r\n"))
}

/// A STUN message (RFC 5389): top two bits zero, the magic cookie, and a length that fits.
#[inline(always)]
pub fn is_stun(buf: &ScanBuf, len: usize) -> bool {
    let head = buf.words[0];
    let cookie = (head >> 32) as u32;
    let body_len = u16::from_be(((head >> 16) & 0xffff) as u16) as usize;
    len >= 20
        && head & 0xc0 == 0
        && cookie == u32::from_le_bytes([0x21, 0x12, 0xa4, 0x42])
        && body_len + 20 <= len
}

/// What the first line of a message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartLine {
    pub method: Method,
    /// Where the Request-URI begins (requests only).
    pub uri: usize,
    /// Where the first header line begins.
    pub headers: usize,
    /// The status code of a response; 0 for a request.
    pub status: u16,
}

/// A method token with its trailing space, as words to compare with the message's first 16
/// bytes. Methods are case-sensitive (RFC 3261 section 7.1).
struct MethodToken {
    method: Method,
    len: usize,
    first: u64,
    second: u64,
}

const fn token(method: Method, text: &[u8]) -> MethodToken {
    let mut second = [0u8; 8];
    let mut i = 8;
    while i < text.len() {
        second[i - 8] = text[i];
        i += 1;
    }
    MethodToken {
        method,
        len: text.len(),
        first: word_of(text),
        second: word_of(&second),
    }
}

/// Most frequent first: the scan stops at the first match.
const METHOD_TOKENS: [MethodToken; 14] = [
    token(Method::Register, b"REGISTER "),
    token(Method::Invite, b"INVITE "),
    token(Method::Options, b"OPTIONS "),
    token(Method::Ack, b"ACK "),
    token(Method::Bye, b"BYE "),
    token(Method::Cancel, b"CANCEL "),
    token(Method::Subscribe, b"SUBSCRIBE "),
    token(Method::Notify, b"NOTIFY "),
    token(Method::Publish, b"PUBLISH "),
    token(Method::Info, b"INFO "),
    token(Method::Refer, b"REFER "),
    token(Method::Message, b"MESSAGE "),
    token(Method::Prack, b"PRACK "),
    token(Method::Update, b"UPDATE "),
];

const SIP_VERSION_SP: u64 = word_of(b"SIP/2.0 ");
const SIP_VERSION: u64 = word_of(b"SIP/2.0");

/// Parses the start line: `Method SP Request-URI SP SIP/2.0 CRLF` or
/// `SIP/2.0 SP Status-Code SP Reason CRLF`. `None` when the message does not start with one
/// (not SIP, or for TCP a segment that continues an earlier message).
#[inline(always)]
pub fn parse_start_line(buf: &mut ScanBuf, len: usize) -> Option<StartLine> {
    let first = buf.words[0];
    let second = buf.words[1];
    if len >= 12 && first == SIP_VERSION_SP {
        let status = second.to_le_bytes();
        if !(b'1'..=b'6').contains(&status[0])
            || !status[1].is_ascii_digit()
            || !status[2].is_ascii_digit()
        {
            return None;
        }
        let line_end = find_byte(buf, 11, len, b'\n')?;
        let digit = |at: usize| u16::from(status[at] - b'0');
        return Some(StartLine {
            method: Method::Response,
            uri: 0,
            headers: line_end + 1,
            status: digit(0) * 100 + digit(1) * 10 + digit(2),
        });
    }

    let (method, uri) = match_method(first, second)?;
    let method = Method::from_u8(buf.widen(method as usize) as u8)?;
    let uri = bounded(buf.widen(uri));
    if uri >= len || byte_at(buf, uri) == b' ' {
        return None;
    }
    let line_end = find_byte(buf, uri, len, b'\n')?;
    // The line ends in `SP SIP/2.0` and CRLF (a bare LF is tolerated, as most parsers do).
    let before_cr = if line_end > 0 && byte_at(buf, line_end - 1) == b'\r' {
        line_end - 1
    } else {
        line_end
    };
    if before_cr < uri + 8 || load8(buf, before_cr - 8) != (SIP_VERSION << 8 | u64::from(b' ')) {
        return None;
    }
    Some(StartLine {
        method,
        uri,
        headers: line_end + 1,
        status: 0,
    })
}

#[inline(always)]
fn match_method(first: u64, second: u64) -> Option<(Method, usize)> {
    for token in METHOD_TOKENS.iter() {
        let (first_mask, second_mask) = if token.len >= 8 {
            (u64::MAX, low_bytes(token.len - 8))
        } else {
            (low_bytes(token.len), 0)
        };
        if first & first_mask == token.first && second & second_mask == token.second {
            return Some((token.method, token.len));
        }
    }
    // An extension method: an upper-case letter, then a token, then one space.
    let lead = first as u8;
    if !lead.is_ascii_uppercase() {
        return None;
    }
    let space = bytes_equal(first, b' ');
    let at = if space != 0 {
        first_flagged(space)
    } else {
        let space = bytes_equal(second, b' ');
        if space == 0 {
            return None;
        }
        8 + first_flagged(space)
    };
    if at == 0 || at > MAX_METHOD_BYTES {
        return None;
    }
    Some((Method::Other, at + 1))
}

/// The first bytes of a Request-URI's user part, for the toll-fraud prefix lookup: after
/// `sip:`, `sips:` or `tel:` (scheme case-insensitive), up to the first of `@ ; : ? > SP CR`,
/// zero-filled. `None` for other schemes.
#[inline(always)]
pub fn uri_user(buf: &ScanBuf, uri: usize) -> Option<[u8; TOLL_PREFIX_MAX]> {
    let scheme = fold_case(load8(buf, uri));
    let skip =
        if scheme & low_bytes(4) == word_of(b"sip:") || scheme & low_bytes(4) == word_of(b"tel:") {
            4
        } else if scheme & low_bytes(5) == word_of(b"sips:") {
            5
        } else {
            return None;
        };
    let mut first = load8(buf, uri + skip);
    let mut second = load8(buf, uri + skip + 8);
    let stop = |word: u64| {
        bytes_equal(word, b'@')
            | bytes_equal(word, b';')
            | bytes_equal(word, b':')
            | bytes_equal(word, b'?')
            | bytes_equal(word, b'>')
            | bytes_equal(word, b' ')
            | bytes_equal(word, b'\r')
    };
    let stop_first = stop(first);
    if stop_first != 0 {
        first &= low_bytes(first_flagged(stop_first));
        second = 0;
    } else {
        let stop_second = stop(second);
        if stop_second != 0 {
            second &= low_bytes(first_flagged(stop_second));
        }
    }
    let mut user = [0u8; TOLL_PREFIX_MAX];
    user[..8].copy_from_slice(&first.to_le_bytes());
    user[8..].copy_from_slice(&second.to_le_bytes());
    Some(user)
}

/// Where a header's value lies: `start..end`, `start == 0` when the header is absent (no value
/// can start at 0, which holds the start line).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub const fn is_present(&self) -> bool {
        self.start != 0
    }
}

/// Headers one scan can look for at most.
pub const MAX_HEADERS: usize = 4;

/// The `wanted` bit of the header at `index` of a [`HeaderSet`].
pub const fn wanted(index: usize) -> u64 {
    1 << index
}

/// Values of the wanted headers (the first occurrence of each), indexed as the [`HeaderSet`]
/// the scan used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub values: [Span; MAX_HEADERS],
    /// The scan reached the end of the headers or of the window; false when the message has
    /// more than [`MAX_HEADER_LINES`] header lines before it. A word, not a `bool`, so the
    /// struct has no padding and is cleared with word stores rather than a `memset` call.
    pub complete: u64,
}

impl Headers {
    pub const fn is_complete(&self) -> bool {
        self.complete != 0
    }

    pub const fn value(&self, index: usize) -> Span {
        self.values[index]
    }
}

/// The headers one kind of scan looks for. The line loop ([`find_headers`]) is shared; a set
/// only recognises its own header names, so each program carries the comparisons it needs and
/// no others.
pub trait HeaderSet {
    /// The first letters of the wanted header names, compact forms included (lower case; both
    /// cases are looked at). A line that starts with another byte is passed over without
    /// [`HeaderSet::classify`].
    const LEADS: &'static [u8];
    /// [`HeaderSet::LEADS`] as the scan tests them ([`lead_map`]).
    const LEAD_MAP: u64 = lead_map(Self::LEADS);

    /// Recognises a wanted header at the start of `line` (`head` holds its first 8 bytes):
    /// its index in the set and where its value starts.
    fn classify(buf: &ScanBuf, line: usize, head: u64, wanted: u64) -> Option<(usize, usize)>;
}

/// The bytes a line the scan must look at can start with: the letters of `leads` in either case,
/// and CR and LF (the empty line that ends the header block), as bit `b % 64` for byte `b`. One
/// word, so the line walk tests it in a register. The bytes that share a bit with one of those
/// (`M` with CR, `J` with LF, `5` with `u`, bytes above 127) at worst send a line to
/// [`HeaderSet::classify`] for nothing.
pub const fn lead_map(leads: &[u8]) -> u64 {
    let mut map = 1 << (b'\r' & 63) | 1 << (b'\n' & 63);
    let mut i = 0;
    while i < leads.len() {
        map |= 1 << (leads[i].to_ascii_lowercase() & 63);
        map |= 1 << (leads[i].to_ascii_uppercase() & 63);
        i += 1;
    }
    map
}

/// Whether a line starting with `lead` may be a wanted header or the end of the block.
#[cfg(not(target_arch = "bpf"))]
fn may_matter(map: u64, lead: u8) -> bool {
    (map >> (lead & 63)) & 1 != 0
}

/// What the ingress scan looks for in requests: the headers scanners betray themselves in.
pub struct RequestHeaders;

impl RequestHeaders {
    pub const USER_AGENT: usize = 0;
    pub const FROM: usize = 1;
}

const USER_AGE: u64 = word_of(b"user-age");
const NT: u64 = word_of(b"nt");
const FROM: u64 = word_of(b"from");

impl HeaderSet for RequestHeaders {
    // `f` is From's compact form (RFC 3261 section 7.3.3).
    const LEADS: &'static [u8] = b"uf";

    #[inline(always)]
    fn classify(buf: &ScanBuf, line: usize, head: u64, wanted: u64) -> Option<(usize, usize)> {
        let name = fold_case(head);
        let lead = name as u8;
        if lead == b'u' && wanted & self::wanted(Self::USER_AGENT) != 0 {
            if name == USER_AGE && fold_case(load8(buf, line + 8)) & low_bytes(2) == NT {
                return after_colon(buf, line + 10).map(|value| (Self::USER_AGENT, value));
            }
        } else if lead == b'f' && wanted & self::wanted(Self::FROM) != 0 {
            let name_len = if name & low_bytes(4) == FROM { 4 } else { 1 };
            return after_colon(buf, line + name_len).map(|value| (Self::FROM, value));
        }
        None
    }
}

/// Finds the wanted headers of set `S` between `start` (the first header line, right after the
/// start line's line end, so never 0) and the empty line that ends the header block, or `len`.
/// Header names are case-insensitive, compact forms exist, and whitespace may precede the colon
/// (RFC 3261 sections 7.3.1 and 25.1). The result is also left in `buf.found`.
#[inline(always)]
pub fn find_headers<S: HeaderSet>(
    buf: &mut ScanBuf,
    start: usize,
    len: usize,
    wanted: u64,
) -> Headers {
    find_header_starts::<S>(buf, start, len, wanted);
    let len = widened_len(buf, len);
    for index in 0..MAX_HEADERS {
        let value = ScanBuf::get(buf.value_start(index));
        if value != 0 {
            let span = value_span(buf, value, len);
            ScanBuf::set(buf.value_end(index), span.end);
        }
    }
    buf.found
}

/// [`find_headers`] without the values' ends (each `end` is 0): for a caller that may not
/// need every value, and finds the ends of those it does with [`value_span`].
#[inline(always)]
pub fn find_header_starts<S: HeaderSet>(
    buf: &mut ScanBuf,
    start: usize,
    len: usize,
    wanted: u64,
) -> Headers {
    for index in 0..MAX_HEADERS {
        ScanBuf::set(buf.value_start(index), 0);
        ScanBuf::set(buf.value_end(index), 0);
    }
    buf.set_remaining(wanted);
    scan_lines::<S>(buf, start, len);
    buf.found
}

/// `len` after a header scan, as [`value_span`] wants it. Widened: the scan loop's exits leave
/// the verifier knowing `len` differently, and it would walk all that follows once for each (a
/// mask, not `min`, which would split it again).
#[inline(always)]
pub fn widened_len(buf: &mut ScanBuf, len: usize) -> usize {
    buf.widen(len) & (2 * SCAN_BYTES - 1)
}

/// The value that starts at `start`: it ends at its line's end, or [`MAX_VALUE_BYTES`] on, past
/// which nothing reads a value. Found here rather than in the line walk, which then carries
/// nothing from one line to the next but the line count.
#[inline(always)]
pub fn value_span(buf: &mut ScanBuf, start: u64, len: usize) -> Span {
    let start = start as usize;
    let end = find_in_value(buf, start, len, b'\n').unwrap_or(len.min(start + MAX_VALUE_BYTES));
    // Widened: each way out of the search knows `end` differently, and the verifier would walk
    // the matcher once for each.
    Span {
        start: start as u64,
        end: buf.widen(end) as u64,
    }
}

/// Classifies a line and records where a wanted header's value starts.
#[inline(always)]
fn record<S: HeaderSet>(buf: &mut ScanBuf, line: usize, head: u64) {
    let remaining = buf.remaining();
    if remaining == 0 {
        return;
    }
    // Packed and widened: each way through `classify` knows its header's index exactly, and
    // the verifier would otherwise walk what follows once per header name.
    let hit = match S::classify(buf, line, head, remaining) {
        Some((index, value)) => (index + 1) << 16 | (value & 0xffff),
        None => return,
    };
    let hit = buf.widen(hit);
    let index = ((hit >> 16) - 1) & (MAX_HEADERS - 1);
    ScanBuf::set(buf.value_start(index), (hit & 0xffff) as u64);
    buf.set_remaining(remaining & !wanted(index));
}

/// The line loop: [`walk::next_line`] finds each line that may be a wanted header (or the
/// empty line), and only those go on to [`inspect_line`] and [`record`].
#[inline(always)]
fn scan_lines<S: HeaderSet>(buf: &mut ScanBuf, start: usize, len: usize) {
    // The scan starts on the start line's line end, so the first header line is found like
    // every other one.
    let first = start.wrapping_sub(1);
    // Widened once: the offset then has the same range on every path that reaches the loop
    // head, so the verifier sees the paths converge.
    let index = buf.widen(first >> 3) & INDEX_RANGE;
    let mut walk = Walk {
        offset: index * 8,
        newlines: (bytes_equal(word(buf, index), b'\n') & from_byte(first & 7))
            | 0x80 << ((first & 7) * 8),
        // Opaque, so LLVM keeps a counter that goes down to zero: it would otherwise rewrite
        // it into one that counts up from a negative start, which the verifier cannot bound.
        budget: opaque(header_scan_steps(len)),
    };
    buf.set_lines(0);
    // Set only on the way out of the loop, so it does not split the loop's states.
    let mut complete = false;
    // Every turn takes at least one step of the budget. A signed test, as in `Budget`.
    while walk.budget as isize > 0 {
        match walk::next_line(buf, &mut walk, len, S::LEAD_MAP) {
            Stop::Line(line) => {
                let line = bounded(line);
                let Some(head) = inspect_line(buf, line) else {
                    complete = true;
                    break;
                };
                // The empty line that ends the block is not a header line: the limit is
                // checked once a line is known not to be it.
                if buf.lines() > MAX_HEADER_LINES as u64 {
                    break;
                }
                record::<S>(buf, line, head);
            }
            Stop::End => {
                complete = true;
                break;
            }
            Stop::Exhausted => break,
        }
    }
    // Leaving without reaching the end means more header lines than the scan follows.
    buf.set_complete(complete);
}

/// The first 8 bytes of the line starting at `line`, or `None` if it is the empty line that
/// ends the header block.
#[inline(always)]
fn inspect_line(buf: &ScanBuf, line: usize) -> Option<u64> {
    let head = load8(buf, line);
    if head & low_bytes(2) == word_of(b"\r\n") || head & low_bytes(1) == word_of(b"\n") {
        return None;
    }
    Some(head)
}

/// `HCOLON = *( SP / HTAB ) ":" SWS`: where the value starts, if the bytes at `pos` are up to
/// seven blanks and a colon.
#[inline(always)]
fn after_colon(buf: &ScanBuf, pos: usize) -> Option<usize> {
    let text = load8(buf, pos);
    let blanks = bytes_equal(text, b' ') | bytes_equal(text, b'\t');
    let others = !blanks & 0x8080_8080_8080_8080;
    if others == 0 {
        return None;
    }
    let at = first_flagged(others);
    if (text >> (at * 8)) as u8 == b':' {
        Some(pos + at + 1)
    } else {
        None
    }
}

pub mod response;
mod walk;

#[cfg(test)]
mod tests;
