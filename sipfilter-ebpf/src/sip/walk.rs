//! The header scan's walk from one line to the next line that may matter.
//!
//! This is where the scan spends its time: past the words that hold no line end, and past the
//! lines whose first byte cannot start a wanted header. The eBPF build runs it as one block of
//! assembly: LLVM's code for the same loop kept the buffer, the word offset and the length on
//! the stack, reloaded them on every line, and took about twice the instructions. The host
//! build runs the same steps in Rust, for the unit tests; the datapath tests run the assembly.

use super::ScanBuf;
#[cfg(not(target_arch = "bpf"))]
use super::{MAX_HEADER_LINES, SCAN_BYTES, WORD_INDEX_MASK, byte_at, may_matter};
#[cfg(not(target_arch = "bpf"))]
use crate::swar::{bytes_equal, first_flagged};

/// Where the walk is.
pub struct Walk {
    /// Byte offset of the current word (a multiple of 8).
    pub offset: usize,
    /// The current word's line ends not taken yet (the high bit of each such byte).
    pub newlines: u64,
    /// Steps left: one per step, whether it moves on two or four words or takes a line end.
    pub budget: usize,
}

/// Where the walk stopped.
pub enum Stop {
    /// At a line that may be a wanted header, or the empty line: where it starts.
    Line(usize),
    /// At the end of the message.
    End,
    /// Out of steps, or past [`MAX_HEADER_LINES`](super::MAX_HEADER_LINES) lines.
    Exhausted,
}

/// Keeps the word offset in one range on every path, so the verifier sees the walk's states
/// converge (every real offset is below it, so the mask never changes a value).
const OFFSET_RANGE: usize = super::INDEX_RANGE * 8;

/// A byte below this in a word sends the walk to look for line ends in it: a one-step test for
/// LF (0x0a) that also catches TAB and NUL, which cost a closer look and nothing else.
const BELOW_LF: u64 = 0x0b0b_0b0b_0b0b_0b0b;

/// Whether any of `words` holds a byte below LF.
#[cfg(not(target_arch = "bpf"))]
fn below_lf(words: &[u64]) -> bool {
    words
        .iter()
        .any(|&word| word.wrapping_sub(BELOW_LF) & !word & 0x8080_8080_8080_8080 != 0)
}

/// Walks on to the next line that starts with a byte of `leads` (a
/// [`HeaderSet::LEAD_MAP`](super::HeaderSet::LEAD_MAP)), counting lines in `buf.lines`.
#[cfg(not(target_arch = "bpf"))]
pub fn next_line(buf: &mut ScanBuf, walk: &mut Walk, len: usize, leads: u64) -> Stop {
    loop {
        if walk.budget == 0 {
            return Stop::Exhausted;
        }
        walk.budget -= 1;
        if walk.newlines == 0 {
            let mut base = (walk.offset / 8) & WORD_INDEX_MASK;
            if !below_lf(&buf.words[base + 1..base + 3]) {
                walk.offset += 16;
                walk.offset &= OFFSET_RANGE;
                if walk.offset >= len {
                    return Stop::End;
                }
                base = (walk.offset / 8) & WORD_INDEX_MASK;
            }
            if !below_lf(&buf.words[base + 1..base + 3]) {
                // A long line: four words a step.
                walk.offset += 16;
                loop {
                    walk.offset &= OFFSET_RANGE;
                    if walk.offset >= len {
                        return Stop::End;
                    }
                    if walk.budget == 0 {
                        return Stop::Exhausted;
                    }
                    walk.budget -= 1;
                    base = (walk.offset / 8) & WORD_INDEX_MASK;
                    if below_lf(&buf.words[base + 1..base + 5]) {
                        if !below_lf(&buf.words[base + 1..base + 3]) {
                            walk.offset += 16;
                            base += 2;
                        }
                        break;
                    }
                    walk.offset += 32;
                }
            }
            walk.offset += 8;
            walk.newlines = bytes_equal(buf.words[base + 1], b'\n');
            if walk.newlines == 0 {
                walk.offset += 8;
                walk.newlines = bytes_equal(buf.words[base + 2], b'\n');
            }
            walk.offset &= OFFSET_RANGE;
            if walk.offset >= len {
                return Stop::End;
            }
            continue;
        }
        let line = walk.offset + first_flagged(walk.newlines) + 1;
        walk.newlines &= walk.newlines - 1;
        buf.lines += 1;
        if line >= len {
            return Stop::End;
        }
        if may_matter(leads, byte_at(buf, line & (SCAN_BYTES - 1))) {
            return Stop::Line(line);
        }
        if buf.lines > MAX_HEADER_LINES as u64 {
            return Stop::Exhausted;
        }
    }
}

