//! `hf-dataset`: the parquet files of a Hugging Face dataset repo, one target per file. Planning resolves
//! `revision` to a commit and lists the repo through the Hub API (once per plan, never cached while
//! online, so a moved revision is always seen); each target is keyed on the file's path, its content
//! identity (the LFS sha256) and the last commit that changed it, so an unchanged file is never downloaded
//! again and a new file adds only its own target. Building downloads the file (resuming a partial download
//! kept in the dsmake cache), verifies its sha256 and records its row count from the parquet footer, which
//! row-split steps downstream (`img2dataset`) need.
//!
//! `HF_TOKEN` is sent as a Bearer token, `HF_ENDPOINT` replaces huggingface.co, and with
//! `HF_HUB_OFFLINE=1` the plan uses the listing saved by the last online plan (and says so) while nothing
//! can be downloaded.

use crate::formats::parquet;
use crate::kind::{BuildCx, Built, Inputs, Kind, Resource, SettingError, ShardCx, ShardSpec, Shards};
use crate::kinds::hub::{self, Hub, HubFile, Repo};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct HfDataset;

crate::settings! {
    pub struct Settings {
        /// the dataset repo on the Hub, e.g. "laion/relaion-pop"
        repo: String,
        /// a branch, tag or commit; the plan pins it to a commit
        revision: String = "main".into(),
        /// globs over the repo's file paths, read as `files` reads its paths (`*` within a folder, `**` across
        /// folders, `**/*.parquet` at the top too); each match is one target
        include: Vec<String> = vec!["**/*.parquet".into()],
    }
}

/// What a target's coordinates hold: everything its download needs and its identity.
#[derive(Debug, Serialize, Deserialize)]
struct Coords {
    repo: String,
    path: String,
    /// The commit the file is downloaded at: the last one that changed it, or the pinned commit.
    commit: String,
    oid: String,
    size: u64,
    lfs: bool,
}

/// A saved resolution, for offline plans.
#[derive(Debug, Serialize, Deserialize)]
struct Listing {
    endpoint: String,
    repo: String,
    revision: String,
    commit: String,
    listed_at: String,
    files: Vec<HubFile>,
}

fn listing_path(endpoint: &str, repo: &str, revision: &str) -> PathBuf {
    let id = blake3::hash(format!("{endpoint}\n{repo}\n{revision}").as_bytes()).to_hex();
    crate::util::cache_dir().join("hf-dataset").join("listings").join(format!(
        "{}-{}.json",
        repo.replace('/', "--"),
        &id[..16]
    ))
}

fn partial_path(oid: &str) -> PathBuf {
    let safe: String = oid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    crate::util::cache_dir().join("hf-dataset").join("partial").join(format!("{safe}.part"))
}

/// Says once per process which commit a revision was pinned to (plans run again during a build).
fn note(message: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.contains(&message) {
        eprintln!("{message}");
        said.push(message);
    }
}

/// The files cannot be known now (offline, nothing saved): the plan says why instead of failing.
#[derive(Debug)]
struct NotKnown(String);

impl std::fmt::Display for NotKnown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotKnown {}

/// The listing saved by the last online plan; `missing` is the error when there is none.
fn saved_listing(saved: &Path, missing: impl FnOnce() -> anyhow::Error) -> anyhow::Result<Listing> {
    let bytes = std::fs::read(saved).map_err(|_| missing())?;
    serde_json::from_slice(&bytes).with_context(|| format!("unreadable saved listing {}", saved.display()))
}

fn resolve(s: &Settings, step: &str, local_only: bool) -> anyhow::Result<Listing> {
    let hub = Hub::from_env()?;
    let saved = listing_path(&hub.endpoint, &s.repo, &s.revision);
    if hub::offline() {
        let listing = saved_listing(&saved, || {
            anyhow::Error::new(NotKnown(format!(
                "HF_HUB_OFFLINE is set and no earlier listing of dataset `{}` at `{}` is saved in {}: plan once \
                 online, or unset HF_HUB_OFFLINE",
                s.repo,
                s.revision,
                saved.display()
            )))
        })?;
        note(format!(
            "hf-dataset `{step}`: offline (HF_HUB_OFFLINE): using the listing of {}@{} saved {} (commit {}); the \
             revision may have moved since",
            s.repo, s.revision, listing.listed_at, listing.commit
        ));
        return Ok(listing);
    }
    if local_only {
        // Unavailable here rather than "not known yet": building other steps would not tell it.
        return saved_listing(&saved, || {
            anyhow::anyhow!(
                "no listing of dataset `{}` at `{}` is saved yet (this command does not ask the Hub): run `dsmake \
                 plan` once",
                s.repo,
                s.revision
            )
        });
    }
    let repo = Repo::dataset(&s.repo);
    let commit = hub.resolve_revision(&repo, &s.revision)?;
    let files = hub.list_files(&repo, &commit)?;
    let listing = Listing {
        endpoint: hub.endpoint.clone(),
        repo: s.repo.clone(),
        revision: s.revision.clone(),
        commit,
        listed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        files,
    };
    // Saved only for offline plans; an online plan always asks the Hub again.
    if let Some(parent) = saved.parent()
        && std::fs::create_dir_all(parent).is_ok()
    {
        let tmp = saved.with_extension("json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&listing)?).is_ok() {
            std::fs::rename(&tmp, &saved).ok();
        }
    }
    note(format!("hf-dataset `{step}`: {}@{} → commit {}", s.repo, s.revision, listing.commit));
    Ok(listing)
}

