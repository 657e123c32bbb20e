//! Compiles a scanner-pattern list (User-Agent or From substrings) into the [`Dfa`] table the
//! datapath walks: an Aho-Corasick automaton over ASCII-lowercased bytes whose match states all
//! collapse into the absorbing [`Dfa::MATCH`], so "contains one of the patterns" costs one table
//! read per header byte and a single comparison at the end.
//!
//! Built by hand rather than with the `aho-corasick` crate: the trie is counted before any dense
//! table exists, so an over-long list is refused with the exact number of states it needs without
//! first materialising a full automaton for it.

use std::collections::BTreeMap;

use sipfilter_common::Dfa;

/// States available to the automaton besides [`Dfa::MATCH`].
pub const MAX_STATES: usize = Dfa::MATCH as usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {index} is empty: it would match every header")]
    Empty { index: usize },
    #[error(
        "the patterns need {needed} automaton states but at most {MAX_STATES} fit (about 250 \
         pattern bytes in all; a prefix shared by several patterns counts once): shorten or \
         remove patterns"
    )]
    TooManyStates { needed: usize },
}

#[derive(Default)]
struct Node {
    children: BTreeMap<u8, usize>,
    /// A pattern ends here.
    terminal: bool,
}

/// Compiles `patterns` into a table that ends a walk in [`Dfa::MATCH`] exactly when the walked
/// text contains one of them, ASCII case-insensitively. An empty list gives an all-zero table,
/// which never matches.
pub fn compile(patterns: &[String]) -> Result<Box<Dfa>, PatternError> {
    let mut trie = vec![Node::default()];
    for (index, pattern) in patterns.iter().enumerate() {
        if pattern.is_empty() {
            return Err(PatternError::Empty { index });
        }
        let mut node = 0;
        for byte in pattern.bytes().map(|b| b.to_ascii_lowercase()) {
            node = match trie[node].children.get(&byte) {
                Some(&child) => child,
                None => {
                    trie.push(Node::default());
                    let child = trie.len() - 1;
                    trie[node].children.insert(byte, child);
                    child
                }
            };
        }
        trie[node].terminal = true;
    }

    // Breadth-first, so a node's failure link (a shorter string) is settled before the node.
    // Children of match nodes are never entered: the datapath stops in MATCH before reaching
    // them, and they would only inflate the state count.
    let mut fail = vec![0; trie.len()];
    let mut is_match = vec![false; trie.len()];
    // Nodes a text can reach without passing a match, in state-number order.
    let mut order = vec![0];
    let mut head = 0;
    while let Some(&node) = order.get(head) {
        head += 1;
        for (&byte, &child) in &trie[node].children {
            fail[child] = if node == 0 {
                0
            } else {
                goto(&trie, &fail, fail[node], byte)
            };
            is_match[child] = trie[child].terminal || is_match[fail[child]];
            if !is_match[child] {
                order.push(child);
            }
        }
    }
    if order.len() > MAX_STATES {
        return Err(PatternError::TooManyStates {
            needed: order.len(),
        });
    }

    let mut state = vec![Dfa::MATCH; trie.len()];
    for (number, &node) in order.iter().enumerate() {
        state[node] = number as u8;
    }
    let mut dfa = Box::new(Dfa {
        next: [0; Dfa::STATES * 256],
    });
    for (number, &node) in order.iter().enumerate() {
        for byte in 0..=255u8 {
            let next = match trie[node].children.get(&byte.to_ascii_lowercase()) {
                Some(&child) => state[child],
                None if node == 0 => 0,
                // The failure node comes earlier in `order`, so its row is complete.
                None => dfa.next[usize::from(state[fail[node]]) * 256 + usize::from(byte)],
            };
            dfa.next[number * 256 + usize::from(byte)] = next;
        }
    }
    // An empty list leaves the table all zero, so it reads as "no automaton" as well.
    if !patterns.is_empty() {
        let row = usize::from(Dfa::MATCH) * 256;
        dfa.next[row..row + 256].fill(Dfa::MATCH);
    }
    Ok(dfa)
}

