//! The plan: every target of the pipeline, its key, and what a build would do with it and why.

pub mod key;
pub mod reason;
pub mod render;

use crate::error::UsageError;
use crate::kind::{InputShard, InputShards, ShardCx, ShardSpec, Shards, SourceFile};
use crate::pipeline::Pipeline;
use crate::store::manifest::{Manifest, RetryOf};
use crate::store::step_state::{RecordRef, StepState};
use crate::store::{ReadLimit, Store, manifest_path};
use crate::util::digest::Digest;
use crate::util::stat_cache::StatCache;
use crate::util::suggest::help_for;
use anyhow::bail;
use key::{InputKey, KeyParts, SourceIdentity, StepKeyer};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A `--target` or `--force` that names nothing in the pipeline: a usage error, not a build failure.
macro_rules! selection_error {
    ($($arg:tt)*) => { return Err(UsageError(format!($($arg)*)).into()) };
}

#[derive(Debug, Default, Clone)]
pub struct PlanOptions {
    /// `--target STEP` or `STEP/SHARD`: plan only these and what they need.
    pub targets: Vec<String>,
    /// `--force STEP`: rebuild the step's targets even when fresh.
    pub force: Vec<String>,
    /// `--retry-failed STEP`: rebuild the step's fresh targets that have retryable failures, re-attempting
    /// only those rows.
    pub retry_failed: Vec<String>,
    /// Targets this build has already made: a later round's plan does not force or retry them again.
    pub built_this_run: std::collections::HashSet<String>,
    /// `--allow-host`: destinations this run may reach beyond the pipeline's allow-lists. Not part of any
    /// key: it permits work, it does not change what the work is.
    pub allow_hosts: Vec<String>,
    /// Plan from what is on this machine and in the store only, asking no remote service (`dsmake status`).
    pub local_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A file outside the store, identified by content; nothing to build.
    Source,
    Fresh,
    Missing,
    Stale,
    /// Not fresh, and waits on inputs that this build makes first.
    Blocked,
}

impl Target {
    /// The shard id, unique within the step.
    pub fn shard(&self) -> &str {
        &self.name[self.shard_at..]
    }
}

impl Action {
    /// As plans print it (and as JSON spells it).
    pub fn name(self) -> &'static str {
        match self {
            Action::Source => "source",
            Action::Fresh => "fresh",
            Action::Missing => "missing",
            Action::Stale => "stale",
            Action::Blocked => "blocked",
        }
    }

    pub fn runs(self) -> bool {
        matches!(self, Action::Missing | Action::Stale | Action::Blocked)
    }
}

#[derive(Debug)]
pub struct Target {
    pub step: usize,
    /// `step/shard`: the shard id is its tail ([`Target::shard`]), so a target holds one string, not two.
    pub name: String,
    shard_at: usize,
    pub key: Digest,
    /// This shard's slice of its inputs (part of the key).
    pub coords: serde_json::Value,
    pub inputs: Vec<usize>,
    pub source: Option<Box<SourceFile>>,
    pub action: Action,
    pub reason: Option<String>,
    /// False when `--target` left it out.
    pub selected: bool,
    /// With `--retry-failed`: the key the settings and inputs give, and this attempt's number.
    pub retry: Option<Box<RetryOf>>,
}

