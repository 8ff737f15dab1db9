//! Sorting 10⁶ strings by position: most comparisons read a 16-byte key of each string kept in the sort's own
//! array, and only ties read the strings, which lie scattered over the heap (a cache miss each).

use rayon::prelude::*;

/// A string's first 16 bytes, zero-padded, as a number: keys that differ order as their strings do (a
/// zero-padded end sorts first, as a shorter string does; where that ties, the strings decide).
pub fn head(bytes: &[u8]) -> u128 {
    let mut head = [0u8; 16];
    let n = bytes.len().min(16);
    head[..n].copy_from_slice(&bytes[..n]);
    u128::from_be_bytes(head)
}

/// The positions `0..n` in the order of `text(position)`, equal texts in position order (as a stable sort
/// leaves them). `key` must agree with the texts' order: a smaller key for a smaller text, or an equal key
/// ([`head`] does).
pub fn order<'a>(n: usize, text: impl Fn(usize) -> &'a str + Sync, key: impl Fn(&str) -> u128 + Sync) -> Vec<usize> {
    // The key as two halves: a tuple of u64s is 8-byte aligned, where a u128 would pad each entry to 32 bytes.
    let mut keyed: Vec<(u64, u64, u32)> = (0..n)
        .into_par_iter()
        .map(|at| {
            let k = key(text(at));
            ((k >> 64) as u64, k as u64, at as u32)
        })
        .collect();
    keyed.par_sort_unstable_by(|a, b| {
        (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| text(a.2 as usize).cmp(text(b.2 as usize))).then(a.2.cmp(&b.2))
    });
    keyed.into_par_iter().map(|(_, _, at)| at as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_as_a_stable_sort_of_the_texts() {
        let texts = [
            "b",
            "ab\0c",
            "ab",
            "abcdefghijklmnopq2",
            "abcdefghijklmnopq1",
            "abcdefghijklmnopq",
            "",
            "ab",
            "~",
            "\u{e4}",
            "abcdefghijklmnopq1",
        ];
        let sorted = order(texts.len(), |i| texts[i], |t| head(t.as_bytes()));
        let mut expected: Vec<usize> = (0..texts.len()).collect();
        expected.sort_by_key(|&i| texts[i]);
        assert_eq!(sorted, expected);
    }
}
