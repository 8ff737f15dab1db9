//! What the store holds for one step, from one listing of its folder. Manifests are not read one by one:
//! a per-step index caches what each manifest says, and is trusted for a manifest whose listed version and
//! size match the cached ones. Only manifests written since the index (a build that was killed, another
//! machine) are read.

use super::manifest::Manifest;
pub use super::record::{OutputRef, Record, RecordRef, Records};
use super::{META_DIR, Store, is_temporary};
use crate::util::sized_names::SizedNames;
use crate::util::text_order;
use anyhow::Context;
use rayon::prelude::*;
use std::collections::BTreeMap;

const INDEX_NAME: &str = "index.dsmake";

#[derive(Debug, Default)]
pub struct StepState {
    pub dir: String,
    /// Every object in the step's folder (manifests and temporaries included), by path relative to the folder,
    /// with its size.
    pub files: SizedNames,
    /// Objects the listing returned, counted as they came (a listing that returned one twice counts it twice).
    pub listed: usize,
    /// By shard id.
    pub records: Records,
    /// Manifests that could not be read, with why: their targets count as missing.
    pub unreadable: BTreeMap<String, String>,
    pub manifests_read: usize,
    index_stale: bool,
}

impl StepState {
    pub fn load(store: &dyn Store, dir: &str) -> anyhow::Result<StepState> {
        // The index first: what it lists is where the folder's objects are expected, so it tells where to cut
        // a listing into ranges of about a page each.
        let index_path = format!("{dir}/{META_DIR}/{INDEX_NAME}");
        let index = || match store.read(&index_path) {
            Ok(Some(bytes)) => super::index_codec::decode(&bytes).unwrap_or_default(),
            _ => Records::new(),
        };
        let list = |splits: &[String]| {
            store.list_split(dir, splits).with_context(|| format!("cannot list {dir} in the store"))
        };
        // A store that lists in one piece (a local folder) needs nothing from the index to list: both at once.
        let (mut cached, listing) = match store.list_range_size() {
            Some(page) => {
                let cached = index();
                let listing = list(&split_points(dir, &cached, page))?;
                (cached, listing)
            }
            None => {
                let (cached, listing) = rayon::join(index, || list(&[]));
                (cached, listing?)
            }
        };
        let listed = listing.len();
        // Sorted, the listing becomes one buffer of names (see SizedNames) instead of a map entry per object.
        let prefix = format!("{dir}/");
        let order = sorted_order(&listing, prefix.len());
        let bytes = listing.iter().map(|m| m.path.len().saturating_sub(prefix.len())).sum();
        let mut files = SizedNames::with_capacity(listing.len(), bytes);
        // Versions only where they mean content (S3's ETags): a local folder's are times, and 10⁶ of them would
        // cost a plan time and memory for nothing.
        let tagged = store.versions_identify_content();

        // The index's records stay where their manifest is listed with the version and size they were read
        // at; the others are read again, and those without a manifest dropped.
        let manifest_prefix = format!("{META_DIR}/");
        let mut to_read = Vec::new();
        let mut vouched = 0;
        for &at in &order {
            let m = &listing[at];
            let Some(rel) = m.path.strip_prefix(&prefix) else { continue };
            let pushed = match tagged {
                true => files.push_tagged(rel, m.size, super::version_tag(&m.version)),
                false => files.push(rel, m.size),
            };
            if !pushed {
                continue;
            }
            let Some(shard) = rel.strip_prefix(&manifest_prefix).and_then(|r| r.strip_suffix(".json")) else {
                continue;
            };
            if is_temporary(rel) {
                continue;
            }
            match cached.get(shard) {
                Some(r) if r.manifest_version() == m.version && r.manifest_size() == m.size => vouched += 1,
                _ => {
                    cached.remove(shard);
                    to_read.push((shard.to_string(), m));
                }
            }
        }
        let mut index_stale = !to_read.is_empty();
        if vouched < cached.len() {
            index_stale = true;
            cached.retain(|shard, _| files.get(&format!("{META_DIR}/{shard}.json")).is_some());
        }
        let mut records = cached;
        let read: Vec<_> = to_read
            .par_iter()
            .map(|(shard, meta)| {
                let parsed = store
                    .read(&meta.path)
                    .and_then(|b| b.with_context(|| format!("{} vanished", meta.path)))
                    .and_then(|bytes| Manifest::parse(&bytes, &meta.path));
                (shard.clone(), parsed.map(|m| Record::new(&m, meta)))
            })
            .collect();
        let mut unreadable = BTreeMap::new();
        for (shard, record) in read {
            match record {
                Ok(record) => {
                    records.insert(&shard, &record);
                }
                Err(e) => {
                    unreadable.insert(shard, format!("{e:#}"));
                }
            }
        }
        Ok(StepState {
            dir: dir.to_string(),
            files,
            listed,
            records,
            unreadable,
            manifests_read: to_read.len(),
            index_stale,
        })
    }

    /// Records a target built by this run.
    pub fn insert(&mut self, shard: &str, record: Record) {
        self.records.insert(shard, &record);
        self.index_stale = true;
    }

    /// Writes the index back when it no longer matches the manifests. A lost write only costs reads later.
    pub fn save_index(&mut self, store: &dyn Store) -> anyhow::Result<()> {
        if !self.index_stale {
            return Ok(());
        }
        let bytes = super::index_codec::encode(&self.records);
        store.write(&format!("{}/{META_DIR}/{INDEX_NAME}", self.dir), &bytes)?;
        self.index_stale = false;
        Ok(())
    }

