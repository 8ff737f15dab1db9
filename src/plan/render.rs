//! The plan for people (a table, then the reasons) and for programs (`--format json`).

use super::{Action, Plan, Target};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;

/// Up to this many stale targets, the table lists each with its reason; beyond, it groups them by reason.
const LISTED_REASONS: usize = 20;
/// Reason groups shown before `-v` is needed for the rest.
const LISTED_GROUPS: usize = 10;
/// Targets named as examples of a reason group.
const EXAMPLES: usize = 3;

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

/// Writes the table to `out` as it goes: with `-v` at 10⁶ targets, the listing is never one string.
pub fn table(out: &mut dyn Write, plan: &Plan, verbose: bool) -> std::io::Result<()> {
    writeln!(out, "Plan for {} (store: {})", plan.pipeline, plan.store)?;
    let width = plan.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    let kind_width = plan.steps.iter().map(|s| s.kind.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "  {:<width$}  {:<kind_width$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}",
        "step", "kind", "targets", "fresh", "missing", "stale", "blocked", "run"
    )?;
    let mut total = Counts::default();
    for (s, step) in plan.steps.iter().enumerate() {
        let c = step_counts(plan, s);
        if step.unavailable {
            writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  unavailable (below)", step.name, step.kind, "?")?;
            continue;
        }
        if let Some(why) = &step.unknown {
            writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  {why}", step.name, step.kind, "?")?;
            continue;
        }
        let shards = c.source + c.fresh + c.run();
        if step.source {
            writeln!(out, "  {:<width$}  {:<kind_width$}  {:>7}  (source files)", step.name, step.kind, shards)?;
        } else {
            writeln!(
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
            )?;
        }
        total.fresh += c.fresh;
        total.missing += c.missing;
        total.stale += c.stale;
        total.blocked += c.blocked;
    }

    if verbose {
        let listed: Vec<&Target> = plan.targets.iter().filter(|t| t.selected).collect();
        list_targets(out, "Targets:", &listed)?;
    } else {
        let listed: Vec<&Target> = plan
            .targets
            .iter()
            .filter(|t| t.selected && matches!(t.action, Action::Stale | Action::Blocked))
            .filter(|t| t.reason.as_deref().is_some_and(|r| r != "never built"))
            .collect();
        if listed.len() <= LISTED_REASONS {
            list_targets(out, "Stale:", &listed)?;
        } else {
            grouped_reasons(out, plan, &listed)?;
        }
    }
    let unavailable: Vec<_> = plan.steps.iter().filter(|s| s.unavailable).collect();
    if !unavailable.is_empty() {
        writeln!(out, "\nUnavailable (the steps that read them wait; everything else is planned):")?;
        for step in &unavailable {
            writeln!(out, "  {}: {}", step.name, step.unknown.as_deref().unwrap_or_default())?;
        }
    }
    let unknown = plan.steps.iter().filter(|s| s.unknown.is_some() && !s.unavailable && !s.after_unavailable).count();
    writeln!(out)?;
    match total.run() {
        0 if unknown == 0 && unavailable.is_empty() => {
            writeln!(out, "Nothing to do: {} targets are fresh.", total.fresh)?;
        }
        n => {
            write!(
                out,
                "{n} targets to build ({} missing, {} stale, {} waiting on inputs)",
                total.missing, total.stale, total.blocked
            )?;
            if unknown > 0 {
                write!(out, ", and {unknown} steps whose targets are known once their inputs are built")?;
            }
            if !unavailable.is_empty() {
                write!(out, ", and {} unavailable steps", unavailable.len())?;
            }
            writeln!(out, "; {} fresh.", total.fresh)?;
        }
    }
    Ok(())
}

/// Each target on a line of its own, with its action and reason.
fn list_targets(out: &mut dyn Write, title: &str, listed: &[&Target]) -> std::io::Result<()> {
    if listed.is_empty() {
        return Ok(());
    }
    writeln!(out, "\n{title}")?;
    let name_width = listed.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in listed {
        let action = t.action.name();
        let reason = t.reason.as_deref().unwrap_or("");
        writeln!(out, "  {:<name_width$}  {action:<7}  {reason}", t.name)?;
    }
    Ok(())
}