/// Assembly for "`word` becomes non-zero if it held a byte below LF" (`hasless`, exact as a yes
/// or no); {line} holds [`BELOW_LF`], {newlines} is scratch.
#[cfg(target_arch = "bpf")]
macro_rules! flag_below_lf {
    ($word:literal) => {
        concat!(
            "{newlines} = ",
            $word,
            "\n",
            "{newlines} -= {line}\n",
            $word,
            " ^= -1\n",
            $word,
            " &= {newlines}",
        )
    };
}

/// Assembly for "{newlines} = the line ends of {first}" (`swar::bytes_equal`, exact), masked to
/// the flag bits so it has the same range as after a line end is taken; {line} is scratch.
#[cfg(target_arch = "bpf")]
macro_rules! line_ends {
    () => {
        concat!(
            "{line} = {lf} ll\n",
            "{first} ^= {line}\n",
            "{line} = {low7} ll\n",
            "{newlines} = {first}\n",
            "{newlines} &= {line}\n",
            "{newlines} += {line}\n",
            "{newlines} |= {first}\n",
            "{newlines} |= {line}\n",
            "{newlines} ^= -1\n",
            "{line} = {high} ll\n",
            "{newlines} &= {line}",
        )
    };
}

/// Assembly for "{at} = the address of the current word", masked into the window.
#[cfg(target_arch = "bpf")]
macro_rules! current_word {
    () => {
        "{at} = {offset}\n{at} &= {window}\n{at} += {buf}"
    };
}

/// Assembly for "{first} = non-zero if a byte of the two words at {at} + 8 is below LF".
#[cfg(target_arch = "bpf")]
macro_rules! pair_below_lf {
    () => {
        concat!(
            "{first} = *(u64 *)({at} + 8)\n",
            "{second} = *(u64 *)({at} + 16)\n",
            "{line} = {below_lf} ll\n",
            flag_below_lf!("{first}"),
            "\n",
            flag_below_lf!("{second}"),
            "\n",
            "{first} |= {second}",
        )
    };
}

/// Assembly for "keep the flag bits of {first}".
#[cfg(target_arch = "bpf")]
macro_rules! flags_of_first {
    () => {
        "{line} = {high} ll\n{first} &= {line}"
    };
}

/// Assembly for "mask the offset; go to `$label` if it is still inside the message, or leave
/// at its end".
#[cfg(target_arch = "bpf")]
macro_rules! inside_or_end {
    ($label:literal) => {
        concat!(
            "{offset} &= {offset_range}\n",
            "{at} = {offset}\n",
            "{at} *= 1\n",
            "if {at} < {len} goto ",
            $label,
            "\n",
            "goto 27f",
        )
    };
}

