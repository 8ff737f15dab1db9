//! Names with a size each, sorted, in one text buffer: a step folder's listing of 10⁶ objects as two
//! allocations, where a hash map of strings costs an entry, a string and a hash slot per object.

/// Built by pushing names in ascending order (a sorted listing), then looked up by binary search.
#[derive(Debug, Default)]
pub struct SizedNames {
    text: String,
    /// Per name, in order: where it ends in `text` (it starts where the previous one ends), and its size.
    entries: Vec<(usize, u64)>,
    /// Per name, in order, a tag of its version, where names were pushed with one ([`SizedNames::push_tagged`]).
    tags: Vec<u64>,
    /// Per name, in order, its first 8 bytes as a big-endian number (zero-padded): a lookup compares these,
    /// side by side in one array, and reads a name's text only where they tie, instead of two scattered
    /// reads per step of the search (20 steps in 10⁶ names).
    heads: Vec<u64>,
}

fn head(name: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

impl SizedNames {
    pub fn with_capacity(names: usize, bytes: usize) -> Self {
        SizedNames {
            text: String::with_capacity(bytes),
            entries: Vec::with_capacity(names),
            tags: Vec::new(),
            heads: Vec::with_capacity(names),
        }
    }

    /// Appends `name`; it must sort after every name pushed so far (a repeat of the last one is ignored).
    /// Returns false, pushing nothing, when it does not.
    pub fn push(&mut self, name: &str, size: u64) -> bool {
        if let Some(last) = self.entries.len().checked_sub(1).map(|i| self.name(i))
            && name <= last
        {
            return false;
        }
        self.text.push_str(name);
        self.entries.push((self.text.len(), size));
        self.heads.push(head(name));
        true
    }

    /// [`SizedNames::push`] with a tag of the name's version; push all names of a set one way or the other.
    pub fn push_tagged(&mut self, name: &str, size: u64, tag: u64) -> bool {
        let pushed = self.push(name, size);
        if pushed {
            self.tags.push(tag);
        }
        pushed
    }

    /// The tag pushed with `name`, if it was pushed with one.
    pub fn tag(&self, name: &str) -> Option<u64> {
        self.find(name).and_then(|i| self.tags.get(i).copied())
    }

    fn name(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.entries[i - 1].0 };
        &self.text[start..self.entries[i].0]
    }

    /// The size listed for `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.find(name).map(|i| self.entries[i].1)
    }

    fn find(&self, name: &str) -> Option<usize> {
        let (mut low, mut high) = (0, self.entries.len());
        let wanted = head(name);
        while low < high {
            let mid = low + (high - low) / 2;
            // The same order as the names': heads that differ order as their names do.
            match self.heads[mid].cmp(&wanted).then_with(|| self.name(mid).cmp(name)) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every name with its size, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        (0..self.entries.len()).map(|i| (self.name(i), self.entries[i].1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_pushed_in_order_and_refuses_what_is_out_of_order() {
        let mut names = SizedNames::with_capacity(4, 32);
        assert_eq!(names.get("a"), None);
        for (name, size) in [("_dsmake/x.json", 7), ("a/b.tar", 1), ("a/c", 0), ("a/c\0", 3), ("b", 12)] {
            assert!(names.push(name, size));
        }
        assert!(!names.push("a/c", 5), "a repeat");
        assert!(!names.push("a", 5), "out of order");
        assert_eq!(names.len(), 5);
        assert_eq!(names.get("a/c\0"), Some(3), "a name that only a zero byte sets apart");
        assert_eq!(names.get("a/b.tar"), Some(1));
        assert_eq!(names.get("_dsmake/x.json"), Some(7));
        assert_eq!(names.get("b"), Some(12));
        assert_eq!(names.get("a/c"), Some(0));
        assert_eq!(names.get("a"), None);
        assert_eq!(names.get("c"), None);
        assert_eq!(
            names.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["_dsmake/x.json", "a/b.tar", "a/c", "a/c\0", "b"]
        );
        assert_eq!(names.tag("a/b.tar"), None, "pushed without tags");
    }

    #[test]
    fn keeps_a_tag_per_name_pushed_with_one() {
        let mut names = SizedNames::with_capacity(2, 8);
        assert!(names.push_tagged("a", 1, 7));
        assert!(!names.push_tagged("a", 2, 8), "a repeat keeps the first tag");
        assert!(names.push_tagged("b", 2, 9));
        assert_eq!((names.tag("a"), names.tag("b"), names.tag("c")), (Some(7), Some(9), None));
    }
}
