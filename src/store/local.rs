//! The local-folder store: temp file, fsync, rename — a reader never sees half an object.

use super::read_limit::read_at_most;
use super::{ObjectMeta, ReadLimit, Store, TooLarge};
use anyhow::{Context, bail};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Files being written start with this; listings of outputs skip them and `gc` removes them.
pub use crate::util::files::TEMP_PREFIX;
use crate::util::files::{stamp_and_sync, sync_dir, temp_beside, write_atomically};
use crate::util::walk::FileMeta;

thread_local! {
    /// The object lock files this thread holds (see `LocalStore::object_lock`).
    static HELD: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A held object lock (`None`: held already by this thread, further up); unlocked when dropped.
struct ObjectLock(Option<(File, PathBuf)>);

impl Drop for ObjectLock {
    fn drop(&mut self) {
        if let Some((_, lock)) = &self.0 {
            HELD.with_borrow_mut(|held| held.retain(|l| l != lock));
        }
        // The file, closed after this, releases the lock.
    }
}

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The root is made absolute: workers run commands in scratch folders, where a relative path means nothing.
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root: std::path::absolute(&root).unwrap_or(root) }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Holds one of a few lock files that conditional writes and deletes take, chosen by the object's path, so
    /// that each compare-and-swap is atomic against every other (processes of several builds, or machines on
    /// one NFS folder, included). Striped: a lock file per object would leave one file per target behind.
    /// A thread that holds the stripe already ([`Store::hold`]) goes through: its own conditional writes of the
    /// object it holds must not wait for itself.
    fn object_lock(&self, path: &str) -> anyhow::Result<ObjectLock> {
        const STRIPES: u8 = 64;
        let stripe = blake3::hash(path.as_bytes()).as_bytes()[0] % STRIPES;
        let (file, lock) = self.lock_file(&format!("objects-{stripe:02}.lock"))?;
        if HELD.with_borrow(|held| held.contains(&lock)) {
            return Ok(ObjectLock(None));
        }
        file.lock().with_context(|| format!("cannot lock {}", lock.display()))?;
        HELD.with_borrow_mut(|held| held.push(lock.clone()));
        Ok(ObjectLock(Some((file, lock))))
    }

    /// Opens (creating it if need be) the lock file `name` in the store's `.dsmake/locks`; not yet locked.
    fn lock_file(&self, name: &str) -> anyhow::Result<(File, PathBuf)> {
        let dir = self.root.join(".dsmake").join("locks");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        Ok((file, path))
    }

    /// Every object under `prefix`, not entering the folders (by path relative to it) `enter` refuses: one walk
    /// (util::walk), each file stated through its folder, side by side, and its store path made only once it
    /// is stated. A linked object is what it points to.
    fn listing(&self, prefix: &str, enter: impl Fn(&Path) -> bool + Sync) -> anyhow::Result<Vec<ObjectMeta>> {
        let prefix = prefix.trim_end_matches('/');
        let dir = self.path(prefix);
        let object = |rel: &Path, meta: &FileMeta| Ok(rel.to_str().map(|rel| listed(super::join(prefix, rel), meta)));
        crate::util::walk::files_entering(&dir, usize::MAX, enter, |_| true, object)
            .with_context(|| format!("cannot list {}", dir.display()))
    }

    /// The content tag of the object at `path` (its blake3, as `read_tagged` gives it, hashed as it is read),
    /// `None` when there is none.
    pub(crate) fn tag_of(&self, path: &str) -> anyhow::Result<Option<String>> {
        let file = self.path(path);
        let Some(opened) = open_existing(&file)? else { return Ok(None) };
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(opened).with_context(|| format!("cannot read {}", file.display()))?;
        Ok(Some(hasher.finalize().to_hex().to_string()))
    }
}

