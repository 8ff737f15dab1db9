//! Getting a pinned model onto the machine that runs it, with no cache filled by hand: each worker fetches the
//! files its job's key names from the Hub (`HF_ENDPOINT`, `HF_TOKEN` to the Hub's origin only), into the dsmake
//! cache by content (`clip-embed/blobs/<oid>`), resuming a cut download and checking the LFS sha256 before a
//! file is used; a machine fetches a file once, however many parts or processes use it (a file lock serialises
//! processes). The files are then linked, under the names the model loader reads, into a folder per identity
//! (`clip-embed/models/<hash>`), with open_clip's config for a pretrained tag written beside them.
//!
//! Why each worker and not the store (ARCHITECTURE.md): a kind reads only what the worker hands it, never the
//! store, and the weights are not a step's output; the Hub's CDN serves many parallel readers, and a worker
//! keeps the weights for every later part it builds. With `HF_HUB_OFFLINE`, only what the cache holds is used.

use super::model::{OPEN_CLIP_CONFIG, Pinned, PinnedFile};
use crate::kinds::hub::{self, Hub, Repo};
use anyhow::{Context, bail};
use std::path::PathBuf;

fn root() -> PathBuf {
    crate::util::cache_dir().join("clip-embed")
}

fn blob_path(oid: &str) -> PathBuf {
    let safe: String = oid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    root().join("blobs").join(safe)
}

/// Whether this machine's cache holds `file`.
pub fn cached(file: &PinnedFile) -> bool {
    std::fs::metadata(blob_path(&file.oid)).is_ok_and(|m| m.len() == file.size)
}

/// `file` in this machine's cache, fetched (resumed, verified) if it is not there yet.
pub fn fetch(file: &PinnedFile, cancel: &crate::kind::Cancel) -> anyhow::Result<PathBuf> {
    fetch_counting(file, cancel).map(|(path, _)| path)
}

/// [`fetch`], and the bytes it took from the Hub.
fn fetch_counting(file: &PinnedFile, cancel: &crate::kind::Cancel) -> anyhow::Result<(PathBuf, u64)> {
    let blob = blob_path(&file.oid);
    if cached(file) {
        return Ok((blob, 0));
    }
    let repo = Repo::model(&file.repo);
    if hub::offline() {
        bail!(
            "HF_HUB_OFFLINE is set and {} of {repo} (commit {}) is not in this machine's cache ({}): unset \
             HF_HUB_OFFLINE to fetch it",
            file.path,
            file.commit,
            blob.display()
        );
    }
    let dir = blob.parent().context("blob path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // One download per machine: a second process waits here, then finds the file.
    let lock_path = blob.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if cached(file) {
        return Ok((blob, 0));
    }
    let partial = blob.with_extension("part");
    let hub = Hub::from_env()?;
    let fetched = hub
        .download(&repo, &file.commit, &file.hub_file(), &partial, cancel)
        .with_context(|| format!("cannot fetch the model's {}", file.path))?;
    std::fs::rename(&partial, &blob).with_context(|| format!("cannot move {} into place", partial.display()))?;
    Ok((blob, fetched))
}

/// The folder the model loads from: every pinned file under its name, and open_clip's config for a tag; and
/// the bytes fetched from the Hub to make it.
pub fn materialise(pinned: &Pinned, cancel: &crate::kind::Cancel) -> anyhow::Result<(PathBuf, u64)> {
    let id = blake3::hash(&serde_json::to_vec(pinned)?).to_hex();
    let folder = root().join("models").join(&id[..32]);
    if folder.join(".complete").is_file() {
        return Ok((folder, 0));
    }
    let mut blobs = Vec::new();
    let mut fetched = 0;
    for file in &pinned.files {
        let (blob, n) = fetch_counting(file, cancel)?;
        fetched += n;
        blobs.push((file.name.as_str(), blob));
    }
    let tmp = root().join("models").join(format!("{}.tmp-{}-{}", &id[..32], std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for (name, blob) in blobs {
        let to = tmp.join(name);
        if std::fs::hard_link(&blob, &to).is_err() {
            std::fs::copy(&blob, &to).with_context(|| format!("cannot copy {} to {}", blob.display(), to.display()))?;
        }
    }
    if let Some(config) = &pinned.config {
        std::fs::write(tmp.join(OPEN_CLIP_CONFIG), serde_json::to_vec_pretty(config)?)
            .with_context(|| format!("cannot write {}", tmp.join(OPEN_CLIP_CONFIG).display()))?;
    }
    std::fs::write(tmp.join(".complete"), b"")?;
    if std::fs::rename(&tmp, &folder).is_err() {
        // Another process made it first (the rename fails onto a full folder): use theirs.
        std::fs::remove_dir_all(&tmp).ok();
        if !folder.join(".complete").is_file() {
            bail!("cannot put the model folder {} in place", folder.display());
        }
    }
    Ok((folder, fetched))
}
