//! Scanner-pattern matching on a header value in the scan buffer: a multi-pattern shift-or
//! ("bitap") that reads the value 8 bytes per step, with tables compiled by userspace
//! ([`PatternSet`], built by `sipfilter/src/patterns.rs`). Runs in the header-scan program and
//! in host tests.
//!
//! Why not an automaton: walking a DFA is a chain of dependent loads (each state picks the
//! address of the next table read), about 1.6 ns per byte here. The shift-or's table loads
//! depend only on the text, so the 8 loads of a step (times the state words) issue in parallel,
//! and the only work carried from one step to the next is a shift, a mask and an OR per word.

use sipfilter_common::PatternSet;

use crate::{
    sip::{MAX_VALUE_BYTES, SCAN_BYTES, SCAN_WORDS, ScanBuf, Span, word},
    swar::{Budget, opaque},
};

/// Keeps the loop-carried position bounded for the verifier, as `sip`'s loops do: every
/// position is below `SCAN_BYTES + MAX_VALUE_BYTES`, so the mask never changes a value, but the
/// verifier sees the same range at every step and prunes the loop after a few.
const POS_MASK: usize = 2 * SCAN_BYTES - 1;
const _: () = assert!(SCAN_BYTES + MAX_VALUE_BYTES <= POS_MASK);
// `walk` tells the last step from the others with `(budget + 63) >> 6`, and reads 8 bytes from
// any step start below `SCAN_BYTES`.
const _: () = assert!(SCAN_BYTES + PatternSet::STEP <= SCAN_WORDS * 8);
const _: () = assert!(MAX_VALUE_BYTES / PatternSet::STEP < 64);

/// True if any pattern of `set` occurs in the first [`MAX_VALUE_BYTES`] bytes of `value`,
/// ASCII case-insensitively.
#[inline(always)]
pub fn matches(set: &PatternSet, buf: &ScanBuf, value: Span) -> bool {
    if set.pairs_usable != 0 && !may_match(set, buf, value) {
        return false;
    }
    // One loop per state width, so each loop keeps its state in registers and reads only the
    // words its list uses. The compiler rounds 5 to 7 words up to 8.
    match set.words {
        1 => walk::<1>(set, buf, value),
        2 => walk::<2>(set, buf, value),
        3 => walk::<3>(set, buf, value),
        4 => walk::<4>(set, buf, value),
        8 => walk::<8>(set, buf, value),
        // 0 is an empty list; anything else is not written by this build's loader.
        _ => false,
    }
}

/// Whether the first [`MAX_VALUE_BYTES`] bytes of `value` may hold a pattern of `set`, by its
/// pair prefilter ([`PatternSet::pairs`]): `false` only if none of the pairs that start at even
/// positions of the buffer, in the words the value touches, is in the set. Four table reads a
/// word, against eight times the list's state words for the matcher; the reads before the
/// value's start and after its end only add pairs, so they can only send a value on to the
/// matcher, never rule one out.
#[inline(always)]
pub fn may_match(set: &PatternSet, buf: &ScanBuf, value: Span) -> bool {
    let len = (value.end.saturating_sub(value.start) as usize).min(MAX_VALUE_BYTES);
    if len == 0 {
        return false;
    }
    let mut index = value.start as usize / 8;
    let mut seen = 0;
    // The words the value touches, computed from small numbers, so the verifier knows the
    // budget's range (1 to 33) and sees the loop's states repeat. Opaque for the same reason as
    // in `walk`; no branch in the body, for the same reason too.
    let mut budget = Budget::new((value.start as usize % 8 + len).div_ceil(8));
    while budget.take() {
        let folded = word(buf, index) | 0x2020_2020_2020_2020;
        for lane in 0..4 {
            let pair = ((folded >> (16 * lane)) & 0xffff) as usize;
            seen |= set.pairs[pair / 64] >> (pair % 64);
        }
        index = opaque(index + 1) & POS_MASK;
    }
    seen & 1 != 0
}

/// The scan buffer as bytes.
#[inline(always)]
fn bytes(buf: &ScanBuf) -> &[u8; SCAN_WORDS * 8] {
    // SAFETY: the same memory, as bytes (alignment 1, no invalid values).
    unsafe { &*buf.words.as_ptr().cast::<[u8; SCAN_WORDS * 8]>() }
}

/// The matcher for a list of `W` state words.
///
/// The loop body has no branch: the verifier walks every step of the first path through a
/// bounded loop, and a branch inside it would leave a second path to walk from every step.
/// So the last step is told from the others arithmetically, and a match is recorded, not
/// returned.
#[inline(always)]
fn walk<const W: usize>(set: &PatternSet, buf: &ScanBuf, value: Span) -> bool {
    let len = (value.end.saturating_sub(value.start) as usize).min(MAX_VALUE_BYTES);
    // What the bytes past the value's end in its last step must contribute: a byte that no
    // pattern has, whatever they hold. Zero when the last step is full.
    let tail: [u64; W] = core::array::from_fn(|word| set.tail[len % PatternSet::STEP][word]);
    let text = bytes(buf);
    // All ones: no pattern has begun.
    let mut state = [u64::MAX; W];
    let mut found = 0;
    let mut pos = value.start as usize;
    // Opaque (in `Budget`), so the loop's entry test is on the budget itself: LLVM would
    // otherwise test `end > start` on other registers, and the verifier would walk a loop
    // entered with a zero budget.
    let mut budget = Budget::new(len.div_ceil(PatternSet::STEP));
    while budget.take() {
        // All ones on the last step, zero on the others (the budget is at most
        // MAX_VALUE_BYTES / STEP, below 64), computed without a comparison, which would be a
        // branch on eBPF.
        let last = ((budget.left() + 63) >> 6).wrapping_sub(1) as u64;
        let mut mismatch: [u64; W] = core::array::from_fn(|word| tail[word] & last);
        // Every step starts inside the message (below `SCAN_BYTES`), so the mask changes
        // nothing; it lets the verifier prove the step's 8 byte reads inside the buffer.
        let at = opaque(pos) & (SCAN_BYTES - 1);
        for lane in 0..PatternSet::STEP {
            let byte = usize::from(text[at + lane]);
            for (word, bits) in mismatch.iter_mut().enumerate() {
                *bits |= set.lanes[PatternSet::lane_index(W, lane, byte, word)];
            }
        }
        // Highest word first: each takes the top byte of the word below before it changes.
        let mut word = W;
        while word > 0 {
            word -= 1;
            let carry = if word > 0 { state[word - 1] >> 56 } else { 0 };
            state[word] = (((state[word] << 8) | carry) & set.shift_mask[word]) | mismatch[word];
        }
        for (bits, end_mask) in state.iter().zip(set.end_mask.iter()) {
            found |= !bits & end_mask;
        }
        pos = opaque(pos + PatternSet::STEP) & POS_MASK;
    }
    found != 0
}

#[cfg(test)]
mod tests;
