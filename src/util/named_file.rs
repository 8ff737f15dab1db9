//! Pipeline and remote files named on the command line: a path, or a name looked up from here upwards.

use crate::error::UsageError;
use std::path::{Path, PathBuf};

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
        super::suggest::help_for(arg, what, &known_refs)
    };
    Err(UsageError(format!("no {what} `{arg}` ({hint})")).into())
}