/// Aho-Corasick goto along failure links: the node reached from `node` on `byte`.
fn goto(trie: &[Node], fail: &[usize], mut node: usize, byte: u8) -> usize {
    loop {
        if let Some(&child) = trie[node].children.get(&byte) {
            return child;
        }
        if node == 0 {
            return 0;
        }
        node = fail[node];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scanners;

    fn walk(dfa: &Dfa, text: &[u8]) -> bool {
        let state = text.iter().fold(0u8, |state, &byte| {
            dfa.next[usize::from(state) * 256 + usize::from(byte)]
        });
        state == Dfa::MATCH
    }

    fn naive(patterns: &[String], text: &[u8]) -> bool {
        let text = text.to_ascii_lowercase();
        patterns.iter().any(|pattern| {
            let pattern = pattern.as_bytes().to_ascii_lowercase();
            text.windows(pattern.len()).any(|window| window == pattern)
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
    }

    #[test]
    fn agrees_with_naive_search() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let patterns: Vec<String> = (0..1 + rng.below(6))
                .map(|_| {
                    let bytes = rng.bytes(1, 5);
                    // Patterns are strings: keep the ASCII bytes, and never leave one empty.
                    let ascii: String = bytes
                        .iter()
                        .filter(|b| b.is_ascii())
                        .map(|&b| b as char)
                        .collect();
                    if ascii.is_empty() {
                        "a".to_owned()
                    } else {
                        ascii
                    }
                })
                .collect();
            let dfa = compile(&patterns).unwrap();
            assert!(dfa.next[255 * 256..].iter().all(|&next| next == Dfa::MATCH));
            for _ in 0..50 {
                let text = rng.bytes(0, 24);
                assert_eq!(
                    walk(&dfa, &text),
                    naive(&patterns, &text),
                    "patterns {patterns:?}, text {text:?}"
                );
            }
        }
    }

    #[test]
    fn empty_list_never_matches() {
        let dfa = compile(&[]).unwrap();
        assert!(dfa.next.iter().all(|&next| next == 0));
        assert!(!walk(&dfa, b"friendly-scanner"));
    }

    #[test]
    fn builtin_lists_fit_and_match() {
        let scanners = Scanners::default();
        let user_agents = compile(&scanners.user_agents).unwrap();
        assert!(walk(&user_agents, b"Friendly-Scanner/1.0"));
        assert!(walk(&user_agents, b"sipcli/v1.8"));
        assert!(!walk(&user_agents, b"Asterisk PBX 20.5.0"));
        let from = compile(&scanners.from).unwrap();
        assert!(walk(&from, b"\"sipvicious\"<sip:100@1.1.1.1>;tag=1"));
        assert!(!walk(&from, b"<sip:alice@example.com>;tag=2"));
    }

    #[test]
    fn empty_pattern_is_refused() {
        let patterns = ["sipcli".to_owned(), String::new()];
        // `Dfa` has no Debug, so no `unwrap_err`.
        let error = compile(&patterns).err();
        assert_eq!(error, Some(PatternError::Empty { index: 1 }));
    }

    #[test]
    fn too_many_states_is_refused() {
        // Disjoint 10-byte patterns: 10 states each after the shared start, none of them a prefix
        // of another. 25 of them need 1 + 25 * 9 = 226 states (the last byte of each is the match
        // state); 29 need 262.
        let patterns = |count: usize| -> Vec<String> {
            (0..count)
                .map(|i| format!("{}{:09}", char::from(b'a' + i as u8), i))
                .collect()
        };
        assert!(compile(&patterns(25)).is_ok());
        let error = compile(&patterns(29))
            .err()
            .expect("29 patterns should not fit");
        assert_eq!(error, PatternError::TooManyStates { needed: 262 });
        let message = error.to_string();
        assert!(message.contains("need 262 automaton states"), "{message}");
        assert!(message.contains("at most 255"), "{message}");
    }
}
