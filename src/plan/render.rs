//! The plan for people (a table, then the reasons) and for programs (`--format json`).

use super::{Action, Plan};
use serde::Serialize;
use std::fmt::Write;

/// How many stale targets the table lists before `-v` is needed for the rest.
const LISTED_REASONS: usize = 20;

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub source: usize,
    pub fresh: usize,
    pub missing: usize,
    pub stale: usize,
    pub blocked: usize,
}

impl Counts {
    pub fn run(&self) -> usize {
        self.missing + self.stale + self.blocked
    }
    fn add(&mut self, action: Action) {
        match action {
            Action::Source => self.source += 1,
            Action::Fresh => self.fresh += 1,
            Action::Missing => self.missing += 1,
            Action::Stale => self.stale += 1,
            Action::Blocked => self.blocked += 1,
        }
    }
}

pub fn step_counts(plan: &Plan, step: usize) -> Counts {
    let mut counts = Counts::default();
    for t in plan.steps[step].targets.clone() {
        if plan.targets[t].selected {
            counts.add(plan.targets[t].action);
        }
    }
    counts
}

fn cell(n: usize) -> String {
    if n == 0 { "-".to_string() } else { n.to_string() }
}

pub fn table(plan: &Plan, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan for {} (store: {})", plan.pipeline, plan.store);
    let width = plan.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    let kind_width = plan.steps.iter().map(|s| s.kind.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "  {:<width$}  {:<kind_width$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}",
        "step", "kind", "targets", "fresh", "missing", "stale", "blocked", "run"
    );
    let mut total = Counts::default();
    for (s, step) in plan.steps.iter().enumerate() {
        let c = step_counts(plan, s);
        if step.unavailable {
            let _ =
                writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  unavailable (below)", step.name, step.kind, "?");
            continue;
        }
        if let Some(why) = &step.unknown {
            let _ = writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  {why}", step.name, step.kind, "?");
            continue;
        }
        let shards = c.source + c.fresh + c.run();
        if step.source {
            let _ = writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  (source files)", step.name, step.kind, shards);
        } else {
            let _ = writeln!(
                out,
                "  {:<width$}  {:<kind_width$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}",
                step.name,
                step.kind,
                shards,
                cell(c.fresh),
                cell(c.missing),
                cell(c.stale),
                cell(c.blocked),
                cell(c.run())
            );
        }
        total.fresh += c.fresh;
        total.missing += c.missing;
        total.stale += c.stale;
        total.blocked += c.blocked;
    }

    let listed: Vec<_> = plan
        .targets
        .iter()
        .filter(|t| t.selected && (verbose || matches!(t.action, Action::Stale | Action::Blocked)))
        .filter(|t| verbose || t.reason.as_deref().is_some_and(|r| r != "never built"))
        .collect();
    if !listed.is_empty() {
        let _ = writeln!(out, "\n{}", if verbose { "Targets:" } else { "Stale:" });
        let name_width = listed.iter().map(|t| t.name.len()).max().unwrap_or(0);
        let shown = if verbose { listed.len() } else { LISTED_REASONS };
        for t in listed.iter().take(shown) {
            let action = format!("{:?}", t.action).to_lowercase();
            let reason = t.reason.as_deref().unwrap_or("");
            let _ = writeln!(out, "  {:<name_width$}  {action:<7}  {reason}", t.name);
        }
        if listed.len() > shown {
            let _ = writeln!(out, "  … and {} more (all with -v)", listed.len() - shown);
        }
    }
    let unavailable: Vec<_> = plan.steps.iter().filter(|s| s.unavailable).collect();
    if !unavailable.is_empty() {
        let _ = writeln!(out, "\nUnavailable (the steps that read them wait; everything else is planned):");
        for step in &unavailable {
            let _ = writeln!(out, "  {}: {}", step.name, step.unknown.as_deref().unwrap_or_default());
        }
    }
    let unknown = plan.steps.iter().filter(|s| s.unknown.is_some() && !s.unavailable && !s.after_unavailable).count();
    out.push('\n');
    match total.run() {
        0 if unknown == 0 && unavailable.is_empty() => {
            let _ = writeln!(out, "Nothing to do: {} targets are fresh.", total.fresh);
        }
        n => {
            let _ = write!(
                out,
                "{n} targets to build ({} missing, {} stale, {} waiting on inputs)",
                total.missing, total.stale, total.blocked
            );
            if unknown > 0 {
                let _ = write!(out, ", and {unknown} steps whose targets are known once their inputs are built");
            }
            if !unavailable.is_empty() {
                let _ = write!(out, ", and {} unavailable steps", unavailable.len());
            }
            let _ = writeln!(out, "; {} fresh.", total.fresh);
        }
    }
    out
}

/// The plan for programs. Borrowed views serialised straight to the output: a plan of 10⁵ targets never
/// becomes a tree of JSON values in memory.
pub fn json(plan: &Plan) -> PlanJson<'_> {
    PlanJson { plan }
}

pub struct PlanJson<'a> {
    plan: &'a Plan,
}

#[derive(Serialize)]
struct StepJson<'a> {
    step: &'a str,
    kind: &'a str,
    dir: &'a str,
    targets: Option<usize>,
    unknown: Option<&'a str>,
    /// The step cannot be planned now (`unknown` says why); see `Plan::unavailable`.
    unavailable: bool,
    source: usize,
    fresh: usize,
    missing: usize,
    stale: usize,
    blocked: usize,
    run: usize,
}

#[derive(Serialize)]
struct TargetJson<'a> {
    target: &'a str,
    step: &'a str,
    shard: &'a str,
    key: &'a str,
    action: Action,
    reason: Option<&'a str>,
    inputs: Vec<&'a str>,
    source: Option<SourceJson<'a>>,
}

#[derive(Serialize)]
struct SourceJson<'a> {
    path: &'a str,
    size: u64,
    blake3: &'a str,
}

impl Serialize for PlanJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let plan = self.plan;
        let steps: Vec<StepJson> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(s, step)| {
                let c = step_counts(plan, s);
                StepJson {
                    step: &step.name,
                    kind: step.kind,
                    dir: &step.dir,
                    targets: step.unknown.is_none().then(|| c.source + c.fresh + c.run()),
                    unknown: step.unknown.as_deref(),
                    unavailable: step.unavailable,
                    source: c.source,
                    fresh: c.fresh,
                    missing: c.missing,
                    stale: c.stale,
                    blocked: c.blocked,
                    run: c.run(),
                }
            })
            .collect();
        let targets = Targets(plan);
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("pipeline", &plan.pipeline)?;
        map.serialize_entry("store", &plan.store)?;
        map.serialize_entry("steps", &steps)?;
        map.serialize_entry("targets", &targets)?;
        map.serialize_entry("stats", &plan.stats)?;
        map.end()
    }
}

struct Targets<'a>(&'a Plan);

impl Serialize for Targets<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let plan = self.0;
        serializer.collect_seq(plan.targets.iter().filter(|t| t.selected).map(|t| TargetJson {
            target: &t.name,
            step: &plan.steps[t.step].name,
            shard: &t.shard,
            key: &t.key,
            action: t.action,
            reason: t.reason.as_deref(),
            inputs: t.inputs.iter().map(|&i| plan.targets[i].name.as_str()).collect(),
            source: t.source.as_ref().map(|f| SourceJson { path: &f.display, size: f.size, blake3: &f.blake3 }),
        }))
    }
}
