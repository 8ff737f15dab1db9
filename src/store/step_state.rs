//! What the store holds for one step, from one listing of its folder. Manifests are not read one by one:
//! a per-step index caches what each manifest says, and is trusted for a manifest whose listed version and
//! size match the cached ones. Only manifests written since the index (a build that was killed, another
//! machine) are read.

use super::manifest::Manifest;
pub use super::record::Record;
use super::{META_DIR, ObjectMeta, Store, is_temporary};
use anyhow::Context;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

const INDEX_NAME: &str = "index.dsmake";

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub size: u64,
    pub version: String,
}

#[derive(Debug, Default)]
pub struct StepState {
    pub dir: String,
    /// Every object in the step's folder (manifests and temporaries included), by path relative to the folder.
    pub files: HashMap<String, Listed>,
    /// By shard id.
    pub records: HashMap<String, Record>,
    /// Manifests that could not be read, with why: their targets count as missing.
    pub unreadable: BTreeMap<String, String>,
    pub manifests_read: usize,
    index_stale: bool,
}

impl StepState {
    pub fn load(store: &dyn Store, dir: &str) -> anyhow::Result<StepState> {
        let listing = store.list(dir).with_context(|| format!("cannot list {dir} in the store"))?;
        let prefix = format!("{dir}/");
        let files: HashMap<String, Listed> = listing
            .into_iter()
            .filter(|m| m.path.starts_with(&prefix))
            .map(|mut m| {
                let relative = m.path.split_off(prefix.len());
                (relative, Listed { size: m.size, version: m.version })
            })
            .collect();
        let index_path = format!("{dir}/{META_DIR}/{INDEX_NAME}");
        let mut cached: HashMap<String, Record> = match store.read(&index_path) {
            Ok(Some(bytes)) => super::index_codec::decode(&bytes).unwrap_or_default(),
            _ => HashMap::new(),
        };

        let mut records = HashMap::new();
        let mut to_read = Vec::new();
        let manifest_prefix = format!("{META_DIR}/");
        for (rel, meta) in &files {
            let Some(shard) = rel.strip_prefix(&manifest_prefix).and_then(|r| r.strip_suffix(".json")) else {
                continue;
            };
            if is_temporary(rel) {
                continue;
            }
            match cached.remove(shard) {
                Some(r) if r.manifest_version == meta.version && r.manifest_size == meta.size => {
                    records.insert(shard.to_string(), r);
                }
                _ => to_read.push((
                    shard.to_string(),
                    ObjectMeta { path: format!("{prefix}{rel}"), size: meta.size, version: meta.version.clone() },
                )),
            }
        }
        let index_stale = !to_read.is_empty() || !cached.is_empty();
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
                    records.insert(shard, record);
                }
                Err(e) => {
                    unreadable.insert(shard, format!("{e:#}"));
                }
            }
        }
        Ok(StepState { dir: dir.to_string(), files, records, unreadable, manifests_read: to_read.len(), index_stale })
    }

    /// Records a target built by this run.
    pub fn insert(&mut self, shard: &str, record: Record) {
        self.records.insert(shard.to_string(), record);
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
        self.files.get(name).map(|m| m.size == size)
    }

    pub fn index_name() -> &'static str {
        INDEX_NAME
    }
}