/// The `include` globs as one matcher, read as the `files` kind reads its paths.
fn includes(patterns: &[String]) -> Result<globset::GlobSet, SettingError> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = crate::util::glob(p)
            .map_err(|e| SettingError::new("include", format!("invalid glob `{p}`: {}", e.kind())))?;
        set.add(glob);
    }
    set.build().map_err(|e| SettingError::new("include", format!("invalid globs {patterns:?}: {e}")))
}

impl Kind for HfDataset {
    type Settings = Settings;
    const NAME: &'static str = "hf-dataset";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "the parquet files of a Hugging Face dataset, one target per file, pinned to a commit and sha256-verified";
    const INPUTS: Inputs = Inputs::None;

    fn resource(&self, _: &Settings) -> Resource {
        Resource::Net
    }

    fn check(&self, s: &Settings, _has_inputs: bool) -> Result<(), SettingError> {
        let parts: Vec<&str> = s.repo.split('/').collect();
        let valid = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let ok = (parts.len() == 2 && parts.iter().all(|p| valid(p))) || (parts.len() == 1 && valid(parts[0]));
        if !ok {
            return Err(SettingError::new("repo", format!("`{}` is not a Hub repo id", s.repo))
                .help("write it as owner/name, e.g. \"laion/relaion-pop\""));
        }
        if s.revision.trim().is_empty() {
            return Err(SettingError::new("revision", "`revision` is empty").help("e.g. \"main\" or a commit sha"));
        }
        if s.include.is_empty() {
            return Err(SettingError::new("include", "`include` is empty").help("e.g. \"**/*.parquet\""));
        }
        includes(&s.include).map(drop)
    }

    fn shards(&self, s: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let include = includes(&s.include).map_err(|e| anyhow::anyhow!("hf-dataset `{}`: {}", cx.step, e.message))?;
        let listing = match resolve(s, cx.step, cx.local_only) {
            Ok(listing) => listing,
            Err(e) => match e.downcast::<NotKnown>() {
                Ok(why) => return Ok(Shards::Unknown(why.0)),
                Err(e) => return Err(e),
            },
        };
        let specs: Vec<ShardSpec> = listing
            .files
            .iter()
            .filter(|f| include.is_match(&f.path))
            .map(|f| {
                let coords = Coords {
                    repo: s.repo.clone(),
                    path: f.path.clone(),
                    commit: f.last_commit.clone().unwrap_or_else(|| listing.commit.clone()),
                    oid: f.oid.clone(),
                    size: f.size,
                    lfs: f.lfs,
                };
                Ok(ShardSpec {
                    id: f.path.clone(),
                    coords: serde_json::to_value(coords)?,
                    inputs: vec![],
                    source: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if specs.is_empty() {
            bail!(
                "no file of dataset `{}` at commit {} matches include = {:?} ({} files listed)",
                s.repo,
                listing.commit,
                s.include,
                listing.files.len()
            );
        }
        Ok(Shards::Known(specs))
    }

    fn build(&self, _: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        let c: Coords = cx.coords()?;
        if hub::offline() {
            bail!(
                "HF_HUB_OFFLINE is set: cannot download {} of dataset `{}` (targets already in the store stay fresh \
                 offline; unset HF_HUB_OFFLINE to fetch it)",
                c.path,
                c.repo
            );
        }
        let hub = Hub::from_env()?;
        let partial = partial_path(&c.oid);
        if let Some(parent) = partial.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let resumed_from = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let file = HubFile {
            path: c.path.clone(),
            size: c.size,
            oid: c.oid.clone(),
            lfs: c.lfs,
            last_commit: Some(c.commit.clone()),
        };
        let fetched = hub.download(&Repo::dataset(&c.repo), &c.commit, &file, &partial, cx.cancel)?;
        let out = cx.out_dir.join(&c.path);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::rename(&partial, &out).is_err() {
            std::fs::copy(&partial, &out)
                .with_context(|| format!("cannot copy {} to {}", partial.display(), out.display()))?;
            std::fs::remove_file(&partial).ok();
        }
        let rows = parquet::row_count(&out).with_context(|| format!("{} of dataset `{}`", c.path, c.repo))?;
        Ok(Built {
            outputs: vec![c.path.clone()],
            rows: Some(rows),
            failures: None,
            retryable: None,
            stats: json!({
                "repo": c.repo,
                "commit": c.commit,
                "sha256": c.oid,
                "bytes": c.size,
                "bytes_downloaded": fetched,
                "resumed_from": resumed_from,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_globs_match_as_files_paths_do() {
        let set = |p: &[&str]| includes(&p.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
        let all = set(&["**/*.parquet"]);
        assert!(all.is_match("a.parquet"));
        assert!(all.is_match("data/train/a.parquet"));
        assert!(!all.is_match("README.md"));
        let data = set(&["data/*.parquet"]);
        assert!(data.is_match("data/a.parquet"));
        assert!(!data.is_match("data/x/a.parquet"), "`*` stays within one folder");
        let either = set(&["train/*.parquet", "{dev,test}/**/*.parquet"]);
        assert!(either.is_match("train/a.parquet") && either.is_match("test/x/b.parquet"));
        assert!(!either.is_match("val/a.parquet"));
        let bad = includes(&["data/[a.parquet".to_string()]).unwrap_err();
        assert!(bad.message.contains("invalid glob `data/[a.parquet`"), "{}", bad.message);
    }
}
