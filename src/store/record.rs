//! What one manifest says, as far as freshness and status need it: a row of a step's index. [`Records`] holds
//! a step's rows compactly (a plan of 10⁶ targets holds 10⁶ of them): fixed fields in one small entry each,
//! every string in one shared buffer, looked up by shard id through an open-addressing table of entry
//! numbers, so that neither decoding nor holding them allocates per record.

use super::ObjectMeta;
use super::manifest::{Manifest, OutputFile, RetryOf};
use crate::util::digest::Digest;
use serde::{Deserialize, Serialize};

/// What one manifest says, as far as freshness and status need it: one record on its own (a build's, a
/// test's); [`Records`] holds a step's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The manifest's key; all zeros when the manifest's is not a digest (never matches a plan's key).
    pub key: Digest,
    pub outputs: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOf>,
    pub started_at: String,
    pub duration_s: f64,
    pub(crate) manifest_version: String,
    pub(crate) manifest_size: u64,
}

impl Record {
    /// A record of a manifest with just these outputs, for tests.
    #[cfg(test)]
    pub fn with_outputs(key: Digest, outputs: Vec<OutputFile>) -> Self {
        Record {
            key,
            outputs,
            rows: None,
            failures: None,
            retryable: None,
            retry: None,
            started_at: String::new(),
            duration_s: 0.0,
            manifest_version: String::new(),
            manifest_size: 0,
        }
    }

    pub fn new(manifest: &Manifest, meta: &ObjectMeta) -> Self {
        Record {
            key: Digest::from_hex(&manifest.key).unwrap_or_default(),
            // Freshness needs names, sizes and versions; digests stay in the manifest, keeping the index small.
            outputs: manifest
                .outputs
                .iter()
                .map(|o| OutputFile {
                    name: o.name.clone(),
                    size: o.size,
                    blake3: String::new(),
                    version: o.version.clone(),
                })
                .collect(),
            rows: manifest.rows,
            failures: manifest.failures,
            retryable: manifest.retryable,
            retry: manifest.retry.clone(),
            started_at: manifest.started_at.clone(),
            duration_s: manifest.duration_s,
            manifest_version: meta.version.clone(),
            manifest_size: meta.size,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.outputs.iter().map(|o| o.size).sum()
    }
}

/// Marks an entry whose shard was removed (or given a newer entry).
const DEAD: u8 = 1;
const HAS_ROWS: u8 = 2;
const HAS_FAILURES: u8 = 4;
const HAS_RETRYABLE: u8 = 8;
/// A slot of the table that holds no entry.
const EMPTY: u32 = u32::MAX;

/// One record's fixed fields; its strings lie one after the other in [`Records::text`] from `text_at`: shard,
/// each output's name and version, the retried key (empty: not a retry), started_at, the manifest's version.
#[derive(Debug, Clone)]
struct Entry {
    key: [u8; 32],
    text_at: usize,
    outputs_at: usize,
    counts: [u64; 3],
    duration_s: f64,
    manifest_size: u64,
    shard_len: u32,
    /// Where the retried key starts, from `text_at` (after the outputs' strings).
    tail_at: u32,
    retry_len: u32,
    started_len: u32,
    version_len: u32,
    outputs_len: u32,
    retry_attempt: u32,
    hash: u32,
    flags: u8,
}

/// One output's fixed fields; its name and version lie in the record's strings.
#[derive(Debug, Clone, Copy)]
struct OutputEntry {
    size: u64,
    name_len: u32,
    version_len: u32,
}

/// A step's records by shard id, compact (see the module's comment). Records are only added or removed:
/// a removed one's bytes stay until the records are dropped (a plan removes few).
#[derive(Debug, Clone)]
pub struct Records {
    text: String,
    entries: Vec<Entry>,
    outputs: Vec<OutputEntry>,
    /// Entry numbers by hash of the shard, probed linearly; a power of two long, at most half full.
    slots: Vec<u32>,
    live: usize,
}

impl Default for Records {
    fn default() -> Self {
        Records::new()
    }
}

/// Kept in each entry, so that probes and growth never hash a shard again; the table starts probing from it.
fn hash_of(shard: &str) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(shard) as u32
}

/// Where a record begun by [`Records::begin`] starts: its strings, its outputs, and its shard's length.
pub(super) struct Begun {
    text_at: usize,
    outputs_at: usize,
    shard_len: usize,
}

