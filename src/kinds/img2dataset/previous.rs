//! `--retry-failed`: a shard's last build, read back so that only its failed downloads are attempted again
//! (img2dataset's issue #358). Successes keep their tar members byte for byte, and images that downloaded
//! but could not be decoded keep their verdict: the same bytes would fail the same way.

use super::process::Processed;
use super::shard::Outcome;
use crate::formats::parquet::read_rows;
use anyhow::{Context, bail};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A sample's tar members, (extension, bytes).
type Members = Vec<(String, Vec<u8>)>;

/// One earlier row that is kept: its outcome, and for a success its tar members (extension, bytes).
pub struct Kept {
    pub outcome: Outcome,
    pub members: Members,
}

/// The rows of the last build that are kept, with their row index, in row order; the others are attempted again.
pub fn load(
    previous: &[PathBuf],
    names: &[String; 3],
    rows: &[Map<String, Value>],
    url_col: &str,
    optional: &[&str],
) -> anyhow::Result<Vec<(usize, Kept)>> {
    let find = |name: &str| previous.iter().find(|p| p.file_name().is_some_and(|f| f == name));
    let (Some(tar), Some(parquet)) = (find(&names[0]), find(&names[1])) else {
        bail!("the last build has no {} and {}", names[0], names[1]);
    };
    let mut wanted: Vec<String> =
        ["url", "key", "status", "error_message", "width", "height", "original_width", "original_height"]
            .map(String::from)
            .to_vec();
    wanted.extend(optional.iter().map(|c| c.to_string()));
    let last = read_rows(parquet, 0..rows.len() as u64, &wanted)?.rows;
    let mut members = read_tar(tar)?;
    let mut kept = Vec::new();
    for (index, (old, row)) in last.iter().zip(rows).enumerate() {
        if old.get("url") != row.get(url_col) {
            bail!(
                "row {index} of {} has url {} but the input has {}: rebuild the shard with --force",
                names[1],
                old.get("url").unwrap_or(&Value::Null),
                row.get(url_col).unwrap_or(&Value::Null)
            );
        }
        let text = |c: &str| old.get(c).and_then(Value::as_str).map(str::to_string);
        let number = |c: &str| old.get(c).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
        let status = match old.get("status").and_then(Value::as_str) {
            Some("success") => "success",
            Some("failed_to_resize") => "failed_to_resize",
            _ => continue,
        };
        let key = text("key").unwrap_or_default();
        let image = match status {
            "success" => {
                let (Some(width), Some(height), Some(original_width), Some(original_height)) =
                    (number("width"), number("height"), number("original_width"), number("original_height"))
                else {
                    continue;
                };
                Some(Processed { bytes: Vec::new(), width, height, original_width, original_height })
            }
            _ => None,
        };
        let sample = if image.is_some() { members.remove(&key) } else { Some(Vec::new()) };
        // A success whose members are missing from the tar is downloaded again.
        let Some(sample) = sample.filter(|m| image.is_none() || !m.is_empty()) else {
            continue;
        };
        let outcome =
            Outcome { index, status, error: text("error_message"), sha256: text("sha256"), exif: text("exif"), image };
        kept.push((index, Kept { outcome, members: sample }));
    }
    Ok(kept)
}

/// A tar's members grouped by sample key (the name up to its first dot), as (extension, bytes).
fn read_tar(path: &Path) -> anyhow::Result<HashMap<String, Members>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut samples: HashMap<String, Members> = HashMap::new();
    for entry in archive.entries().with_context(|| format!("cannot read {}", path.display()))? {
        let mut entry = entry.with_context(|| format!("{} is damaged", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let Some((key, ext)) = name.split_once('.') else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("{} is damaged at {name}", path.display()))?;
        samples.entry(key.to_string()).or_default().push((ext.to_string(), bytes));
    }
    Ok(samples)
}
