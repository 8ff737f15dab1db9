//! Workers' scratch folders under the store's scratch root, and the clean-up of abandoned ones.
//!
//! A folder is named `<host>-<pid>-<random>` and holds `.lock`, flock'd by its worker for as long as the
//! worker lives (the kernel drops the lock when the process dies, even by -9). Clean-up removes a folder only
//! when it was made on this host, its lock can be taken and it is older than [`GRACE`]: a pid says nothing
//! about a process on another host of a shared (NFS) store or in another PID namespace, a lock does; the host
//! check leaves other hosts' folders alone where flock is not shared over the network; the age covers the
//! moment between creating a folder and locking it.

use anyhow::Context;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A younger scratch folder is never removed by another process.
pub const GRACE: Duration = Duration::from_secs(600);
const LOCK: &str = ".lock";

/// A scratch folder, removed with everything in it when dropped; locked while it lives.
pub struct Scratch {
    // Declared first, dropped first: the lock is released just before the folder goes.
    _lock: File,
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(root: &Path) -> anyhow::Result<Scratch> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{}-", host(), std::process::id()))
            .tempdir_in(root)
            .with_context(|| format!("cannot create a scratch folder in {}", root.display()))?;
        let path = dir.path().join(LOCK);
        let lock = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        lock.try_lock().with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(Scratch { _lock: lock, dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// This host's name as it appears in folder names: `-` separates the parts, so it becomes `_`.
fn host() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
}

/// Removes scratch folders of this host whose worker is gone (a build killed with -9).
pub fn clean_abandoned(root: &Path) {
    clean_abandoned_in(root, &host(), GRACE);
}

fn clean_abandoned_in(root: &Path, host: &str, grace: Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return removed };
    for entry in entries.flatten() {
        let path = entry.path();
        if abandoned(&path, &entry.file_name().to_string_lossy(), host, grace) && std::fs::remove_dir_all(&path).is_ok()
        {
            removed.push(path);
        }
    }
    removed
}

/// The liveness rule. A worker locks only the folder it has just made, so a free lock on a folder older than
/// the grace period stays free: releasing it at once before removing the folder is safe.
fn abandoned(path: &Path, name: &str, host: &str, grace: Duration) -> bool {
    let ours = name.strip_prefix(host).is_some_and(|rest| rest.starts_with('-'));
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|at| SystemTime::now().duration_since(at).is_ok_and(|age| age >= grace));
    if !ours || !old {
        return false;
    }
    match File::open(path.join(LOCK)) {
        Ok(file) => file.try_lock().is_ok(),
        // No lock file: a worker died between making the folder and locking it (hence the age check).
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        std::fs::write(dir.join(LOCK), "").unwrap();
        dir
    }

    #[test]
    fn removes_only_this_hosts_unlocked_old_folders() {
        let root = tempfile::tempdir().unwrap();
        let dead = folder(root.path(), "hosta-1-x");
        let live = folder(root.path(), "hosta-2-y");
        let held = File::open(live.join(LOCK)).unwrap();
        held.try_lock().unwrap();
        let other_host = folder(root.path(), "hostb-1-z");
        let longer_host = folder(root.path(), "hosta.lan-1-w");
        let legacy = folder(root.path(), "123-abc");

        let removed = clean_abandoned_in(root.path(), "hosta", Duration::ZERO);
        assert_eq!(removed, vec![dead.clone()]);
        for kept in [&live, &other_host, &longer_host, &legacy] {
            assert!(kept.exists(), "{}", kept.display());
        }
        drop(held);
        assert_eq!(clean_abandoned_in(root.path(), "hosta", Duration::ZERO), vec![live]);
    }

    #[test]
    fn a_young_folder_is_kept_even_unlocked_or_without_its_lock_file() {
        let root = tempfile::tempdir().unwrap();
        let unlocked = folder(root.path(), "hosta-1-x");
        let unborn = root.path().join("hosta-2-y");
        std::fs::create_dir(&unborn).unwrap();
        assert!(clean_abandoned_in(root.path(), "hosta", Duration::from_secs(3600)).is_empty());
        assert!(unlocked.exists() && unborn.exists());
        let mut removed = clean_abandoned_in(root.path(), "hosta", Duration::ZERO);
        removed.sort();
        assert_eq!(removed, vec![unlocked, unborn]);
    }

    #[test]
    fn a_live_scratch_folder_survives_clean_up_and_goes_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let scratch = Scratch::new(root.path()).unwrap();
        let name = scratch.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("{}-{}-", host(), std::process::id())), "{name}");
        assert!(clean_abandoned_in(root.path(), &host(), Duration::ZERO).is_empty());
        let path = scratch.path().to_path_buf();
        drop(scratch);
        assert!(!path.exists());
    }
}
