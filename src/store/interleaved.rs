//! A local store that lets "another build" act at the worst moment, for the tests of concurrent writers and
//! readers: just before a conditional write of a manifest (`write_if_tag`: after this build has checked that
//! the objects are its own), or just before a listing that leaves the manifests out (`list_except`: after a
//! plan trusted its note on their folder). `remote`: it behaves as S3 does, with no local paths, no folders and
//! content versions (here an object's blake3, as an ETag is its MD5), and counts the objects downloaded.

use super::local::LocalStore;
use super::{ObjectMeta, ReadLimit, Store};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the other build does, once, to the store underneath.
pub type OtherBuild<'a> = Box<dyn FnOnce(&LocalStore) + Send + 'a>;

pub struct Interleaved<'a> {
    inner: &'a LocalStore,
    before_swap: Mutex<Option<OtherBuild<'a>>>,
    before_listing: Mutex<Option<OtherBuild<'a>>>,
    remote: bool,
    fetched: AtomicUsize,
}

impl<'a> Interleaved<'a> {
    pub fn new(inner: &'a LocalStore, remote: bool) -> Interleaved<'a> {
        let none = || Mutex::new(None);
        Interleaved { inner, before_swap: none(), before_listing: none(), remote, fetched: AtomicUsize::new(0) }
    }

    /// `other_build` acts just before the first conditional write.
    pub fn before_swap(self, other_build: OtherBuild<'a>) -> Self {
        *self.before_swap.lock().unwrap() = Some(other_build);
        self
    }

    /// `other_build` acts just before the first listing that leaves a folder out.
    pub fn before_listing(self, other_build: OtherBuild<'a>) -> Self {
        *self.before_listing.lock().unwrap() = Some(other_build);
        self
    }

    /// Objects downloaded so far.
    pub fn fetched(&self) -> usize {
        self.fetched.load(Ordering::Relaxed)
    }

    fn other_build(&self, at: &Mutex<Option<OtherBuild<'a>>>) {
        if let Some(other_build) = at.lock().unwrap().take() {
            other_build(self.inner);
        }
    }
}

impl Store for Interleaved<'_> {
    fn url(&self) -> String {
        self.inner.url()
    }
    fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_except(&self, prefix: &str, skip: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        self.other_build(&self.before_listing);
        self.inner.list_except(prefix, skip)
    }
    fn folder_stamp(&self, dir: &str) -> Option<(String, std::time::SystemTime)> {
        if self.remote { None } else { self.inner.folder_stamp(dir) }
    }
    fn read(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<Vec<u8>>> {
        self.inner.read(path, limit)
    }
    fn write(&self, path: &str, bytes: &[u8]) -> anyhow::Result<ObjectMeta> {
        self.inner.write(path, bytes)
    }
    fn write_if_absent(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Option<ObjectMeta>> {
        self.inner.write_if_absent(path, bytes)
    }
    fn read_tagged(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        self.inner.read_tagged(path, limit)
    }
    fn write_if_tag(&self, path: &str, bytes: &[u8], tag: &str) -> anyhow::Result<Option<ObjectMeta>> {
        self.other_build(&self.before_swap);
        self.inner.write_if_tag(path, bytes, tag)
    }
    fn delete_if_tag(&self, path: &str, tag: &str) -> anyhow::Result<bool> {
        self.inner.delete_if_tag(path, tag)
    }
    fn publish(&self, local: &Path, path: &str) -> anyhow::Result<ObjectMeta> {
        self.inner.publish(local, path)
    }
    fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.inner.delete(path)
    }
    fn local_path(&self, path: &str) -> Option<std::path::PathBuf> {
        if self.remote { None } else { self.inner.local_path(path) }
    }
    fn fetch(&self, path: &str, dest: &Path, size: u64) -> anyhow::Result<()> {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.inner.fetch(path, dest, size)
    }
    fn head(&self, path: &str) -> anyhow::Result<Option<ObjectMeta>> {
        if !self.remote {
            return self.inner.head(path);
        }
        // Its content tag (blake3) stands for S3's ETag.
        let Some(meta) = self.inner.head(path)? else { return Ok(None) };
        Ok(self.inner.tag_of(path)?.map(|version| ObjectMeta { version, ..meta }))
    }
    fn scratch_root(&self) -> std::path::PathBuf {
        self.inner.scratch_root()
    }
    fn lock(&self, pipeline: &str) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
        self.inner.lock(pipeline)
    }
    fn versions_identify_content(&self) -> bool {
        self.remote
    }
}
