//! Word-at-a-time byte search ("SIMD within a register") over the scan buffer: eight bytes per
//! step instead of one, with no branches per byte. Pure functions, tested on the host.

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const ONES: u64 = 0x0101_0101_0101_0101;

/// High bit set in every byte of `word` that is zero, and only there. (The shorter
/// `(x - 0x01..) & !x & 0x80..` test flags false positives above a true zero; this one is exact,
/// so every bit of the result can be consumed in turn.)
#[inline(always)]
pub const fn zero_bytes(word: u64) -> u64 {
    !(((word & LOW7).wrapping_add(LOW7)) | word | LOW7)
}

/// High bit set in every byte of `word` equal to `byte`.
#[inline(always)]
pub const fn bytes_equal(word: u64, byte: u8) -> u64 {
    zero_bytes(word ^ ONES.wrapping_mul(byte as u64))
}

/// Index (0..8) of the lowest flagged byte of a non-zero mask from [`zero_bytes`]. The word is
/// little-endian, so the lowest byte is the first in memory. A multiply instead of
/// `trailing_zeros`, which eBPF has no instruction for.
#[inline(always)]
pub const fn first_flagged(mask: u64) -> usize {
    let lowest = mask & mask.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Mask keeping the low `n` bytes of a word (n in 0..8).
#[inline(always)]
pub const fn low_bytes(n: usize) -> u64 {
    (1u64 << ((n & 7) * 8)).wrapping_sub(1)
}

/// Mask clearing the low `n` bytes of a word (n in 0..8).
#[inline(always)]
pub const fn from_byte(n: usize) -> u64 {
    !low_bytes(n)
}

/// ASCII lower case for letters; other bytes change too (CR becomes '-', TAB becomes ')'), so
/// compare the result only with lower-case names.
#[inline(always)]
pub const fn fold_case(word: u64) -> u64 {
    word | 0x2020_2020_2020_2020
}

/// Hides `value` from the optimiser. LLVM drops a mask it can prove redundant and may then
/// compute the index in another register than the one the bounds were checked on; the verifier
/// tracks registers, not values, and rejects the access. Masking an opaque value keeps the mask
/// on the register that indexes memory (the `barrier_var` idiom of the kernel's selftests).
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut value = value;
        // SAFETY: a register move with no other effect.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack)) };
        value
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        value
    }
}

/// The steps a loop may still take, counted down so that every verifier we support sees the
/// loop end.
///
/// The test is signed (`> 0`) and the count is opaque after every step. The verifier of Linux
/// 6.1 learns nothing from `budget != 0` about a budget it knows as a range from zero (it keeps
/// the zero in it; 6.12's takes it out), so a `!= 0` loop counts on past zero into negative
/// numbers and 6.1 walks it thousands of times; a signed test takes the zero out on every
/// kernel. The opaque step keeps LLVM from proving the count non-negative and turning the
/// signed test back into `!= 0`.
pub struct Budget(usize);

impl Budget {
    #[inline(always)]
    pub fn new(steps: usize) -> Budget {
        Budget(opaque(steps))
    }

    /// Takes a step: `false` once the budget is spent.
    #[inline(always)]
    pub fn take(&mut self) -> bool {
        if self.0 as isize <= 0 {
            return false;
        }
        self.0 = opaque(self.0 - 1);
        true
    }

    /// Steps left after the one taken.
    #[inline(always)]
    pub fn left(&self) -> usize {
        self.0
    }
}

/// The first `N` bytes of a byte string as a little-endian word, for comparisons.
pub const fn word_of(text: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < text.len() && i < 8 {
        word |= (text[i] as u64) << (i * 8);
        i += 1;
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(word: u64, byte: u8) -> u64 {
        (0..8)
            .filter(|i| (word >> (i * 8)) as u8 == byte)
            .fold(0, |acc, i| acc | 0x80 << (i * 8))
    }

    #[test]
    fn a_budget_gives_exactly_its_steps() {
        for steps in [0, 1, 2, 257] {
            let mut budget = Budget::new(steps);
            let mut taken = 0;
            while budget.take() {
                taken += 1;
                assert_eq!(budget.left(), steps - taken);
            }
            assert_eq!(taken, steps);
            assert!(!budget.take(), "a spent budget stays spent");
        }
    }

    #[test]
    fn bytes_equal_is_exact_for_every_byte() {
        let samples: [u64; 6] = [
            word_of(b"a\nb\n\n\0\xff\n"),
            word_of(b"\n\n\n\n\n\n\n\n"),
            word_of(b"\x0b\x09\n\x0a\x01\x00\x80\x8a"),
            u64::MAX,
            0,
            0x0a0b_0a0b_0a0b_0a0b,
        ];
        for word in samples {
            for byte in [b'\n', 0, 0xff, b'\r', 0x80, 0x0b] {
                assert_eq!(
                    bytes_equal(word, byte),
                    naive(word, byte),
                    "{word:#x} {byte:#x}"
                );
            }
        }
    }

    #[test]
    fn bytes_equal_matches_naive_on_pseudo_random_words() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let byte = (x >> 3) as u8;
            // Plant the byte at a few places so matches are common.
            let word = x & !(0xff << 16) | (byte as u64) << 16;
            assert_eq!(bytes_equal(word, byte), naive(word, byte));
        }
    }

    #[test]
    fn first_flagged_finds_lowest_byte() {
        for i in 0..8 {
            let mask = 0x80u64 << (i * 8) | 0x8000_0000_0000_0000;
            assert_eq!(first_flagged(mask), i);
        }
    }

    #[test]
    fn byte_masks() {
        assert_eq!(low_bytes(0), 0);
        assert_eq!(low_bytes(3), 0xff_ffff);
        assert_eq!(from_byte(0), u64::MAX);
        assert_eq!(from_byte(7), 0xff00_0000_0000_0000);
    }
}
