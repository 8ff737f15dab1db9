//! Which weights a step uses, and their identity for the key. The weights are an input of the DAG, as an
//! hf-dataset's files are: a Hub model is pinned when the plan is made (its revision resolved to a commit,
//! listed with each file's LFS sha256 and the last commit that changed it), and that identity, not whatever a
//! local cache holds, goes into every part's key. A local folder (`model_path`) is identified by the blake3 of
//! its files. The worker gets the files the identity names by itself ([`super::weights`]).

use super::weights;
use crate::clip::names::{self, Format, ModelName};
use crate::kinds::hub::{self, HubFile, Listing, Repo};
use crate::util::stat_cache::StatCache;
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub enum ModelSource {
    /// `model_path`: a folder; `shown` is the setting as written.
    Local { dir: PathBuf, shown: String },
    /// `model` (an all-clip name) at `model_revision`.
    Hub { model: ModelName, revision: String },
}

/// One file of a pinned model: what the worker downloads and checks, and the name it has in the model folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PinnedFile {
    /// Its name in the folder the model loads from.
    pub name: String,
    pub repo: String,
    pub path: String,
    /// The last commit that changed it: where it is downloaded from, and what a moved revision leaves alone.
    pub commit: String,
    /// The LFS sha256, or the git blob id of a small file kept in git.
    pub oid: String,
    pub size: u64,
    pub lfs: bool,
}

impl PinnedFile {
    fn new(name: &str, repo: &str, file: &HubFile, listing: &Listing) -> PinnedFile {
        PinnedFile {
            name: name.to_string(),
            repo: repo.to_string(),
            path: file.path.clone(),
            commit: file.last_commit.clone().unwrap_or_else(|| listing.commit.clone()),
            oid: file.oid.clone(),
            size: file.size,
            lfs: file.lfs,
        }
    }

    pub fn hub_file(&self) -> HubFile {
        HubFile {
            path: self.path.clone(),
            size: self.size,
            oid: self.oid.clone(),
            lfs: self.lfs,
            last_commit: Some(self.commit.clone()),
        }
    }
}

/// A Hub model's identity, as the key records it: everything the worker needs to get it, nothing else (the name
/// and revision are settings, in the key already; a revision that moves without changing these files changes
/// nothing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pinned {
    pub repo: String,
    pub files: Vec<PinnedFile>,
    /// open_clip's config for an `ARCH/TAG` name, written as `open_clip_config.json` beside the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// The cache folder where model listings are saved for offline plans.
const LISTINGS: &str = "clip-embed";

// The Hugging Face CLIP files, open_clip's config and its weights in the order open_clip prefers them, and a
// Hugging Face tokenizer's files: the names the loader reads ([`crate::clip`]).
use crate::clip::MODEL_FILES as HF_FILES;
pub use crate::clip::open_clip::CONFIG_FILE as OPEN_CLIP_CONFIG;
use crate::clip::open_clip::WEIGHT_FILES as OPEN_CLIP_WEIGHTS;
use crate::clip::tokenizer::HF_TOKENIZER_FILES;
/// Where OpenAI's BPE comes from for an open_clip repo that does not ship it (every OpenAI-BPE model uses it).
const BPE_REPO: &str = "openai/clip-vit-base-patch32";

fn find<'a>(listing: &'a Listing, path: &str) -> Option<&'a HubFile> {
    listing.files.iter().find(|f| f.path == path)
}

fn lacks(repo: &Repo, listing: &Listing, what: &str) -> anyhow::Error {
    let mut top: Vec<&str> = listing.files.iter().map(|f| f.path.as_str()).filter(|p| !p.contains('/')).collect();
    top.truncate(20);
    anyhow!("{repo} at {} (`{}`) has no {what}; its files: {}", listing.commit, listing.revision, top.join(", "))
}

impl ModelSource {
    pub fn from_settings(
        model: Option<&str>,
        model_path: Option<&str>,
        revision: &str,
        base_dir: &Path,
    ) -> anyhow::Result<Self> {
        match (model, model_path) {
            (_, Some(path)) => Ok(ModelSource::Local { dir: base_dir.join(path), shown: path.to_string() }),
            (name, None) => {
                let model = names::resolve(name.unwrap_or(names::DEFAULT_MODEL)).map_err(anyhow::Error::msg)?;
                Ok(ModelSource::Hub { model, revision: revision.to_string() })
            }
        }
    }

    /// The identity that goes into every part's key. A Hub model is listed (or read from the saved listing
    /// offline, or with `local_only`); [`hub::NotKnown`] when offline with nothing saved.
    pub fn identity(&self, step: &str, stat_cache: &StatCache, local_only: bool) -> anyhow::Result<Value> {
        match self {
            ModelSource::Local { dir, shown } => local_identity(dir, shown, stat_cache),
            ModelSource::Hub { model, revision } => {
                let pinned =
                    pin(model, revision, step, local_only).with_context(|| format!("model `{}`", model.name))?;
                Ok(serde_json::to_value(pinned)?)
            }
        }
    }

