//! A job: everything a worker needs to build one target, serialisable so that any machine can run it.

use crate::pipeline::Pipeline;
use crate::plan::Plan;
use crate::plan::key::KeyParts;
use crate::store::manifest::{OutputFile, RetryOf};
use crate::store::step_state::Record;
use crate::store::{Store, join, manifest_path};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub job_format: u32,
    pub pipeline: String,
    pub target: String,
    pub step: String,
    pub shard: String,
    /// The step's folder in the store.
    pub dir: String,
    pub key: String,
    pub key_parts: KeyParts,
    pub inputs: Vec<JobInput>,
    /// `--store` as given; the worker opens it itself.
    pub store: String,
    /// The pipeline file's folder, for settings that name local paths.
    pub base_dir: PathBuf,
    /// `--allow-host`: destinations this run may reach beyond the step's own allow-list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// `--retry-failed`: this build re-attempts the failed rows of the target's last build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<JobRetry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRetry {
    #[serde(flatten)]
    pub of: RetryOf,
    /// The last build's outputs (store paths), in its manifest's order.
    pub previous: Vec<JobFile>,
    /// What its manifest says of them: the worker checks them as it checks inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expected>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInput {
    pub target: String,
    pub shard: String,
    pub files: Vec<JobFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// An input that the same remote run builds first: `files` and `rows` are read from its manifest just
    /// before the work starts (`exec::remote::resolve_pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingInput>,
    /// What the store-held `files` must be: the worker checks each after fetching it, so that a build never
    /// reads bytes other than those its input's manifest vouches for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expected>,
}

/// The manifest an input's files were listed from, and what it says of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    /// Store path of the input's manifest: the index keeps sizes but not digests, so the worker reads the
    /// digests from here when `outputs` lacks them.
    pub manifest: String,
    /// The key that manifest must still have.
    pub key: String,
    /// Name, size and (where known) blake3 of each file, in the order of `files`.
    pub outputs: Vec<OutputFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInput {
    /// The input step's folder in the store.
    pub dir: String,
    /// The key its manifest must have.
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobFile {
    /// A source file, read where it is.
    Local(PathBuf),
    /// An object in the store (store-relative path).
    Store(String),
}

impl Job {
    /// The job for target `t`. Inputs built earlier in this run are found in `built`.
    pub fn for_target(
        pipeline: &Pipeline,
        plan: &Plan,
        store: &dyn Store,
        t: usize,
        built: &HashMap<usize, Record>,
    ) -> Job {
        let target = &plan.targets[t];
        let step = &pipeline.steps[target.step];
        let inputs = target
            .inputs
            .iter()
            .map(|&i| {
                let input = &plan.targets[i];
                // What a job needs of the input's record (its key, outputs and rows), from this run's build or
                // borrowed from the step's records: a job of `per = "all"` has a step's worth of inputs.
                let record = match built.get(&i) {
                    Some(r) => Some((r.key, Cow::Borrowed(r.outputs.as_slice()), r.rows)),
                    None => plan
                        .record(i)
                        .map(|r| (r.key(), Cow::Owned(r.outputs().map(|o| o.to_file()).collect()), r.rows())),
                };
                let rows = record.as_ref().and_then(|(_, _, rows)| *rows);
                let dir = &pipeline.steps[input.step].dir;
                let (files, expect) = match (&input.source, record) {
                    (Some(source), _) => (vec![JobFile::Local(source.path.clone())], None),
                    (None, Some((key, outputs, _))) => (
                        outputs.iter().map(|o| JobFile::Store(join(dir, &o.name))).collect(),
                        Some(Expected {
                            manifest: manifest_path(dir, input.shard()),
                            key: key.to_string(),
                            outputs: outputs.into_owned(),
                        }),
                    ),
                    (None, None) => (Vec::new(), None),
                };
                JobInput {
                    target: input.name.clone(),
                    shard: input.shard().to_string(),
                    files,
                    rows,
                    pending: None,
                    expect,
                }
            })
            .collect();
        Job {
            job_format: FORMAT,
            pipeline: pipeline.name.clone(),
            target: target.name.clone(),
            step: step.name.clone(),
            shard: target.shard().to_string(),
            dir: step.dir.clone(),
            key: target.key.to_string(),
            key_parts: plan.key_parts(pipeline, t),
            inputs,
            store: store.url(),
            base_dir: pipeline.base_dir.clone(),
            allow_hosts: plan.allow_hosts.clone(),
            retry: target.retry.as_deref().map(|of| {
                let record = plan.record(t);
                JobRetry {
                    of: of.clone(),
                    previous: record
                        .map(|r| r.outputs().map(|o| JobFile::Store(join(&step.dir, o.name))).collect())
                        .unwrap_or_default(),
                    expect: record.map(|r| Expected {
                        manifest: manifest_path(&step.dir, target.shard()),
                        key: r.key().to_string(),
                        outputs: r.outputs().map(|o| o.to_file()).collect(),
                    }),
                }
            }),
        }
    }
}
