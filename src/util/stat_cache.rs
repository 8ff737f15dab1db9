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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// A file whose mtime is this close to the moment it was hashed is hashed again next time.
const RACY_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The size of an entry after its path: size, mtime, ctime, inode, digest.
const FIELDS: usize = 8 + 16 + 16 + 8 + 32;

/// The cache file as read, with where each entry starts by a hash of its path: looking a file up reads the
/// table, then one place in the bytes (its path and fields side by side), where a map of boxed paths held an
/// allocation per file (read scattered over the heap at each look-up) and took a tenth of a second to build
/// at 5×10⁵ files.
#[derive(Debug, Default)]
struct Loaded {
    bytes: Vec<u8>,
    /// By [`path_hash`]: the offset of the entry (its path's length). Two paths with one hash keep the later
    /// entry; the other then misses (and is hashed again): a cost, not an error, that 64 bits make rare.
    at: HashMap<u64, usize>,
}

fn path_hash(path: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x5354_4154_4341_4348).hash_one(path)
}

impl Loaded {
    /// The cache in `file`; empty where it is missing, unreadable or not of this format.
    fn read(file: &Path) -> Loaded {
        std::fs::read(file).ok().and_then(Loaded::decode).unwrap_or_default()
    }

    /// `None` when the bytes are not a cache of this format (or are cut short): the cache starts empty.
    fn decode(bytes: Vec<u8>) -> Option<Loaded> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        // Sized from the bytes (an entry takes at least 84): no rehash, which holds two tables at once.
        let mut at = HashMap::with_capacity(bytes.len() / 120);
        while !rest.is_empty() {
            let offset = bytes.len() - rest.len();
            let (len, tail) = rest.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let (path, tail) = tail.split_at_checked(len)?;
            rest = tail.get(FIELDS..)?;
            at.insert(path_hash(path), offset);
        }
        Some(Loaded { bytes, at })
    }

    /// The entry at `offset` (checked when loaded): its path and fields.
    fn entry(&self, offset: usize) -> Option<(&[u8], Entry)> {
        let rest = self.bytes.get(offset..)?;
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let path = rest.get(4..4 + len)?;
        let f = rest.get(4 + len..4 + len + FIELDS)?;
        let entry = Entry {
            size: u64::from_le_bytes(f[..8].try_into().ok()?),
            mtime_ns: i128::from_le_bytes(f[8..24].try_into().ok()?),
            ctime_ns: i128::from_le_bytes(f[24..40].try_into().ok()?),
            ino: u64::from_le_bytes(f[40..48].try_into().ok()?),
            blake3: f[48..80].try_into().ok()?,
        };
        Some((path, entry))
    }

    fn get(&self, path: &[u8]) -> Option<Entry> {
        let (found, entry) = self.entry(*self.at.get(&path_hash(path))?)?;
        (found == path).then_some(entry)
    }

    /// Every entry, in the file's order.
    fn iter(&self) -> impl Iterator<Item = (&[u8], Entry)> {
        let mut offset = MAGIC.len();
        std::iter::from_fn(move || {
            let (path, entry) = self.entry(offset)?;
            offset += 4 + path.len() + FIELDS;
            Some((path, entry))
        })
    }
}

fn encode<'a>(entries: impl Iterator<Item = (&'a [u8], Entry)>, count: usize) -> Vec<u8> {
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
    /// What the cache file held; read-only once loaded, so the files of a plan are looked up without a lock.
    loaded: OnceLock<Loaded>,
    /// The thread reading and indexing the cache file, started by `open`: a plan reads its pipeline, lists
    /// the store and walks folders meanwhile, and waits for it only at its first look-up.
    loading: Mutex<Option<std::thread::JoinHandle<Loaded>>>,
    /// Files hashed by this process, by the path's bytes; they win over `loaded` when saved.
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
        let path = file.clone();
        // Without a thread (a process at its limit), it is read at the first look-up instead.
        let loading = std::thread::Builder::new().name("stat-cache".into()).spawn(move || Loaded::read(&path)).ok();
        StatCache { file: Some(file), loading: Mutex::new(loading), ..Default::default() }
    }

    fn loaded(&self) -> &Loaded {
        self.loaded.get_or_init(|| {
            let loading = self.loading.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            match loading {
                Some(thread) => thread.join().unwrap_or_default(),
                None => self.file.as_deref().map(Loaded::read).unwrap_or_default(),
            }
        })
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
        if let Some(hit) = self.loaded().get(bytes).filter(|hit| vouches(hit)) {
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
        let loaded = self.loaded();
        let kept = loaded.iter().filter(|(path, _)| !added.contains_key(*path));
        let added_entries = added.iter().map(|(path, e)| (&path[..], *e));
        let bytes = encode(kept.chain(added_entries), loaded.at.len() + added.len());
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

    #[test]
    fn a_saved_cache_keeps_what_it_loaded_and_a_damaged_one_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        let files: Vec<PathBuf> = (0..50).map(|i| dir.path().join(format!("f{i}"))).collect();
        for (i, file) in files.iter().enumerate() {
            std::fs::write(file, i.to_string()).unwrap();
            std::fs::File::options().write(true).open(file).unwrap().set_modified(old).unwrap();
        }
        let cache_file = dir.path().join("cache");
        let cache = StatCache::open(cache_file.clone());
        for file in &files[..30] {
            cache.identity(file).unwrap();
        }
        cache.save().unwrap();
        // A second process adds the rest; what the first cached is kept.
        let cache = StatCache::open(cache_file.clone());
        for file in &files {
            cache.identity(file).unwrap();
        }
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 20);
        cache.save().unwrap();
        let cache = StatCache::open(cache_file.clone());
        for (i, file) in files.iter().enumerate() {
            assert_eq!(cache.identity(file).unwrap().blake3, blake3::hash(i.to_string().as_bytes()).into());
        }
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 0);
        assert_eq!(cache.loaded().iter().count(), 50);

        let bytes = std::fs::read(&cache_file).unwrap();
        std::fs::write(&cache_file, &bytes[..bytes.len() - 1]).unwrap();
        let cache = StatCache::open(cache_file.clone());
        cache.identity(&files[0]).unwrap();
        assert_eq!(cache.hashed_files.load(Ordering::Relaxed), 1, "a cut-short cache is not trusted");
        assert!(StatCache::open(dir.path().join("missing")).identity(&files[0]).is_ok());
    }
}