    /// The folder to load for a job whose key recorded `identity`: a local folder checked against it, or the
    /// pinned files, fetched into this machine's cache where they are not there yet (with the bytes fetched).
    pub fn folder_for(&self, identity: &Value, cancel: &crate::kind::Cancel) -> anyhow::Result<(PathBuf, u64)> {
        match self {
            ModelSource::Local { dir, shown } => {
                let Value::Object(files) = identity else { bail!("the job's model identity is not a table") };
                let names = crate::clip::format::model_files(dir).with_context(|| format!("model_path `{shown}`"))?;
                if names.len() != files.len() || names.iter().any(|n| !files.contains_key(n)) {
                    bail!(
                        "the files of model_path `{shown}` ({}) changed since the plan was made: plan again",
                        dir.display()
                    );
                }
                for (name, digest) in files {
                    let path = dir.join(name);
                    let now = crate::util::hash_file(&path)?;
                    if digest.as_str() != Some(now.as_str()) {
                        bail!("{} (model_path `{shown}`) changed since the plan was made: plan again", path.display());
                    }
                }
                Ok((dir.clone(), 0))
            }
            ModelSource::Hub { .. } => {
                let pinned: Pinned = serde_json::from_value(identity.clone())
                    .with_context(|| format!("the job's model identity ({identity})"))?;
                weights::materialise(&pinned, cancel)
            }
        }
    }
}

/// The files that make a local model folder (those of its format that the loader reads: `clip::format`), by
/// blake3.
fn local_identity(dir: &Path, shown: &str, stat_cache: &StatCache) -> anyhow::Result<Value> {
    let names = crate::clip::format::model_files(dir).with_context(|| format!("model_path `{shown}`"))?;
    let mut files = Map::new();
    for name in names {
        files.insert(name.clone(), Value::String(stat_cache.identity(&dir.join(&name))?.blake3.to_string()));
    }
    Ok(Value::Object(files))
}

/// Lists `repo` at `revision` as the plan does, saying `repo@revision → commit`.
fn listing(repo: &Repo, revision: &str, step: &str, local_only: bool) -> anyhow::Result<Listing> {
    hub::pinned_listing(repo, revision, LISTINGS, &format!("clip-embed `{step}`"), local_only)
}

/// The model's files at its pinned revision, and those of the tokenizer its config names.
fn pin(model: &ModelName, revision: &str, step: &str, local_only: bool) -> anyhow::Result<Pinned> {
    let repo = Repo::model(&model.repo);
    let listed = listing(&repo, revision, step, local_only)?;
    let mut files = Vec::new();
    let mut add = |name: &str, file: &HubFile, listing: &Listing, repo: &str| {
        files.push(PinnedFile::new(name, repo, file, listing));
    };
    // The config the tokenizer is looked up in: read from the repo, or borrowed from the tag (cloned once, below).
    let repo_config: Value;
    let config: &Value = match &model.format {
        Format::HfClip => {
            for name in HF_FILES {
                let file = find(&listed, name).ok_or_else(|| {
                    lacks(
                        &repo,
                        &listed,
                        &format!("{name} (a CLIP model in Hugging Face's format needs {})", HF_FILES.join(", ")),
                    )
                })?;
                add(name, file, &listed, &model.repo);
            }
            return Ok(Pinned { repo: model.repo.clone(), files, config: None });
        }
        Format::OpenClip => {
            let file = find(&listed, OPEN_CLIP_CONFIG).ok_or_else(|| lacks(&repo, &listed, OPEN_CLIP_CONFIG))?;
            let pinned = PinnedFile::new(OPEN_CLIP_CONFIG, &model.repo, file, &listed);
            if local_only && !weights::cached(&pinned) {
                bail!(
                    "{OPEN_CLIP_CONFIG} of {repo} is not in this machine's cache (this command asks no remote service): run `dsmake plan` once"
                );
            }
            // Small: read now, for the tokenizer it names (kept in the cache, so offline plans read it too).
            let path = weights::fetch(&pinned, &crate::kind::Cancel::default())?;
            let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let config: Value =
                serde_json::from_slice(&text).with_context(|| format!("{OPEN_CLIP_CONFIG} of {repo} is not JSON"))?;
            add(OPEN_CLIP_CONFIG, file, &listed, &model.repo);
            repo_config = config;
            &repo_config
        }
        Format::OpenClipTag { config } => config,
    };
    let weights = OPEN_CLIP_WEIGHTS
        .iter()
        .find_map(|w| find(&listed, w))
        .ok_or_else(|| lacks(&repo, &listed, &format!("open_clip weights ({})", OPEN_CLIP_WEIGHTS.join(" or "))))?;
    add(&weights.path.clone(), weights, &listed, &model.repo);
    // The tokenizer is not in an open_clip repo: the Hugging Face tokenizer that `hf_tokenizer_name` names
    // (CLIPA's bert-base-uncased) from its own repo, or OpenAI's BPE as a CLIP tokenizer.json, from the repo
    // where it has one (LAION's do) or else from OpenAI's.
    let (tok_id, wanted): (&str, &[&str]) = match config["model_cfg"]["text_cfg"]["hf_tokenizer_name"].as_str() {
        Some(name) => (name, &HF_TOKENIZER_FILES),
        None if find(&listed, crate::clip::TOKENIZER_FILE).is_some() => (model.repo.as_str(), &HF_TOKENIZER_FILES[..1]),
        None => (BPE_REPO, &HF_TOKENIZER_FILES[..1]),
    };
    let tok_repo = Repo::model(tok_id);
    let other;
    let tok = if tok_id == model.repo {
        &listed
    } else {
        other = listing(&tok_repo, "main", step, local_only)?;
        &other
    };
    let file = find(tok, crate::clip::TOKENIZER_FILE)
        .ok_or_else(|| lacks(&tok_repo, tok, &format!("{} (the model's tokenizer)", crate::clip::TOKENIZER_FILE)))?;
    add(crate::clip::TOKENIZER_FILE, file, tok, tok_id);
    for name in &wanted[1..] {
        if let Some(file) = find(tok, name) {
            add(name, file, tok, tok_id);
        }
    }
    let tag_config = match &model.format {
        Format::OpenClipTag { config } => Some(config.clone()),
        _ => None,
    };
    Ok(Pinned { repo: model.repo.clone(), files, config: tag_config })
}
