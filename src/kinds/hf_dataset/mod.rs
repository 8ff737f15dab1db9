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
use std::path::PathBuf;

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

fn partial_path(oid: &str) -> PathBuf {
    let safe: String = oid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    crate::util::cache_dir().join("hf-dataset").join("partial").join(format!("{safe}.part"))
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
        let who = format!("hf-dataset `{}`", cx.step);
        let listing = match hub::pinned_listing(&Repo::dataset(&s.repo), &s.revision, "hf-dataset", &who, cx.local_only)
        {
            Ok(listing) => listing,
            Err(e) => match e.downcast::<hub::NotKnown>() {
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
