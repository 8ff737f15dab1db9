//! Building: one build loop (`build_loop`) for local builds (`local`: the targets run here, through the
//! worker) and remote ones (`remote`: an executor runs them), with a clean stop on Ctrl-C.

mod build_loop;
pub mod job;
mod local;
mod progress;
pub mod remote;
mod scratch;
pub mod worker;

use crate::kind::MemoryBudget;
use crate::pipeline::Pipeline;
use crate::plan::PlanOptions;
use crate::store::Store;
use crate::util::stat_cache::StatCache;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// CPU-bound targets at once (`-j`).
    pub jobs: usize,
    /// Network-bound targets at once.
    pub net_jobs: usize,
    /// The build's memory budget in bytes (`--memory`); `None`: derived from the memory available. Decodes
    /// at once, for the whole build, are `jobs`.
    pub memory: Option<u64>,
    pub keep_going: bool,
    /// Each target's retry budget: transient failures retried in all, at every layer (`crate::retry`).
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
    /// Steps that could not be planned, which what was asked for needs: nothing that reads them was built.
    pub unavailable: Vec<UnavailableStep>,
    /// The memory budget of a local build and the most of it in use at once; `None` for remote builds (each
    /// worker has its own).
    pub memory: Option<MemoryUse>,
}

#[derive(Debug, Serialize)]
pub struct MemoryUse {
    pub budget_bytes: u64,
    pub peak_bytes: u64,
    pub decode_slots: usize,
}

impl BuildOptions {
    /// The budget these options ask for: `--memory`, or a share of what is available.
    pub fn memory_budget(&self) -> MemoryBudget {
        match self.memory {
            Some(bytes) => MemoryBudget::new(bytes, self.jobs),
            None => MemoryBudget::default_for(self.jobs),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UnavailableStep {
    pub step: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct FailedTarget {
    pub target: String,
    pub error: String,
}

/// Builds what the plan says must run on this machine; plans again while steps with unknown shard counts
/// become known.
pub fn build(
    pipeline: &Pipeline,
    store: Arc<dyn Store>,
    stat_cache: &StatCache,
    plan_options: &PlanOptions,
    options: &BuildOptions,
) -> anyhow::Result<Summary> {
    let memory = options.memory_budget();
    let mut summary =
        build_loop::build(pipeline, store, stat_cache, plan_options, &mut local::Local { options, memory: &memory })?;
    summary.memory = Some(MemoryUse {
        budget_bytes: memory.limit(),
        peak_bytes: memory.peak(),
        decode_slots: memory.decode_slots(),
    });
    Ok(summary)
}

/// Frees a large plan off the main thread: a process that is about to exit need not wait for it.
pub fn dispose<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value));
}