/// The file at `path` opened for reading, `None` when there is none.
fn open_existing(path: &Path) -> anyhow::Result<Option<File>> {
    match File::open(path) {
        Ok(opened) => Ok(Some(opened)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// [`open_existing`] with the file's size; a file larger than `limit` is refused before a byte of it is read.
fn open_within(path: &Path, limit: ReadLimit) -> anyhow::Result<Option<(File, u64)>> {
    let Some(opened) = open_existing(path)? else { return Ok(None) };
    let size = opened.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    if size > limit.bytes {
        return Err(TooLarge { at: path.display().to_string(), size: Some(size), limit }.into());
    }
    Ok(Some((opened, size)))
}

fn meta_of(path: String, meta: &fs::Metadata) -> ObjectMeta {
    ObjectMeta { path, size: meta.size(), version: mtime_version(meta.mtime(), meta.mtime_nsec()) }
}

fn listed(path: String, meta: &FileMeta) -> ObjectMeta {
    ObjectMeta { path, size: meta.size, version: mtime_version(meta.mtime, i64::from(meta.mtime_nsec)) }
}

/// `{seconds}.{nanoseconds:09}`, written digit by digit into a string of its size: a listing makes one per
/// object (10⁶ in a large step), where `format!` cost a formatter and a regrown string each.
fn mtime_version(seconds: i64, nanos: i64) -> String {
    let mut version = String::with_capacity(32);
    if seconds < 0 {
        version.push('-');
    }
    push_decimal(&mut version, seconds.unsigned_abs(), 1);
    version.push('.');
    push_decimal(&mut version, nanos.clamp(0, 999_999_999) as u64, 9);
    version
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    start = start.min(digits.len() - width.clamp(1, digits.len()));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

impl Store for LocalStore {
    fn url(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        self.listing(prefix, |_| true)
    }

    fn list_except(&self, prefix: &str, skip: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        self.listing(prefix, |rel| rel != Path::new(skip))
    }

    fn hold(&self, path: &str) -> anyhow::Result<Option<Box<dyn std::any::Any>>> {
        Ok(Some(Box::new(self.object_lock(path)?)))
    }

    fn folder_stamp(&self, dir: &str) -> Option<(String, SystemTime)> {
        let meta = fs::metadata(self.path(dir)).ok().filter(|m| m.is_dir() && m.nlink() == 2)?;
        let stamp = format!(
            "{}:{}:{}:{}:{}.{:09}:{}.{:09}",
            meta.dev(),
            meta.ino(),
            meta.nlink(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let at = |seconds: i64, nanos: i64| {
            let since = Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
            SystemTime::UNIX_EPOCH + since
        };
        Some((stamp, at(meta.mtime(), meta.mtime_nsec()).max(at(meta.ctime(), meta.ctime_nsec()))))
    }

    fn read(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<Vec<u8>>> {
        let file = self.path(path);
        let Some((opened, size)) = open_within(&file, limit)? else { return Ok(None) };
        match read_at_most(opened, limit, size) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(None) => Err(TooLarge { at: file.display().to_string(), size: None, limit }.into()),
            Err(Some(e)) => Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }

    fn write(&self, path: &str, bytes: &[u8]) -> anyhow::Result<ObjectMeta> {
        let dest = self.path(path);
        write_atomically(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))?;
        let meta = fs::metadata(&dest).with_context(|| format!("cannot stat {}", dest.display()))?;
        Ok(meta_of(path.to_string(), &meta))
    }

    fn write_if_absent(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Option<ObjectMeta>> {
        let dest = self.path(path);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let temp = temp_beside(&dest);
        let written = File::create(&temp).and_then(|mut f| {
            f.write_all(bytes)?;
            stamp_and_sync(&f)
        });
        // link(2) fails when the destination exists: an atomic create-if-absent with the whole content. Under the
        // object's lock, so that a conditional write never lands between another's check and its rename.
        let linked = written.map_err(anyhow::Error::from).and_then(|_| {
            let _held = self.object_lock(path)?;
            Ok(fs::hard_link(&temp, &dest)?)
        });
        // The object's metadata through the temporary name, which is the same file: another writer may remove
        // `dest` as soon as it exists, and that must not fail this write, which did happen.
        let outcome = match linked {
            Ok(()) => fs::metadata(&temp).map(Some).with_context(|| format!("cannot stat {}", dest.display())),
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::AlreadyExists) => {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("cannot write {}", dest.display())),
        };
        let _ = fs::remove_file(&temp);
        let meta = outcome?;
        if meta.is_some() {
            sync_dir(&dir);
        }
        Ok(meta.map(|m| meta_of(path.to_string(), &m)))
    }

    fn read_tagged(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        Ok(self.read(path, limit)?.map(|bytes| {
            let tag = blake3::hash(&bytes).to_hex().to_string();
            (bytes, tag)
        }))
    }

    fn write_if_tag(&self, path: &str, bytes: &[u8], tag: &str) -> anyhow::Result<Option<ObjectMeta>> {
        let _held = self.object_lock(path)?;
        if self.tag_of(path)?.as_deref() != Some(tag) {
            return Ok(None);
        }
        self.write(path, bytes).map(Some)
    }

    fn delete_if_tag(&self, path: &str, tag: &str) -> anyhow::Result<bool> {
        let _held = self.object_lock(path)?;
        if self.tag_of(path)?.as_deref() != Some(tag) {
            return Ok(false);
        }
        self.delete(path)?;
        Ok(true)
    }

    fn publish(&self, local: &Path, path: &str) -> anyhow::Result<ObjectMeta> {
        let dest = self.path(path);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // An object's version is its modification time, stamped at publication (`stamp_and_sync`): a worker's
        // commit tells its own outputs from another build's by version and size.
        File::open(local)
            .and_then(|f| stamp_and_sync(&f))
            .with_context(|| format!("cannot flush {}", local.display()))?;
        if fs::rename(local, &dest).is_err() {
            // Another file system: copy beside the destination, then rename.
            let temp = temp_beside(&dest);
            let copied = fs::copy(local, &temp).and_then(|_| stamp_and_sync(&File::open(&temp)?));
            if let Err(e) = copied.and_then(|_| fs::rename(&temp, &dest)) {
                let _ = fs::remove_file(&temp);
                return Err(e).with_context(|| format!("cannot publish {}", dest.display()));
            }
        }
        sync_dir(&dir);
        let meta = fs::metadata(&dest).with_context(|| format!("cannot stat {}", dest.display()))?;
        Ok(meta_of(path.to_string(), &meta))
    }

    fn delete(&self, path: &str) -> anyhow::Result<()> {
        match fs::remove_file(self.path(path)) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot delete {}", self.path(path).display()))
            }
            _ => Ok(()),
        }
    }

    fn local_path(&self, path: &str) -> Option<PathBuf> {
        Some(self.path(path))
    }

    fn fetch(&self, path: &str, dest: &Path, size: u64) -> anyhow::Result<()> {
        let file = self.path(path);
        let limit = ReadLimit::recorded(size);
        let (opened, _) = open_within(&file, limit)?.with_context(|| format!("{} is missing", file.display()))?;
        let copied = File::create(dest).and_then(|mut out| std::io::copy(&mut opened.take(size + 1), &mut out));
        match copied.with_context(|| format!("cannot copy {} to {}", file.display(), dest.display()))? {
            n if n > size => {
                let _ = fs::remove_file(dest);
                Err(TooLarge { at: file.display().to_string(), size: None, limit }.into())
            }
            _ => Ok(()),
        }
    }

    fn head(&self, path: &str) -> anyhow::Result<Option<ObjectMeta>> {
        match fs::metadata(self.path(path)) {
            Ok(meta) => Ok(Some(meta_of(path.to_string(), &meta))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot stat {}", self.path(path).display())),
        }
    }

    fn scratch_root(&self) -> PathBuf {
        self.root.join(".dsmake").join("scratch")
    }

    fn lock(&self, pipeline: &str) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
        let (file, path) = self.lock_file(&format!("{pipeline}.lock"))?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Box::new(file)),
                Err(fs::TryLockError::WouldBlock) => {
                    if !told {
                        eprintln!("Waiting for another build holding `{pipeline}` on this store to finish…");
                        told = true;
                    }
                    if started.elapsed() > Duration::from_secs(24 * 3600) {
                        bail!("gave up waiting for the lock {}", path.display());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_fetches_are_bounded_by_what_the_object_should_be() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        store.write("s/o.bin", b"12345").unwrap();
        let dest = dir.path().join("fetched");
        store.fetch("s/o.bin", &dest, 5).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"12345");
        fs::remove_file(&dest).unwrap();
        let error = store.fetch("s/o.bin", &dest, 4).unwrap_err();
        assert_eq!(error.downcast_ref::<TooLarge>().map(|e| (e.size, e.limit.bytes)), Some((Some(5), 4)));
        assert!(!dest.exists(), "nothing written");

        let limit = ReadLimit { bytes: 4, what: "a test object", then: "" };
        let error = store.read("s/o.bin", limit).unwrap_err();
        assert_eq!(error.downcast_ref::<TooLarge>().map(|e| e.size), Some(Some(5)));
        assert_eq!(store.read("s/o.bin", ReadLimit { bytes: 5, ..limit }).unwrap().unwrap(), b"12345");
        assert!(store.read("s/none", limit).unwrap().is_none());
    }

    #[test]
    fn mtime_versions_read_as_the_format_they_replace() {
        for (seconds, nanos) in [(1_764_500_000, 5), (0, 0), (7, 999_999_999), (-3, 120), (i64::MIN, 1), (i64::MAX, 0)]
        {
            assert_eq!(mtime_version(seconds, nanos), format!("{seconds}.{nanos:09}"));
        }
    }
}
