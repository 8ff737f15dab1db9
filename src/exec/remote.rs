//! The seam for remote executors. The plan is made here exactly as for a local build; the targets it says
//! must run are written as a remote plan (waves of serialised jobs, in dependency order) and handed to an
//! executor (Spark, Databricks), whose workers run `dsmake worker` and publish manifests to the store. Then
//! the coordinator lists the store again: what is fresh there is what was built.

use super::build_loop::{self, Round, RoundCx, RoundRunner};
use super::job::{Job, PendingInput};
use super::progress::Progress;
use super::{BuildOptions, FailedTarget, Summary};
use crate::kind::{Cancel, Resource};
use crate::pipeline::Pipeline;
use crate::plan::{Plan, PlanOptions};
use crate::store::manifest::Manifest;
use crate::store::{ReadLimit, Store, join, manifest_path};
use crate::util::stat_cache::StatCache;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

pub const PLAN_FORMAT: u32 = 1;

/// What a remote run gets: every target to build, as waves; a wave's targets only need earlier waves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemotePlan {
    pub plan_format: u32,
    pub pipeline: String,
    /// The store every job names (`s3://…` for remote runs).
    pub store: String,
    /// Build whatever does not depend on a failed target.
    pub keep_going: bool,
    /// Non-secret environment that the workers need to reach the store (endpoint, region). Credentials never
    /// go here: workers get them from their machine (instance profile, environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub waves: Vec<Vec<RemoteJob>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteJob {
    pub target: String,
    pub step: String,
    /// `cpu`, `net` or `gpu`: GPU jobs ask the scheduler for a GPU.
    pub resource: Resource,
    /// Targets of this plan that must be built first.
    pub after: Vec<String>,
    /// Which remote task runs it (Databricks: one task per cluster kind); empty for any.
    #[serde(default)]
    pub task: String,
    pub job: Job,
}

impl RemotePlan {
    pub fn jobs(&self) -> impl Iterator<Item = &RemoteJob> {
        self.waves.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.jobs().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A digest of the work: the same plan gives the same digest (idempotent submissions).
    pub fn digest(&self) -> anyhow::Result<String> {
        Ok(blake3::hash(&serde_json::to_vec(self)?).to_hex().to_string())
    }
}

/// The remote plan for `to_run`: each target's job, with inputs that this plan builds marked pending.
pub fn remote_plan(
    pipeline: &Pipeline,
    plan: &Plan,
    store: &dyn Store,
    to_run: &[usize],
    keep_going: bool,
) -> RemotePlan {
    let running: HashSet<usize> = to_run.iter().copied().collect();
    let mut level: HashMap<usize, usize> = HashMap::new();
    fn level_of(t: usize, plan: &Plan, running: &HashSet<usize>, level: &mut HashMap<usize, usize>) -> usize {
        if let Some(&l) = level.get(&t) {
            return l;
        }
        let l = plan.targets[t]
            .inputs
            .iter()
            .filter(|i| running.contains(i))
            .map(|&i| level_of(i, plan, running, level) + 1)
            .max()
            .unwrap_or(0);
        level.insert(t, l);
        l
    }
    let mut waves: Vec<Vec<RemoteJob>> = Vec::new();
    let no_built = HashMap::new();
    for &t in to_run {
        let l = level_of(t, plan, &running, &mut level);
        let target = &plan.targets[t];
        let step = &pipeline.steps[target.step];
        let mut job = Job::for_target(pipeline, plan, store, t, &no_built);
        for (input, &i) in job.inputs.iter_mut().zip(&target.inputs) {
            if running.contains(&i) {
                let dir = pipeline.steps[plan.targets[i].step].dir.clone();
                input.files.clear();
                input.rows = None;
                input.pending = Some(PendingInput { dir, key: plan.targets[i].key.to_string() });
            }
        }
        let after =
            target.inputs.iter().filter(|i| running.contains(i)).map(|&i| plan.targets[i].name.clone()).collect();
        if waves.len() <= l {
            waves.resize_with(l + 1, Vec::new);
        }
        waves[l].push(RemoteJob {
            target: target.name.clone(),
            step: step.name.clone(),
            resource: step.traits.resource,
            after,
            task: String::new(),
            job,
        });
    }
    RemotePlan {
        plan_format: PLAN_FORMAT,
        pipeline: pipeline.name.clone(),
        store: store.url(),
        keep_going,
        env: BTreeMap::new(),
        waves,
    }
}

/// Fills in the inputs that the same remote run built earlier, from their manifests (on the worker).
pub fn resolve_pending(job: &mut Job, store: &dyn Store) -> anyhow::Result<()> {
    for input in &mut job.inputs {
        let Some(pending) = input.pending.take() else { continue };
        let at = manifest_path(&pending.dir, &input.shard);
        let bytes = store
            .read(&at, ReadLimit::MANIFEST)?
            .with_context(|| format!("input {} was not built: no manifest at {at}", input.target))?;
        let manifest = Manifest::parse(&bytes, &at)?;
        if manifest.key != pending.key {
            bail!(
                "input {} in the store has key {}, not {}: it was not built by this run",
                input.target,
                manifest.key,
                pending.key
            );
        }
        input.files =
            manifest.outputs.iter().map(|o| super::job::JobFile::Store(join(&pending.dir, &o.name))).collect();
        input.rows = manifest.rows;
        input.expect =
            Some(super::job::Expected { manifest: at.clone(), key: manifest.key.clone(), outputs: manifest.outputs });
    }
    Ok(())
}

/// What an executor says about one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    pub target: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// Attempts the scheduler made (Spark retries included).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub bytes: u64,
}

