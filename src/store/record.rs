//! What one manifest says, as far as freshness and status need it: a row of a step's index.

use super::ObjectMeta;
use super::manifest::{Manifest, OutputFile, RetryOf};
use crate::util::digest::Digest;
use serde::{Deserialize, Serialize};

/// A step's records by shard id. Boxed: a hash table has about twice as many slots as entries, and a
/// slot the size of a record would make a step of 10⁶ targets cost 400 MB where a pointer costs 16. Hashed with
/// foldhash: a plan looks up every target's shard id, and SipHash was a visible share of that.
pub type Records = foldhash::HashMap<String, Box<Record>>;

/// What one manifest says, as far as freshness and status need it.
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