#[derive(Debug)]
pub struct StepPlan {
    pub name: String,
    pub kind: &'static str,
    pub dir: String,
    pub source: bool,
    pub targets: Range<usize>,
    /// Why the shard count is not known yet.
    pub unknown: Option<String>,
    /// Its shards could not be found (an unreachable Hub, a model not at hand, a missing file): `unknown`
    /// says why. Building more will not change that; the rest of the plan goes on without it.
    pub unavailable: bool,
    /// It reads, directly or not, an unavailable step.
    pub after_unavailable: bool,
    /// What `--target` asks for, or what that needs (every step without `--target`).
    pub wanted: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PlanStats {
    pub sources_checked: usize,
    pub sources_hashed: u64,
    pub bytes_hashed: u64,
    pub objects_listed: usize,
    pub manifests_read: usize,
    /// Requests sent to the store while planning (S3 only).
    pub store_requests: u64,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct Plan {
    pub pipeline: String,
    pub store: String,
    pub steps: Vec<StepPlan>,
    pub targets: Vec<Target>,
    /// Per step (None for sources): what the store holds; the executor records new builds here.
    pub states: Vec<Option<StepState>>,
    pub stats: PlanStats,
    /// `--allow-host`, for the jobs of this run.
    pub allow_hosts: Vec<String>,
}

impl Plan {
    pub fn to_run(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.targets.len()).filter(|&i| self.targets[i].selected && self.targets[i].action.runs())
    }

    /// Whether a step waits for shards that building its inputs will tell (not an unavailable one).
    pub fn has_unknown(&self) -> bool {
        self.steps.iter().any(|s| s.unknown.is_some() && !s.unavailable && !s.after_unavailable)
    }

    /// The unavailable steps that what was asked for needs, with why.
    pub fn unavailable(&self) -> Vec<(&str, &str)> {
        self.steps
            .iter()
            .filter(|s| s.unavailable && s.wanted)
            .map(|s| (s.name.as_str(), s.unknown.as_deref().unwrap_or("")))
            .collect()
    }

    /// What the store holds for target `t` (its current manifest, fresh or not).
    pub fn record(&self, t: usize) -> Option<RecordRef<'_>> {
        let target = &self.targets[t];
        self.states[target.step].as_ref()?.records.get(target.shard())
    }

    /// Everything that went into target `t`'s key, for its manifest and for explaining a change. Built on
    /// demand: keeping one per target would copy the step's settings into every target.
    pub fn key_parts(&self, pipeline: &Pipeline, t: usize) -> KeyParts {
        let target = &self.targets[t];
        let step = &pipeline.steps[target.step];
        KeyParts {
            kind: step.kind.name().to_string(),
            kind_version: step.kind.version(),
            settings: step.settings.clone(),
            shard: target.shard().to_string(),
            coords: target.coords.clone(),
            inputs: target
                .inputs
                .iter()
                .map(|&i| InputKey { target: self.targets[i].name.clone(), key: self.targets[i].key.to_string() })
                .collect(),
            source: target.source.as_ref().map(|f| json!({ "path": f.display, "blake3": f.blake3 })),
        }
    }
}

