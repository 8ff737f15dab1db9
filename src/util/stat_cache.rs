//! Content identity (blake3) of local files, with a stat cache so that an unchanged file is not read again.
//! A file counts as unchanged when its size, mtime, ctime and inode all match the cache. As in git's index,
//! a file modified within the last moment before it was hashed is not cached: a second write in the same
//! timestamp tick would go unseen.

use anyhow::Context;
use rayon::prelude::*;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A file whose mtime is this close to the moment it was hashed is hashed again next time.
const RACY_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    blake3: [u8; 32],
}

/// The cache file: this magic, then per entry the path's length (u32) and bytes, size, mtime and ctime in
/// nanoseconds, inode and the 32-byte digest, little-endian. Binary, because a cache of 10⁵ files is read
/// at every plan.
const MAGIC: &[u8; 8] = b"DSMKSC01";

fn decode(bytes: &[u8]) -> Option<HashMap<Box<[u8]>, Entry>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    // Sized from the bytes (an entry takes at least 84): no rehash, which holds two tables at once.
    let mut entries = HashMap::with_capacity(bytes.len() / 120);
    while let Some(len) = take(4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let path: Box<[u8]> = take(len)?.into();
        let size = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let ctime_ns = i128::from_le_bytes(take(16)?.try_into().ok()?);
        let ino = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let blake3 = take(32)?.try_into().ok()?;
        entries.insert(path, Entry { size, mtime_ns, ctime_ns, ino, blake3 });
    }
    Some(entries)
}

fn encode(entries: &HashMap<Box<[u8]>, Entry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * 128);
    out.extend_from_slice(MAGIC);
    for (path, e) in entries {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.ino.to_le_bytes());
        out.extend_from_slice(&e.blake3);
    }
    out
}

#[derive(Debug, Default)]
pub struct StatCache {
    file: Option<PathBuf>,
    /// By the path's bytes: hashing a `Path` walks its components, which a plan of 10⁶ files pays for.
    entries: Mutex<HashMap<Box<[u8]>, Entry>>,
    dirty: AtomicBool,
    pub hashed_files: AtomicU64,
    pub hashed_bytes: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub size: u64,
    pub blake3: String,
}

impl StatCache {
    /// Opens the cache kept in `file`; a missing or unreadable cache starts empty.
    pub fn open(file: PathBuf) -> Self {
        let entries = std::fs::read(&file).ok().and_then(|bytes| decode(&bytes)).unwrap_or_default();
        StatCache { file: Some(file), entries: Mutex::new(entries), ..Default::default() }
    }

    /// Identities of many paths, hashed in parallel where the cache cannot vouch for them; `None` for a path
    /// that is not a regular file (a folder a glob matched). One stat per path.
    pub fn identities(&self, paths: &[PathBuf]) -> anyhow::Result<Vec<Option<Identity>>> {
        paths.par_iter().map(|p| self.identity_if_file(p)).collect()
    }

    pub fn identity(&self, path: &Path) -> anyhow::Result<Identity> {
        self.identity_if_file(path)?.with_context(|| format!("{} is not a regular file", path.display()))
    }

    fn identity_if_file(&self, path: &Path) -> anyhow::Result<Option<Identity>> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        let ctime_ns = meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128;
        let (size, ino) = (meta.size(), meta.ino());
        if let Some(hit) = self.lock().get(path.as_os_str().as_bytes())
            && hit.size == size
            && hit.mtime_ns == mtime_ns
            && hit.ctime_ns == ctime_ns
            && hit.ino == ino
        {
            return Ok(Some(Identity { size, blake3: blake3::Hash::from_bytes(hit.blake3).to_hex().to_string() }));
        }
        let started = SystemTime::now();
        let digest = super::files::hash(path)?;
        let blake3 = digest.to_hex().to_string();
        self.hashed_files.fetch_add(1, Ordering::Relaxed);
        self.hashed_bytes.fetch_add(size, Ordering::Relaxed);
        let modified = meta.modified().unwrap_or(started);
        let settled = started.duration_since(modified).is_ok_and(|age| age > RACY_WINDOW);
        if settled {
            let entry = Entry { size, mtime_ns, ctime_ns, ino, blake3: *digest.as_bytes() };
            self.lock().insert(path.as_os_str().as_bytes().into(), entry);
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(Some(Identity { size, blake3 }))
    }

    /// Writes the cache back if anything was added (atomically: a crash leaves the old cache).
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = encode(&self.lock());
        super::files::write_atomically(file, &bytes)
            .with_context(|| format!("cannot write the stat cache {}", file.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Entry>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_files_are_not_read_again_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "one").unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(old).unwrap();

        let cache_file = dir.path().join("cache.json");
        let cache = StatCache::open(cache_file.clone());
        let first = cache.identity(&file).unwrap();
        cache.save().unwrap();
        assert_eq!(first.blake3, blake3::hash(b"one").to_hex().to_string());

        let cache = StatCache::open(cache_file);
        cache.identity(&file).unwrap();
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 0);

        std::fs::write(&file, "two!").unwrap();
        assert_eq!(cache.identity(&file).unwrap().blake3, blake3::hash(b"two!").to_hex().to_string());
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 1);
    }
}
