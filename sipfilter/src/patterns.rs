//! Compiles a scanner-pattern list (User-Agent or From substrings) into the [`PatternSet`]
//! tables of the datapath's multi-pattern shift-or matcher (`sipfilter_ebpf::matcher`; the
//! layout and the step it computes are described on [`PatternSet`]).
//!
//! The patterns share one state of at most [`PatternSet::MAX_BITS`] bits, and each takes its
//! length plus 7 ([`BITS_PER_PATTERN_EXTRA`]). Before they are counted, patterns are lower-cased
//! and duplicates and patterns that contain another pattern of the list are dropped: they can
//! never change the outcome.
//!
//! For lists of two state words or more it also fills the pair prefilter
//! ([`PatternSet::pairs`]), which lets the datapath rule out most header values at a fraction of
//! the matcher's cost: for each pattern, the pair of bytes
//! at an even offset and the pair at an odd offset that are rarest in [`TYPICAL_VALUES`].

use sipfilter_common::PatternSet;

/// State bits a pattern takes besides one per byte: the wildcards after its last byte that let
/// the matcher see a match that ends anywhere in an 8-byte step.
pub const BITS_PER_PATTERN_EXTRA: usize = PatternSet::STEP - 1;

/// State bits a list may take in all.
pub const MAX_BITS: usize = PatternSet::MAX_BITS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {index} is empty: it would match every header")]
    Empty { index: usize },
    #[error(
        "the patterns need {needed} bits of matcher state but at most {MAX_BITS} fit (each \
         pattern takes its length plus {BITS_PER_PATTERN_EXTRA}; duplicates and patterns that \
         contain another are not counted): shorten or remove patterns"
    )]
    TooLong { needed: usize },
}

