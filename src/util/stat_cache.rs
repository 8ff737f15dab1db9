//! Content identity (blake3) of local files, with a stat cache so that an unchanged file is not read again.
//! A file counts as unchanged when its size, mtime, ctime and inode all match the cache. As in git's index,
//! a file modified within the last moment before it was hashed is not cached: a second write in the same
//! timestamp tick would go unseen.

use super::digest::Digest;
use super::walk::FileMeta;
use anyhow::Context;
use foldhash::{HashMap, HashMapExt};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

fn encode<'a>(entries: impl Iterator<Item = (&'a Box<[u8]>, &'a Entry)>, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + count * 128);
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
    /// What the cache file held, by the path's bytes (hashing a `Path` walks its components, which a plan of
    /// 10⁶ files pays for), hashed with foldhash (SipHash was a visible share of such a plan). Read-only once opened, so the files of a plan are looked up without a lock.
    loaded: HashMap<Box<[u8]>, Entry>,
    /// Files hashed by this process; they win over `loaded` when saved.
    added: Mutex<HashMap<Box<[u8]>, Entry>>,
    pub hashed_files: AtomicU64,
    pub hashed_bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub size: u64,
    pub blake3: Digest,
}

impl StatCache {
    /// Opens the cache kept in `file`; a missing or unreadable cache starts empty.
    pub fn open(file: PathBuf) -> Self {
        let loaded = std::fs::read(&file).ok().and_then(|bytes| decode(&bytes)).unwrap_or_default();
        StatCache { file: Some(file), loaded, ..Default::default() }
    }

    /// The identity of the file at `path`, whose metadata the caller has (from its directory listing: one
    /// stat per file, relative to the open folder); `None` when it is not a regular file (a folder a glob
    /// matched). Hashed only where the cache cannot vouch for it.
    pub fn identity_of(&self, path: &Path, meta: &FileMeta) -> anyhow::Result<Option<Identity>> {
        if !meta.is_file() {
            return Ok(None);
        }
        let mtime_ns = meta.mtime as i128 * 1_000_000_000 + meta.mtime_nsec as i128;
        let ctime_ns = meta.ctime as i128 * 1_000_000_000 + meta.ctime_nsec as i128;
        let (size, ino) = (meta.size, meta.ino);
        let vouches =
            |hit: &Entry| hit.size == size && hit.mtime_ns == mtime_ns && hit.ctime_ns == ctime_ns && hit.ino == ino;
        let bytes = path.as_os_str().as_bytes();
        if let Some(hit) = self.loaded.get(bytes).filter(|hit| vouches(hit)) {
            return Ok(Some(Identity { size, blake3: Digest(hit.blake3) }));
        }
        if let Some(hit) = self.lock().get(bytes).filter(|hit| vouches(hit)) {
            return Ok(Some(Identity { size, blake3: Digest(hit.blake3) }));
        }
        let started = SystemTime::now();
        let digest = super::files::hash(path)?;
        self.hashed_files.fetch_add(1, Ordering::Relaxed);
        self.hashed_bytes.fetch_add(size, Ordering::Relaxed);
        let modified = meta.modified().unwrap_or(started);
        let settled = started.duration_since(modified).is_ok_and(|age| age > RACY_WINDOW);
        if settled {
            let entry = Entry { size, mtime_ns, ctime_ns, ino, blake3: *digest.as_bytes() };
            self.lock().insert(bytes.into(), entry);
        }
        Ok(Some(Identity { size, blake3: digest.into() }))
    }

    /// The identity of the regular file at `path` (one stat).
    pub fn identity(&self, path: &Path) -> anyhow::Result<Identity> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.identity_of(path, &FileMeta::of(&meta))?
            .with_context(|| format!("{} is not a regular file", path.display()))
    }

    /// Writes the cache back if anything was added (atomically: a crash leaves the old cache).
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let added = self.lock();
        if added.is_empty() {
            return Ok(());
        }
        let kept = self.loaded.iter().filter(|(path, _)| !added.contains_key(*path));
        let bytes = encode(kept.chain(added.iter()), self.loaded.len() + added.len());
        super::files::write_atomically(file, &bytes)
            .with_context(|| format!("cannot write the stat cache {}", file.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Entry>> {
        self.added.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        assert_eq!(first.blake3, blake3::hash(b"one").into());

        let cache = StatCache::open(cache_file);
        cache.identity(&file).unwrap();
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 0);

        std::fs::write(&file, "two!").unwrap();
        assert_eq!(cache.identity(&file).unwrap().blake3, blake3::hash(b"two!").into());
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 1);
    }
}