/// Many stale targets, read as a few reasons: per step and action, targets whose reasons differ only in
/// their own shard id or in numbers ("output 000017.txt is missing") form one group, shown with its count,
/// one reason and a few of its targets. The largest groups come first.
fn grouped_reasons(out: &mut dyn Write, plan: &Plan, listed: &[&Target]) -> std::io::Result<()> {
    struct Group<'a> {
        first: &'a Target,
        examples: Vec<&'a str>,
        count: usize,
        alike: bool,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut by_shape: HashMap<(usize, Action, String), usize> = HashMap::new();
    for &t in listed {
        let reason = t.reason.as_deref().unwrap_or("");
        let shape = (t.step, t.action, reason_shape(reason, t.shard()));
        let g = *by_shape.entry(shape).or_insert_with(|| {
            groups.push(Group { first: t, examples: Vec::new(), count: 0, alike: true });
            groups.len() - 1
        });
        let group = &mut groups[g];
        group.count += 1;
        group.alike &= group.first.reason.as_deref() == Some(reason);
        if group.examples.len() < EXAMPLES {
            group.examples.push(&t.name);
        }
    }
    // Stable: equal counts keep plan order.
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    writeln!(out, "\nStale: {} targets, by reason (each target with -v):", listed.len())?;
    for group in groups.iter().take(LISTED_GROUPS) {
        let t = group.first;
        let action = t.action.name();
        let like = if group.alike { "" } else { "like " };
        let reason = t.reason.as_deref().unwrap_or("");
        writeln!(out, "  {} {action} {}: {like}{reason}", group.count, plan.steps[t.step].name)?;
        let more = group.count - group.examples.len();
        let more = if more > 0 { format!(", … and {more} more") } else { String::new() };
        writeln!(out, "      {}{more}", group.examples.join(", "))?;
    }
    if groups.len() > LISTED_GROUPS {
        let rest: usize = groups[LISTED_GROUPS..].iter().map(|g| g.count).sum();
        writeln!(out, "  … and {} more reasons for {rest} targets (all with -v)", groups.len() - LISTED_GROUPS)?;
    }
    Ok(())
}

/// What a reason says once the target's own shard id and any numbers are taken out: reasons of one shape
/// are one group.
fn reason_shape(reason: &str, shard: &str) -> String {
    let without_shard = if shard.is_empty() { reason.to_string() } else { reason.replace(shard, "\u{0}") };
    let mut shape = String::with_capacity(without_shard.len());
    let mut in_number = false;
    for c in without_shard.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                shape.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            shape.push(c);
        }
    }
    shape
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
    key: &'a crate::util::digest::Digest,
    action: Action,
    reason: Option<&'a str>,
    inputs: Vec<&'a str>,
    source: Option<SourceJson<'a>>,
}

#[derive(Serialize)]
struct SourceJson<'a> {
    path: &'a str,
    size: u64,
    blake3: &'a crate::util::digest::Digest,
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
            shard: t.shard(),
            key: &t.key,
            action: t.action,
            reason: t.reason.as_deref(),
            inputs: t.inputs.iter().map(|&i| plan.targets[i].name.as_str()).collect(),
            source: t.source.as_ref().map(|f| SourceJson { path: &f.display, size: f.size, blake3: &f.blake3 }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::reason_shape;

    #[test]
    fn reasons_that_differ_in_their_shard_or_numbers_have_one_shape() {
        let a = reason_shape("output part_00017.tar is missing", "part_00017");
        assert_eq!(a, reason_shape("output part_00018.tar is missing", "part_00018"));
        assert_eq!(reason_shape("output part_1.tar is missing", "x"), "output part_#.tar is missing");
        assert_eq!(
            reason_shape("output a.txt changed size (12 → 0 bytes)", "a.txt"),
            "output \0 changed size (# → # bytes)"
        );
        assert_ne!(a, reason_shape("output part_00017.tar changed size (1 → 2 bytes)", "part_00017"));
        assert_ne!(
            reason_shape("settings.mode: \"upper\" → \"lower\"", "a"),
            reason_shape("settings.mode: \"x\" → \"y\"", "a")
        );
    }
}
