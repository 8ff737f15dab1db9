//! Finding pipeline and remote files, and opening what a command needs: the parsed pipeline, the store, the
//! stat cache.

use super::{PipelineArgs, UsageError};
use crate::pipeline::{self, Pipeline};
use crate::plan::{PlanOptions, stat_cache::StatCache};
use crate::remote::Remote;
use crate::store::{self, Store, s3::S3Options};
use std::path::{Path, PathBuf};
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

/// `$DSMAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/dsmake`, else `~/.cache/dsmake`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSMAKE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("dsmake")
}

/// A path to a file, or a name looked up as `FOLDER/NAME.toml` here and in each parent folder (as cargo
/// finds Cargo.toml).
pub fn find_named_file(folder: &str, what: &str, arg: &str) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if arg.contains('/') || arg.ends_with(".toml") {
        return Err(UsageError(format!("{what} file `{arg}` does not exist")).into());
    }
    let cwd = std::env::current_dir()?;
    let mut searched = Vec::new();
    for dir in cwd.ancestors() {
        let candidate = dir.join(folder).join(format!("{arg}.toml"));
        if candidate.is_file() {
            return Ok(candidate);
        }
        if dir.join(folder).is_dir() {
            searched.push(dir.join(folder));
        }
    }
    let known: Vec<String> = searched
        .iter()
        .flat_map(|f| std::fs::read_dir(f).into_iter().flatten().flatten())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        .collect();
    let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let hint = if known.is_empty() {
        format!("no {folder}/ folder here or above; pass a path to a .toml file")
    } else {
        crate::pipeline::suggest::help_for(arg, what, &known_refs)
    };
    Err(UsageError(format!("no {what} `{arg}` ({hint})")).into())
}
