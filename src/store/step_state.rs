//! What the store holds for one step, from one listing of its folder. Manifests are not read one by one:
//! a per-step index caches what each manifest says, and is trusted for a manifest whose listed version and
//! size match the cached ones. Only manifests written since the index (a build that was killed, another
//! machine) are read.

use super::manifest::Manifest;
pub use super::record::{OutputRef, Record, RecordRef, Records};
use super::{META_DIR, ReadLimit, Store, is_temporary};
use crate::util::sized_names::SizedNames;
use crate::util::text_order;
use anyhow::Context;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

const INDEX_NAME: &str = "index.dsmake";
/// Where notes on steps' manifests' folders are kept (see [`note_path`]), in the store's own folder.
const NOTES_DIR: &str = ".dsmake/listed";
/// How long before a plan its manifests' folder must have last changed for its stamp to be noted.
const SETTLED: Duration = Duration::from_secs(2);

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
        Self::load_at(store, dir, SystemTime::now())
    }

    /// [`StepState::load`] at `checked_at` by the file system's clock (taken before the index and the
    /// listing, so that what they show is at least as recent).
    fn load_at(store: &dyn Store, dir: &str, checked_at: SystemTime) -> anyhow::Result<StepState> {
        let meta_dir = format!("{dir}/{META_DIR}");
        let stamp = store.folder_stamp(&meta_dir).map(|(stamp, changed)| {
            let settled = checked_at.duration_since(changed).is_ok_and(|age| age > SETTLED);
            (stamp, settled)
        });
        // The index first: what it lists is where the folder's objects are expected, so it tells where to cut
        // a listing into ranges of about a page each.
        let index_path = format!("{meta_dir}/{INDEX_NAME}");
        let index = || match store.read(&index_path, ReadLimit::INDEX) {
            Ok(Some(bytes)) => super::index_codec::decode(&bytes),
            _ => None,
        };
        let listed = |listing: anyhow::Result<_>| listing.with_context(|| format!("cannot list {dir} in the store"));
        let list = |splits: &[String]| listed(store.list_split(dir, splits));
        let unchanged = |stamp: &str| store.folder_stamp(&meta_dir).is_some_and(|(now, _)| now == stamp);

        // A local manifests' folder unchanged since a listing the index described exactly holds what the index
        // says (dsmake writes each manifest whole, by rename): only the outputs are listed, and at 10⁶
        // targets that is half the objects a plan would list and stat.
        if let Some((stamp, _)) = &stamp
            && read_note(store, &meta_dir).is_some_and(|noted| noted == *stamp)
        {
            let (cached, listing) = rayon::join(index, || listed(store.list_except(dir, META_DIR)));
            let listing = listing?;
            // Unchanged still: an index or a manifest written meanwhile would show here. (Otherwise the index
            // is read again below: it may be a new one.)
            if let Some(cached) = cached
                && unchanged(stamp)
            {
                return Ok(Self::from_listing(store, dir, &listing, cached, false));
            }
        }

        // A store that lists in one piece (a local folder) needs nothing from the index to list: both at once.
        let (cached, listing) = match store.list_range_size() {
            Some(page) => {
                let cached = index();
                let splits = split_points(dir, cached.as_ref().unwrap_or(&Records::new()), page);
                (cached, list(&splits)?)
            }
            None => {
                let (cached, listing) = rayon::join(index, || list(&[]));
                (cached, listing?)
            }
        };
        let had_index = cached.is_some();
        let state = Self::from_listing(store, dir, &listing, cached.unwrap_or_default(), true);
        // The index described the folder exactly, and the folder did not change while it was listed: noted,
        // for the next plan to trust it while it stays so. A folder changed just now is not: a change in the
        // same tick of the file system's clock could leave its stamp as it is.
        if let Some((stamp, true)) = &stamp
            && had_index
            && !state.index_stale
            && unchanged(stamp)
        {
            write_note(store, &meta_dir, stamp);
        }
        Ok(state)
    }

    /// The state from a listing of the step's folder and the index's records. With `manifests_listed`, the
    /// records stay where their manifest is listed with the version and size they were read at, the others
    /// are read again, and those without a manifest dropped; without, the records are what the folder holds.
    fn from_listing(
        store: &dyn Store,
        dir: &str,
        listing: &[super::ObjectMeta],
        mut cached: Records,
        manifests_listed: bool,
    ) -> StepState {
        let listed = listing.len();
        // Sorted, the listing becomes one buffer of names (see SizedNames) instead of a map entry per object.
        let prefix = format!("{dir}/");
        let order = sorted_order(listing, prefix.len());
        let bytes = listing.iter().map(|m| m.path.len().saturating_sub(prefix.len())).sum();
        let mut files = SizedNames::with_capacity(listing.len(), bytes);
        // Versions only where they mean content (S3's ETags): a local folder's are times, and 10⁶ of them would
        // cost a plan time and memory for nothing.
        let tagged = store.versions_identify_content();

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
            if !pushed || !manifests_listed {
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
        if manifests_listed && vouched < cached.len() {
            index_stale = true;
            cached.retain(|shard, _| files.get(&format!("{META_DIR}/{shard}.json")).is_some());
        }
        let mut records = cached;
        let read: Vec<_> = to_read
            .par_iter()
            .map(|(shard, meta)| {
                let parsed = store
                    .read(&meta.path, ReadLimit::MANIFEST)
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
        StepState {
            dir: dir.to_string(),
            files,
            listed,
            records,
            unreadable,
            manifests_read: to_read.len(),
            index_stale,
        }
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

/// Where the note on a step's manifests' folder is kept: the folder, and its stamp when a listing of it
/// found exactly what the step's index says. Outside the folder, whose stamp writing the note would change.
fn note_path(meta_dir: &str) -> String {
    let name = blake3::hash(meta_dir.as_bytes()).to_hex();
    format!("{NOTES_DIR}/{}.json", &name[..32])
}

/// The stamp noted for `meta_dir`, if any (a note for another folder, or unreadable, is none).
fn read_note(store: &dyn Store, meta_dir: &str) -> Option<String> {
    let bytes = store.read(&note_path(meta_dir), ReadLimit::NOTE).ok()??;
    let note: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    (note["folder"] == meta_dir).then(|| note["stamp"].as_str().map(str::to_string))?
}

/// Notes `stamp` for `meta_dir`. A note not written (a store this user may not write) only costs the next
/// plan a whole listing.
fn write_note(store: &dyn Store, meta_dir: &str, stamp: &str) {
    let note = serde_json::json!({ "folder": meta_dir, "stamp": stamp });
    let _ = store.write(&note_path(meta_dir), note.to_string().as_bytes());
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
    use crate::store::interleaved::Interleaved;
    use crate::store::manifest::{Manifest, OutputFile};
    use std::io::Write;

    fn record(output: &str) -> Record {
        Record::with_outputs(
            Default::default(),
            vec![OutputFile { name: output.into(), size: 1, blake3: String::new(), version: String::new() }],
        )
    }

    /// A local store with `n` built targets of step folder `p/s`, their manifests and the index a build leaves.
    fn built_store(n: usize) -> (tempfile::TempDir, crate::store::local::LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::new(dir.path().to_path_buf());
        for i in 0..n {
            publish(&store, &format!("{i:03}"));
        }
        StepState::load(&store, "p/s").unwrap().save_index(&store).unwrap();
        (dir, store)
    }

    fn publish(store: &dyn Store, shard: &str) {
        let output = format!("{shard}.txt");
        store.write(&format!("p/s/{output}"), shard.as_bytes()).unwrap();
        let manifest = Manifest::of_one_output(&format!("s/{shard}"), shard, &output, shard.len() as u64);
        store.write(&crate::store::manifest_path("p/s", shard), &serde_json::to_vec(&manifest).unwrap()).unwrap();
    }

    /// Loads at a time far enough after every change for the manifests' folder to count as settled.
    fn load_later(store: &dyn Store) -> StepState {
        StepState::load_at(store, "p/s", SystemTime::now() + Duration::from_secs(60)).unwrap()
    }

    fn shards(state: &StepState) -> Vec<String> {
        let mut shards: Vec<String> = state.records.iter().map(|(shard, _)| shard.to_string()).collect();
        shards.sort();
        shards
    }

    #[test]
    fn an_index_over_its_bound_is_left_unread_and_the_manifests_decide() {
        let (dir, store) = built_store(3);
        // A sparse gibibyte and a byte: a read of it would allocate it.
        let index = dir.path().join(format!("p/s/{META_DIR}/{INDEX_NAME}"));
        std::fs::File::options().write(true).open(&index).unwrap().set_len((1 << 30) + 1).unwrap();
        let error = store.read(&format!("p/s/{META_DIR}/{INDEX_NAME}"), ReadLimit::INDEX).unwrap_err();
        let too_large = error.downcast_ref::<crate::store::TooLarge>().expect("a TooLarge error");
        assert_eq!(too_large.size, Some((1 << 30) + 1));
        let state = load_later(&store);
        assert_eq!((state.manifests_read, shards(&state)), (3, vec!["000".into(), "001".into(), "002".into()]));
        assert!(state.unreadable.is_empty());
    }

    #[test]
    fn a_manifests_folder_unchanged_since_the_index_described_it_exactly_is_not_read_again() {
        let (_dir, store) = built_store(3);
        let all = || vec!["000".to_string(), "001".to_string(), "002".to_string()];
        // Listed whole (3 outputs, 3 manifests, the index), every manifest vouched for by the index: noted.
        let first = load_later(&store);
        assert_eq!((first.listed, first.manifests_read, shards(&first)), (7, 0, all()));
        // Unchanged since: the outputs alone are listed, and the records are the index's.
        let second = load_later(&store);
        assert_eq!((second.listed, second.manifests_read, shards(&second)), (3, 0, all()));
        assert!(!second.index_stale);
        assert_eq!(second.has("001.txt", 3), Some(true));
        assert_eq!(second.records.get("001").unwrap().outputs().next().unwrap().name, "001.txt");

        // A manifest another build publishes (by rename) changes the folder: listed and read.
        publish(&store, "003");
        let third = load_later(&store);
        assert_eq!((third.listed, third.manifests_read), (9, 1));
        assert_eq!(shards(&third).len(), 4);
        // So does one removed (`gc`, or by hand).
        std::fs::remove_file(_dir.path().join("p/s/_dsmake/000.json")).unwrap();
        let fourth = load_later(&store);
        assert_eq!((fourth.listed, shards(&fourth)), (8, vec!["001".into(), "002".into(), "003".into()]));
        assert!(fourth.index_stale, "the index still names 000 and lacks 003");
    }

    #[test]
    fn a_folder_changed_just_now_is_not_noted_nor_one_that_holds_folders() {
        let (dir, store) = built_store(2);
        // Loaded at the moment the folder last changed (the index was just written; a slow machine must not
        // make it look settled): a later change in the same tick of the clock could leave its stamp as it is, so
        // it is listed whole each time until it settles.
        let changed = store.folder_stamp(&format!("p/s/{META_DIR}")).unwrap().1;
        for _ in 0..2 {
            let now = StepState::load_at(&store, "p/s", changed).unwrap();
            assert_eq!((now.listed, now.manifests_read), (5, 0));
        }
        assert!(!dir.path().join(NOTES_DIR).exists());
        // A shard id with a folder in it puts a folder among the manifests, whose entries the stamp of the
        // manifests' folder does not cover: never noted.
        publish(&store, "a/000");
        StepState::load(&store, "p/s").unwrap().save_index(&store).unwrap();
        for _ in 0..2 {
            let later = load_later(&store);
            assert_eq!((later.listed, later.manifests_read, shards(&later).len()), (7, 0, 3));
        }
        assert!(!dir.path().join(NOTES_DIR).exists());
    }

    #[test]
    fn an_index_damaged_in_place_under_a_note_is_read_around() {
        let (dir, store) = built_store(2);
        load_later(&store);
        assert!(dir.path().join(NOTES_DIR).exists());
        // Overwritten in place, same folder entries (no rename): the stamp holds, the index does not decode.
        let index = dir.path().join(format!("p/s/{META_DIR}/{INDEX_NAME}"));
        let size = std::fs::metadata(&index).unwrap().len() as usize;
        std::fs::OpenOptions::new().write(true).open(&index).unwrap().write_all(&vec![0xff; size]).unwrap();
        let state = load_later(&store);
        assert_eq!((state.listed, state.manifests_read, shards(&state).len()), (5, 2, 2));
        assert!(state.index_stale);
    }

    #[test]
    fn a_manifest_published_while_the_outputs_are_listed_under_a_note_is_seen() {
        let (_dir, store) = built_store(2);
        load_later(&store);
        // The note held when the plan began; the folder's stamp, checked again after the listing, no longer
        // does: the plan lists the folder whole and reads the new manifest.
        // Another build publishes a manifest while this one lists the outputs.
        let meanwhile = Interleaved::new(&store, false).before_listing(Box::new(|store| publish(store, "new")));
        let state = load_later(&meanwhile);
        assert_eq!((state.manifests_read, shards(&state)), (1, vec!["000".into(), "001".into(), "new".into()]));
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
