//! Placeholder: replaced by the pattern-compiler work.