    /// Is the listed object present with this size?
    pub fn has(&self, name: &str, size: u64) -> Option<bool> {
        self.files.get(name).map(|listed| listed == size)
    }

    /// Is the listed object another version than `version` (recorded when it was published)? Never where
    /// either is unknown (an S3-compatible server that lists no ETags).
    pub fn rewritten(&self, name: &str, version: &str) -> bool {
        let recorded = super::version_tag(version);
        recorded != 0 && self.files.tag(name).is_some_and(|listed| listed != 0 && listed != recorded)
    }

    pub fn index_name() -> &'static str {
        INDEX_NAME
    }
}

/// The listing's positions in the order of its paths (see `util::text_order`). The key is which of three runs
/// the path's part after the folder falls in (before the manifests' folder, in it, after it), then its next 15
/// bytes (after the manifests' folder's name in that run): every manifest's path starts alike, so the plain
/// first 16 bytes would tie for all of them.
fn sorted_order(listing: &[super::ObjectMeta], prefix_len: usize) -> Vec<usize> {
    let manifests = format!("{META_DIR}/");
    let key = |path: &str| {
        let rel = path.get(prefix_len..).unwrap_or_default();
        let (run, tail) = match rel.strip_prefix(&manifests) {
            Some(tail) => (1, tail),
            None if rel < manifests.as_str() => (0, rel),
            None => (2, rel),
        };
        (run << 120) | (text_order::head(tail.as_bytes()) >> 8)
    };
    text_order::order(listing.len(), |at| listing[at].path.as_str(), key)
}

/// Ranges of the listing aim at this share of a page, so that most fit in one request though the split
/// points are only estimates.
const RANGE_FILL: f64 = 0.75;
/// Sampled objects per range: enough for quantiles within about a fifth of a range.
const SAMPLES_PER_RANGE: usize = 32;

/// Where to cut the listing of `dir`: quantiles of the object paths the index expects (each record's
/// manifest and outputs), so that each range holds about [`RANGE_FILL`] of a page of `page` objects. Records
/// are sampled (a hash map's order is as good as random), so a step of 10⁶ targets sorts a few thousand paths,
/// not millions. Empty when one page holds everything.
fn split_points(dir: &str, records: &Records, page: usize) -> Vec<String> {
    let expected: usize = records.iter().map(|(_, r)| 1 + r.outputs().len()).sum::<usize>() + 1;
    let per_range = ((page as f64 * RANGE_FILL) as usize).max(1);
    if expected <= page || records.is_empty() {
        return Vec::new();
    }
    let ranges = expected.div_ceil(per_range);
    let stride = (records.len() / (ranges * SAMPLES_PER_RANGE)).max(1);
    let mut sample: Vec<String> = Vec::new();
    for (shard, record) in records.iter().step_by(stride) {
        sample.push(format!("{dir}/{META_DIR}/{shard}.json"));
        sample.extend(record.outputs().map(|o| format!("{dir}/{}", o.name)));
    }
    sample.sort_unstable();
    let mut splits: Vec<String> = (1..ranges).map(|i| sample[i * sample.len() / ranges].clone()).collect();
    splits.dedup();
    splits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::OutputFile;

    fn record(output: &str) -> Record {
        Record::with_outputs(
            Default::default(),
            vec![OutputFile { name: output.into(), size: 1, blake3: String::new(), version: String::new() }],
        )
    }

    #[test]
    fn the_sorted_order_is_the_order_of_the_paths() {
        let paths = [
            "d/b",
            "d/ab\0c",
            "d/ab",
            "d/_dsmake/x.json",
            "d/_dsmake/part_00000000000002.json",
            "d/_dsmake/part_00000000000001.json",
            "d/_dsmake",
            "d/_dsmake/",
            "d/_dsmakf",
            "d/_dsmaka/z",
            "d/abcdefghijklmnopq2",
            "d/abcdefghijklmnopq1",
            "d/abcdefghijklmnopq",
            "d/",
            "d/~",
            "d/\u{e4}",
        ];
        let listing: Vec<super::super::ObjectMeta> = paths
            .iter()
            .map(|p| super::super::ObjectMeta { path: p.to_string(), size: 0, version: String::new() })
            .collect();
        let order: Vec<&str> = sorted_order(&listing, 2).iter().map(|&at| paths[at]).collect();
        let mut sorted = paths.to_vec();
        sorted.sort_unstable();
        assert_eq!(order, sorted);
    }

    #[test]
    fn split_points_cut_the_expected_objects_into_ranges_of_most_of_a_page() {
        let mut records = Records::new();
        for i in 0..3000 {
            records.insert(&format!("{i:05}"), &record(&format!("{i:05}.tar")));
        }
        let splits = split_points("p/s", &records, 1000);
        // 6001 expected objects in ranges of 750: 9 ranges, 8 cuts, sorted, inside the folder.
        assert_eq!(splits.len(), 8, "{splits:?}");
        assert!(splits.windows(2).all(|w| w[0] < w[1]), "{splits:?}");
        assert!(splits.iter().all(|s| s.starts_with("p/s/")));
        // Outputs sort before `_dsmake/`, so the cuts fall among both kinds of object.
        assert!(splits.iter().any(|s| s.ends_with(".tar")) && splits.iter().any(|s| s.ends_with(".json")));
        assert!(split_points("p/s", &records, 10_000).is_empty(), "one page holds everything");
        assert!(split_points("p/s", &Records::new(), 1).is_empty(), "no index: one listing");
    }
}
