//! `dsmake worker JOB`: build one target from its serialised job and print its manifest.

use super::Error;
use crate::exec::worker;
use crate::kind::{Cancel, MemoryBudget};
use anyhow::Context;
use clap::Args;
use std::io::Read;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The job file (JSON), or `-` for standard input.
    job: String,
    /// Open this store instead of the one the job names (the same data seen through another path or URL).
    #[arg(long)]
    store: Option<String>,
    /// This worker's memory budget (e.g. 512MiB); default: a quarter of the memory available, at most 128 MiB
    /// per core. Decodes run on at most one thread per core.
    #[arg(long, value_name = "SIZE", env = "DSMAKE_MEMORY", value_parser = super::build::parse_size, long_help = super::build::MEMORY_HELP)]
    memory: Option<u64>,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let text = if args.job == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the job from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.job).with_context(|| format!("cannot read job file {}", args.job))?
    };
    let mut job: crate::exec::job::Job = serde_json::from_str(&text).context("invalid job description")?;
    // One retry budget for this target's store requests and downloads; the scheduler's task retries come on top.
    let _budget = crate::retry::Budget::new(crate::retry::RetryPolicy::DEFAULT).enter();
    let store = crate::store::open(args.store.as_deref().unwrap_or(&job.store), &Default::default())?;
    // A remote run's job may name inputs that the same run built first: read them from their manifests.
    let text = if job.inputs.iter().any(|i| i.pending.is_some()) {
        crate::exec::remote::resolve_pending(&mut job, &*store)?;
        serde_json::to_string(&job)?
    } else {
        text
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = match args.memory {
        Some(bytes) => MemoryBudget::new(bytes, cores),
        None => MemoryBudget::default_for(cores),
    };
    let outcome = match worker::run_json(&text, &*store, &Cancel::default(), &memory) {
        Ok(outcome) => outcome,
        // Remote schedulers retry a task that exits with EX_TEMPFAIL (a network or store hiccup).
        Err(e) if crate::retry::is_transient(&e) => {
            let e = e.context(format!("target {} failed with a transient error", job.target));
            return Err(Error::Transient(e).into());
        }
        Err(e) => return Err(e.context(format!("target {} failed", job.target))),
    };
    println!("{}", serde_json::to_string_pretty(&outcome.manifest)?);
    Ok(())
}
