//! `dsmake copy PIPELINE --to STORE`: moves a pipeline's built targets between stores (local → S3, S3 →
//! local, bucket → bucket) without rebuilding: for every target fresh in the source store and not fresh
//! in the destination, its outputs are copied, then its manifest, last, as a build would publish them.

use super::workspace::Workspace;
use super::{Output, PipelineArgs};
use crate::plan::{self, Action};
use crate::store::manifest::Manifest;
use crate::store::{self, ReadLimit, Store, join, manifest_path};
use anyhow::Context;
use clap::Args;
use indicatif::HumanBytes;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Args, Debug)]
pub struct CopyArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The destination store: a folder, file:///path or s3://bucket/prefix.
    #[arg(long, value_name = "STORE")]
    to: String,
}

pub fn copy(args: CopyArgs, out: Output) -> anyhow::Result<()> {
    let workspace = Workspace::open(&args.pipeline)?;
    let from = &*workspace.store;
    let to = store::open(&args.to, &store::s3::S3Options::default())?;
    let dirs: Vec<&str> =
        workspace.pipeline.steps.iter().filter(|s| !s.kind.is_source()).map(|s| s.dir.as_str()).collect();
    let _locks = store::lock_pipeline(&*to, &workspace.pipeline.name, &dirs)?;
    let source = workspace.plan()?;
    let destination = plan::make(&workspace.pipeline, &*to, &workspace.stat_cache, &workspace.plan_options)?;

    let wanted: Vec<usize> = (0..source.targets.len())
        .filter(|&t| source.targets[t].selected && source.targets[t].action == Action::Fresh)
        .filter(|&t| destination.targets.get(t).is_some_and(|d| d.key == source.targets[t].key && d.action.runs()))
        .collect();
    let bytes = AtomicU64::new(0);
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    wanted.par_iter().try_for_each(|&t| {
        let target = &source.targets[t];
        let dir = &workspace.pipeline.steps[target.step].dir;
        let record = source.record(t).context("a fresh target has a manifest")?;
        let manifest_at = manifest_path(dir, target.shard());
        let bytes_of =
            from.read(&manifest_at, ReadLimit::MANIFEST)?.with_context(|| format!("{manifest_at} vanished"))?;
        let mut manifest = Manifest::parse(&bytes_of, &manifest_at)?;
        if manifest.key != record.key().to_string() {
            anyhow::bail!("{manifest_at} was rebuilt while copying: copy again");
        }
        to.delete(&manifest_at)?;
        let record_versions = to.versions_identify_content();
        for output in &mut manifest.outputs {
            let path = join(dir, &output.name);
            let copied = copy_object(from, &*to, &path, output.size, scratch.path())
                .with_context(|| format!("copying {path} of {}", target.name))?;
            // The versions this store lists, not the source's (a multipart upload's ETag depends on its parts).
            output.version = if record_versions { copied.version } else { String::new() };
            bytes.fetch_add(output.size, Ordering::Relaxed);
        }
        to.write_if_absent(&manifest_at, &serde_json::to_vec_pretty(&manifest)?)?;
        if out.verbose {
            eprintln!("copied {}", target.name);
        }
        anyhow::Ok(())
    })?;
    if !out.quiet {
        let fresh = destination.targets.iter().filter(|t| t.selected && t.action == Action::Fresh).count();
        eprintln!(
            "Copied {} targets ({}) to {}; {fresh} were fresh there already.",
            wanted.len(),
            HumanBytes(bytes.load(Ordering::Relaxed)),
            to.url()
        );
    }
    crate::exec::dispose((source, destination, workspace));
    Ok(())
}

/// Copies one object through a local file (or straight from the local store's file).
fn copy_object(
    from: &dyn Store,
    to: &dyn Store,
    path: &str,
    size: u64,
    scratch: &std::path::Path,
) -> anyhow::Result<store::ObjectMeta> {
    let temp = scratch.join(format!("{}-{}", fastrand::u64(..), path.rsplit('/').next().unwrap_or("object")));
    match from.local_path(path) {
        // publish() may move its input: copy the local store's file first.
        Some(local) => {
            std::fs::copy(&local, &temp).with_context(|| format!("cannot read {}", local.display()))?;
        }
        None => from.fetch(path, &temp, size)?,
    }
    let published = to.publish(&temp, path);
    let _ = std::fs::remove_file(&temp);
    published
}
