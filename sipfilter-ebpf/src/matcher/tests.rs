//! The matcher's step against a table built by hand from [`PatternSet`]'s description. The
//! compiler (`sipfilter/src/patterns.rs`) has the property tests against a naive search, which
//! run this matcher on every list width.

use super::*;

/// The single pattern "ab" in one word: bits 0 and 1 for its bytes, bits 2 to 8 its wildcards.
fn ab() -> Box<PatternSet> {
    // SAFETY: plain integers; all zeros is a valid value.
    let mut set: Box<PatternSet> = unsafe { Box::<PatternSet>::new_zeroed().assume_init() };
    set.words = 1;
    // A lone pattern starts at bit 0, so shifting already leaves its first bits clear.
    set.shift_mask[0] = !0xff;
    set.end_mask[0] = 0xff << 1;
    // A byte no pattern has, at lanes `valid..8`.
    for valid in 1..PatternSet::STEP {
        for lane in valid..PatternSet::STEP {
            set.tail[valid][0] |= 0b11 << (PatternSet::STEP - 1 - lane);
        }
    }
    for byte in 0..256usize {
        let lower = (byte as u8).to_ascii_lowercase();
        let mismatch = u64::from(lower != b'a') | u64::from(lower != b'b') << 1;
        for lane in 0..PatternSet::STEP {
            set.lanes[PatternSet::lane_index(1, lane, byte, 0)] =
                mismatch << (PatternSet::STEP - 1 - lane);
        }
    }
    set
}

/// `text` at `offset` in a buffer whose other bytes are `filler`.
fn walk(set: &PatternSet, offset: usize, text: &[u8], filler: u8) -> bool {
    // SAFETY: plain integers; all zeros is a valid value.
    let mut buf: Box<ScanBuf> = unsafe { Box::<ScanBuf>::new_zeroed().assume_init() };
    let mut bytes = [filler; SCAN_BYTES];
    bytes[offset..offset + text.len()].copy_from_slice(text);
    for (word, chunk) in buf.words.iter_mut().zip(bytes.chunks(8)) {
        *word = u64::from_le_bytes(chunk.try_into().unwrap());
    }
    let value = Span {
        start: offset as u64,
        end: (offset + text.len()) as u64,
    };
    matches(set, &buf, value)
}

#[test]
fn finds_the_pattern_at_every_offset_and_step_boundary() {
    let set = ab();
    for offset in 1..20 {
        for at in 0..20 {
            let mut text = vec![b'x'; 20];
            text[at] = b'A';
            if at + 1 < text.len() {
                text[at + 1] = b'b';
            }
            let expected = at + 1 < text.len();
            assert_eq!(
                walk(&set, offset, &text, b'b'),
                expected,
                "at {at}, offset {offset}"
            );
        }
    }
}

#[test]
fn bytes_after_the_value_do_not_count() {
    let set = ab();
    // The value ends in 'a'; the filler continues it with 'b'.
    for len in 1..20 {
        let mut text = vec![b'x'; len];
        text[len - 1] = b'a';
        assert!(!walk(&set, 8, &text, b'b'), "len {len}");
    }
}

#[test]
fn stops_at_the_value_limit() {
    let set = ab();
    for end in MAX_VALUE_BYTES - 2..MAX_VALUE_BYTES + 3 {
        let mut text = vec![b'x'; MAX_VALUE_BYTES + 8];
        text[end - 2] = b'a';
        text[end - 1] = b'B';
        assert_eq!(
            walk(&set, 3, &text, b'x'),
            end <= MAX_VALUE_BYTES,
            "ends at {end}"
        );
    }
}

#[test]
fn empty_values_and_lists_never_match() {
    let set = ab();
    assert!(!walk(&set, 5, b"", b'a'));
    let mut empty = ab();
    empty.words = 0;
    assert!(!walk(&empty, 5, b"ab", b'x'));
}
