//! Pipeline files: `[pipeline]`, `[params]` and `[steps.NAME]`, parsed with spans so that every mistake is
//! reported with file, line and column.

mod dag;
pub mod diagnostic;
#[cfg(test)]
mod fuzz;
pub mod params;
mod parse;

use crate::kind::{DynKind, StepTraits};
pub use diagnostic::Diagnostic;
pub use parse::{load, parse};
use serde_json::Value;
use std::path::PathBuf;

/// Step names, pipeline names and shard ids become folder and file names in the store.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['.', '_'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    /// Relative paths in the file (a `files` step's globs, say) are relative to this folder.
    pub base_dir: PathBuf,
    pub params: params::Params,
    /// In dependency order: every step comes after the steps it reads.
    pub steps: Vec<Step>,
}

pub struct Step {
    pub name: String,
    pub kind: &'static dyn DynKind,
    pub from: Vec<String>,
    /// Effective settings: the file's values after params, with the kind's defaults filled in.
    pub settings: Value,
    /// What the settings tell the engine (resource class, rows per shard).
    pub traits: StepTraits,
    /// Store-relative folder of the step's outputs and manifests.
    pub dir: String,
    pub description: Option<String>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("from", &self.from)
            .field("settings", &self.settings)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Pipeline {
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Indices of the steps that `step` reads, in `from` order.
    pub fn inputs_of(&self, step: usize) -> Vec<usize> {
        self.steps[step].from.iter().filter_map(|name| self.step_index(name)).collect()
    }
}
