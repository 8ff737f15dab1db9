//! The files under a folder, each with its metadata, for globs over 10⁶ files: the folders are read once,
//! and each file a caller keeps is stated through its directory entry (statx relative to the open folder,
//! in parallel), so the kernel does not walk the whole path again per file and the caller needs no second
//! stat.

use anyhow::{Context, bail};
use rayon::prelude::*;
use std::ffi::OsStr;
use std::fs::{self, DirEntry, Metadata};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files are stated in batches of this many, side by side: what waits for its stat stays small (a folder
/// can hold 10⁶ files), and an entry holds its folder open, so no batch spans folders (a walk may cross
/// thousands).
const BATCH: usize = 16_384;

/// A kept file before it is stated: its path, its directory entry, and, for a link, what it points to.
type Kept = (PathBuf, DirEntry, Option<Box<Metadata>>);

/// Files (anything but folders) under `base`, down to `max_depth` levels (1: its own entries), whose path
/// relative to `base` `keep` accepts: what `visit` makes of each one's path and metadata (`None`: leave it
/// out), in no order. `visit` runs as the files are stated, side by side, so that no metadata outlives its
/// file's turn: at 10⁶ files, a `Metadata` each would be 170 MB. Symbolic links are followed: a link to a
/// folder is walked as a folder (a link to one of its own ancestors is an error: a loop), a link to a file
/// has the file's metadata. A dangling link, or a file removed during the walk, is not there; neither is
/// anything under a missing `base`.
pub fn files<T: Send>(
    base: &Path,
    max_depth: usize,
    keep: impl Fn(&Path) -> bool + Sync,
    visit: impl Fn(PathBuf, &Metadata) -> anyhow::Result<Option<T>> + Sync,
) -> anyhow::Result<Vec<T>> {
    let root = match fs::metadata(base) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Ok(Vec::new()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", base.display())),
    };
    // Each batch's results, joined once at the end: growing one vector of 10⁶ results doubled and copied it
    // twenty times over.
    let mut out: Vec<Vec<T>> = Vec::new();
    // Each folder to read, with its depth and the (device, inode) of it and its ancestors: a loop test.
    let mut stack = vec![(base.to_path_buf(), 1, vec![(root.dev(), root.ino())])];
    while let Some((dir, depth, ancestors)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        // The folder's kept files, each with the metadata of what it links to if it is a link.
        let mut kept: Vec<Kept> = Vec::with_capacity(BATCH.min(64));
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let path = entry.path();
            let kind = entry.file_type().with_context(|| format!("cannot stat {}", path.display()))?;
            let linked = match kind.is_symlink().then(|| fs::metadata(&path)) {
                None => None,
                Some(Ok(meta)) => Some(meta),
                Some(Err(e)) if e.kind() == ErrorKind::NotFound => continue,
                Some(Err(e)) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
            };
            if linked.as_ref().map_or(kind.is_dir(), Metadata::is_dir) {
                if depth < max_depth {
                    let meta = match linked {
                        Some(meta) => meta,
                        None => fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?,
                    };
                    let id = (meta.dev(), meta.ino());
                    if ancestors.contains(&id) {
                        bail!("{} links back to a folder it is in: a file system loop", path.display());
                    }
                    let mut inside = ancestors.clone();
                    inside.push(id);
                    stack.push((path, depth + 1, inside));
                }
                continue;
            }
            if relative(&path, base).is_some_and(&keep) {
                kept.push((path, entry, linked.map(Box::new)));
                if kept.len() == BATCH {
                    stat_and_visit(&mut kept, &visit, &mut out)?;
                }
            }
        }
        stat_and_visit(&mut kept, &visit, &mut out)?;
    }
    if out.len() == 1 {
        return Ok(out.pop().unwrap_or_default());
    }
    let mut all = Vec::with_capacity(out.iter().map(Vec::len).sum());
    for batch in out {
        all.extend(batch);
    }
    Ok(all)
}

/// `path` relative to `base`, where `path` is `base` joined with more: by its bytes, as `Path::strip_prefix`
/// would give it after parsing both into components, which a walk of 10⁶ files pays for.
pub fn relative<'a>(path: &'a Path, base: &Path) -> Option<&'a Path> {
    let (bytes, head) = (path.as_os_str().as_bytes(), base.as_os_str().as_bytes());
    match bytes.strip_prefix(head) {
        Some([b'/', rest @ ..]) if !head.is_empty() && !head.ends_with(b"/") => {
            Some(Path::new(OsStr::from_bytes(rest)))
        }
        _ => path.strip_prefix(base).ok(),
    }
}

fn stat_and_visit<T: Send>(
    kept: &mut Vec<Kept>,
    visit: &(impl Fn(PathBuf, &Metadata) -> anyhow::Result<Option<T>> + Sync),
    out: &mut Vec<Vec<T>>,
) -> anyhow::Result<()> {
    if kept.is_empty() {
        return Ok(());
    }
    let visited: Vec<Option<T>> = kept
        .par_drain(..)
        .map(|(path, entry, linked)| {
            let meta = match linked {
                Some(meta) => *meta,
                None => match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
                },
            };
            visit(path, &meta)
        })
        .collect::<anyhow::Result<_>>()?;
    out.push(visited.into_iter().flatten().collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(base: &Path, depth: usize, keep: impl Fn(&Path) -> bool + Sync) -> Vec<String> {
        let name = |path: PathBuf, meta: &Metadata| {
            Ok(Some(format!("{} {}", path.strip_prefix(base).unwrap().display(), meta.len())))
        };
        let mut found: Vec<String> = files(base, depth, keep, name).unwrap();
        found.sort();
        found
    }

    #[test]
    fn relative_paths_match_strip_prefix() {
        for (path, base) in [("/a/b/c.txt", "/a"), ("/a/b/c.txt", "/a/"), ("a/b", "a"), ("/ab/c", "/a"), ("x/y", "")] {
            let (path, base) = (Path::new(path), Path::new(base));
            assert_eq!(relative(path, base), path.strip_prefix(base).ok(), "{path:?} in {base:?}");
        }
    }

    #[test]
    fn walks_to_the_depth_follows_links_and_refuses_loops() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir_all(base.join("a/b")).unwrap();
        fs::write(base.join("top.txt"), "1").unwrap();
        fs::write(base.join("a/mid.txt"), "22").unwrap();
        fs::write(base.join("a/b/low.csv"), "333").unwrap();
        std::os::unix::fs::symlink(base.join("a/mid.txt"), base.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(base.join("gone"), base.join("dangling.txt")).unwrap();
        std::os::unix::fs::symlink(base.join("a/b"), base.join("linked")).unwrap();

        assert_eq!(names(base, 1, |_| true), ["link.txt 2", "top.txt 1"]);
        assert_eq!(
            names(base, usize::MAX, |_| true),
            ["a/b/low.csv 3", "a/mid.txt 2", "link.txt 2", "linked/low.csv 3", "top.txt 1"]
        );
        assert_eq!(
            names(base, usize::MAX, |p| p.extension().is_some_and(|e| e == "csv")),
            ["a/b/low.csv 3", "linked/low.csv 3"]
        );
        assert!(files(&base.join("missing"), 1, |_| true, |_, _| Ok(Some(()))).unwrap().is_empty());

        std::os::unix::fs::symlink(base.join("a"), base.join("a/b/up")).unwrap();
        let err = files(base, usize::MAX, |_| true, |_, _| Ok(Some(()))).unwrap_err();
        assert!(format!("{err:#}").contains("a file system loop"), "{err:#}");
        assert_eq!(names(base, 2, |_| true).len(), 4, "not deep enough to meet the loop");
    }
}