/// What a record holds, borrowed: how one goes into [`Records`] (from a [`Record`] or from index bytes).
pub(super) struct Fields<'a> {
    pub key: [u8; 32],
    pub counts: [Option<u64>; 3],
    pub retry: (&'a str, u32),
    pub started_at: &'a str,
    pub duration_s: f64,
    pub manifest_version: &'a str,
    pub manifest_size: u64,
}

impl Records {
    pub fn new() -> Records {
        Records::with_capacity(0, 0)
    }

    /// Room for `records` records holding `text` bytes of strings in all.
    pub fn with_capacity(records: usize, text: usize) -> Records {
        Records {
            text: String::with_capacity(text),
            entries: Vec::with_capacity(records),
            outputs: Vec::with_capacity(records),
            slots: vec![EMPTY; (records * 2).max(8).next_power_of_two()],
            live: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The slot of `shard`: the one holding its entry (live or not), else the empty one where it would go.
    fn slot(&self, shard: &str, hash: u32) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let entry = self.slots[at];
            if entry == EMPTY {
                return at;
            }
            let e = &self.entries[entry as usize];
            // The stored hash first: most probes that miss end there, without reading the shard's bytes.
            if e.hash == hash && self.text_of(e.text_at, e.shard_len) == shard {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    fn text_of(&self, at: usize, len: u32) -> &str {
        &self.text[at..at + len as usize]
    }

    pub fn get(&self, shard: &str) -> Option<RecordRef<'_>> {
        let entry = self.slots[self.slot(shard, hash_of(shard))];
        let entry = self.entries.get(entry as usize)?;
        (entry.flags & DEAD == 0).then_some(RecordRef { records: self, entry })
    }

    pub fn remove(&mut self, shard: &str) {
        let entry = self.slots[self.slot(shard, hash_of(shard))];
        if let Some(e) = self.entries.get_mut(entry as usize)
            && e.flags & DEAD == 0
        {
            e.flags |= DEAD;
            self.live -= 1;
        }
    }

    /// Keeps the records `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, RecordRef<'_>) -> bool) {
        let dead: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                e.flags & DEAD == 0
                    && !keep(self.text_of(e.text_at, e.shard_len), RecordRef { records: self, entry: e })
            })
            .collect();
        self.live -= dead.len();
        for i in dead {
            self.entries[i].flags |= DEAD;
        }
    }

    /// The records with their shard ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, RecordRef<'_>)> {
        self.entries
            .iter()
            .filter(|e| e.flags & DEAD == 0)
            .map(|e| (self.text_of(e.text_at, e.shard_len), RecordRef { records: self, entry: e }))
    }

    /// Adds (or replaces) the record of `shard`.
    pub fn insert(&mut self, shard: &str, record: &Record) {
        let outputs = record.outputs.iter().map(|o| (o.name.as_str(), o.size, o.version.as_str()));
        let retry = record.retry.as_ref().map_or(("", 0), |r| (r.of_key.as_str(), r.attempt));
        let fields = Fields {
            key: record.key.0,
            counts: [record.rows, record.failures, record.retryable],
            retry,
            started_at: &record.started_at,
            duration_s: record.duration_s,
            manifest_version: &record.manifest_version,
            manifest_size: record.manifest_size,
        };
        let at = self.begin(shard);
        for (name, size, version) in outputs {
            self.push_output(name, size, version);
        }
        self.finish(at, &fields);
    }

    /// Starts the record of `shard`: its outputs follow ([`Records::push_output`]), then [`Records::finish`].
    pub(super) fn begin(&mut self, shard: &str) -> Begun {
        let begun = Begun { text_at: self.text.len(), outputs_at: self.outputs.len(), shard_len: shard.len() };
        self.text.push_str(shard);
        begun
    }

    pub(super) fn push_output(&mut self, name: &str, size: u64, version: &str) {
        self.text.push_str(name);
        self.text.push_str(version);
        // Lengths past u32 are cut, as an index never holds such names (the string is still the whole of it).
        self.outputs.push(OutputEntry { size, name_len: name.len() as u32, version_len: version.len() as u32 });
    }

    /// Ends the record that [`Records::begin`] started with its other fields.
    pub(super) fn finish(&mut self, Begun { text_at, outputs_at, shard_len }: Begun, fields: &Fields<'_>) {
        let tail_at = self.text.len() - text_at;
        self.text.push_str(fields.retry.0);
        self.text.push_str(fields.started_at);
        self.text.push_str(fields.manifest_version);
        let mut flags = 0;
        for (count, flag) in fields.counts.iter().zip([HAS_ROWS, HAS_FAILURES, HAS_RETRYABLE]) {
            if count.is_some() {
                flags |= flag;
            }
        }
        let shard = &self.text[text_at..text_at + shard_len];
        let hash = hash_of(shard);
        let entry = Entry {
            key: fields.key,
            text_at,
            outputs_at,
            counts: fields.counts.map(|c| c.unwrap_or(0)),
            duration_s: fields.duration_s,
            manifest_size: fields.manifest_size,
            shard_len: shard_len as u32,
            tail_at: tail_at as u32,
            retry_len: fields.retry.0.len() as u32,
            started_len: fields.started_at.len() as u32,
            version_len: fields.manifest_version.len() as u32,
            outputs_len: (self.outputs.len() - outputs_at) as u32,
            retry_attempt: fields.retry.1,
            hash,
            flags,
        };
        if (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let slot = self.slot(&self.text[text_at..text_at + shard_len], hash);
        match self.slots[slot] {
            EMPTY => {}
            old => {
                let old = &mut self.entries[old as usize];
                if old.flags & DEAD == 0 {
                    old.flags |= DEAD;
                    self.live -= 1;
                }
            }
        }
        self.slots[slot] = self.entries.len() as u32;
        self.entries.push(entry);
        self.live += 1;
    }

    /// Doubles the table, placing every entry again (dead ones too: an entry stays where its shard is looked up).
    fn grow(&mut self) {
        let len = self.slots.len() * 2;
        let mut slots = vec![EMPTY; len];
        for &entry in self.slots.iter().filter(|&&e| e != EMPTY) {
            let e = &self.entries[entry as usize];
            let mut at = e.hash as usize & (len - 1);
            while slots[at] != EMPTY {
                at = (at + 1) & (len - 1);
            }
            slots[at] = entry;
        }
        self.slots = slots;
    }
}

