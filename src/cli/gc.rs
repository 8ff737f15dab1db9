//! `dsmake gc`: files in the pipeline's store folders that no target of the current plan owns (outputs of
//! shards that no longer exist, steps that were removed, temporaries of killed builds). Deletes only with --yes.
//!
//! gc takes the same lock (local) or lease (S3) as a build, of the pipeline and of each step folder, and waits
//! while a build holds it: a build publishes outputs before their manifest, so a listing taken mid-build would
//! call them orphans. Waiting (rather than refusing) means `build & gc` in a script just runs in order. As git
//! does with loose objects, a temporary younger than [`TEMP_GRACE`] is kept anyway: a writer that takes no lock
//! (an older dsmake) may still be filling it.

use super::workspace::Workspace;
use super::{Output, PipelineArgs};
use crate::store::step_state::StepState;
use crate::store::{META_DIR, Store, is_temporary, join, manifest_path};
use clap::Args;
use indicatif::HumanBytes;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// How long a temporary file is presumed to be in flight.
pub const TEMP_GRACE: Duration = Duration::from_secs(3600);

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
    let store = &*workspace.store;
    let dirs: Vec<&str> =
        workspace.pipeline.steps.iter().filter(|s| !s.kind.is_source()).map(|s| s.dir.as_str()).collect();
    // Planned under the lock: a plan made before a build ended would not own that build's outputs.
    let _locks = crate::store::lock_pipeline(store, &workspace.pipeline.name, &dirs)?;
    let plan = workspace.plan()?;

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
            owned.insert(manifest_path(&step.dir, plan.targets[t].shard()));
            for output in plan.record(t).iter().flat_map(|r| r.outputs()) {
                owned.insert(join(&step.dir, output.name));
            }
        }
    }
    folders.sort();
    folders.dedup();

    let mut orphans = Vec::new();
    let mut seen = HashSet::new();
    let mut young_temps = 0;
    for folder in &folders {
        for object in store.list(folder)? {
            let kept = owned.contains(&object.path) || unknown_dirs.iter().any(|d| object.path.starts_with(d));
            if !kept && is_temporary(&object.path) && young(store, &object.path) {
                young_temps += 1;
                continue;
            }
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
    if young_temps > 0 {
        eprintln!(
            "note: kept {young_temps} temporary files younger than {}s: a build may still be writing them",
            TEMP_GRACE.as_secs()
        );
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

/// Whether a temporary file was modified within [`TEMP_GRACE`]. Only local stores have temporaries (S3 puts
/// are atomic); one whose age cannot be read counts as young, so that doubt keeps the file.
fn young(store: &dyn Store, path: &str) -> bool {
    let Some(local) = store.local_path(path) else { return false };
    let modified = std::fs::metadata(local).and_then(|m| m.modified());
    match modified {
        Ok(at) => SystemTime::now().duration_since(at).map_or(true, |age| age < TEMP_GRACE),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[test]
    fn temporaries_within_the_grace_period_are_young() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().to_path_buf());
        std::fs::write(root.path().join(".dsmake-tmp-1-new"), "x").unwrap();
        let old = root.path().join(".dsmake-tmp-2-old");
        std::fs::write(&old, "x").unwrap();
        let then = SystemTime::now() - TEMP_GRACE - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(then).unwrap();
        assert!(young(&store, ".dsmake-tmp-1-new"));
        assert!(!young(&store, ".dsmake-tmp-2-old"));
        assert!(young(&store, ".dsmake-tmp-3-gone"), "an age that cannot be read keeps the file");
    }
}
