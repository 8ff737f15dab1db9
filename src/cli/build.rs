//! `dsmake build` and `dsmake plan`.

use super::workspace::Workspace;
use super::{Error, Format, Output, PipelineArgs};
use crate::exec::{self, BuildOptions, Summary};
use crate::plan::render;
use clap::Args;
use indicatif::HumanBytes;
use std::io::Write;

const RETRIES_HELP: &str = "Each target's retry budget: how many times, in all, transient errors (a reset \
connection, a timeout, HTTP 429 or 5xx, S3 SlowDown) are retried while it is built.

Every layer that retries draws on this one count: each store request, each part of an upload, each Hub \
download, and the target as a whole. A target retried after a store failure gets no fresh store retries, so \
no request is sent more than N + 1 times per target. Waits double from 0.25 s up to 30 s, with jitter. \
Errors that another attempt cannot fix (a 404, a refused token, a corrupt file) are not retried. Store \
requests made outside a target (planning, the build lease) get a default budget each. With --remote, each \
worker task has a default budget, and the scheduler's task retries come on top. img2dataset's `retries` \
setting is per image, apart from this budget.";

pub(super) const MEMORY_HELP: &str = "The build's memory budget, one for all the targets it runs at once \
(e.g. 512MiB, 2G; also DSMAKE_MEMORY).

Downloaded bodies waiting to be decoded and the pixels of images being decoded count against it, and decodes \
run on at most -j threads for the whole build, not per target. Work waits for room rather than going over; an \
image larger than the whole budget still goes ahead, alone, so a build never stalls. Default: a quarter of the \
memory available to dsmake (within its cgroup's limit), at most 64 MiB per core, at least 64 MiB. The summary \
(`--format json`: `memory`) says how much of it the build used at most. It bounds what kinds buffer, not the \
process: add some tens of megabytes for threads, connections and the plan.";

/// `--memory`'s values.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    crate::util::memory::parse_size(text).map_err(|e| format!("{e:#}"))
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// CPU-bound targets at once (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Network-bound targets at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    net_jobs: usize,
    /// The build's memory budget, for all its targets together: bodies downloaded and images being decoded
    /// (e.g. 512MiB, 2G). Default: a quarter of the memory available, at most 64 MiB per core.
    #[arg(long, value_name = "SIZE", env = "DSMAKE_MEMORY", value_parser = parse_size, long_help = MEMORY_HELP)]
    memory: Option<u64>,
    /// Keep building what does not depend on a failed target.
    #[arg(short, long)]
    keep_going: bool,
    /// Each target's retry budget: transient errors (network, store, Hub) retried at most N times in all.
    #[arg(long, value_name = "N", default_value_t = crate::retry::RetryPolicy::DEFAULT.retries, long_help = RETRIES_HELP)]
    retries: u32,
    /// Print the plan and build nothing (same as `dsmake plan`).
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Summary format (`json` prints the plan as JSON with --dry-run).
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Exit 4 when any target would be built (for scripts and CI).
    #[arg(long)]
    check: bool,
}

pub fn plan(args: PlanArgs, out: Output) -> anyhow::Result<()> {
    let workspace = Workspace::open(&args.pipeline)?;
    let plan = workspace.plan()?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut stdout, &render::json(&plan))?;
            writeln!(stdout)?;
        }
        Format::Human => render::table(&mut stdout, &plan, out.verbose)?,
    }
    stdout.flush()?;
    let targets = plan.to_run().count();
    let pending = targets > 0 || plan.has_unknown();
    let unavailable: Vec<(String, String)> =
        plan.unavailable().into_iter().map(|(step, why)| (step.to_string(), why.to_string())).collect();
    crate::exec::dispose((plan, workspace));
    if !unavailable.is_empty() {
        return Err(Error::Unavailable { steps: unavailable }.into());
    }
    if args.check && pending {
        return Err(Error::WouldBuild { targets }.into());
    }
    Ok(())
}

pub fn build(args: BuildArgs, out: Output) -> anyhow::Result<()> {
    if args.dry_run {
        return plan(PlanArgs { pipeline: args.pipeline, format: args.format, check: false }, out);
    }
    let workspace = Workspace::open(&args.pipeline)?;
    let options = BuildOptions {
        jobs: args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        net_jobs: args.net_jobs,
        memory: args.memory,
        keep_going: args.keep_going,
        retries: args.retries,
        progress: out.terminal && !out.quiet && args.format == Format::Human,
        verbose: out.verbose,
    };
    let summary = match super::remote::executor(&workspace, args.pipeline.profile.as_deref())? {
        None => exec::build(
            &workspace.pipeline,
            workspace.store.clone(),
            &workspace.stat_cache,
            &workspace.plan_options,
            &options,
        )?,
        Some(mut executor) => exec::remote::build(
            &workspace.pipeline,
            workspace.store.clone(),
            &workspace.stat_cache,
            &workspace.plan_options,
            &options,
            &mut *executor,
        )?,
    };
    crate::exec::dispose(workspace);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Format::Human if !out.quiet || !summary.failed.is_empty() || !summary.unavailable.is_empty() => {
            eprintln!("{}", describe(&summary))
        }
        Format::Human => {}
    }
    if summary.interrupted {
        Err(Error::Interrupted.into())
    } else if !summary.failed.is_empty() {
        Err(Error::TargetsFailed { failed: summary.failed.len() }.into())
    } else if !summary.unavailable.is_empty() {
        let steps = summary.unavailable.iter().map(|u| (u.step.clone(), u.reason.clone())).collect();
        Err(Error::Unavailable { steps }.into())
    } else {
        Ok(())
    }
}

fn describe(s: &Summary) -> String {
    let mut text = format!(
        "{} {} targets, {} fresh, {} failed",
        if s.interrupted { "Interrupted after building" } else { "Built" },
        s.built,
        s.fresh,
        s.failed.len()
    );
    if s.not_run > 0 {
        text.push_str(&format!(", {} not run", s.not_run));
    }
    text.push_str(&format!(" in {:.2}s ({} written", s.seconds, HumanBytes(s.bytes_written)));
    text.push_str(&format!(", {} source files hashed", s.sources_hashed));
    // Only when a kind used the budget: most builds buffer nothing.
    if let Some(m) = s.memory.as_ref().filter(|m| m.peak_bytes > 0) {
        text.push_str(&format!(
            ", memory budget {} of {} at most",
            HumanBytes(m.peak_bytes),
            HumanBytes(m.budget_bytes)
        ));
    }
    text.push(')');
    if !s.unavailable.is_empty() {
        text.push_str("\nUnavailable:");
        for u in &s.unavailable {
            text.push_str(&format!("\n  {}: {}", u.step, u.reason));
        }
        text.push_str("\nWith --keep-going, everything that does not read them is built; --target builds one part.");
    }
    if !s.failed.is_empty() {
        text.push_str("\nFailed:");
        for f in &s.failed {
            text.push_str(&format!("\n  {}", f.target));
        }
        text.push_str("\nFixed the cause? Run the same command again: finished targets are kept.");
    }
    text
}