pub fn make(
    pipeline: &Pipeline,
    store: &dyn Store,
    stat_cache: &StatCache,
    options: &PlanOptions,
) -> anyhow::Result<Plan> {
    let started = Instant::now();
    // What planning frees (listings, specs, views) it soon fills again: see `hold_freed`.
    let _held = crate::util::memory::hold_freed();
    check_step_names(pipeline, options)?;
    let requests_before = store.requests();
    let hashed_before = stat_cache.hashed_files.load(Ordering::Relaxed);
    let bytes_before = stat_cache.hashed_bytes.load(Ordering::Relaxed);

    let mut timings = Timings::new();
    // One listing per built step, all steps at once; meanwhile, the shards of steps that read no other step
    // (globbing and stating source files), which need nothing from the store.
    let shards_of = |step: &crate::pipeline::Step| {
        let cx = ShardCx {
            step: &step.name,
            base_dir: &pipeline.base_dir,
            inputs: Vec::new(),
            stat_cache,
            local_only: options.local_only,
        };
        step.kind.shards(&step.settings, &cx)
    };
    let (states, mut early) = rayon::join(
        || {
            pipeline
                .steps
                .par_iter()
                .map(|step| (!step.kind.is_source()).then(|| StepState::load(store, &step.dir)).transpose())
                .collect::<anyhow::Result<Vec<Option<StepState>>>>()
        },
        || {
            (0..pipeline.steps.len())
                .into_par_iter()
                .map(|s| pipeline.inputs_of(s).is_empty().then(|| shards_of(&pipeline.steps[s])))
                .collect::<Vec<_>>()
        },
    );
    let states = states?;
    timings.lap("listings and indexes, and the shards of steps that read no other");

    let mut plan = Plan {
        pipeline: pipeline.name.clone(),
        store: store.url(),
        steps: Vec::with_capacity(pipeline.steps.len()),
        targets: Vec::new(),
        states,
        stats: PlanStats::default(),
        allow_hosts: options.allow_hosts.clone(),
    };
    let mut views: Vec<Vec<InputShard>> = Vec::with_capacity(pipeline.steps.len());
    let mut stale_to_explain = Vec::new();

    // The last step that reads each step: its view is dropped once that one is planned.
    let mut last_reader = vec![0; pipeline.steps.len()];
    for s in 0..pipeline.steps.len() {
        for i in pipeline.inputs_of(s) {
            last_reader[i] = s;
        }
    }

    for (s, step) in pipeline.steps.iter().enumerate() {
        for (view, _) in views.iter_mut().zip(&last_reader).filter(|(_, last)| **last < s) {
            *view = Vec::new();
        }
        let inputs = pipeline.inputs_of(s);
        let first = plan.targets.len();
        let waiting = inputs.iter().find(|&&i| plan.steps[i].unknown.is_some());
        let mut unavailable = false;
        let after_unavailable = inputs.iter().any(|&i| plan.steps[i].unavailable || plan.steps[i].after_unavailable);
        let shards = match waiting {
            Some(&i) if plan.steps[i].unavailable || plan.steps[i].after_unavailable => {
                let root = inputs.iter().find(|&&i| plan.steps[i].unavailable).map_or(i, |&r| r);
                Shards::Unknown(format!("waits on `{}`, which is unavailable", pipeline.steps[root].name))
            }
            Some(&i) => Shards::Unknown(format!("waits for the shards of {}", pipeline.steps[i].name)),
            None => {
                // A step that cannot be planned (an unreachable Hub, a model not at hand, a missing file) is
                // reported as unavailable; what does not read it is planned as usual. Steps that read no other
                // had their shards found during the listings.
                let found = match early[s].take() {
                    Some(found) => found,
                    None => {
                        let cx = ShardCx {
                            step: &step.name,
                            base_dir: &pipeline.base_dir,
                            inputs: inputs
                                .iter()
                                .map(|&i| InputShards {
                                    step: &pipeline.steps[i].name,
                                    shards: &views[i],
                                    rows_per_shard: pipeline.steps[i].traits.rows_per_shard,
                                })
                                .collect(),
                            stat_cache,
                            local_only: options.local_only,
                        };
                        step.kind.shards(&step.settings, &cx)
                    }
                };
                let shards = match found {
                    Ok(shards) => shards,
                    Err(e) => {
                        unavailable = true;
                        Shards::Unknown(format!("{e:#}"))
                    }
                };
                timings.lap(&format!("shards of {}", step.name));
                shards
            }
        };
        let specs = match shards {
            Shards::Known(specs) => specs,
            Shards::Unknown(why) => {
                let mut unknown = step_plan(step, first..first, Some(why));
                (unknown.unavailable, unknown.after_unavailable) = (unavailable, after_unavailable);
                plan.steps.push(unknown);
                views.push(Vec::new());
                continue;
            }
        };
        check_unique_ids(&step.name, step.kind.name(), &specs, |spec| {
            describe_spec(spec, |from, shard| &plan.targets[plan.steps[inputs[from]].targets.start + shard])
        })?;
        let state = plan.states[s].as_ref();
        let forced = options.force.contains(&step.name);
        let retrying = options.retry_failed.contains(&step.name);
        let keyer = StepKeyer::new(step.kind.name(), step.kind.version(), &step.settings);
        if let Some(bad) = specs.par_iter().find_first(|spec| !is_valid_shard_id(&spec.id)) {
            bail!("step `{}` made an invalid shard id `{}`", step.name, bad.id);
        }
        plan.targets.reserve(specs.len());
        // Each target's key and freshness depend only on its spec, its inputs' targets (earlier steps) and
        // the store: a step's targets are made side by side.
        let made: Vec<Target> = specs
            .into_par_iter()
            .map(|spec| {
                let input_targets: Vec<usize> =
                    spec.inputs.iter().map(|&(from, shard)| plan.steps[inputs[from]].targets.start + shard).collect();
                let key = keyer.key(
                    &spec.id,
                    &spec.coords,
                    input_targets.iter().map(|&t| (plan.targets[t].name.as_str(), &plan.targets[t].key)),
                    spec.source.as_ref().map(|f| SourceIdentity { blake3: &f.blake3, path: &f.display }).as_ref(),
                );
                // `step/shard`, sized up front (`format!` regrew the string of each of 10⁶ targets).
                let mut name = String::with_capacity(step.name.len() + 1 + spec.id.len());
                name.push_str(&step.name);
                name.push('/');
                name.push_str(&spec.id);
                let record = state.and_then(|st| st.records.get(&spec.id));
                // A retried build stands for the key its settings and inputs give (and, while fresh, what reads
                // it sees its own key); anything rebuilt from scratch goes back to that key.
                let retried = record
                    .and_then(|r| Some((r.key(), r.retry()?)))
                    .filter(|(_, (of_key, _))| Digest::from_hex(of_key) == Some(key));
                let (action, reason) = match state {
                    None => (Action::Source, None),
                    Some(st) => freshness(st, &spec.id, &retried.map_or(key, |(k, _)| k), record),
                };
                let again = || options.built_this_run.contains(&name);
                let retryable = record.and_then(|r| r.retryable()).unwrap_or(0);
                let mut retry = None;
                let (action, reason) = match action {
                    Action::Fresh if forced && !again() => {
                        (Action::Stale, Some(format!("forced with --force {}", step.name)))
                    }
                    Action::Fresh if retrying && retryable > 0 && !again() => {
                        let attempt = retried.map_or(1, |(_, (_, attempt))| attempt + 1);
                        retry = Some(Box::new(RetryOf { of_key: key.to_string(), attempt }));
                        let rows = if retryable == 1 { "row" } else { "rows" };
                        let why = format!("retrying {retryable} failed {rows} (--retry-failed {})", step.name);
                        (Action::Stale, Some(why))
                    }
                    _ => (action, reason),
                };
                Target {
                    step: s,
                    shard_at: step.name.len() + 1,
                    name,
                    coords: spec.coords,
                    inputs: input_targets,
                    source: spec.source,
                    key: match (&retry, retried) {
                        (Some(retry), _) => key::retry_key(&retry.of_key, retry.attempt),
                        (None, Some((own, _))) if action == Action::Fresh => own,
                        _ => key,
                    },
                    action,
                    reason,
                    selected: true,
                    retry,
                }
            })
            .collect();
        // A stale target without a reason yet has another key: explaining that takes its manifest, read in bulk.
        let unexplained = made.iter().enumerate().filter(|(_, t)| t.action == Action::Stale && t.reason.is_none());
        stale_to_explain.extend(unexplained.map(|(i, _)| first + i));
        plan.targets.extend(made);
        let range = first..plan.targets.len();
        // What later steps see of this one's shards: a copy of each id and file, so only where a step reads it.
        // An empty range where none does: indexed, so the copies are collected straight into place.
        let shown = if last_reader[s] > s { range.clone() } else { range.end..range.end };
        views.push(
            shown
                .into_par_iter()
                .map(|t| InputShard {
                    id: plan.targets[t].shard().to_string(),
                    file: plan.targets[t].source.as_ref().map(|s| s.path.clone()),
                    rows: if plan.targets[t].action == Action::Fresh {
                        plan.record(t).and_then(|r| r.rows())
                    } else {
                        None
                    },
                })
                .collect(),
        );
        plan.steps.push(step_plan(step, range, None));
    }

    timings.lap("keys and freshness");
    explain_stale(&mut plan, pipeline, store, &stale_to_explain);
    mark_blocked(&mut plan);
    select(&mut plan, pipeline, options)?;
    timings.lap("reasons, blocked, selection");

    plan.stats = PlanStats {
        sources_checked: plan.targets.iter().filter(|t| t.action == Action::Source).count(),
        sources_hashed: stat_cache.hashed_files.load(Ordering::Relaxed) - hashed_before,
        bytes_hashed: stat_cache.hashed_bytes.load(Ordering::Relaxed) - bytes_before,
        objects_listed: plan.states.iter().flatten().map(|s| s.listed).sum(),
        manifests_read: plan.states.iter().flatten().map(|s| s.manifests_read).sum::<usize>() + stale_to_explain.len(),
        store_requests: store.requests() - requests_before,

        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(plan)
}

/// Phase timings and resident memory on stderr with `DSMAKE_TIMINGS=1`: where a slow plan spends its time.
struct Timings {
    last: Option<Instant>,
}

impl Timings {
    fn new() -> Timings {
        Timings { last: std::env::var_os("DSMAKE_TIMINGS").map(|_| Instant::now()) }
    }

    fn lap(&mut self, phase: &str) {
        if let Some(last) = self.last.as_mut() {
            // Resident memory after each phase (Linux): which structures a plan of 10⁶ targets is made of.
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map_or("?", str::trim);
            eprintln!("timing: {phase}: {:.3}s, resident {rss}", last.elapsed().as_secs_f64());
            *last = Instant::now();
        }
    }
}

fn step_plan(step: &crate::pipeline::Step, targets: Range<usize>, unknown: Option<String>) -> StepPlan {
    StepPlan {
        name: step.name.clone(),
        kind: step.kind.name(),
        dir: step.dir.clone(),
        source: step.kind.is_source(),
        targets,
        unknown,
        unavailable: false,
        after_unavailable: false,
        wanted: true,
    }
}

/// Two shards of one step with one id would publish to the same outputs and manifest, each replacing the
/// other's: refused whatever mapping made them, naming what each reads.
fn check_unique_ids(
    step: &str,
    kind: &str,
    specs: &[ShardSpec],
    describe: impl Fn(&ShardSpec) -> String,
) -> anyhow::Result<()> {
    // foldhash: SipHash over 10⁶ ids was a visible share of a plan.
    let mut first: foldhash::HashMap<&str, &ShardSpec> = foldhash::HashMapExt::with_capacity(specs.len());
    for spec in specs {
        if let Some(other) = first.insert(&spec.id, spec) {
            bail!(
                "step `{step}` has two shards named `{}`: one {}, the other {}; each would replace the other's \
                 outputs. Rename one of them: `{kind}` names its shards after what they read",
                spec.id,
                describe(other),
                describe(spec)
            );
        }
    }
    Ok(())
}

/// What a shard reads, for messages: its source file or its input targets (with their files).
fn describe_spec<'a>(spec: &ShardSpec, input: impl Fn(usize, usize) -> &'a Target) -> String {
    if let Some(file) = &spec.source {
        return format!("is the file {}", file.display);
    }
    if spec.inputs.is_empty() {
        return "reads nothing".to_string();
    }
    let reads: Vec<String> = spec
        .inputs
        .iter()
        .map(|&(from, shard)| {
            let t = input(from, shard);
            match &t.source {
                Some(file) => format!("{} (file {})", t.name, file.display),
                None => t.name.clone(),
            }
        })
        .collect();
    format!("reads {}", reads.join(", "))
}