/// One output of a record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRef<'a> {
    pub name: &'a str,
    pub size: u64,
    pub version: &'a str,
}

impl OutputRef<'_> {
    /// The output as a manifest lists it, without its digest (an index keeps none).
    pub fn to_file(&self) -> OutputFile {
        OutputFile {
            name: self.name.to_string(),
            size: self.size,
            blake3: String::new(),
            version: self.version.to_string(),
        }
    }
}

/// One record of [`Records`], borrowed.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    records: &'a Records,
    entry: &'a Entry,
}

impl<'a> RecordRef<'a> {
    pub fn key(&self) -> Digest {
        Digest(self.entry.key)
    }

    pub fn outputs(&self) -> impl ExactSizeIterator<Item = OutputRef<'a>> + 'a {
        let (records, e) = (self.records, self.entry);
        let mut at = e.text_at + e.shard_len as usize;
        records.outputs[e.outputs_at..e.outputs_at + e.outputs_len as usize].iter().map(move |o| {
            let name = records.text_of(at, o.name_len);
            let version = records.text_of(at + o.name_len as usize, o.version_len);
            at += o.name_len as usize + o.version_len as usize;
            OutputRef { name, size: o.size, version }
        })
    }

    fn count(&self, i: usize, flag: u8) -> Option<u64> {
        (self.entry.flags & flag != 0).then_some(self.entry.counts[i])
    }

    pub fn rows(&self) -> Option<u64> {
        self.count(0, HAS_ROWS)
    }

    pub fn failures(&self) -> Option<u64> {
        self.count(1, HAS_FAILURES)
    }

    pub fn retryable(&self) -> Option<u64> {
        self.count(2, HAS_RETRYABLE)
    }

    /// The key this record's build retried and its attempt; `None` when it was no retry.
    pub fn retry(&self) -> Option<(&'a str, u32)> {
        let e = self.entry;
        let key = self.records.text_of(e.text_at + e.tail_at as usize, e.retry_len);
        (!key.is_empty()).then_some((key, e.retry_attempt))
    }

