//! `dsmake worker`: builds one target from its job, in a scratch folder, then publishes the outputs and,
//! last, the manifest. Local and remote builds both come through here.

use super::job::{FORMAT, Job, JobFile};
use crate::kind::Cancelled;
use crate::kind::{BuildCx, Cancel, LocalInput};
use crate::kinds;
use crate::store::manifest::{self, Manifest, OutputFile};
use crate::store::{ObjectMeta, Store, join, manifest_path};
use crate::util::hash_file;
use anyhow::{Context, anyhow, bail};
use rayon::prelude::*;
use std::path::Path;
use std::time::{Instant, SystemTime};

pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_meta: ObjectMeta,
}

/// Parses a serialised job and builds it.
pub fn run_json(job: &str, store: &dyn Store, cancel: &Cancel) -> anyhow::Result<Outcome> {
    let job: Job = serde_json::from_str(job).context("invalid job description")?;
    if job.job_format != FORMAT {
        bail!(
            "job format {} is not {FORMAT}: the worker and the planner are different dsmake versions",
            job.job_format
        );
    }
    run(&job, store, cancel)
}

pub fn run(job: &Job, store: &dyn Store, cancel: &Cancel) -> anyhow::Result<Outcome> {
    let kind = kinds::lookup(&job.key_parts.kind)
        .ok_or_else(|| anyhow!("unknown step kind `{}` in job for {}", job.key_parts.kind, job.target))?;
    if kind.version() != job.key_parts.kind_version {
        bail!(
            "kind `{}` is version {} here but the job wants {}: use the same dsmake for planning and work",
            kind.name(),
            kind.version(),
            job.key_parts.kind_version
        );
    }
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let scratch = super::scratch::Scratch::new(&store.scratch_root())?;
    let (out_dir, work_dir, in_dir) =
        (scratch.path().join("out"), scratch.path().join("work"), scratch.path().join("in"));
    for dir in [&out_dir, &work_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let inputs = job
        .inputs
        .iter()
        .map(|input| {
            let files = input
                .files
                .iter()
                .enumerate()
                .map(|(n, file)| local_file(store, file, &in_dir, n))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("input {}", input.target))?;
            Ok(LocalInput { target: input.target.clone(), shard: input.shard.clone(), files, rows: input.rows })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let previous_dir = scratch.path().join("previous");
    let previous = match &job.retry {
        Some(retry) => retry
            .previous
            .iter()
            .enumerate()
            .map(|(n, file)| local_file(store, file, &previous_dir, n))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("the last build of {}", job.target))?,
        None => Vec::new(),
    };

    let cx = BuildCx {
        pipeline: &job.pipeline,
        step: &job.step,
        shard: &job.shard,
        target: &job.target,
        coords: &job.key_parts.coords,
        base_dir: &job.base_dir,
        allow_hosts: &job.allow_hosts,
        inputs,
        out_dir: &out_dir,
        work_dir: &work_dir,
        cancel,
        previous,
    };
    let built = kind.build(&job.key_parts.settings, &cx)?;
    if cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
    let outputs: Vec<OutputFile> = built
        .outputs
        .par_iter()
        .map(|name| {
            let path = out_dir.join(name);
            let size =
                std::fs::metadata(&path).with_context(|| format!("declared output `{name}` was not written"))?.len();
            Ok(OutputFile { name: name.clone(), size, blake3: hash_file(&path)? })
        })
        .collect::<anyhow::Result<_>>()?;
    // An old manifest would vouch for outputs while they are being replaced: remove it before they are. (Not
    // earlier: a build that fails leaves the last one standing.)
    let manifest_at = manifest_path(&job.dir, &job.shard);
    store.delete(&manifest_at)?;
    for output in &outputs {
        if cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        store.publish(&out_dir.join(&output.name), &join(&job.dir, &output.name))?;
    }

    let manifest = Manifest {
        manifest_format: manifest::FORMAT,
        target: job.target.clone(),
        key: job.key.clone(),
        key_parts: job.key_parts.clone(),
        outputs,
        rows: built.rows,
        failures: built.failures,
        retryable: built.retryable,
        retry: job.retry.as_ref().map(|r| r.of.clone()),
        stats: built.stats,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        dsmake_version: env!("CARGO_PKG_VERSION").to_string(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    match store.write_if_absent(&manifest_at, &bytes)? {
        Some(manifest_meta) => Ok(Outcome { manifest, manifest_meta }),
        None => adopt_concurrent(store, job, &manifest_at),
    }
}

/// Another build published this target while this one ran. With the same key its outputs are the ones this
/// build would make, so its manifest stands; with another key, two different pipelines share a folder.
fn adopt_concurrent(store: &dyn Store, job: &Job, manifest_at: &str) -> anyhow::Result<Outcome> {
    let listed = store.list(&format!("{}/{}", job.dir, crate::store::META_DIR))?;
    let meta = listed.into_iter().find(|m| m.path == manifest_at);
    let bytes = store.read(manifest_at)?;
    match (meta, bytes) {
        (Some(manifest_meta), Some(bytes)) => {
            let manifest = Manifest::parse(&bytes, manifest_at)?;
            if manifest.key != job.key {
                bail!(
                    "{} was published by another build with a different key: two pipelines write to {}",
                    job.target,
                    job.dir
                );
            }
            Ok(Outcome { manifest, manifest_meta })
        }
        _ => bail!("{} was published and removed by another build while this one ran", job.target),
    }
}

fn local_file(store: &dyn Store, file: &JobFile, in_dir: &Path, n: usize) -> anyhow::Result<std::path::PathBuf> {
    match file {
        JobFile::Local(path) => Ok(path.clone()),
        JobFile::Store(path) => match store.local_path(path) {
            Some(local) => Ok(local),
            None => {
                std::fs::create_dir_all(in_dir)?;
                let name = path.rsplit('/').next().unwrap_or("input");
                let dest = in_dir.join(format!("{n}-{name}"));
                store.fetch(path, &dest)?;
                Ok(dest)
            }
        },
    }
}

/// Removes scratch folders left by workers that no longer run (a build killed with -9); see `exec::scratch`.
pub fn clean_abandoned_scratch(store: &dyn Store) {
    super::scratch::clean_abandoned(&store.scratch_root());
}
