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
    sip::{MAX_VALUE_BYTES, SCAN_BYTES, ScanBuf, Span, load8},
    swar::{low_bytes, opaque},
};

/// Keeps the loop-carried position bounded for the verifier, as `sip`'s loops do: every
/// position is below `SCAN_BYTES + MAX_VALUE_BYTES`, so the mask never changes a value, but the
/// verifier sees the same range at every step and prunes the loop after a few.
const POS_MASK: usize = 2 * SCAN_BYTES - 1;
const _: () = assert!(SCAN_BYTES + MAX_VALUE_BYTES <= POS_MASK);
// `walk` tells the last step from the others with `(budget + 63) >> 6`.
const _: () = assert!(MAX_VALUE_BYTES / PatternSet::STEP < 64);

/// True if any pattern of `set` occurs in the first [`MAX_VALUE_BYTES`] bytes of `value`,
/// ASCII case-insensitively.
#[inline(always)]
pub fn matches(set: &PatternSet, buf: &ScanBuf, value: Span) -> bool {
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

/// The matcher for a list of `W` state words.
///
/// The loop body has no branch: the verifier walks every step of the first path through a
/// bounded loop, and a branch inside it would leave a second path to walk from every step.
/// So the last step's bytes are masked arithmetically, and a match is recorded, not returned.
#[inline(always)]
fn walk<const W: usize>(set: &PatternSet, buf: &ScanBuf, value: Span) -> bool {
    let len = (value.end.saturating_sub(value.start) as usize).min(MAX_VALUE_BYTES);
    // The bytes of the last step that belong to the value; the others become NUL, which no
    // pattern holds (nor may: the policy refuses it), so the bytes after the value can neither
    // complete nor extend a match.
    let tail = if len.is_multiple_of(PatternSet::STEP) {
        u64::MAX
    } else {
        low_bytes(len % PatternSet::STEP)
    };
    // All ones: no pattern has begun.
    let mut state = [u64::MAX; W];
    let mut found = 0;
    let mut pos = value.start as usize;
    // Opaque, so the loop's entry test is on the budget itself: LLVM would otherwise test
    // `end > start` on other registers, and the verifier would walk a loop entered with a zero
    // budget.
    let mut budget = opaque(len.div_ceil(PatternSet::STEP));
    while budget != 0 {
        budget -= 1;
        // 1 on every step but the last (the budget is at most MAX_VALUE_BYTES / STEP, below
        // 64), computed without a comparison, which would be a branch on eBPF.
        let more = (opaque(budget) + 63) >> 6;
        let text = load8(buf, pos) & (tail | (more as u64).wrapping_neg());
        let mut mismatch = [0u64; W];
        for lane in 0..PatternSet::STEP {
            let byte = ((text >> (8 * lane)) & 0xff) as usize;
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