/// The patterns that decide a match: ASCII lower-cased, in list order, without duplicates and
/// without any pattern that contains another one (the shorter one matches wherever it does).
fn essential(patterns: &[String]) -> Result<Vec<Vec<u8>>, PatternError> {
    let lowered: Vec<Vec<u8>> = patterns
        .iter()
        .map(|pattern| pattern.as_bytes().to_ascii_lowercase())
        .collect();
    if let Some(index) = lowered.iter().position(Vec::is_empty) {
        return Err(PatternError::Empty { index });
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for (index, pattern) in lowered.iter().enumerate() {
        let redundant = lowered.iter().enumerate().any(|(other_index, other)| {
            other_index != index
                && contains(pattern, other)
                // Of two equal patterns, the first is kept.
                && (other.len() < pattern.len() || other_index < index)
        });
        if !redundant {
            kept.push(pattern.clone());
        }
    }
    Ok(kept)
}

fn contains(text: &[u8], pattern: &[u8]) -> bool {
    text.windows(pattern.len()).any(|window| window == pattern)
}

/// Header values of benign traffic: User-Agent and Server strings of phones, softphones, PBXs
/// and proxies, and From values of several forms. The pair prefilter takes from each pattern
/// the pairs that are rarest here, so that it rules out as many real values as it can; what
/// it picks changes how fast values are ruled out, never what matches.
const TYPICAL_VALUES: &[&str] = &[
    "Linphone/5.2.5 (belle-sip/5.2.4)",
    "Linphone Desktop/5.1.2 (Windows 10) LinphoneCore/5.2.0",
    "Zoiper rv2.10.20.3",
    "Z 5.6.1 v2.10.19.9",
    "MicroSIP/3.21.3",
    "Bria 6 release 6.5.4 stamp 118612",
    "Yealink SIP-T46S 66.86.0.15",
    "Yealink SIP-T54W 96.86.0.100",
    "Grandstream GXP2170 1.0.11.3",
    "Grandstream HT802 1.0.43.11",
    "PolycomVVX-VVX_411-UA/6.4.3.5018",
    "Cisco/SPA504G-7.6.2",
    "Cisco-CP8845/14.2.1",
    "snom760/10.1.101.11",
    "Fanvil X4U 2.12.2",
    "Obihai/OBi200-3.2.2 (Build: 8680EX)",
    "Aastra 6867i/5.1.0.2040",
    "Gigaset N510 IP PRO/42.260.00.000.000",
    "Asterisk PBX 18.12.1",
    "FPBX-16.0.33(18.13.0)",
    "FreeSWITCH-mod_sofia/1.10.9-release~64bit",
    "kamailio (5.6.3 (x86_64/linux))",
    "OpenSIPS (3.4.2 (x86_64/linux))",
    "3CXPhoneSystem 18.0.9.20 (7011)",
    "Wazo PBX",
    "\"Alice\" <sip:alice@example.com>;tag=1928301774",
    "<sip:1001@192.0.2.2>;tag=as58f4201b",
    "\"Reception 201\" <sip:201@pbx.example.org:5060>;tag=8a2c9f14-13c4-58cf",
    "<sips:bob@biloxi.example.com>;tag=a73kszlfl",
    "sip:+442079460018@trunk.example.net;user=phone;tag=887s",
    "\"+33 1 23 45 67 89\" <sip:+33123456789@198.51.100.20>;tag=3f1b8e7c",
    "<sip:anonymous@anonymous.invalid>;tag=hyh8",
    "Bob <sip:bob@[2001:db8::10]:5060;transport=udp>;tag=a6c85cf",
];

/// A pair of bytes as the prefilter reads it ([`PatternSet::pairs`]).
fn pair(first: u8, second: u8) -> usize {
    usize::from(first | 0x20) | usize::from(second | 0x20) << 8
}

/// Fills `set.pairs` for `patterns` (lower-cased, none empty), or leaves the prefilter off if a
/// pattern is too short for it (2 bytes have no pair at an odd offset).
fn fill_pairs(set: &mut PatternSet, patterns: &[Vec<u8>]) {
    if patterns.iter().any(|pattern| pattern.len() < 3) {
        return;
    }
    let mut typical = vec![0usize; 1 << 16];
    for value in TYPICAL_VALUES {
        for bytes in value.as_bytes().windows(2) {
            typical[pair(bytes[0], bytes[1])] += 1;
        }
    }
    for pattern in patterns {
        for parity in 0..2 {
            let rarest = (parity..pattern.len() - 1)
                .step_by(2)
                .map(|offset| pair(pattern[offset], pattern[offset + 1]))
                .min_by_key(|&pair| typical[pair])
                .expect("a pattern of 3 bytes or more has a pair at each parity");
            set.pairs[rarest / 64] |= 1 << (rarest % 64);
        }
    }
    set.pairs_usable = 1;
}

/// State bits `patterns` need in the matcher; a list fits if this is at most [`MAX_BITS`].
pub fn bits_needed(patterns: &[String]) -> Result<usize, PatternError> {
    Ok(essential(patterns)?
        .iter()
        .map(|pattern| pattern.len() + BITS_PER_PATTERN_EXTRA)
        .sum())
}

/// A state of [`MAX_BITS`] bits, bit `b` in word `b / 64`.
type Bits = [u64; PatternSet::MAX_WORDS];

fn set_bit(bits: &mut Bits, bit: usize) {
    bits[bit / 64] |= 1 << (bit % 64);
}

/// `bits << shift` for a shift below 64.
fn shl(bits: &Bits, shift: u32) -> Bits {
    let mut out = [0; PatternSet::MAX_WORDS];
    for word in 0..PatternSet::MAX_WORDS {
        out[word] = bits[word] << shift;
        if word > 0 && shift > 0 {
            out[word] |= bits[word - 1] >> (64 - shift);
        }
    }
    out
}

fn and(a: &Bits, b: &Bits) -> Bits {
    std::array::from_fn(|word| a[word] & b[word])
}

/// Compiles `patterns` into the matcher's tables: a walk over a text reports a match exactly
/// when the text contains one of them, ASCII case-insensitively. An empty list gives
/// `words == 0`, which never matches.
pub fn compile(patterns: &[String]) -> Result<Box<PatternSet>, PatternError> {
    let kept = essential(patterns)?;
    let needed: usize = kept
        .iter()
        .map(|pattern| pattern.len() + BITS_PER_PATTERN_EXTRA)
        .sum();
    if needed > MAX_BITS {
        return Err(PatternError::TooLong { needed });
    }
    // SAFETY: `PatternSet` is plain integers, for which all zeros is a valid value. Allocated
    // zeroed rather than built on the stack: it is over 128 KiB.
    let mut set: Box<PatternSet> = unsafe { Box::<PatternSet>::new_zeroed().assume_init() };
    if kept.is_empty() {
        return Ok(set);
    }
    // The datapath has a loop for 1 to 4 words and one for 8.
    let words = match needed.div_ceil(64) {
        words @ 1..=4 => words,
        _ => PatternSet::MAX_WORDS,
    };
    set.words = words as u64;
    // The prefilter reads four pairs a word; the matcher of a one-word list reads eight table
    // entries a word, about as cheap, so only longer lists are prefiltered.
    if words >= 2 {
        fill_pairs(&mut set, &kept);
    }

    // Where each pattern's bits start, and for every byte value the bits of the pattern
    // positions it does not match (either case).
    let mut starts = [0; PatternSet::MAX_WORDS];
    let mut end_mask = [0; PatternSet::MAX_WORDS];
    // The mismatch mask of a byte that no pattern has: every pattern byte.
    let mut nothing = [0; PatternSet::MAX_WORDS];
    let mut mismatch = vec![[0u64; PatternSet::MAX_WORDS]; 256];
    let mut first = 0;
    for pattern in &kept {
        set_bit(&mut starts, first);
        for (offset, &expected) in pattern.iter().enumerate() {
            set_bit(&mut nothing, first + offset);
            for byte in 0..=255u8 {
                if byte.to_ascii_lowercase() != expected {
                    set_bit(&mut mismatch[usize::from(byte)], first + offset);
                }
            }
        }
        for wildcard in 0..PatternSet::STEP {
            set_bit(&mut end_mask, first + pattern.len() - 1 + wildcard);
        }
        first += pattern.len() + BITS_PER_PATTERN_EXTRA;
    }

    // `fresh[k]` clears the first `k` bits of every pattern: after a shift by `k` they hold the
    // bits of the pattern before it, and for this pattern they stand for a match that starts
    // within the step (alive, 0).
    let not_starts: Bits = std::array::from_fn(|word| !starts[word]);
    let mut fresh = vec![[u64::MAX; PatternSet::MAX_WORDS]];
    for k in 1..=PatternSet::STEP {
        let previous = fresh[k - 1];
        fresh.push(and(&previous, &shl(&not_starts, (k - 1) as u32)));
    }

    set.shift_mask = fresh[PatternSet::STEP];
    set.end_mask = end_mask;
    // The byte at `lane` is followed by `STEP - 1 - lane` more bytes in its step.
    let lane_bits = |lane: usize, bits: &Bits| {
        let shift = PatternSet::STEP - 1 - lane;
        and(&shl(bits, shift as u32), &fresh[shift])
    };
    for lane in 0..PatternSet::STEP {
        for (byte, bits) in mismatch.iter().enumerate() {
            let shifted = lane_bits(lane, bits);
            for (word, value) in shifted.iter().enumerate().take(words) {
                set.lanes[PatternSet::lane_index(words, lane, byte, word)] = *value;
            }
        }
    }
    for valid in 1..PatternSet::STEP {
        for lane in valid..PatternSet::STEP {
            let shifted = lane_bits(lane, &nothing);
            for (word, value) in shifted.iter().enumerate() {
                set.tail[valid][word] |= value;
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use sipfilter_ebpf::{
        matcher,
        sip::{self, MAX_VALUE_BYTES, SCAN_BYTES, ScanBuf, Span},
    };

    use super::*;
    use crate::config::Scanners;

    /// `text` in a scan buffer at `offset`, followed by `filler` up to the end of the buffer
    /// (the bytes after a header value are the rest of the message), as the datapath sees it.
    fn buffer(offset: usize, text: &[u8], filler: u8) -> Box<ScanBuf> {
        // SAFETY: `ScanBuf` is plain integers; all zeros is a valid value.
        let mut buf: Box<ScanBuf> = unsafe { Box::<ScanBuf>::new_zeroed().assume_init() };
        let mut bytes = vec![filler; SCAN_BYTES];
        bytes[offset..offset + text.len()].copy_from_slice(text);
        for (word, chunk) in buf.words.iter_mut().zip(bytes.chunks(8)) {
            *word = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        sip::seal(&mut buf, SCAN_BYTES);
        buf
    }

    fn walk(set: &PatternSet, offset: usize, text: &[u8], filler: u8) -> bool {
        let buf = buffer(offset, text, filler);
        let value = Span {
            start: offset as u64,
            end: (offset + text.len()) as u64,
        };
        matcher::matches(set, &buf, value)
    }

    fn matches(set: &PatternSet, text: &[u8]) -> bool {
        walk(set, 100, text, b'\n')
    }

    /// What the datapath must compute: a pattern occurs, ASCII case-insensitively, within the
    /// first `MAX_VALUE_BYTES` bytes of the value.
    fn naive(patterns: &[String], text: &[u8]) -> bool {
        let text = text[..text.len().min(MAX_VALUE_BYTES)].to_ascii_lowercase();
        patterns.iter().any(|pattern| {
            let pattern = pattern.as_bytes().to_ascii_lowercase();
            contains(&text, &pattern)
        })
    }

    /// xorshift64: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Mostly a small alphabet with both cases, so texts often contain patterns; sometimes
        /// any byte, to exercise the non-letter and non-ASCII columns.
        fn byte(&mut self) -> u8 {
            const ALPHABET: &[u8] = b"abcABC-";
            if self.below(8) == 0 {
                self.next() as u8
            } else {
                ALPHABET[self.below(ALPHABET.len())]
            }
        }

        fn bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
            let len = min + self.below(max - min + 1);
            (0..len).map(|_| self.byte()).collect()
        }

        /// A pattern as the policy allows one: ASCII, no CR, LF or NUL.
        fn pattern(&mut self, max: usize) -> String {
            let bytes = self.bytes(1, max);
            let ascii: String = bytes
                .iter()
                .filter(|b| b.is_ascii() && !matches!(b, b'\r' | b'\n' | 0))
                .map(|&b| b as char)
                .collect();
            if ascii.is_empty() {
                "a".to_owned()
            } else {
                ascii
            }
        }
    }

    #[test]
    fn agrees_with_naive_search() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut hits, mut misses) = (0, 0);
        let mut widths = std::collections::BTreeSet::new();
        for round in 0..3_000 {
            // Short patterns over a small alphabet (many matches), some lists long enough for
            // several state words, and every state width the datapath has.
            let count = 1 + rng.below(if round % 3 == 0 { 40 } else { 6 });
            let max_len = if round % 5 == 0 { 64 } else { 6 };
            let mut patterns: Vec<String> = (0..count).map(|_| rng.pattern(max_len)).collect();
            while bits_needed(&patterns).unwrap() > MAX_BITS {
                patterns.pop();
            }
            let set = compile(&patterns).unwrap();
            widths.insert(set.words);
            for _ in 0..20 {
                let max_text = if rng.below(4) == 0 { 300 } else { 40 };
                let text = rng.bytes(0, max_text);
                let offset = rng.below(SCAN_BYTES - 300);
                // A filler that continues the patterns must not complete one past the end.
                let filler = [b'a', b'\n', 0][rng.below(3)];
                let expected = naive(&patterns, &text);
                if expected {
                    hits += 1;
                } else {
                    misses += 1;
                }
                assert_eq!(
                    walk(&set, offset, &text, filler),
                    expected,
                    "patterns {patterns:?}, text {:?} at {offset}, filler {filler}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
        // The generator must give both outcomes, and lists of every width the datapath has.
        assert!(
            hits > 10_000 && misses > 10_000,
            "{hits} hits, {misses} misses"
        );
        assert_eq!(widths.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 8]);
    }

    #[test]
    fn every_width_is_exercised() {
        // One pattern per 64-bit word: 57 bytes plus 7 wildcards.
        for (count, words) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 8), (8, 8)] {
            let patterns: Vec<String> = (0..count)
                .map(|i| format!("{}{}", char::from(b'a' + i as u8), "x".repeat(56)))
                .collect();
            let set = compile(&patterns).unwrap();
            assert_eq!(set.words, words, "{count} patterns");
            for pattern in &patterns {
                let text = format!("<{}>", pattern.to_uppercase());
                assert!(matches(&set, text.as_bytes()), "{count}: {pattern}");
                assert!(!matches(&set, &text.as_bytes()[..text.len() - 2]));
            }
        }
    }

    #[test]
    fn value_limit_is_exact() {
        let set = compile(&["sipvicious".to_owned()]).unwrap();
        for end in [MAX_VALUE_BYTES - 1, MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1] {
            let mut text = vec![b'x'; end - 10];
            text.extend_from_slice(b"SIPVicious");
            text.extend_from_slice(b"yyyy");
            assert_eq!(
                matches(&set, &text),
                end <= MAX_VALUE_BYTES,
                "ends at {end}"
            );
        }
    }

    #[test]
    fn empty_list_never_matches() {
        let set = compile(&[]).unwrap();
        assert_eq!(set.words, 0);
        assert!(!matches(&set, b"friendly-scanner"));
    }

    #[test]
    fn builtin_lists_fit_and_match() {
        let scanners = Scanners::default();
        assert_eq!(bits_needed(&scanners.user_agents), Ok(172));
        let user_agents = compile(&scanners.user_agents).unwrap();
        assert_eq!(user_agents.words, 3);
        assert!(matches(&user_agents, b"Friendly-Scanner/1.0"));
        assert!(matches(&user_agents, b"sipcli/v1.8"));
        assert!(matches(&user_agents, b"x smap"));
        assert!(!matches(&user_agents, b"Asterisk PBX 20.5.0"));
        assert!(!matches(&user_agents, b"Linphone/5.2.5 (belle-sip/5.2.4)"));
        let from = compile(&scanners.from).unwrap();
        assert_eq!(from.words, 1);
        assert!(matches(&from, b"\"sipvicious\"<sip:100@1.1.1.1>;tag=1"));
        assert!(!matches(&from, b"<sip:alice@example.com>;tag=2"));
    }

    /// A list with only its pair prefilter filled in, whatever its width.
    fn pairs_only(patterns: &[String]) -> Box<PatternSet> {
        // SAFETY: plain integers; all zeros is a valid value.
        let mut set: Box<PatternSet> = unsafe { Box::<PatternSet>::new_zeroed().assume_init() };
        let lowered: Vec<Vec<u8>> = patterns
            .iter()
            .map(|pattern| pattern.as_bytes().to_ascii_lowercase())
            .collect();
        fill_pairs(&mut set, &lowered);
        set
    }

    /// The pair prefilter's verdict on `text` at `offset` of the buffer.
    fn may_match(set: &PatternSet, offset: usize, text: &[u8]) -> bool {
        let buf = buffer(offset, text, b'\n');
        let value = Span {
            start: offset as u64,
            end: (offset + text.len()) as u64,
        };
        matcher::may_match(set, &buf, value)
    }

    #[test]
    fn pair_filter_never_rules_out_a_match() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let letter = |rng: &mut Rng| {
            let byte = b'a' + rng.below(26) as u8;
            if rng.below(2) == 0 {
                byte.to_ascii_uppercase()
            } else {
                byte
            }
        };
        let (mut planted, mut ruled_out) = (0, 0);
        for _ in 0..2_000 {
            let patterns: Vec<String> = (0..1 + rng.below(8))
                .map(|_| {
                    let len = 3 + rng.below(12);
                    (0..len).map(|_| char::from(letter(&mut rng))).collect()
                })
                .collect();
            // The prefilter alone, whatever the list's width.
            let set = pairs_only(&patterns);
            assert_eq!(set.pairs_usable, 1);
            for _ in 0..20 {
                let mut text: Vec<u8> = (0..rng.below(120)).map(|_| letter(&mut rng)).collect();
                if rng.below(2) == 0 {
                    // A pattern in any case, at any position and so at either parity.
                    let pattern = patterns[rng.below(patterns.len())].as_bytes();
                    let at = rng.below(text.len() + 1);
                    let cased: Vec<u8> = pattern
                        .iter()
                        .map(|b| {
                            if rng.below(2) == 0 {
                                b.to_ascii_uppercase()
                            } else {
                                *b
                            }
                        })
                        .collect();
                    text.splice(at..at, cased);
                }
                let offset = rng.below(SCAN_BYTES - 400);
                let possible = may_match(&set, offset, &text);
                if naive(&patterns, &text) {
                    planted += 1;
                    assert!(
                        possible,
                        "patterns {patterns:?}, text {:?} at {offset}",
                        String::from_utf8_lossy(&text)
                    );
                } else if !possible {
                    ruled_out += 1;
                }
            }
        }
        // Both outcomes, or the test proves nothing.
        assert!(
            planted > 10_000 && ruled_out > 5_000,
            "{planted} planted, {ruled_out} ruled out"
        );
    }

    /// What the prefilter is for: most values of ordinary traffic never reach the matcher. (Not
    /// all: a value may share a pattern's rarest pair, as Yealink's `SIP-T48U` shares `p-` with
    /// `sip-scan`; the matcher then decides, at its usual cost.)
    #[test]
    fn builtin_lists_rule_out_ordinary_values() {
        let scanners = Scanners::default();
        let user_agents = compile(&scanners.user_agents).unwrap();
        assert_eq!(user_agents.pairs_usable, 1);
        // One state word: walked by the matcher directly.
        assert_eq!(compile(&scanners.from).unwrap().pairs_usable, 0);
        // Were it prefiltered, ordinary From values would be ruled out too.
        let from = pairs_only(&scanners.from);
        let ordinary = [
            (
                &user_agents,
                [
                    "Linphone/5.2.5 (belle-sip/5.2.4)",
                    "Asterisk PBX 20.5.0",
                    "Zoiper rv2.10.20.3",
                ],
            ),
            (
                &from,
                [
                    "<sip:alice@example.com>;tag=2",
                    "\"Alice\" <sip:alice@example.com>;tag=1928301774",
                    "<sip:1001@192.0.2.2>;tag=as58f4201b",
                ],
            ),
        ];
        for offset in 64..72 {
            for (set, values) in &ordinary {
                for value in values {
                    assert!(
                        !may_match(set, offset, value.as_bytes()),
                        "{value} at {offset}"
                    );
                }
            }
            assert!(may_match(&user_agents, offset, b"friendly-scanner"));
            assert!(may_match(&user_agents, offset, b"x smap"));
            assert!(may_match(&from, offset, b"\"sipvicious\"<sip:100@1.1.1.1>"));
        }
    }

    #[test]
    fn short_patterns_and_one_word_lists_are_not_prefiltered() {
        // Two words of state either way (the long pattern takes 64 bits).
        let long = "x".repeat(57);
        let set = compile(&["ab".to_owned(), long.clone()]).unwrap();
        assert_eq!((set.words, set.pairs_usable), (2, 0));
        assert!(matches(&set, b"xAB"));
        assert_eq!(compile(&["abc".to_owned(), long]).unwrap().pairs_usable, 1);
        assert_eq!(compile(&["abc".to_owned()]).unwrap().pairs_usable, 0);
    }

    #[test]
    fn redundant_patterns_are_not_counted() {
        let patterns = |list: &[&str]| list.iter().map(|&p| p.to_owned()).collect::<Vec<_>>();
        assert_eq!(bits_needed(&patterns(&["abc"])), Ok(10));
        assert_eq!(
            bits_needed(&patterns(&["abc", "ABC", "xabcx", "abc"])),
            Ok(10)
        );
        assert_eq!(bits_needed(&patterns(&["xabcx", "abc"])), Ok(10));
        assert_eq!(bits_needed(&patterns(&["ab", "bc"])), Ok(18));
    }

    #[test]
    fn empty_pattern_is_refused() {
        let patterns = ["sipcli".to_owned(), String::new()];
        // `PatternSet` has no Debug, so no `unwrap_err`.
        let error = compile(&patterns).err();
        assert_eq!(error, Some(PatternError::Empty { index: 1 }));
    }

    #[test]
    fn too_long_is_refused() {
        // Disjoint 10-byte patterns take 17 bits each: 30 fit in 512 bits, 31 do not.
        let patterns = |count: usize| -> Vec<String> {
            (0..count)
                .map(|i| format!("{}{:09}", char::from(b'a' + (i % 26) as u8), i))
                .collect()
        };
        assert!(compile(&patterns(30)).is_ok());
        let error = compile(&patterns(31))
            .err()
            .expect("31 patterns should not fit");
        assert_eq!(error, PatternError::TooLong { needed: 527 });
        let message = error.to_string();
        assert!(message.contains("need 527 bits"), "{message}");
        assert!(message.contains("at most 512"), "{message}");
    }
}
