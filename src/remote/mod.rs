//! Remote definitions, `remotes/NAME.toml`: which store a pipeline builds into and how to reach it, and
//! (with the remote executors) where its targets run.

use crate::pipeline::Diagnostic;
use crate::store::s3::S3Options;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    #[serde(default)]
    pub description: String,
    pub store: StoreSection,
    #[serde(default)]
    pub executor: ExecutorSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `s3://bucket/prefix` or a local folder.
    pub url: String,
    /// An AWS profile (SSO profiles included).
    pub profile: Option<String>,
    /// An S3-compatible endpoint; requests then use path-style addressing.
    pub endpoint: Option<String>,
    /// The bucket's region; found from the bucket when left out.
    pub region: Option<String>,
}

impl StoreSection {
    pub fn s3(&self) -> S3Options {
        S3Options { profile: self.profile.clone(), endpoint: self.endpoint.clone(), region: self.region.clone() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// `local` (the default) runs targets on this machine.
    #[serde(default = "local")]
    pub kind: String,
}

fn local() -> String {
    "local".to_string()
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection { kind: local() }
    }
}

const EXECUTORS: &[&str] = &["local"];

impl Remote {
    pub fn load(file: &Path) -> Result<Remote, Diagnostic> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Diagnostic::whole_file(file, format!("cannot read remote file: {e}")))?;
        let remote: Remote = toml_edit::de::from_str(&text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            Diagnostic::at(file, &text, e.span(), format!("invalid remote file: {message}"))
                .with_help("a remote file has [store] with `url` (and `profile`, `endpoint`, `region`) and optionally [executor] with `kind`")
        })?;
        if !EXECUTORS.contains(&remote.executor.kind.as_str()) {
            return Err(Diagnostic::whole_file(file, format!("unknown executor `{}`", remote.executor.kind))
                .with_help(format!("this dsmake runs executors {}", EXECUTORS.join(", "))));
        }
        Ok(remote)
    }
}

/// A path to a file, or a name looked up as `remotes/NAME.toml` here and in each parent folder.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    crate::cli::find_named_file("remotes", "remote", name)
}
