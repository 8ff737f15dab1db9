//! The step index on disk: a compact binary encoding of the records it caches. A plan reads one index per
//! step (from S3 too), so at 10⁵ targets the format's size and parse time are the plan's.
//!
//! Layout: magic, then per record: shard, key (32 bytes), output count, (name, size, version)…, rows, failures and retryable
//! (flag byte + u64 each), the retried key and attempt (empty and 0 when not a retry), started_at, duration
//! (f64), manifest version, manifest size. Strings are a u32 length + UTF-8; integers little-endian.

use super::manifest::{OutputFile, RetryOf};
use super::record::{Record, Records};
use crate::util::digest::Digest;
use foldhash::HashMapExt;

const MAGIC: &[u8; 8] = b"DSMKIX05";
/// The format before outputs had versions: read as records without them (their manifests have none either),
/// so that a store's first plan after the upgrade reads no manifest again.
const MAGIC_WITHOUT_VERSIONS: &[u8; 8] = b"DSMKIX04";

struct Writer(Vec<u8>);

impl Writer {
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn u64(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }
    fn opt(&mut self, n: Option<u64>) {
        self.0.push(n.is_some() as u8);
        self.u64(n.unwrap_or(0));
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn str(&mut self) -> Option<String> {
        let len = self.u32()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<u64>> {
        let flag = self.take(1)?[0];
        let n = self.u64()?;
        Some((flag == 1).then_some(n))
    }
}

pub fn encode(records: &Records) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(MAGIC.len() + records.len() * 192));
    w.0.extend_from_slice(MAGIC);
    for (shard, r) in records {
        w.str(shard);
        w.0.extend_from_slice(&r.key.0);
        w.0.extend_from_slice(&(r.outputs.len() as u32).to_le_bytes());
        for output in &r.outputs {
            w.str(&output.name);
            w.u64(output.size);
            w.str(&output.version);
        }
        w.opt(r.rows);
        w.opt(r.failures);
        w.opt(r.retryable);
        w.str(r.retry.as_ref().map_or("", |retry| retry.of_key.as_str()));
        w.u64(r.retry.as_ref().map_or(0, |retry| u64::from(retry.attempt)));
        w.str(&r.started_at);
        w.u64(r.duration_s.to_bits());
        w.str(&r.manifest_version);
        w.u64(r.manifest_size);
    }
    w.0
}

/// `None` when the bytes are not an index of this format (an old one, or damaged): it is then rebuilt.
pub fn decode(bytes: &[u8]) -> Option<Records> {
    let (mut r, versions) = match bytes.strip_prefix(MAGIC) {
        Some(rest) => (Reader(rest), true),
        None => (Reader(bytes.strip_prefix(MAGIC_WITHOUT_VERSIONS)?), false),
    };
    // Sized up front from the bytes (a record takes at least ~100 of them): growing a map of 10⁶ records
    // step by step holds the old table and the new one at once, twice the memory for a moment.
    let mut records = Records::with_capacity(bytes.len() / 128);
    while !r.0.is_empty() {
        let shard = r.str()?;
        let key = Digest(r.take(32)?.try_into().ok()?);
        let count = r.u32()?;
        let mut outputs = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let (name, size) = (r.str()?, r.u64()?);
            let version = if versions { r.str()? } else { String::new() };
            outputs.push(OutputFile { name, size, blake3: String::new(), version });
        }
        let record = Record {
            key,
            outputs,
            rows: r.opt()?,
            failures: r.opt()?,
            retryable: r.opt()?,
            retry: {
                let (of_key, attempt) = (r.str()?, r.u64()?);
                (!of_key.is_empty()).then_some(RetryOf { of_key, attempt: attempt as u32 })
            },
            started_at: r.str()?,
            duration_s: f64::from_bits(r.u64()?),
            manifest_version: r.str()?,
            manifest_size: r.u64()?,
        };
        records.insert(shard, Box::new(record));
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let record = Record {
            key: Digest::from(blake3::hash(b"k")),
            outputs: vec![OutputFile {
                name: "a/b.tar".into(),
                size: 12,
                blake3: String::new(),
                version: "\"etag\"".into(),
            }],
            rows: Some(10_000),
            failures: Some(3),
            retryable: Some(2),
            retry: Some(RetryOf { of_key: "b".repeat(64), attempt: 2 }),
            started_at: "2026-11-27T05:00:00Z".into(),
            duration_s: 1.5,
            manifest_version: "\"etag\"".into(),
            manifest_size: 873,
        };
        let records: Records = [("00001".to_string(), Box::new(record))].into_iter().collect();
        let bytes = encode(&records);
        let back = decode(&bytes).unwrap();
        assert_eq!(format!("{:?}", back["00001"]), format!("{:?}", records["00001"]));
        assert!(decode(&bytes[..bytes.len() - 3]).is_none());
        assert!(decode(b"{\"format\":1}").is_none());

        // An index of the format before versions: the same record, without them.
        let mut old = b"DSMKIX04".to_vec();
        old.extend_from_slice(&bytes[8..]);
        let version = "\"etag\"";
        let at = old.windows(version.len() + 4).position(|w| w[4..] == *version.as_bytes() && w[0] == 6).unwrap();
        old.drain(at..at + 4 + version.len());
        let back = decode(&old).unwrap();
        assert_eq!(back["00001"].outputs[0].version, "");
        assert_eq!(back["00001"].outputs[0].size, 12);
        assert_eq!(back["00001"].manifest_version, "\"etag\"");
    }
}
