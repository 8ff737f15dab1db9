//! A local build's rounds: the targets run on this machine, each through the worker, in dependency order, with
//! a limit per resource class and retries for transient errors (one budget per target: `crate::retry`).

use super::build_loop::{Round, RoundCx, RoundRunner};
use super::job::Job;
use super::progress::Progress;
use super::{BuildOptions, FailedTarget, worker};
use crate::kind::is_cancelled;
use crate::kind::{Cancel, MemoryBudget, Resource};
use crate::plan::Plan;
use crate::retry::{Budget, RetryPolicy};
use crate::store::Store;
use crate::store::step_state::Record;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub struct Local<'a> {
    pub options: &'a BuildOptions,
    /// One budget for every target of the build (each runs on a thread of this process).
    pub memory: &'a MemoryBudget,
}

impl RoundRunner for Local<'_> {
    fn worker_threads(&self) -> Option<usize> {
        None
    }

    fn prepare(&mut self, store: &dyn Store) {
        worker::clean_abandoned_scratch(store);
    }

    fn records_built(&self) -> bool {
        true
    }

    fn keep_going(&self) -> bool {
        self.options.keep_going
    }

    fn run_round(&mut self, cx: &RoundCx, plan: &mut Plan, to_run: &[usize]) -> anyhow::Result<Round> {
        Ok(cx.runtime.block_on(run_round(cx, plan, to_run, self.options, self.memory)))
    }
}

async fn run_round(
    cx: &RoundCx<'_>,
    plan: &mut Plan,
    to_run: &[usize],
    options: &BuildOptions,
    memory: &MemoryBudget,
) -> Round {
    let (pipeline, store, cancel) = (cx.pipeline, cx.store, cx.cancel);
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
            let cx = TargetCx {
                store: store.clone(),
                limit,
                cancel: cancel.clone(),
                memory: memory.clone(),
                retries: options.retries,
                progress: progress.clone(),
            };
            tasks.spawn(run_target(t, job, cx));
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
                round.built.push(name.clone());
                progress.done(&name, outcome.manifest.duration_s);
                let target = &plan.targets[t];
                if let Some(state) = plan.states[target.step].as_mut() {
                    state.insert(target.shard(), record.clone());
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

/// What one target's task shares with the round.
struct TargetCx {
    store: Arc<dyn Store>,
    limit: Arc<Semaphore>,
    cancel: Cancel,
    memory: MemoryBudget,
    retries: u32,
    progress: Progress,
}

async fn run_target(index: usize, job: Job, cx: TargetCx) -> (usize, anyhow::Result<worker::Outcome>) {
    let TargetCx { store, limit, cancel, memory, retries, progress } = cx;
    let _permit = limit.acquire_owned().await;
    if cancel.is_cancelled() {
        return (index, Err(crate::kind::Cancelled.into()));
    }
    progress.start(&job.target);
    // The worker sees exactly what a remote worker would: the serialised job.
    let serialized = match serde_json::to_string(&job) {
        Ok(s) => Arc::new(s),
        Err(e) => return (index, Err(e.into())),
    };
    // The target's one retry budget: the store requests and downloads made while building it draw on it too.
    let budget = Budget::new(RetryPolicy::DEFAULT.with_retries(retries));
    let mut attempt = 0;
    loop {
        let (serialized, store, cancel_for_worker, budget_for_worker, memory) =
            (serialized.clone(), store.clone(), cancel.clone(), budget.clone(), memory.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _entered = budget_for_worker.enter();
            worker::run_json(&serialized, &*store, &cancel_for_worker, &memory)
        })
        .await;
        let result = result.unwrap_or_else(|panic| Err(anyhow::anyhow!("worker panicked: {panic}")));
        let wait = match &result {
            Err(e) if !cancel.is_cancelled() => budget.should_retry(e),
            _ => None,
        };
        match (result, wait) {
            (Err(e), Some(wait)) => {
                progress.retry(&job.target, attempt + 1, &format!("{e:#}"));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            (other, _) => return (index, other),
        }
    }
}
