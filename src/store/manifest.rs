//! A target's manifest: the commit marker, written after every output is in place.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_format: u32,
    pub target: String,
    pub key: String,
    /// What went into the key, so that a later plan can say what changed.
    pub key_parts: KeyParts,
    pub outputs: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    /// Failures that another attempt may fix (`--retry-failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<u64>,
    /// Set when this build re-attempted the failed rows of an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOf>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub stats: Value,
    pub started_at: String,
    pub duration_s: f64,
    pub dsmake_version: String,
    pub host: String,
}

/// A retried target's key is derived from the key its settings and inputs give (`of_key`) and the attempt,
/// so that what reads it sees a new input; a plan accepts it wherever `of_key` is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOf {
    pub of_key: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the step's folder.
    pub name: String,
    pub size: u64,
    /// Empty in a step index, which keeps only what freshness needs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// The object's version as the store lists it, when its build published it (S3: the ETag), where the
    /// store's versions change only when an object is rewritten (`Store::versions_identify_content`): a plan
    /// then sees an object that another writer replaced, even with the same size. Empty elsewhere.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

impl Manifest {
    /// The manifest of `target` (of `shard`) with the one output `output` of `size` bytes, as a `command` step
    /// with no settings or inputs leaves it (key all zeros): what tests and benchmarks put in a store without
    /// building.
    pub fn of_one_output(target: &str, shard: &str, output: &str, size: u64) -> Manifest {
        Manifest {
            manifest_format: FORMAT,
            target: target.to_string(),
            key: "0".repeat(64),
            key_parts: KeyParts {
                kind: "command".into(),
                kind_version: 1,
                settings: serde_json::json!({}),
                shard: shard.to_string(),
                coords: serde_json::json!({}),
                inputs: Vec::new(),
                source: None,
            },
            outputs: vec![OutputFile { name: output.to_string(), size, blake3: String::new(), version: String::new() }],
            rows: None,
            failures: None,
            retryable: None,
            retry: None,
            stats: Value::Null,
            started_at: "2026-11-30T00:00:00Z".into(),
            duration_s: 0.0,
            dsmake_version: env!("CARGO_PKG_VERSION").into(),
            host: "test".into(),
        }
    }

    pub fn parse(bytes: &[u8], path: &str) -> anyhow::Result<Manifest> {
        serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("corrupt manifest {path}: {e}"))
    }
}

/// Everything that goes into a key. The manifest keeps it, so that a changed key can be explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    pub kind: String,
    pub kind_version: u32,
    /// Effective settings (objects have sorted keys, so the encoding is canonical).
    pub settings: Value,
    pub shard: String,
    pub coords: Value,
    pub inputs: Vec<InputKey>,
    /// A source's content identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputKey {
    pub target: String,
    pub key: String,
}