/// Shard ids become paths in the store: no empty, hidden or parent components.
fn is_valid_shard_id(id: &str) -> bool {
    !id.is_empty()
        && id.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(".dsmake-tmp-"))
        && !id.starts_with(crate::kind::META_DIR)
}

/// Fresh when the store's manifest has the wanted key and every output it lists is there with its size, and,
/// where the store lists content versions (S3's ETags), with the version its manifest recorded.
/// A key mismatch is marked stale with no reason yet: explaining it takes a manifest read, done in bulk.
fn freshness(state: &StepState, shard: &str, key: &Digest, record: Option<RecordRef<'_>>) -> (Action, Option<String>) {
    let Some(record) = record else {
        let reason = match state.unreadable.get(shard) {
            Some(why) => format!("manifest unreadable ({why})"),
            None => "never built".to_string(),
        };
        return (Action::Missing, Some(reason));
    };
    if record.key() != *key {
        return (Action::Stale, None);
    }
    for output in record.outputs() {
        match state.has(output.name, output.size) {
            None => {
                return (Action::Stale, Some(format!("output {} is missing", output.name)));
            }
            Some(false) => {
                let now = state.files.get(output.name).unwrap_or(0);
                let reason = format!("output {} changed size ({} → {now} bytes)", output.name, output.size);
                return (Action::Stale, Some(reason));
            }
            Some(true) if state.rewritten(output.name, output.version) => {
                let reason = format!(
                    "output {} was rewritten since its manifest (the store no longer lists it as version {})",
                    output.name, output.version
                );
                return (Action::Stale, Some(reason));
            }
            Some(true) => {}
        }
    }
    (Action::Fresh, None)
}