    pub fn started_at(&self) -> &'a str {
        let e = self.entry;
        self.records.text_of(e.text_at + (e.tail_at + e.retry_len) as usize, e.started_len)
    }

    pub fn duration_s(&self) -> f64 {
        self.entry.duration_s
    }

    pub fn manifest_version(&self) -> &'a str {
        let e = self.entry;
        self.records.text_of(e.text_at + (e.tail_at + e.retry_len + e.started_len) as usize, e.version_len)
    }

    pub fn manifest_size(&self) -> u64 {
        self.entry.manifest_size
    }

    pub fn bytes(&self) -> u64 {
        self.outputs().map(|o| o.size).sum()
    }

    /// The record on its own.
    pub fn to_record(&self) -> Record {
        Record {
            key: self.key(),
            outputs: self.outputs().map(|o| o.to_file()).collect(),
            rows: self.rows(),
            failures: self.failures(),
            retryable: self.retryable(),
            retry: self.retry().map(|(of_key, attempt)| RetryOf { of_key: of_key.to_string(), attempt }),
            started_at: self.started_at().to_string(),
            duration_s: self.duration_s(),
            manifest_version: self.manifest_version().to_string(),
            manifest_size: self.manifest_size(),
        }
    }
}

impl std::fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_record().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, outputs: usize) -> Record {
        Record {
            key: Digest::from(blake3::hash(&i.to_le_bytes())),
            outputs: (0..outputs)
                .map(|o| OutputFile {
                    name: format!("{i}/{o}.tar"),
                    size: (i * 10 + o) as u64,
                    blake3: String::new(),
                    version: if o % 2 == 0 { String::new() } else { format!("\"v{o}\"") },
                })
                .collect(),
            rows: i.is_multiple_of(2).then_some(i as u64),
            failures: i.is_multiple_of(3).then_some(0),
            retryable: i.is_multiple_of(5).then_some(7),
            retry: i.is_multiple_of(4).then(|| RetryOf { of_key: "ab".repeat(32), attempt: i as u32 }),
            started_at: if i.is_multiple_of(7) { String::new() } else { "2026-11-30T19:00:00Z".into() },
            duration_s: i as f64 / 3.0,
            manifest_version: format!("v{i}"),
            manifest_size: 100 + i as u64,
        }
    }

    fn same(a: &Record, b: &Record) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn holds_what_is_inserted_through_growth_replacement_and_removal() {
        let mut records = Records::new();
        assert!(records.is_empty() && records.get("").is_none() && records.get("x").is_none());
        let shards: Vec<String> = (0..5000).map(|i| format!("part_{i:06}")).collect();
        for (i, shard) in shards.iter().enumerate() {
            records.insert(shard, &record(i, i % 4));
        }
        // An empty shard id and one not UTF-8 can't be (ids are strings), but empty and multibyte ones can.
        records.insert("", &record(1, 1));
        records.insert("\u{e4}/\u{1f600}", &record(2, 0));
        assert_eq!(records.len(), 5002);
        for (i, shard) in shards.iter().enumerate() {
            assert!(same(&records.get(shard).unwrap().to_record(), &record(i, i % 4)), "{shard}");
        }
        assert!(same(&records.get("").unwrap().to_record(), &record(1, 1)));
        assert!(same(&records.get("\u{e4}/\u{1f600}").unwrap().to_record(), &record(2, 0)));
        assert!(records.get("part_1").is_none() && records.get("part_0000000").is_none());

        records.insert("part_000003", &record(9, 3));
        assert_eq!(records.len(), 5002, "replaced, not added");
        assert!(same(&records.get("part_000003").unwrap().to_record(), &record(9, 3)));
        records.remove("part_000004");
        records.remove("part_000004");
        records.remove("never");
        assert_eq!(records.len(), 5001);
        assert!(records.get("part_000004").is_none());
        records.insert("part_000004", &record(4, 1));
        assert!(same(&records.get("part_000004").unwrap().to_record(), &record(4, 1)));
        records.retain(|shard, r| shard.is_empty() || r.rows().is_some());
        assert_eq!(records.len(), 1 + 2500 + 1, "the empty shard, the even ones, the multibyte one (even)");
        assert_eq!(records.iter().count(), records.len());
        assert!(records.iter().all(|(shard, r)| records.get(shard).unwrap().key() == r.key()));
        assert_eq!(records.get("part_000006").unwrap().bytes(), 60 + 61);
        assert_eq!(records.get("part_000008").unwrap().retry(), Some(("ab".repeat(32).as_str(), 8)));
    }
}
