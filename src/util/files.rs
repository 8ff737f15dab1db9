//! Files written so that a crash leaves the old one or the new one, and files identified by content.

use anyhow::Context;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Files being written start with this; readers skip them, and a crash leaves nothing else behind.
pub const TEMP_PREFIX: &str = ".dsmake-tmp-";

/// A temporary name beside `dest`, in the same folder so that the rename is atomic.
pub fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    dest.with_file_name(format!("{TEMP_PREFIX}{}-{name}", fastrand::u64(..)))
}

pub fn sync_dir(dir: &Path) {
    // Makes the rename durable. Some file systems refuse fsync on a directory: that loses nothing here.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `dest` so that a crash leaves the old file or the new one, never a mix.
/// Sets `file`'s modification time to now by the system clock, then flushes it. The time a file system stamps
/// on a write comes from the kernel's coarse clock (a tick of 1–4 ms), in which two writers can each leave a
/// file of the same size; a store object's version is its modification time, and a worker's commit tells its
/// own outputs from another build's by version and size: the system clock's nanoseconds tell them apart.
pub fn stamp_and_sync(file: &File) -> std::io::Result<()> {
    file.set_modified(std::time::SystemTime::now())?;
    file.sync_all()
}

pub fn write_atomically(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let temp = temp_beside(dest);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        stamp_and_sync(&file)?;
        fs::rename(&temp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir);
    Ok(())
}

pub fn hash_file(path: &Path) -> anyhow::Result<String> {
    Ok(hash(path)?.to_hex().to_string())
}

pub fn hash(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    hasher.update_reader(file).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize())
}
