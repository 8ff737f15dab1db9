//! The build loop that local and remote builds share: the runtime, the store lock, Ctrl-C, the rounds (plan
//! again while steps with unknown shard counts become known), the step indexes, the summary and when to stop.
//! How one round's targets run is the only difference, behind [`RoundRunner`].

use super::{FailedTarget, Summary, dispose};
use crate::kind::Cancel;
use crate::pipeline::Pipeline;
use crate::plan::{self, Plan, PlanOptions};
use crate::store::Store;
use crate::util::stat_cache::StatCache;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// What one round did.
#[derive(Default)]
pub struct Round {
    /// The targets built, in the order they finished.
    pub built: Vec<String>,
    pub bytes: u64,
    /// Targets of the round that did not run (an input failed, the build stopped).
    pub not_run: usize,
    pub failed: Vec<FailedTarget>,
    /// The build was interrupted during the round.
    pub interrupted: bool,
}

/// What the loop hands a round.
pub struct RoundCx<'a> {
    pub pipeline: &'a Pipeline,
    pub store: &'a Arc<dyn Store>,
    pub runtime: &'a tokio::runtime::Runtime,
    pub cancel: &'a Cancel,
}

/// Runs one round's targets: locally on workers, or remotely through an executor.
pub trait RoundRunner {
    /// Worker threads for the build's runtime (`None`: one per core).
    fn worker_threads(&self) -> Option<usize>;
    /// Called once the store is locked, before the first round.
    fn prepare(&mut self, _store: &dyn Store) {}
    /// Whether `run_round` records what it built in the plan's step states. Then the step indexes are saved
    /// after the round, so that they include it; otherwise before it (what the plan read is all they learn).
    fn records_built(&self) -> bool;
    /// `--keep-going`: build what does not depend on a failure, or on an unavailable step.
    fn keep_going(&self) -> bool;
    /// Runs `to_run` (targets of `plan`, in plan order). An error ends the build (the executor could not run).
    fn run_round(&mut self, cx: &RoundCx, plan: &mut Plan, to_run: &[usize]) -> anyhow::Result<Round>;
}

/// Builds what the plan says must run, round after round, with `runner` running each round's targets.
pub fn build(
    pipeline: &Pipeline,
    store: Arc<dyn Store>,
    stat_cache: &StatCache,
    plan_options: &PlanOptions,
    runner: &mut dyn RoundRunner,
) -> anyhow::Result<Summary> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = runner.worker_threads() {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build()?;
    let dirs: Vec<&str> = pipeline.steps.iter().filter(|s| !s.kind.is_source()).map(|s| s.dir.as_str()).collect();
    let _locks = crate::store::lock_pipeline(&*store, &pipeline.name, &dirs)?;
    runner.prepare(&*store);
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut rounds = Rounds::new(plan_options);
    let cancel = Cancel::default();
    let _signals = watch_signals(&runtime, cancel.clone());
    let cx = RoundCx { pipeline, store: &store, runtime: &runtime, cancel: &cancel };

    loop {
        let (mut plan, to_run) = rounds.plan(pipeline, &*store, stat_cache, &mut summary)?;
        // Even with nothing to build, manifests this plan had to read go into the index for next time.
        // Without --keep-going, a build that needs an unavailable step stops before any work, as make stops at
        // its first error; with it, everything that does not read the step is built.
        let stop = to_run.is_empty() || (!summary.unavailable.is_empty() && !runner.keep_going());
        if stop || !runner.records_built() {
            save_indexes(&mut plan, &*store);
        }
        if stop {
            dispose(plan);
            break;
        }
        let round = runner.run_round(&cx, &mut plan, &to_run)?;
        if runner.records_built() {
            save_indexes(&mut plan, &*store);
        }

        round.built.iter().for_each(|name| rounds.built(name));
        let built_none = round.built.is_empty();
        summary.built += round.built.len();
        summary.built_targets.extend(round.built);
        summary.bytes_written += round.bytes;
        summary.not_run += round.not_run;
        summary.failed.extend(round.failed);
        summary.interrupted |= round.interrupted;
        // Only steps whose shard counts were unknown can add targets now; otherwise the build is done.
        let done = !summary.failed.is_empty() || summary.interrupted || built_none || !plan.has_unknown();
        dispose(plan);
        if done {
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

fn save_indexes(plan: &mut Plan, store: &dyn Store) {
    for state in plan.states.iter_mut().flatten() {
        if let Err(e) = state.save_index(store) {
            eprintln!("warning: {e:#} (the next plan reads manifests instead)");
        }
    }
}

/// The rounds of one build: each plans again (row-split steps learn their shards from what the last round
/// built), counts what is fresh once, and does not force or retry a target twice.
struct Rounds {
    options: PlanOptions,
    fresh: FreshCount,
}

impl Rounds {
    fn new(options: &PlanOptions) -> Rounds {
        Rounds { options: options.clone(), fresh: FreshCount::default() }
    }

    /// The next round's plan and the targets it runs; adds its sources hashed and fresh targets to `summary`.
    fn plan(
        &mut self,
        pipeline: &Pipeline,
        store: &dyn Store,
        stat_cache: &StatCache,
        summary: &mut Summary,
    ) -> anyhow::Result<(Plan, Vec<usize>)> {
        let plan = plan::make(pipeline, store, stat_cache, &self.options)?;
        summary.sources_hashed += plan.stats.sources_hashed;
        // The last round's plan says what stayed unavailable.
        summary.unavailable = plan
            .unavailable()
            .into_iter()
            .map(|(step, reason)| super::UnavailableStep { step: step.to_string(), reason: reason.to_string() })
            .collect();
        summary.fresh += self.fresh.count(&plan);
        let to_run = plan.to_run().collect();
        Ok((plan, to_run))
    }

    fn built(&mut self, target: &str) {
        self.options.built_this_run.insert(target.to_string());
    }
}

/// Counts fresh targets across the rounds of a build, each once: a round's plan also shows as fresh what the
/// previous rounds built, so after the first round only steps that were unknown until then are counted.
#[derive(Default)]
struct FreshCount {
    newly_known: Option<HashSet<String>>,
}

impl FreshCount {
    fn count(&mut self, plan: &Plan) -> usize {
        let known = self
            .newly_known
            .replace(plan.steps.iter().filter(|s| s.unknown.is_some()).map(|s| s.name.clone()).collect());
        plan.targets
            .iter()
            .filter(|t| t.selected && t.action == plan::Action::Fresh)
            .filter(|t| known.as_ref().is_none_or(|steps| steps.contains(&plan.steps[t.step].name)))
            .count()
    }
}
