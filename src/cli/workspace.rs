//! Finding pipeline and remote files, and opening what a command needs: the parsed pipeline, the store, the
//! stat cache.

use super::PipelineArgs;
use crate::pipeline::{self, Pipeline};
use crate::plan::PlanOptions;
use crate::remote::Remote;
use crate::store::{self, Store, s3::S3Options};
use crate::util::stat_cache::StatCache;
use crate::util::{cache_dir, find_named_file};
use std::sync::Arc;

/// Where outputs go when neither `--store`, `DSMAKE_STORE` nor a remote says.
const DEFAULT_STORE: &str = "dsmake-store";

pub struct Workspace {
    pub pipeline: Pipeline,
    pub store: Arc<dyn Store>,
    pub stat_cache: StatCache,
    pub plan_options: PlanOptions,
    /// The remote file named with `--remote`, if any: its executor runs the build.
    pub remote: Option<Remote>,
}

impl Workspace {
    pub fn open(args: &PipelineArgs) -> anyhow::Result<Workspace> {
        let file = find_named_file("pipelines", "pipeline", &args.pipeline)?;
        let pipeline = pipeline::load(&file, &args.set)?;
        let remote =
            args.remote.as_deref().map(crate::remote::find).transpose()?.map(|f| Remote::load(&f)).transpose()?;
        // --store (or DSMAKE_STORE) wins over the remote's store, which wins over the default folder.
        let (url, s3) = match (&args.store, &remote) {
            (Some(url), _) => (url.clone(), S3Options::default()),
            (None, Some(remote)) => (remote.store.url.clone(), remote.store.s3()),
            (None, None) => (DEFAULT_STORE.to_string(), S3Options::default()),
        };
        let store = store::open(&url, &s3)?;
        let stat_cache = StatCache::open(cache_dir().join("stat-cache.json"));
        let plan_options = PlanOptions {
            targets: args.target.clone(),
            force: args.force.clone(),
            retry_failed: args.retry_failed.clone(),
            allow_hosts: args.allow_host.clone(),
            built_this_run: Default::default(),
            local_only: false,
        };
        Ok(Workspace { pipeline, store, stat_cache, plan_options, remote })
    }

    pub fn plan(&self) -> anyhow::Result<crate::plan::Plan> {
        let plan = crate::plan::make(&self.pipeline, &*self.store, &self.stat_cache, &self.plan_options)?;
        if let Err(e) = self.stat_cache.save() {
            eprintln!("warning: {e:#}");
        }
        Ok(plan)
    }
}