/// The same steps in eBPF assembly.
///
/// For the verifier, which walks a loop once per iteration until its states repeat: the budget
/// is tested signed (`s> 0`), which every kernel's verifier narrows (see `swar::Budget`); the offset
/// is masked after every step and the line-end mask after every change, so both keep one range
/// on every path; comparisons with `len` are made on copies it does not link to them (a
/// multiply by one), so they narrow nothing; and the branch the verifier follows first (the
/// fall-through) leaves the loop, so it walks each step once and prunes the rest.
#[cfg(target_arch = "bpf")]
pub fn next_line(buf: &mut ScanBuf, walk: &mut Walk, len: usize, leads: u64) -> Stop {
    let status: u64;
    let line: usize;
    // SAFETY: every load and store is at a fixed offset into the scan buffer or at an offset
    // masked into it; the buffer holds four words past the masked word offset.
    unsafe {
        core::arch::asm!(
            "{line} = 0",
            "20:",
            "if {budget} s> 0 goto 21f",
            "goto 28f",
            "21:",
            "{budget} += -1",
            "if {newlines} != 0 goto 24f",
            // The next two words: into the first that holds a line end, or on.
            current_word!(),
            pair_below_lf!(),
            flags_of_first!(),
            "if {first} != 0 goto 22f",
            "{offset} += 16",
            // The two after them.
            inside_or_end!("34f"),
            "34:",
            current_word!(),
            pair_below_lf!(),
            flags_of_first!(),
            "if {first} != 0 goto 22f",
            "{offset} += 16",
            // A long line: four words a step.
            "30:",
            inside_or_end!("31f"),
            "31:",
            "if {budget} s> 0 goto 32f",
            "goto 28f",
            "32:",
            "{budget} += -1",
            current_word!(),
            pair_below_lf!(),
            "{second} = *(u64 *)({at} + 24)",
            flag_below_lf!("{second}"),
            "{first} |= {second}",
            "{second} = *(u64 *)({at} + 32)",
            flag_below_lf!("{second}"),
            "{first} |= {second}",
            flags_of_first!(),
            "if {first} != 0 goto 33f",
            "{offset} += 32",
            "goto 30b",
            // Which two of the four?
            "33:",
            pair_below_lf!(),
            flags_of_first!(),
            "if {first} != 0 goto 22f",
            "{offset} += 16",
            "{at} += 16",
            // The line ends of the first of the two words at {at} + 8 that has any.
            "22:",
            "{first} = *(u64 *)({at} + 8)",
            "{offset} += 8",
            line_ends!(),
            "if {newlines} != 0 goto 23f",
            "{first} = *(u64 *)({at} + 16)",
            "{offset} += 8",
            line_ends!(),
            "23:",
            inside_or_end!("20b"),
            // Take the first line end of the word.
            "24:",
            "{first} = 0",
            "{first} -= {newlines}",
            "{first} &= {newlines}",
            "{first} >>= 7",
            "{second} = {positions} ll",
            "{first} *= {second}",
            "{first} >>= 56",
            "{second} = {newlines}",
            "{second} += -1",
            "{newlines} &= {second}",
            "{second} = {high} ll",
            "{newlines} &= {second}",
            "{line} = {offset}",
            "{line} += {first}",
            "{line} += 1",
            "{first} = *(u64 *)({buf} + {lines})",
            "{first} += 1",
            "*(u64 *)({buf} + {lines}) = {first}",
            "{second} = {line}",
            "{second} *= 1",
            "if {second} < {len} goto 25f",
            "goto 27f",
            "25:",
            "{at} = {buf}",
            "{second} = {line}",
            "{second} &= {byte_window}",
            "{at} += {second}",
            "{at} = *(u8 *)({at} + 0)",
            "{first} = {leads}",
            "{at} &= 63",
            "{first} >>= {at}",
            "{first} &= 1",
            "if {first} == 0 goto 26f",
            "{at} = 0",
            "goto 29f",
            "26:",
            "{first} = *(u64 *)({buf} + {lines})",
            "if {first} <= {max_lines} goto 20b",
            "goto 28f",
            "27:",
            "{at} = 1",
            "goto 29f",
            "28:",
            "{at} = 2",
            "29:",
            offset = inout(reg) walk.offset,
            newlines = inout(reg) walk.newlines,
            budget = inout(reg) walk.budget,
            buf = in(reg) core::ptr::from_mut(buf),
            len = in(reg) len,
            leads = in(reg) leads,
            at = out(reg) status,
            line = out(reg) line,
            first = out(reg) _,
            second = out(reg) _,
            window = const super::WORD_INDEX_MASK * 8,
            offset_range = const OFFSET_RANGE,
            byte_window = const super::SCAN_BYTES - 1,
            lines = const core::mem::offset_of!(ScanBuf, lines),
            max_lines = const super::MAX_HEADER_LINES,
            below_lf = const BELOW_LF,
            lf = const 0x0a0a_0a0a_0a0a_0a0a_u64,
            low7 = const 0x7f7f_7f7f_7f7f_7f7f_u64,
            high = const 0x8080_8080_8080_8080_u64,
            positions = const 0x0001_0203_0405_0607_u64,
            options(nostack),
        );
    }
    match status {
        0 => Stop::Line(line),
        1 => Stop::End,
        _ => Stop::Exhausted,
    }
}
