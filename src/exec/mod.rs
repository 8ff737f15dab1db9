//! The local executor: runs the plan's targets in dependency order, each through the worker, with a limit
//! per resource class, retries for transient errors, and a clean stop on Ctrl-C.

pub mod failure;
pub mod job;
mod progress;
pub mod remote;
pub mod worker;

use crate::kind::{Cancel, Resource};
use crate::pipeline::Pipeline;
use crate::plan::{self, Plan, PlanOptions};
use crate::store::Store;
use crate::store::step_state::Record;
use crate::util::stat_cache::StatCache;
use failure::{backoff, is_cancelled, is_transient};
use job::Job;
use progress::Progress;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// CPU-bound targets at once (`-j`).
    pub jobs: usize,
    /// Network-bound targets at once.
    pub net_jobs: usize,
    pub keep_going: bool,
    /// Extra attempts for a target that failed with a transient error.
    pub retries: u32,
    pub progress: bool,
    pub verbose: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub built: usize,
    /// The targets built, in the order they finished.
    pub built_targets: Vec<String>,
    pub fresh: usize,
    pub failed: Vec<FailedTarget>,
    /// Targets that did not run because an input failed or the build stopped.
    pub not_run: usize,
    pub bytes_written: u64,
    pub seconds: f64,
    pub interrupted: bool,
    /// Source files whose content was read (hashed) while planning.
    pub sources_hashed: u64,
}

#[derive(Debug, Serialize)]
pub struct FailedTarget {
    pub target: String,
    pub error: String,
}

/// Builds what the plan says must run; plans again while steps with unknown shard counts become known.
pub fn build(
    pipeline: &Pipeline,
    store: Arc<dyn Store>,
    stat_cache: &StatCache,
    plan_options: &PlanOptions,
    options: &BuildOptions,
) -> anyhow::Result<Summary> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let _lock = store.lock(&pipeline.name)?;
    worker::clean_abandoned_scratch(&*store);
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut rounds = Rounds::new(plan_options);
    let cancel = Cancel::default();
    let _signals = watch_signals(&runtime, cancel.clone());

    loop {
        let (mut plan, to_run) = rounds.plan(pipeline, &*store, stat_cache, &mut summary)?;
        if to_run.is_empty() {
            // Even with nothing to build, manifests this plan had to read go into the index for next time.
            save_indexes(&mut plan, &*store);
            dispose(plan);
            break;
        }
        let round = runtime.block_on(run_round(pipeline, &mut plan, &store, &to_run, options, &cancel));
        save_indexes(&mut plan, &*store);

        round.built_names.iter().for_each(|name| rounds.built(name));
        summary.built_targets.extend(round.built_names);
        summary.built += round.built;
        summary.bytes_written += round.bytes;
        summary.not_run += round.not_run;
        summary.failed.extend(round.failed);
        summary.interrupted |= round.interrupted;
        if !summary.failed.is_empty() || summary.interrupted || !plan.has_unknown() || round.built == 0 {
            break;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    if let Err(e) = stat_cache.save() {
        eprintln!("warning: {e:#}");
    }
    Ok(summary)
}

/// Ctrl-C and SIGTERM stop the build: running work is cancelled and publishes nothing. A second Ctrl-C
/// exits at once.
fn watch_signals(runtime: &tokio::runtime::Runtime, cancel: Cancel) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        eprintln!("\nInterrupted: stopping the targets in flight (Ctrl-C again to quit at once)…");
        cancel.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    })
}

#[derive(Default)]
struct Round {
    built: usize,
    built_names: Vec<String>,
    bytes: u64,
    not_run: usize,
    failed: Vec<FailedTarget>,
    interrupted: bool,
}

async fn run_round(
    pipeline: &Pipeline,
    plan: &mut Plan,
    store: &Arc<dyn Store>,
    to_run: &[usize],
    options: &BuildOptions,
    cancel: &Cancel,
) -> Round {
    let running: HashSet<usize> = to_run.iter().copied().collect();
    let mut waiting_on: HashMap<usize, usize> = HashMap::new();
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for &t in to_run {
        let deps: Vec<usize> = plan.targets[t].inputs.iter().copied().filter(|i| running.contains(i)).collect();
        waiting_on.insert(t, deps.len());
        for d in deps {
            dependents.entry(d).or_default().push(t);
        }
    }
    let mut ready: Vec<usize> = to_run.iter().rev().copied().filter(|t| waiting_on[t] == 0).collect();
    let limits: HashMap<Resource, Arc<Semaphore>> =
        [(Resource::Cpu, options.jobs), (Resource::Net, options.net_jobs), (Resource::Gpu, 1)]
            .into_iter()
            .map(|(r, n)| (r, Arc::new(Semaphore::new(n.max(1)))))
            .collect();

    let progress = Progress::new(to_run.len() as u64, options.progress, options.verbose);
    let mut built: HashMap<usize, Record> = HashMap::new();
    let mut round = Round::default();
    let mut tasks: JoinSet<(usize, anyhow::Result<worker::Outcome>)> = JoinSet::new();
    let mut stopping = false;
    let mut finished = 0;

    loop {
        while !stopping && !cancel.is_cancelled() {
            let Some(t) = ready.pop() else { break };
            let job = Job::for_target(pipeline, plan, &**store, t, &built);
            let step = &pipeline.steps[plan.targets[t].step];
            let limit = limits[&step.traits.resource].clone();
            tasks.spawn(run_target(t, job, store.clone(), limit, cancel.clone(), options.retries, progress.clone()));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        finished += 1;
        let (t, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                // A panic in a kind: report it as that target's failure, whichever it was.
                let failed = FailedTarget { target: "(unknown target)".into(), error: format!("worker panicked: {e}") };
                progress.fail(&failed.target, &failed.error);
                round.failed.push(failed);
                stopping |= !options.keep_going;
                continue;
            }
        };
        let name = plan.targets[t].name.clone();
        match result {
            Ok(outcome) => {
                let record = Record::new(&outcome.manifest, &outcome.manifest_meta);
                round.bytes += record.bytes();
                round.built += 1;
                round.built_names.push(name.clone());
                progress.done(&name, outcome.manifest.duration_s);
                let target = &plan.targets[t];
                if let Some(state) = plan.states[target.step].as_mut() {
                    state.insert(&target.shard, record.clone());
                }
                built.insert(t, record);
                for &d in dependents.get(&t).into_iter().flatten() {
                    let left = waiting_on.get_mut(&d).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if left == Some(0) {
                        ready.push(d);
                    }
                }
            }
            Err(e) if is_cancelled(&e) => round.interrupted = true,
            Err(e) => {
                let error = format!("{e:#}");
                progress.fail(&name, &error);
                round.failed.push(FailedTarget { target: name, error });
                stopping |= !options.keep_going;
            }
        }
    }
    round.interrupted |= cancel.is_cancelled();
    round.not_run = to_run.len() - finished;
    progress.finish();
    round
}