fn explain_stale(plan: &mut Plan, pipeline: &Pipeline, store: &dyn Store, stale: &[usize]) {
    if stale.is_empty() {
        return;
    }
    let sources: std::collections::HashMap<&str, &str> =
        plan.targets.iter().filter_map(|t| Some((t.name.as_str(), t.source.as_ref()?.display.as_str()))).collect();
    let describe_input = |name: &str| match sources.get(name) {
        Some(path) => format!("source {path}"),
        None => format!("input {name}"),
    };
    let reasons: Vec<String> = stale
        .par_iter()
        .map(|&t| {
            let target = &plan.targets[t];
            let path = manifest_path(&pipeline.steps[target.step].dir, target.shard());
            let old = store
                .read(&path, ReadLimit::MANIFEST)
                .ok()
                .flatten()
                .and_then(|bytes| Manifest::parse(&bytes, &path).ok());
            match old {
                Some(old) => reason::explain(&old.key_parts, &plan.key_parts(pipeline, t), &describe_input),
                None => "manifest changed while planning".to_string(),
            }
        })
        .collect();
    for (&t, reason) in stale.iter().zip(reasons) {
        plan.targets[t].reason = Some(reason);
    }
}

fn mark_blocked(plan: &mut Plan) {
    for t in 0..plan.targets.len() {
        if plan.targets[t].action.runs() && plan.targets[t].inputs.iter().any(|&i| plan.targets[i].action.runs()) {
            plan.targets[t].action = Action::Blocked;
        }
    }
}

