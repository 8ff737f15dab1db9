//! Step kinds. A kind is one unit: its settings, how its shards map to its inputs' shards, and its work.
//! Adding a kind means a file here and one line in [`ALL`].

pub mod clip_embed;
pub mod command;
pub mod files;
pub mod hf_dataset;
pub mod img2dataset;
pub mod knn_index;

use crate::exec::job::Job;
use crate::pipeline::settings::{Setting, SettingError};
use crate::pipeline::{Pipeline, Step};
use crate::plan::shard::{InputShards, Shards};
use crate::plan::stat_cache::StatCache;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Every built-in kind.
pub const ALL: &[&dyn Kind] = &[
    &files::Files,
    &command::Command,
    &clip_embed::ClipEmbed,
    &hf_dataset::HfDataset,
    &img2dataset::Img2Dataset,
    &knn_index::KnnIndex,
];

pub fn lookup(name: &str) -> Option<&'static dyn Kind> {
    ALL.iter().copied().find(|k| k.name() == name)
}

pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|k| k.name()).collect()
}

pub fn names_for_help() -> String {
    names().iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

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

pub trait Kind: Sync {
    fn name(&self) -> &'static str;
    /// Bumped whenever the kind's output for the same settings and inputs changes: part of every key.
    fn version(&self) -> u32;
    fn about(&self) -> &'static str;
    fn settings(&self) -> &'static [Setting];
    fn inputs(&self) -> Inputs;
    /// Checks that go beyond each setting's type (values, combinations).
    fn check(&self, _settings: &Value, _has_inputs: bool) -> Result<(), SettingError> {
        Ok(())
    }
    fn resource(&self, _settings: &Value) -> Resource {
        Resource::Cpu
    }
    /// A source's targets are files that exist outside the store; they are identified by content, never built.
    fn is_source(&self) -> bool {
        false
    }
    /// The step's shards, from its inputs' shards (or, for a source, from the world).
    fn shards(&self, cx: &ShardCx) -> anyhow::Result<Shards>;
    /// Builds one target: reads `cx.inputs`, writes the declared outputs under `cx.out_dir`.
    fn build(&self, cx: &BuildCx) -> anyhow::Result<Built>;
    /// Whether a build can re-attempt only the rows that failed last time (`--retry-failed`), reading the
    /// rest from `cx.previous`; such a kind reports `Built::retryable`.
    fn retries_failed_rows(&self) -> bool {
        false
    }
}

pub struct ShardCx<'a> {
    pub pipeline: &'a Pipeline,
    pub step: &'a Step,
    /// One entry per `from`, in order.
    pub inputs: Vec<InputShards<'a>>,
    pub stat_cache: &'a StatCache,
}

/// What a worker hands a kind to build one target.
pub struct BuildCx<'a> {
    pub job: &'a Job,
    /// The local files of each input target, in the job's input order.
    pub inputs: Vec<LocalInput>,
    /// Where the outputs go; they are published to the store only after `build` returns Ok.
    pub out_dir: &'a Path,
    /// A scratch folder for everything else; removed afterwards.
    pub work_dir: &'a Path,
    pub cancel: &'a Cancel,
    /// With `--retry-failed`: the target's outputs from its last build, in its manifest's order, for a kind
    /// that keeps what succeeded and re-attempts the rest. Empty otherwise.
    pub previous: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LocalInput {
    pub target: String,
    pub shard: String,
    pub files: Vec<PathBuf>,
    pub rows: Option<u64>,
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

/// Set when the build is interrupted: long-running work polls it and stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