async fn run_target(
    index: usize,
    job: Job,
    store: Arc<dyn Store>,
    limit: Arc<Semaphore>,
    cancel: Cancel,
    retries: u32,
    progress: Progress,
) -> (usize, anyhow::Result<worker::Outcome>) {
    let _permit = limit.acquire_owned().await;
    if cancel.is_cancelled() {
        return (index, Err(failure::Cancelled.into()));
    }
    progress.start(&job.target);
    // The worker sees exactly what a remote worker would: the serialised job.
    let serialized = match serde_json::to_string(&job) {
        Ok(s) => Arc::new(s),
        Err(e) => return (index, Err(e.into())),
    };
    let mut attempt = 0;
    loop {
        let (serialized, store, cancel_for_worker) = (serialized.clone(), store.clone(), cancel.clone());
        let result =
            tokio::task::spawn_blocking(move || worker::run_json(&serialized, &*store, &cancel_for_worker)).await;
        let result = result.unwrap_or_else(|panic| Err(anyhow::anyhow!("worker panicked: {panic}")));
        match result {
            Err(e) if is_transient(&e) && attempt < retries && !cancel.is_cancelled() => {
                progress.retry(&job.target, attempt + 1, &format!("{e:#}"));
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return (index, other),
        }
    }
}

/// The rounds of one build, local or remote: each plans again (row-split steps learn their shards from
/// what the last round built), counts what is fresh once, and does not force or retry a target twice.
pub struct Rounds {
    options: PlanOptions,
    fresh: FreshCount,
}

impl Rounds {
    pub fn new(options: &PlanOptions) -> Rounds {
        Rounds { options: options.clone(), fresh: FreshCount::default() }
    }

    /// The next round's plan and the targets it runs; adds its sources hashed and fresh targets to `summary`.
    pub fn plan(
        &mut self,
        pipeline: &Pipeline,
        store: &dyn Store,
        stat_cache: &StatCache,
        summary: &mut Summary,
    ) -> anyhow::Result<(Plan, Vec<usize>)> {
        let plan = plan::make(pipeline, store, stat_cache, &self.options)?;
        summary.sources_hashed += plan.stats.sources_hashed;
        summary.fresh += self.fresh.count(&plan);
        let to_run = plan.to_run().collect();
        Ok((plan, to_run))
    }

    pub fn built(&mut self, target: &str) {
        self.options.built_this_run.insert(target.to_string());
    }

    /// Whether the last plan had steps whose targets were not known yet.
    pub fn waiting(&self) -> bool {
        self.fresh.waiting()
    }
}

/// Counts fresh targets across the rounds of a build, each once: a round's plan also shows as fresh what the
/// previous rounds built, so after the first round only steps that were unknown until then are counted.
#[derive(Default)]
struct FreshCount {
    newly_known: Option<HashSet<String>>,
}

impl FreshCount {
    pub fn count(&mut self, plan: &Plan) -> usize {
        let known = self
            .newly_known
            .replace(plan.steps.iter().filter(|s| s.unknown.is_some()).map(|s| s.name.clone()).collect());
        plan.targets
            .iter()
            .filter(|t| t.selected && t.action == plan::Action::Fresh)
            .filter(|t| known.as_ref().is_none_or(|steps| steps.contains(&plan.steps[t.step].name)))
            .count()
    }

    /// Whether the last plan counted had steps whose targets were not known yet.
    pub fn waiting(&self) -> bool {
        self.newly_known.as_ref().is_some_and(|steps| !steps.is_empty())
    }
}

/// Frees a large plan off the main thread: a process that is about to exit need not wait for it.
pub fn dispose<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value));
}

fn save_indexes(plan: &mut Plan, store: &dyn Store) {
    for state in plan.states.iter_mut().flatten() {
        if let Err(e) = state.save_index(store) {
            eprintln!("warning: {e:#} (the next plan reads manifests instead)");
        }
    }
}