fn check_step_names(pipeline: &Pipeline, options: &PlanOptions) -> anyhow::Result<()> {
    let names: Vec<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
    for (flag, value) in options
        .force
        .iter()
        .map(|f| ("--force", f.as_str()))
        .chain(options.retry_failed.iter().map(|f| ("--retry-failed", f.as_str())))
        .chain(options.targets.iter().map(|t| ("--target", t.split_once('/').map_or(t.as_str(), |(step, _)| step))))
    {
        if !names.contains(&value) {
            selection_error!("{flag} {value}: there is no step `{value}` ({})", help_for(value, "step", &names));
        }
    }
    for name in &options.retry_failed {
        let step = pipeline.steps.iter().find(|s| &s.name == name);
        if let Some(step) = step.filter(|s| !s.kind.retries_failed_rows()) {
            selection_error!(
                "--retry-failed {name}: a `{}` step has no failed rows to retry (use --force {name} to rebuild it)",
                step.kind.name()
            );
        }
    }
    Ok(())
}

/// `--target`: keep the named targets and, transitively, what they read. A step whose shards are not known
/// yet keeps what it reads, so that this build's rounds learn its shards and then build it.
fn select(plan: &mut Plan, pipeline: &Pipeline, options: &PlanOptions) -> anyhow::Result<()> {
    if options.targets.is_empty() {
        return Ok(());
    }
    let mut wanted = vec![false; plan.targets.len()];
    let mut wanted_steps = vec![false; plan.steps.len()];
    let mut stack = Vec::new();
    for spec in &options.targets {
        let (step, shard) = spec.split_once('/').map_or((spec.as_str(), None), |(s, t)| (s, Some(t)));
        let Some(s) = plan.steps.iter().position(|p| p.name == step) else {
            continue;
        };
        // The step and everything it reads, step by step: those are wanted whether their shards are known or
        // not; an unknown step's known inputs are built whole, so that the next round learns its shards.
        let mut closure = Vec::new();
        let mut steps = vec![s];
        while let Some(x) = steps.pop() {
            if !std::mem::replace(&mut wanted_steps[x], true) {
                closure.push(x);
                steps.extend(pipeline.inputs_of(x));
            }
        }
        if plan.steps[s].unknown.is_some() {
            for &x in &closure {
                stack.extend(plan.steps[x].targets.clone());
            }
        }
        let step_plan = &plan.steps[s];
        if step_plan.unknown.is_some() {
            if shard.is_some() && !step_plan.unavailable && !step_plan.after_unavailable {
                let why = step_plan.unknown.as_deref().unwrap_or_default();
                selection_error!(
                    "--target {spec}: the shards of `{step}` are not known yet ({why}); build --target {step} \
                     first"
                );
            }
            continue;
        }
        let before = stack.len();
        stack.extend(step_plan.targets.clone().filter(|&t| shard.is_none_or(|id| plan.targets[t].shard() == id)));
        if stack.len() == before && shard.is_some() {
            selection_error!("--target {spec}: step `{step}` has no shard `{}`", shard.unwrap_or_default());
        }
    }
    for (step, keep) in plan.steps.iter_mut().zip(wanted_steps) {
        step.wanted = keep;
    }
    while let Some(t) = stack.pop() {
        if !std::mem::replace(&mut wanted[t], true) {
            stack.extend(plan.targets[t].inputs.iter().copied());
        }
    }
    for (target, keep) in plan.targets.iter_mut().zip(wanted) {
        target.selected = keep;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn action_names_are_the_json_names() {
        for action in [Action::Source, Action::Fresh, Action::Missing, Action::Stale, Action::Blocked] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.name(), "{action:?}");
        }
    }

    #[test]
    fn an_output_rewritten_with_the_same_size_is_stale_where_the_store_lists_content_versions() {
        use crate::store::manifest::OutputFile;
        use crate::store::version_tag;
        let key = Digest([7; 32]);
        let output = |version: &str| OutputFile {
            name: "0.tar".into(),
            size: 10,
            blake3: String::new(),
            version: version.into(),
        };
        let record = |version: &str| {
            let mut records = crate::store::step_state::Records::new();
            records.insert("0", &crate::store::step_state::Record::with_outputs(key, vec![output(version)]));
            records
        };
        let listed = |version: &str| {
            let mut state = StepState::default();
            state.files.push_tagged("0.tar", 10, version_tag(version));
            state
        };
        let fresh = (Action::Fresh, None);
        assert_eq!(freshness(&listed("\"e1\""), "0", &key, record("\"e1\"").get("0")), fresh);
        let (action, reason) = freshness(&listed("\"e2\""), "0", &key, record("\"e1\"").get("0"));
        assert_eq!(action, Action::Stale);
        assert_eq!(
            reason.unwrap(),
            "output 0.tar was rewritten since its manifest (the store no longer lists it as version \"e1\")"
        );
        // Nothing to compare: a manifest without versions (a local store's, an older dsmake's), or a server
        // that lists modification times instead of ETags.
        assert_eq!(freshness(&listed("\"e2\""), "0", &key, record("").get("0")), fresh);
        assert_eq!(freshness(&listed("modified:1000"), "0", &key, record("\"e1\"").get("0")), fresh);
        let mut untagged = StepState::default();
        untagged.files.push("0.tar", 10);
        assert_eq!(freshness(&untagged, "0", &key, record("\"e1\"").get("0")), fresh);
    }

    fn file(path: &str) -> SourceFile {
        SourceFile { path: PathBuf::from(path), display: path.to_string(), size: 1, blake3: Digest::default() }
    }

    fn target(name: &str, source: Option<&str>) -> Target {
        Target {
            step: 0,
            shard_at: name.find('/').map_or(0, |at| at + 1),
            name: name.to_string(),
            key: Digest::default(),
            coords: json!({}),
            inputs: vec![],
            source: source.map(|p| Box::new(file(p))),
            action: Action::Source,
            reason: None,
            selected: true,
            retry: None,
        }
    }

    #[test]
    fn two_shards_with_one_id_are_refused_naming_both() {
        let inputs = [
            target("meta/part.0.parquet", Some("data/part.0.parquet")),
            target("meta/part.1.parquet", Some("data/part.1.parquet")),
            target("listing/00000", None),
        ];
        let reads =
            |id: &str, shard| ShardSpec { id: id.into(), coords: json!({}), inputs: vec![(0, shard)], source: None };
        let describe = |s: &ShardSpec| describe_spec(s, |_, i| &inputs[i]);
        let specs = [reads("part_00000", 0), reads("part_00001", 0), reads("part_00000", 1)];
        let err = check_unique_ids("images", "img2dataset", &specs, describe).unwrap_err();
        assert_eq!(
            err.to_string(),
            "step `images` has two shards named `part_00000`: one reads meta/part.0.parquet (file \
             data/part.0.parquet), the other reads meta/part.1.parquet (file data/part.1.parquet); each would \
             replace the other's outputs. Rename one of them: `img2dataset` names its shards after what they read"
        );

        let is = |id: &str, path: &str| ShardSpec {
            id: id.into(),
            coords: json!({}),
            inputs: vec![],
            source: Some(Box::new(file(path))),
        };
        let err = check_unique_ids("raw", "files", &[is("a", "x/a"), is("a", "y/a")], describe).unwrap_err();
        assert!(err.to_string().contains("one is the file x/a, the other is the file y/a"), "{err}");
        let err = check_unique_ids("all", "command", &[reads("x", 2), reads("x", 2)], describe).unwrap_err();
        assert!(err.to_string().contains("one reads listing/00000, the other reads listing/00000"), "{err}");

        let distinct = [reads("part~2E0_00000", 0), reads("part~2E1_00000", 1), is("a", "x/a")];
        assert!(check_unique_ids("images", "img2dataset", &distinct, describe).is_ok());
    }
}
