//! Which weights a step uses, and their identity for the key: a local folder's files by blake3, or a Hub
//! model by the commit its cached snapshot is at. The identity is computed at plan time (through the stat
//! cache, so an unchanged model is not read again) and checked again by the worker before it loads.

use crate::clip::{self, format, hub};
use crate::util::hash_file;
use crate::util::stat_cache::StatCache;
use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

pub enum ModelSource {
    /// `model_path`: a folder; `shown` is the setting as written.
    Local { dir: PathBuf, shown: String },
    /// `model`: an all-clip name and the repository it maps to.
    Hub { name: String, repo: String },
}

impl ModelSource {
    pub fn from_settings(model: Option<&str>, model_path: Option<&str>, base_dir: &Path) -> anyhow::Result<Self> {
        match (model, model_path) {
            (_, Some(path)) => Ok(ModelSource::Local { dir: base_dir.join(path), shown: path.to_string() }),
            (name, None) => {
                let name = name.unwrap_or(hub::DEFAULT_MODEL);
                let repo = hub::repo_for(name).map_err(anyhow::Error::msg)?;
                Ok(ModelSource::Hub { name: name.to_string(), repo })
            }
        }
    }

    /// The identity that goes into every part's key.
    pub fn identity(&self, stat_cache: &StatCache) -> anyhow::Result<Value> {
        match self {
            ModelSource::Local { dir, shown } => {
                // The files of the folder's format (Hugging Face's or open_clip's), by name.
                let names = format::model_files(dir).with_context(|| format!("model_path `{shown}`"))?;
                let mut files = Map::new();
                for name in names {
                    let hash = stat_cache.identity(&dir.join(&name))?.blake3;
                    files.insert(name, Value::String(hash));
                }
                Ok(Value::Object(files))
            }
            ModelSource::Hub { name, repo } => {
                let snapshot = hub::resolve(repo).with_context(|| format!("model `{name}`"))?;
                Ok(json!({ "repo": snapshot.repo, "commit": snapshot.commit }))
            }
        }
    }

    /// The folder to load for a job whose key recorded `identity`; fails if the weights are no longer those.
    pub fn folder_for(&self, identity: &Value) -> anyhow::Result<PathBuf> {
        match self {
            ModelSource::Local { dir, shown } => {
                let names = format::model_files(dir).with_context(|| format!("model_path `{shown}`"))?;
                let recorded = identity.as_object().map_or(0, Map::len);
                if names.len() != recorded {
                    bail!(
                        "the files of model_path `{shown}` ({}) changed since the plan was made: plan again",
                        dir.display()
                    );
                }
                for name in names {
                    let path = dir.join(&name);
                    let now = hash_file(&path)?;
                    if identity.get(&name).and_then(Value::as_str) != Some(now.as_str()) {
                        bail!("{} (model_path `{shown}`) changed since the plan was made: plan again", path.display());
                    }
                }
                Ok(dir.clone())
            }
            ModelSource::Hub { name, repo } => {
                let commit =
                    identity.get("commit").and_then(Value::as_str).context("the job records no model commit")?;
                let cache = hub::cache_dir().context("cannot find the Hugging Face cache: set HF_HOME or HOME")?;
                let dir = hub::snapshot_dir(&cache, repo, commit);
                let missing: Vec<&str> = clip::MODEL_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
                if !missing.is_empty() {
                    bail!(
                        "model `{name}`: {repo} at commit {commit} is not in the Hugging Face cache here ({} lacks {})",
                        dir.display(),
                        missing.join(", ")
                    );
                }
                Ok(dir)
            }
        }
    }
}
