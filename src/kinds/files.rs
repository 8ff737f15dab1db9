//! `files`: local files matched by paths or globs, one shard per file, identified by the blake3 of their
//! content. A source: nothing is built, downstream steps read the files where they are.

use crate::kind::{BuildCx, Built, Inputs, Kind, SettingError, ShardCx, ShardSpec, Shards, SourceFile};
use crate::util::glob;
use anyhow::{Context, bail};
use serde_json::json;
use std::collections::BTreeMap;
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
        let mut found: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
        for pattern in &s.paths {
            let full = base_dir.join(pattern);
            let base = literal_base(&full);
            let mut matched = 0;
            for path in matches(&full, &base).with_context(|| format!("cannot search `{pattern}`"))? {
                matched += 1;
                let id = path.strip_prefix(&base).unwrap_or(&path).to_string_lossy().into_owned();
                let display = path.strip_prefix(base_dir).unwrap_or(&path).to_string_lossy().into_owned();
                match found.get(&id) {
                    Some((other, _)) if *other != path => bail!(
                        "`{}` and `{}` would both be shard `{id}`: use globs whose matches have distinct names",
                        other.display(),
                        path.display()
                    ),
                    _ => {
                        found.insert(id, (path, display));
                    }
                }
            }
            if matched == 0 {
                bail!("`{pattern}` matches no file (relative to {})", shown_dir(base_dir));
            }
        }
        let paths: Vec<PathBuf> = found.values().map(|(p, _)| p.clone()).collect();
        let identities = cx.stat_cache.identities(&paths)?;
        // Folders that a glob matched are not shards.
        Ok(Shards::Known(
            found
                .into_iter()
                .zip(identities)
                .filter_map(|(entry, identity)| Some((entry, identity?)))
                .map(|((id, (path, display)), identity)| ShardSpec {
                    id,
                    coords: json!({}),
                    inputs: Vec::new(),
                    source: Some(SourceFile { path, display, size: identity.size, blake3: identity.blake3 }),
                })
                .collect(),
        ))
    }

    fn build(&self, _: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        bail!("{} is a source file: `files` targets are never built", cx.target)
    }
}

/// Files under `base` that the pattern `full` matches. A walk of the folder (entry types come with the
/// directory entries: no stat per file) with ripgrep's glob matcher; `*` stays within one folder, `**`
/// crosses folders.
fn matches(full: &Path, base: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let relative = full.strip_prefix(base).unwrap_or(full);
    let pattern = relative.to_string_lossy();
    let matcher = glob(&pattern)?.compile_matcher();
    let depth = if pattern.contains("**") { usize::MAX } else { relative.components().count() };
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(base).min_depth(1).max_depth(depth).follow_links(true) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        if entry.file_type().is_dir() {
            continue;
        }
        if entry.path().strip_prefix(base).is_ok_and(|rel| matcher.is_match(rel)) {
            out.push(entry.into_path());
        }
    }
    Ok(out)
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
