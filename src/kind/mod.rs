//! The kind API: what a step kind implements and everything it may know of the engine. The bottom of the
//! crate: it imports nothing from `pipeline`, `plan`, `exec`, `cli` or `remote`, so a kind sees its inputs
//! only through the contexts here (their shards, row counts, files), never another step's settings.
//!
//! A kind implements [`Kind`] with its settings declared once ([`settings!`](crate::settings)); the engine
//! holds it as a [`DynKind`], which parses the effective settings into the kind's typed struct.

pub mod cancel;
mod context;
pub mod memory;
pub mod settings;
pub mod shard;

pub use cancel::{Cancel, Cancelled, is_cancelled};
pub use context::{BuildCx, LocalInput, ShardCx};
pub use memory::MemoryBudget;
pub use settings::{Setting, SettingError, SettingType, Settings};
pub use shard::{InputShard, InputShards, Mapping, ShardSpec, Shards, SourceFile};

use serde_json::Value;

/// A step's folder in the store keeps its manifests here; no output may be named into it.
pub const META_DIR: &str = "_dsmake";

/// Whether a kind reads other steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    None,
    Optional,
    Required,
}

/// The limit a target's work counts against while it runs (`-j` for CPU, `--net-jobs` for network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Cpu,
    Net,
    Gpu,
}

/// What a step's settings tell the engine, found once when the pipeline file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTraits {
    pub resource: Resource,
    /// The most rows one of the step's shards holds, when its settings fix it (img2dataset's
    /// `number_sample_per_shard`): what a kind reading the step may plan with before anything is built.
    pub rows_per_shard: Option<u64>,
}

/// What a kind reports after a successful build.
#[derive(Debug, Default)]
pub struct Built {
    /// Output names relative to `out_dir`, in a stable order.
    pub outputs: Vec<String>,
    pub rows: Option<u64>,
    pub failures: Option<u64>,
    /// Of the failures, those another attempt may fix (a download that failed, not an image that cannot be
    /// decoded): what `--retry-failed` re-attempts.
    pub retryable: Option<u64>,
    /// Kind-specific counters for the manifest (status counts, say).
    pub stats: Value,
}

/// A step kind: its settings, how its shards map to its inputs' shards, and its work. Adding one is a file
/// (or a folder) in `kinds/` and a line in `kinds::ALL`.
pub trait Kind: Sync + Send + 'static {
    type Settings: Settings;
    const NAME: &'static str;
    /// Bumped whenever the kind's output for the same settings and inputs changes: part of every key.
    const VERSION: u32;
    const ABOUT: &'static str;
    const INPUTS: Inputs;
    /// A source's targets are files that exist outside the store; they are identified by content, never built.
    const IS_SOURCE: bool = false;
    /// Whether a build can re-attempt only the rows that failed last time (`--retry-failed`), reading the
    /// rest from `cx.previous`; such a kind reports `Built::retryable`.
    const RETRIES_FAILED_ROWS: bool = false;

    /// Checks that go beyond each setting's type (values, combinations).
    fn check(&self, _settings: &Self::Settings, _has_inputs: bool) -> Result<(), SettingError> {
        Ok(())
    }
    fn resource(&self, _settings: &Self::Settings) -> Resource {
        Resource::Cpu
    }
    /// See [`StepTraits::rows_per_shard`].
    fn rows_per_shard(&self, _settings: &Self::Settings) -> Option<u64> {
        None
    }
    /// The step's shards, from its inputs' shards (or, for a source, from the world).
    fn shards(&self, settings: &Self::Settings, cx: &ShardCx) -> anyhow::Result<Shards>;
    /// Builds one target: reads `cx.inputs`, writes the declared outputs under `cx.out_dir`.
    fn build(&self, settings: &Self::Settings, cx: &BuildCx) -> anyhow::Result<Built>;
}

/// A kind as the engine holds it: object-safe, its settings the effective JSON that keys are made of.
pub trait DynKind: Sync + Send {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn about(&self) -> &'static str;
    fn schema(&self) -> &'static [Setting];
    fn inputs(&self) -> Inputs;
    fn is_source(&self) -> bool;
    fn retries_failed_rows(&self) -> bool;
    /// Checks effective settings (the parser's output) and says what they tell the engine.
    fn check(&self, settings: &Value, has_inputs: bool) -> Result<StepTraits, SettingError>;
    fn shards(&self, settings: &Value, cx: &ShardCx) -> anyhow::Result<Shards>;
    fn build(&self, settings: &Value, cx: &BuildCx) -> anyhow::Result<Built>;
}

fn typed<S: Settings>(kind: &str, settings: &Value) -> Result<S, SettingError> {
    let empty = serde_json::Map::new();
    let map = match settings {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => return Err(SettingError::new(kind, "the settings are not a table")),
    };
    S::from_effective(map)
}

impl<K: Kind> DynKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn version(&self) -> u32 {
        K::VERSION
    }
    fn about(&self) -> &'static str {
        K::ABOUT
    }
    fn schema(&self) -> &'static [Setting] {
        K::Settings::schema()
    }
    fn inputs(&self) -> Inputs {
        K::INPUTS
    }
    fn is_source(&self) -> bool {
        K::IS_SOURCE
    }
    fn retries_failed_rows(&self) -> bool {
        K::RETRIES_FAILED_ROWS
    }
    fn check(&self, settings: &Value, has_inputs: bool) -> Result<StepTraits, SettingError> {
        let s = typed::<K::Settings>(K::NAME, settings)?;
        Kind::check(self, &s, has_inputs)?;
        Ok(StepTraits { resource: Kind::resource(self, &s), rows_per_shard: Kind::rows_per_shard(self, &s) })
    }
    fn shards(&self, settings: &Value, cx: &ShardCx) -> anyhow::Result<Shards> {
        let s = typed::<K::Settings>(K::NAME, settings)?;
        Kind::shards(self, &s, cx)
    }
    fn build(&self, settings: &Value, cx: &BuildCx) -> anyhow::Result<Built> {
        let s = typed::<K::Settings>(K::NAME, settings)
            .map_err(|e| anyhow::anyhow!("the job's settings for {} do not fit kind `{}`: {e}", cx.target, K::NAME))?;
        Kind::build(self, &s, cx)
    }
}
