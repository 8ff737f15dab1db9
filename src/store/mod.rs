//! Where outputs live. One trait; a local folder today, S3 behind the same trait.

#[cfg(test)]
mod fuzz;
mod index_codec;
#[cfg(test)]
pub(crate) mod interleaved;
pub mod local;
pub mod manifest;
mod read_limit;
mod record;
pub mod s3;
pub mod step_state;

use anyhow::bail;
pub use read_limit::{ReadLimit, TooLarge};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One object in a listing. `version` changes whenever the object is rewritten (local: mtime in
/// nanoseconds, stamped by the system clock as it is written, `util::files::stamp_and_sync`; S3: the ETag), so a
/// cached reading of it can be trusted while it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Store-relative, `/`-separated.
    pub path: String,
    pub size: u64,
    pub version: String,
}

pub trait Store: Send + Sync {
    /// The store as the user would write it in `--store`.
    fn url(&self) -> String;
    /// Every object under `prefix` (a folder), recursively.
    fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectMeta>>;
    /// How many objects one listing request returns, where a listing of many objects is worth splitting into
    /// key ranges listed side by side (S3: pages in sequence are round trips in sequence); `None` where a
    /// listing is one pass anyway (a local folder).
    fn list_range_size(&self) -> Option<usize> {
        None
    }
    /// [`Store::list`] in ranges: `split_after` (store paths, sorted) cuts the key space into ranges, each
    /// listed on its own, side by side. The result is the same set of objects as `list(prefix)`, in no order;
    /// split points only balance the work, so a wrong guess costs time, never objects.
    fn list_split(&self, prefix: &str, _split_after: &[String]) -> anyhow::Result<Vec<ObjectMeta>> {
        self.list(prefix)
    }
    /// [`Store::list`] less the objects under `prefix/skip/`, which a local folder does not read at all.
    fn list_except(&self, prefix: &str, skip: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        let skipped = format!("{}/{skip}/", prefix.trim_end_matches('/'));
        Ok(self.list(prefix)?.into_iter().filter(|m| !m.path.starts_with(&skipped)).collect())
    }
    /// A stamp of the folder `dir` that changes whenever an entry is added to it, removed from it or renamed
    /// in it (local: its device, inode, link count, size, and change and modification times), with when the
    /// folder last changed by the file system's clock: while the stamp holds, a listing of a folder whose
    /// files are only ever written whole, by rename, still stands. `None` where the store has no folders (S3),
    /// where `dir` is missing, and where it may hold folders (a link count other than 2), whose entries the
    /// stamp would not cover.
    fn folder_stamp(&self, _dir: &str) -> Option<(String, std::time::SystemTime)> {
        None
    }
    /// An object's bytes, or `None` when there is no such object; an object larger than `limit` is a
    /// [`TooLarge`] error, and no more of it than the limit is read.
    fn read(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<Vec<u8>>>;
    /// Writes an object atomically: readers see the old object or the whole new one.
    fn write(&self, path: &str, bytes: &[u8]) -> anyhow::Result<ObjectMeta>;
    /// Writes an object only if there is none at `path` (local: a hard link; S3: `If-None-Match: *`).
    /// `None` when one exists: another writer was first.
    fn write_if_absent(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Option<ObjectMeta>>;
    /// An object's bytes and a tag of that content (S3: its ETag; local: its blake3), or `None` when there is
    /// no such object: what [`Store::write_if_tag`] and [`Store::delete_if_tag`] are made conditional on.
    /// Bounded by `limit` as [`Store::read`] is.
    fn read_tagged(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<(Vec<u8>, String)>>;
    /// Replaces an object only if it still holds the content `tag` names (S3: `If-Match`): compare and swap,
    /// as git updates a ref. `None`, writing nothing, when another writer changed or removed it since.
    fn write_if_tag(&self, path: &str, bytes: &[u8], tag: &str) -> anyhow::Result<Option<ObjectMeta>>;
    /// Holds off other processes' conditional writes and deletes of the object at `path` (a target's
    /// manifest) until the guard drops, where the store can: a local folder's striped lock, which those take;
    /// this thread's own go through meanwhile. `None` where it cannot (S3, whose manifests record their outputs'
    /// ETags, so that a plan sees outputs replaced under a manifest).
    fn hold(&self, _path: &str) -> anyhow::Result<Option<Box<dyn std::any::Any>>> {
        Ok(None)
    }
    /// Deletes an object only if it still holds the content `tag` names; false, deleting nothing, otherwise.
    /// Where the server cannot delete conditionally, it deletes: a removed manifest only costs a rebuild.
    fn delete_if_tag(&self, path: &str, tag: &str) -> anyhow::Result<bool>;
    /// Moves or copies a finished local file into the store, atomically. `local` may be consumed. Returns the
    /// object with its version where the store has content versions (S3: the ETag the upload returned, empty
    /// where the server gives none), so that a manifest can record it.
    fn publish(&self, local: &Path, path: &str) -> anyhow::Result<ObjectMeta>;
    fn delete(&self, path: &str) -> anyhow::Result<()>;
    /// A path a reader can open directly, where the store is a local folder.
    fn local_path(&self, path: &str) -> Option<PathBuf>;
    /// Copies an object to a local file (for stores without `local_path`). `size` is what it should be (what
    /// its manifest records): a larger object is a [`TooLarge`] error, refused by its announced size before a
    /// byte is written, or once more than `size` bytes came (so a replaced object cannot fill the disk), and
    /// `dest` is then not written; a smaller one is copied, for the caller's checks to name.
    fn fetch(&self, path: &str, dest: &Path, size: u64) -> anyhow::Result<()>;
    /// An object's size and version as the store reports it now, without its bytes (S3: a HEAD), or `None`
    /// when there is no such object. Where versions identify content, a version equal to the one a build
    /// recorded vouches for the bytes without downloading them.
    fn head(&self, path: &str) -> anyhow::Result<Option<ObjectMeta>>;
    /// A local folder for workers' scratch space (on the same file system as the store, where it is local,
    /// so that publishing is a rename).
    fn scratch_root(&self) -> PathBuf;
    /// Holds off a second build of the same pipeline on the same store until this one ends.
    fn lock(&self, pipeline: &str) -> anyhow::Result<Box<dyn std::any::Any + Send>>;
    /// Whether an object's listed version changes only when the object is rewritten, so that a manifest can
    /// record it and a plan compare it (S3: the ETag). Not a local folder's: its versions are modification
    /// times, which copies of a folder (`cp -r`, a restore from backup) do not keep.
    fn versions_identify_content(&self) -> bool {
        false
    }
    /// Requests sent to the store so far by this process (0 where requests are not counted: a local folder).
    fn requests(&self) -> u64 {
        0
    }
    /// Aborts unfinished multipart uploads under `prefix` started more than `older_than` ago; returns their paths.
    fn abort_stale_uploads(&self, _prefix: &str, _older_than: std::time::Duration) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Opens `--store`: a folder path, `file:///path`, or `s3://bucket/prefix` (reached with `s3` options).
pub fn open(url: &str, s3: &s3::S3Options) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("s3://") {
        return Ok(Arc::new(s3::S3Store::open(url, s3)?));
    }

    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "file"
    {
        bail!("unsupported store `{url}`: use a local folder path or file:///path");
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(Arc::new(local::LocalStore::new(PathBuf::from(path))))
}

/// How an object's version starts where a server lists no ETag and the version is its modification time.
pub const MODIFIED_VERSION: &str = "modified:";

/// A listed version in 8 bytes, for step listings to keep one per object (see `StepState`); 0 where the version
/// says nothing of the content (none, or a modification time, which a listing and a write report at different
/// precisions).
pub fn version_tag(version: &str) -> u64 {
    if version.is_empty() || version.starts_with(MODIFIED_VERSION) {
        return 0;
    }
    let hash = blake3::hash(version.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 of 32 bytes")) | 1
}

/// Joins store-relative path segments with `/`.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        return name.to_string();
    }
    // Sized up front: a listing joins one path per object.
    let mut path = String::with_capacity(dir.len() + 1 + name.len());
    path.push_str(dir);
    path.push('/');
    path.push_str(name);
    path
}

/// Folder (inside a step's folder) that holds manifests and the step index.
pub use crate::kind::META_DIR;

pub fn manifest_path(step_dir: &str, shard: &str) -> String {
    format!("{step_dir}/{META_DIR}/{shard}.json")
}

/// Takes the lock (local) or lease (S3) of a pipeline, then of each of its step folders, so that builds and
/// `gc` of two pipelines that share a folder also exclude each other. Always in one order (the pipeline,
/// then folders sorted), so that two holders of overlapping sets cannot deadlock.
pub fn lock_pipeline(
    store: &dyn Store,
    pipeline: &str,
    dirs: &[&str],
) -> anyhow::Result<Vec<Box<dyn std::any::Any + Send>>> {
    let mut dirs: Vec<&str> = dirs.to_vec();
    dirs.sort_unstable();
    dirs.dedup();
    let mut held = vec![store.lock(pipeline)?];
    for dir in dirs {
        held.push(store.lock(&folder_lock_name(dir))?);
    }
    Ok(held)
}

/// A step folder's lock name: one flat name (`%` never occurs in a pipeline name, so no pipeline's lock
/// collides with a folder's).
pub fn folder_lock_name(dir: &str) -> String {
    format!("dir%{}", dir.replace('/', "%"))
}

/// Names that dsmake uses for files being written; never a published output.
pub fn is_temporary(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|name| name.starts_with(local::TEMP_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn two_pipelines_that_share_a_folder_exclude_each_other() {
        let root = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(local::LocalStore::new(root.path().to_path_buf()));
        let first = lock_pipeline(&*store, "a", &["shared/x", "only_a"]).unwrap();
        // Another pipeline with other folders is not held up.
        drop(lock_pipeline(&*store, "c", &["only_c"]).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let second = std::thread::spawn({
            let store = store.clone();
            move || {
                let held = lock_pipeline(&*store, "b", &["shared/x"]).unwrap();
                tx.send(()).unwrap();
                drop(held);
            }
        });
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "b took a folder that a holds");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("b gets the folder once a lets go");
        second.join().unwrap();
    }

    #[test]
    fn folder_lock_names_are_flat_and_never_a_pipelines() {
        assert_eq!(folder_lock_name("pipeline/step"), "dir%pipeline%step");
        assert_ne!(folder_lock_name("a"), "a");
    }
}