/// Reports results as they arrive, for progress.
pub struct Reporter {
    progress: Progress,
}

impl Reporter {
    pub fn report(&self, result: &TargetResult) {
        match &result.error {
            None if result.ok => self.progress.done(&result.target, result.seconds),
            error => self.progress.fail(&result.target, error.as_deref().unwrap_or("failed")),
        }
    }

    /// A line for people (run URLs, state changes).
    pub fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// A remote executor: runs a remote plan to the end (or until cancelled) and says what happened to each
/// target it knows about. Targets it says nothing about count as not run.
pub trait Executor {
    /// For messages: `spark (local[2])`, `databricks (https://…)`.
    fn describe(&self) -> String;
    fn run(
        &mut self,
        plan: &RemotePlan,
        store: &dyn Store,
        cancel: &Cancel,
        reporter: &Reporter,
    ) -> anyhow::Result<Vec<TargetResult>>;
}

/// A build whose targets run on `executor`. Plans (and re-plans while shard counts become known) exactly as
/// a local build does; the store is listed again after each remote run.
pub fn build(
    pipeline: &Pipeline,
    store: Arc<dyn Store>,
    stat_cache: &StatCache,
    plan_options: &PlanOptions,
    options: &BuildOptions,
    executor: &mut dyn Executor,
) -> anyhow::Result<Summary> {
    build_loop::build(pipeline, store, stat_cache, plan_options, &mut Remote { options, executor })
}

/// A remote build's rounds: each is one remote plan, run to the end by the executor.
struct Remote<'a> {
    options: &'a BuildOptions,
    executor: &'a mut dyn Executor,
}

impl RoundRunner for Remote<'_> {
    /// The runtime only watches for Ctrl-C: the executor does the work.
    fn worker_threads(&self) -> Option<usize> {
        Some(1)
    }

    /// The workers publish manifests to the store; the plan's step states never see them.
    fn records_built(&self) -> bool {
        false
    }

    fn keep_going(&self) -> bool {
        self.options.keep_going
    }

    fn run_round(&mut self, cx: &RoundCx, plan: &mut Plan, to_run: &[usize]) -> anyhow::Result<Round> {
        let options = self.options;
        let remote = remote_plan(cx.pipeline, plan, &**cx.store, to_run, options.keep_going);
        let progress = Progress::new(remote.len() as u64, options.progress, options.verbose);
        let reporter = Reporter { progress: progress.clone() };
        if !options.progress || options.verbose {
            let (targets, waves, on) = (remote.len(), remote.waves.len(), self.executor.describe());
            eprintln!("Running {targets} targets in {waves} waves on {on}");
        }
        let results = self.executor.run(&remote, &**cx.store, cx.cancel, &reporter);
        progress.finish();
        let results = results?;
        let known: HashSet<&str> = results.iter().map(|r| r.target.as_str()).collect();
        let mut round = Round::default();
        for r in &results {
            if r.ok {
                round.built.push(r.target.clone());
                round.bytes += r.bytes;
            } else {
                round.failed.push(FailedTarget {
                    target: r.target.clone(),
                    error: r.error.clone().unwrap_or_else(|| "failed".into()),
                });
            }
        }
        round.not_run = remote.jobs().filter(|j| !known.contains(j.target.as_str())).count();
        round.interrupted = cx.cancel.is_cancelled();
        Ok(round)
    }
}
