//! `dsmake status`: per step, what the store holds — fresh, stale, missing, sizes, rows and failures.

use super::workspace::Workspace;
use super::{Format, Output, PipelineArgs};
use crate::plan::render::step_counts;
use crate::plan::{Action, Plan};
use clap::Args;
use indicatif::HumanBytes;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct StepStatus {
    step: String,
    kind: &'static str,
    dir: String,
    targets: Option<usize>,
    unknown: Option<String>,
    /// Its shards cannot be found from what is here (see `unknown`).
    unavailable: bool,
    fresh: usize,
    stale: usize,
    missing: usize,
    bytes: u64,
    rows: u64,
    failures: u64,
    /// failures ÷ rows over fresh targets that count rows.
    failure_rate: Option<f64>,
    last_built: Option<String>,
}

fn summarize(plan: &Plan) -> Vec<StepStatus> {
    plan.steps
        .iter()
        .enumerate()
        .map(|(s, step)| {
            let counts = step_counts(plan, s);
            let fresh: Vec<_> = step
                .targets
                .clone()
                .filter(|&t| plan.targets[t].selected && plan.targets[t].action == Action::Fresh)
                .filter_map(|t| plan.record(t))
                .collect();
            // A blocked target counts as stale when the store has an old version of it, else as missing.
            let blocked: Vec<usize> = step
                .targets
                .clone()
                .filter(|&t| plan.targets[t].selected && plan.targets[t].action == Action::Blocked)
                .collect();
            let rows: u64 = fresh.iter().filter_map(|r| r.rows()).sum();
            let failures: u64 = fresh.iter().filter_map(|r| r.failures()).sum();
            let source_bytes: u64 =
                plan.targets[step.targets.clone()].iter().filter_map(|t| t.source.as_ref().map(|f| f.size)).sum();
            StepStatus {
                step: step.name.clone(),
                kind: step.kind,
                dir: step.dir.clone(),
                targets: step.unknown.is_none().then(|| counts.source + counts.fresh + counts.run()),
                unknown: step.unknown.clone(),
                unavailable: step.unavailable,
                fresh: counts.fresh + counts.source,
                stale: counts.stale + blocked.iter().filter(|&&t| plan.record(t).is_some()).count(),
                missing: counts.missing + blocked.iter().filter(|&&t| plan.record(t).is_none()).count(),
                bytes: fresh.iter().map(|r| r.bytes()).sum::<u64>() + source_bytes,
                rows,
                failures,
                failure_rate: (rows > 0).then(|| failures as f64 / rows as f64),
                last_built: fresh.iter().map(|r| r.started_at()).max().map(str::to_string),
            }
        })
        .collect()
}

pub fn status(args: StatusArgs, _out: Output) -> anyhow::Result<()> {
    let mut workspace = Workspace::open(&args.pipeline)?;
    // What the store holds needs neither the network nor a model: steps that cannot be planned from what is
    // here are shown as such.
    workspace.plan_options.local_only = true;
    let plan = workspace.plan()?;
    let steps = summarize(&plan);
    if args.format == Format::Json {
        let value = serde_json::json!({ "pipeline": plan.pipeline, "store": plan.store, "steps": steps });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("Status of {} (store: {})", plan.pipeline, plan.store);
    let width = steps.iter().map(|s| s.step.len()).max().unwrap_or(4).max(4);
    println!(
        "  {:<width$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>10}  {:>9}  {:>8}  last built",
        "step", "targets", "fresh", "stale", "missing", "size", "rows", "failed"
    );
    for s in &steps {
        let targets = s.targets.map_or("?".to_string(), |n| n.to_string());
        let failed = s.failure_rate.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        let rows = if s.rows > 0 { s.rows.to_string() } else { "-".to_string() };
        println!(
            "  {:<width$}  {targets:>7}  {:>7}  {:>7}  {:>7}  {:>10}  {rows:>9}  {failed:>8}  {}",
            s.step,
            s.fresh,
            s.stale,
            s.missing,
            HumanBytes(s.bytes).to_string(),
            s.last_built.as_deref().unwrap_or("-")
        );
    }
    for s in steps.iter().filter(|s| s.unknown.is_some()) {
        let state = if s.unavailable { "unavailable" } else { "not known yet" };
        println!("  {}: {state}: {}", s.step, s.unknown.as_deref().unwrap_or_default());
    }
    Ok(())
}
