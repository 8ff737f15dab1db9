//! `files`: local files matched by paths or globs, one shard per file, identified by the blake3 of their
//! content. A source: nothing is built, downstream steps read the files where they are.

use crate::kind::{BuildCx, Built, Inputs, Kind, SettingError, ShardCx, ShardSpec, Shards, SourceFile};
use crate::util::stat_cache::Identity;
use crate::util::walk::{self, FileMeta};
use crate::util::{glob, text_order};
use anyhow::{Context, bail};
use rayon::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct Files;

crate::settings! {
    pub struct Settings {
        /// files or globs relative to the pipeline file's folder, e.g. "data/*.csv" or ["a.txt", "raw/**/*.json"]
        paths: Vec<String>,
    }
}

/// The folder a pattern's matches are named relative to: its components before the first wildcard.
fn literal_base(pattern: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for component in pattern.components() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            return base;
        }
        base.push(component);
    }
    // No wildcard: a plain file path, named by its file name.
    pattern.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Kind for Files {
    type Settings = Settings;
    const NAME: &'static str = "files";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "local files matched by paths or globs, one shard per file";
    const INPUTS: Inputs = Inputs::None;
    const IS_SOURCE: bool = true;

    fn check(&self, s: &Settings, _has_inputs: bool) -> Result<(), SettingError> {
        if s.paths.is_empty() {
            return Err(SettingError::new("paths", "`paths` is empty").help("name at least one file or glob"));
        }
        for pattern in &s.paths {
            if let Err(e) = glob(pattern) {
                return Err(SettingError::new("paths", format!("invalid glob `{pattern}`: {}", e.kind())));
            }
        }
        Ok(())
    }

    fn shards(&self, s: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let base_dir = cx.base_dir;
        // (shard id, path, identity) of every match, in the order of the patterns; no identity for what is
        // not a regular file (a folder a glob matched): it is matched, but not a shard.
        let mut found: Vec<(String, PathBuf, Option<Identity>)> = Vec::new();
        for pattern in &s.paths {
            let full = base_dir.join(pattern);
            let base = literal_base(&full);
            let identity = |rel: &Path, meta: &FileMeta| {
                let path = base.join(rel);
                let identity = cx.stat_cache.identity_of(&path, meta)?;
                Ok(Some((rel.to_string_lossy().into_owned(), path, identity)))
            };
            let matched = matches(&full, &base, identity).with_context(|| format!("cannot search `{pattern}`"))?;
            if matched.is_empty() {
                bail!("`{pattern}` matches no file (relative to {})", shown_dir(base_dir));
            }
            found.extend(matched);
        }
        // By id; equal ids stay in match order, so the first pattern's match comes first.
        let order = text_order::order(found.len(), |at| found[at].0.as_str(), |id| text_order::head(id.as_bytes()));
        let mut slots: Vec<Option<_>> = found.into_iter().map(Some).collect();
        let mut found: Vec<(String, PathBuf, Option<Identity>)> =
            order.into_iter().filter_map(|at| slots[at].take()).collect();
        drop(slots);
        if let Some(pair) = found.windows(2).find(|pair| pair[0].0 == pair[1].0 && pair[0].1 != pair[1].1) {
            bail!(
                "`{}` and `{}` would both be shard `{}`: use globs whose matches have distinct names",
                pair[0].1.display(),
                pair[1].1.display(),
                pair[0].0
            );
        }
        found.dedup_by(|later, first| later.0 == first.0);
        Ok(Shards::Known(
            found
                .into_par_iter()
                .filter_map(|(id, path, identity)| {
                    let identity = identity?;
                    let display = walk::relative(&path, base_dir).unwrap_or(&path).to_string_lossy().into_owned();
                    let source = SourceFile { path, display, size: identity.size, blake3: identity.blake3 };
                    Some(ShardSpec { id, coords: json!({}), inputs: Vec::new(), source: Some(Box::new(source)) })
                })
                .collect(),
        ))
    }

    fn build(&self, _: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        bail!("{} is a source file: `files` targets are never built", cx.target)
    }
}

/// What `visit` makes of each file under `base` that the pattern `full` matches, and of its metadata (see
/// `util::walk`: one stat per file, relative to its folder), matched with ripgrep's glob matcher; `*` stays within one folder, `**`
/// crosses folders.
fn matches<T: Send>(
    full: &Path,
    base: &Path,
    visit: impl Fn(&Path, &FileMeta) -> anyhow::Result<Option<T>> + Sync,
) -> anyhow::Result<Vec<T>> {
    let relative = full.strip_prefix(base).unwrap_or(full);
    let pattern = relative.to_string_lossy();
    let matcher = glob(&pattern)?.compile_matcher();
    let depth = if pattern.contains("**") { usize::MAX } else { relative.components().count() };
    walk::files(base, depth, |rel| matcher.is_match(rel), visit)
}

fn shown_dir(dir: &Path) -> String {
    if dir.as_os_str().is_empty() { ".".to_string() } else { dir.display().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_the_part_before_the_first_wildcard() {
        assert_eq!(literal_base(Path::new("/p/data/*.csv")), PathBuf::from("/p/data"));
        assert_eq!(literal_base(Path::new("/p/raw/**/x?.json")), PathBuf::from("/p/raw"));
        assert_eq!(literal_base(Path::new("/p/one/file.txt")), PathBuf::from("/p/one"));
    }
}
