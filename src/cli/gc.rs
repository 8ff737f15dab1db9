//! `dsmake gc`: files in the pipeline's store folders that no target of the current plan owns (outputs of
//! shards that no longer exist, steps that were removed, temporaries of killed builds). Deletes only with --yes.

use super::workspace::Workspace;
use super::{Output, PipelineArgs};
use crate::store::step_state::StepState;
use crate::store::{META_DIR, join, manifest_path};
use clap::Args;
use indicatif::HumanBytes;
use std::collections::HashSet;

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Delete what is listed.
    #[arg(long)]
    yes: bool,
    /// Also abort unfinished multipart uploads (S3) under the pipeline's folders.
    #[arg(long)]
    uploads: bool,
    /// With --uploads: only uploads started at least this many hours ago (a running build's are younger).
    #[arg(long, value_name = "HOURS", default_value_t = 24.0)]
    older_than: f64,
}

pub fn gc(args: GcArgs, out: Output) -> anyhow::Result<()> {
    let workspace = Workspace::open(&args.pipeline)?;
    let plan = workspace.plan()?;
    let store = &*workspace.store;

    let mut owned: HashSet<String> = HashSet::new();
    let mut folders: Vec<String> = vec![plan.pipeline.clone()];
    let mut unknown_dirs = Vec::new();
    for step in plan.steps.iter().filter(|s| !s.source) {
        folders.push(step.dir.clone());
        if step.unknown.is_some() {
            unknown_dirs.push(format!("{}/", step.dir));
            continue;
        }
        owned.insert(format!("{}/{META_DIR}/{}", step.dir, StepState::index_name()));
        for t in step.targets.clone() {
            owned.insert(manifest_path(&step.dir, &plan.targets[t].shard));
            for output in plan.record(t).iter().flat_map(|r| &r.outputs) {
                owned.insert(join(&step.dir, &output.name));
            }
        }
    }
    folders.sort();
    folders.dedup();

    let mut orphans = Vec::new();
    let mut seen = HashSet::new();
    for folder in &folders {
        for object in store.list(folder)? {
            let kept = owned.contains(&object.path) || unknown_dirs.iter().any(|d| object.path.starts_with(d));
            if !kept && seen.insert(object.path.clone()) {
                orphans.push(object);
            }
        }
    }
    orphans.sort_by(|a, b| a.path.cmp(&b.path));
    let bytes: u64 = orphans.iter().map(|o| o.size).sum();
    for orphan in &orphans {
        if args.yes {
            store.delete(&orphan.path)?;
        }
        if !out.quiet {
            println!("{}{}", if args.yes { "deleted " } else { "" }, orphan.path);
        }
    }
    if args.uploads {
        let age = std::time::Duration::from_secs_f64(args.older_than.max(0.0) * 3600.0);
        let mut aborted = 0;
        for folder in &folders {
            for path in store.abort_stale_uploads(folder, age)? {
                println!("aborted upload {path}");
                aborted += 1;
            }
        }
        eprintln!("Aborted {aborted} unfinished uploads older than {}h.", args.older_than);
    }
    for dir in &unknown_dirs {
        eprintln!("note: kept everything under {dir}: its targets are not known until its inputs are built");
    }
    match (orphans.len(), args.yes) {
        (0, _) => eprintln!("Nothing to collect: every file belongs to a target of the plan."),
        (n, true) => eprintln!("Deleted {n} files ({}).", HumanBytes(bytes)),
        (n, false) => {
            eprintln!("{n} files ({}) belong to no target; run again with --yes to delete them.", HumanBytes(bytes))
        }
    }
    Ok(())
}
