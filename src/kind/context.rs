//! What a kind is handed: to plan its shards ([`ShardCx`]) and to build one target ([`BuildCx`]).

use super::cancel::Cancel;
use super::memory::MemoryBudget;
use super::shard::InputShards;
use crate::util::stat_cache::StatCache;
use anyhow::{Context, anyhow};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What a kind sees while the plan is made.
pub struct ShardCx<'a> {
    /// The step's name, for messages.
    pub step: &'a str,
    /// Relative paths in settings are relative to this folder (the pipeline file's).
    pub base_dir: &'a Path,
    /// One entry per `from`, in order.
    pub inputs: Vec<InputShards<'a>>,
    /// Content identities of local files (a source's files, a model folder's).
    pub stat_cache: &'a StatCache,
    /// Plan from what is on this machine only (`dsmake status`): a kind that would ask a remote service uses
    /// what it saved last time, or says the shards are not known.
    pub local_only: bool,
}

/// What a worker hands a kind to build one target.
pub struct BuildCx<'a> {
    pub pipeline: &'a str,
    pub step: &'a str,
    pub shard: &'a str,
    /// `step/shard`, for messages.
    pub target: &'a str,
    /// This shard's slice of its inputs, as the kind's `shards` wrote it.
    pub coords: &'a Value,
    /// Relative paths in settings are relative to this folder (the pipeline file's).
    pub base_dir: &'a Path,
    /// `--allow-host`: destinations this run may reach beyond the step's own allow-list.
    pub allow_hosts: &'a [String],
    /// The local files of each input target, in the order of the shard's inputs.
    pub inputs: Vec<LocalInput>,
    /// Where the outputs go; they are published to the store only after `build` returns Ok.
    pub out_dir: &'a Path,
    /// A scratch folder for everything else; removed afterwards.
    pub work_dir: &'a Path,
    pub cancel: &'a Cancel,
    /// The build's memory budget, shared with every target running in this process: buffered bytes and
    /// decodes in flight count against it (see [`MemoryBudget`]).
    pub memory: &'a MemoryBudget,
    /// With `--retry-failed`: the target's outputs from its last build, in its manifest's order, for a kind
    /// that keeps what succeeded and re-attempts the rest. Empty otherwise.
    pub previous: Vec<PathBuf>,
}

impl BuildCx<'_> {
    /// The coordinates as the kind's own type.
    pub fn coords<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(self.coords.clone())
            .with_context(|| format!("the coordinates of {} ({})", self.target, self.coords))
    }

    /// The row range of a shard that [`Mapping::Rows`](super::Mapping::Rows) made.
    pub fn rows(&self) -> anyhow::Result<Range<u64>> {
        #[derive(serde::Deserialize)]
        struct Rows {
            rows: (u64, u64),
        }
        let Rows { rows: (start, end) } = self.coords()?;
        if start > end {
            return Err(anyhow!("the row range of {} is backwards ({start}..{end})", self.target));
        }
        Ok(start..end)
    }
}

#[derive(Debug, Clone)]
pub struct LocalInput {
    pub target: String,
    pub shard: String,
    pub files: Vec<PathBuf>,
    pub rows: Option<u64>,
}
