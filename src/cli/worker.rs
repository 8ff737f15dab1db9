//! `dsmake worker JOB`: build one target from its serialised job and print its manifest.

use super::EXIT_OK;
use crate::exec::worker;
use crate::kinds::Cancel;
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
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<i32> {
    let text = if args.job == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the job from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.job).with_context(|| format!("cannot read job file {}", args.job))?
    };
    let job: crate::exec::job::Job = serde_json::from_str(&text).context("invalid job description")?;
    let store = crate::store::open(args.store.as_deref().unwrap_or(&job.store), &Default::default())?;
    let outcome = worker::run_json(&text, &*store, &Cancel::default())
        .with_context(|| format!("target {} failed", job.target))?;
    println!("{}", serde_json::to_string_pretty(&outcome.manifest)?);
    Ok(EXIT_OK)
}
