//! The step index on disk: a compact binary encoding of the records it caches. A plan reads one index per
//! step (from S3 too), so at 10⁵ targets the format's size and parse time are the plan's.
//!
//! Layout: magic, then per record: shard, key (32 bytes), output count, (name, size, version)…, rows, failures and retryable
//! (flag byte + u64 each), the retried key and attempt (empty and 0 when not a retry), started_at, duration
//! (f64), manifest version, manifest size. Strings are a u32 length + UTF-8; integers little-endian.

use super::record::{Fields, Records};

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
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()?;
        std::str::from_utf8(self.take(len)?).ok()
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
    for (shard, r) in records.iter() {
        w.str(shard);
        w.0.extend_from_slice(&r.key().0);
        let outputs = r.outputs();
        w.0.extend_from_slice(&(outputs.len() as u32).to_le_bytes());
        for output in outputs {
            w.str(output.name);
            w.u64(output.size);
            w.str(output.version);
        }
        w.opt(r.rows());
        w.opt(r.failures());
        w.opt(r.retryable());
        let (retried, attempt) = r.retry().unwrap_or(("", 0));
        w.str(retried);
        w.u64(u64::from(attempt));
        w.str(r.started_at());
        w.u64(r.duration_s().to_bits());
        w.str(r.manifest_version());
        w.u64(r.manifest_size());
    }
    w.0
}

/// `None` when the bytes are not an index of this format (an old one, or damaged): it is then rebuilt.
/// Decoded straight into [`Records`]: no allocation per record.
pub fn decode(bytes: &[u8]) -> Option<Records> {
    let (mut r, versions) = match bytes.strip_prefix(MAGIC) {
        Some(rest) => (Reader(rest), true),
        None => (Reader(bytes.strip_prefix(MAGIC_WITHOUT_VERSIONS)?), false),
    };
    // Sized up front from the bytes (a record takes at least ~100 of them, about half of them strings):
    // growing 10⁶ records step by step holds the old buffers and the new ones at once for a moment.
    let mut records = Records::with_capacity(bytes.len() / 128, bytes.len() / 2);
    while !r.0.is_empty() {
        let at = records.begin(r.str()?);
        let key = r.take(32)?.try_into().ok()?;
        for _ in 0..r.u32()? {
            let (name, size) = (r.str()?, r.u64()?);
            let version = if versions { r.str()? } else { "" };
            records.push_output(name, size, version);
        }
        let counts = [r.opt()?, r.opt()?, r.opt()?];
        let retry = (r.str()?, r.u64()? as u32);
        let started_at = r.str()?;
        let duration_s = f64::from_bits(r.u64()?);
        let (manifest_version, manifest_size) = (r.str()?, r.u64()?);
        let fields = Fields { key, counts, retry, started_at, duration_s, manifest_version, manifest_size };
        records.finish(at, &fields);
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::{OutputFile, RetryOf};
    use crate::store::record::Record;
    use crate::util::digest::Digest;

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
        let mut records = Records::new();
        records.insert("00001", &record);
        let bytes = encode(&records);
        let back = decode(&bytes).unwrap();
        assert_eq!(format!("{:?}", back.get("00001").unwrap()), format!("{record:?}"));
        assert!(decode(&bytes[..bytes.len() - 3]).is_none());
        assert!(decode(b"{\"format\":1}").is_none());

        // An index of the format before versions: the same record, without them.
        let mut old = b"DSMKIX04".to_vec();
        old.extend_from_slice(&bytes[8..]);
        let version = "\"etag\"";
        let at = old.windows(version.len() + 4).position(|w| w[4..] == *version.as_bytes() && w[0] == 6).unwrap();
        old.drain(at..at + 4 + version.len());
        let back = decode(&old).unwrap();
        let output = back.get("00001").unwrap().outputs().next().unwrap();
        assert_eq!((output.name, output.size, output.version), ("a/b.tar", 12, ""));
        assert_eq!(back.get("00001").unwrap().manifest_version(), "\"etag\"");
    }
}
