//! What the property tests (the `fuzz` test modules) share: their budget, a few hundred cases each by default
//! so that all of them add seconds to `cargo test --lib` (`PROPTEST_CASES=100000` runs them longer), and the
//! damage they do to valid bytes.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// `default` cases unless `PROPTEST_CASES` says otherwise. A failure is shrunk and reported, not written to a
/// regressions file: the case that found a bug becomes a unit test beside the code it broke.
pub fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

#[derive(Debug, Clone)]
pub enum Damage {
    Flip { at: usize, bits: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
}

/// Mostly flips: a cut, an insertion or a deletion often makes a file that fails its first check, a flip
/// reaches deeper.
pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Damage::Flip { at, bits }),
        1 => any::<usize>().prop_map(|at| Damage::Truncate { at }),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        1 => (any::<usize>(), 1..16usize).prop_map(|(at, len)| Damage::Delete { at, len }),
    ]
}

/// Byte flips, cuts, insertions and deletions, as a disk, a network or a hostile writer would make them.
pub fn damaged(bytes: &[u8], damage: &[Damage]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for d in damage {
        let at = |at: usize, extra: usize| at % (out.len() + extra).max(1);
        match d {
            Damage::Flip { at: i, bits } if !out.is_empty() => {
                let i = at(*i, 0);
                out[i] ^= bits;
            }
            Damage::Flip { .. } => {}
            Damage::Truncate { at: i } => {
                let i = at(*i, 1);
                out.truncate(i);
            }
            Damage::Insert { at: i, bytes } => {
                let i = at(*i, 1);
                out.splice(i..i, bytes.iter().copied());
            }
            Damage::Delete { at: i, len } if !out.is_empty() => {
                let i = at(*i, 0);
                out.drain(i..(i + len).min(out.len()));
            }
            Damage::Delete { .. } => {}
        }
    }
    out
}
