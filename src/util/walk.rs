//! The files under a folder, each with its metadata, for globs over 10⁶ files. Each folder is opened once and
//! read with `readdir`; the names of its kept files go into one buffer (no path, entry or metadata allocated
//! per file), and each is stated with `fstatat` relative to the open folder (no path lookup from the root), in
//! parallel batches. While one batch is stated, the next is read: reading a folder is serial. Plain POSIX
//! calls, one code path for Linux and macOS/BSD (`statx` with a field mask measured no faster).

use anyhow::{Context, bail};
use rayon::prelude::*;
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Files are stated in batches of this many, side by side: what waits for its stat stays small (a folder
/// can hold 10⁶ files).
const BATCH: usize = 16_384;

/// What a walk knows of a file: the fields of one `stat` that callers use (sizes, times and the inode for
/// the stat cache, the type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub ino: u64,
    pub dev: u64,
    mode: u32,
}

impl FileMeta {
    pub fn is_file(&self) -> bool {
        self.mode & IFMT == IFREG
    }

    pub fn is_dir(&self) -> bool {
        self.mode & IFMT == IFDIR
    }

    fn is_symlink(&self) -> bool {
        self.mode & IFMT == IFLNK
    }

    /// The modification time (`None` where `SystemTime` cannot hold it).
    pub fn modified(&self) -> Option<SystemTime> {
        let nanos = Duration::from_nanos(u64::from(self.mtime_nsec));
        match u64::try_from(self.mtime) {
            Ok(secs) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs) + nanos),
            Err(_) => {
                SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(self.mtime.unsigned_abs()))?.checked_add(nanos)
            }
        }
    }

    /// The same fields from a `std::fs::Metadata`.
    pub fn of(meta: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt;
        FileMeta {
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec() as u32,
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }

    /// The same fields from a `stat`. Its field types differ by platform (`mode_t` is 16 bits on macOS,
    /// `dev_t` signed 32 bits there), hence the casts: each widens, or keeps the bits of, a value (on Linux
    /// several are to the same type, which clippy flags).
    #[allow(clippy::unnecessary_cast)]
    fn of_stat(st: &libc::stat) -> FileMeta {
        FileMeta {
            size: st.st_size as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
            ctime: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as u32,
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            mode: st.st_mode as u32,
        }
    }
}

/// The file type bits of a mode, as `u32` (`mode_t` is narrower on macOS; the same type on Linux).
#[allow(clippy::unnecessary_cast)]
const IFMT: u32 = libc::S_IFMT as u32;
#[allow(clippy::unnecessary_cast)]
const IFREG: u32 = libc::S_IFREG as u32;
#[allow(clippy::unnecessary_cast)]
const IFDIR: u32 = libc::S_IFDIR as u32;
#[allow(clippy::unnecessary_cast)]
const IFLNK: u32 = libc::S_IFLNK as u32;

/// `fstatat` of `name` relative to the open folder `dir` (`AT_FDCWD`: the working folder); `follow`: what a
/// link points to rather than the link.
fn stat_at(dir: libc::c_int, name: &CStr, follow: bool) -> io::Result<FileMeta> {
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `name` is a NUL-terminated string and `st` a buffer of the struct's size, both valid for the
    // call; `dir` is an open folder or AT_FDCWD.
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled the struct (and it was zeroed before: every field is initialised).
    Ok(FileMeta::of_stat(unsafe { st.assume_init_ref() }))
}

/// Sets this thread's errno to 0: the only way `readdir` tells an error from the end of the folder. Where
/// errno lives is the one call that differs between the platforms dsmake runs on.
fn clear_errno() {
    #[cfg(any(target_os = "linux", target_os = "emscripten", target_os = "fuchsia", target_os = "hurd"))]
    // SAFETY: the pointer is this thread's errno, valid for writes for the thread's lifetime.
    unsafe {
        *libc::__errno_location() = 0
    };
    #[cfg(target_os = "android")]
    // SAFETY: as above.
    unsafe {
        *libc::__errno() = 0
    };
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd", target_os = "dragonfly"))]
    // SAFETY: as above.
    unsafe {
        *libc::__error() = 0
    };
}

/// Opens the folder `name` relative to `dir` (`AT_FDCWD`: the working folder), following links.
fn open_dir(dir: libc::c_int, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and valid for the call; the flags open a folder read-only.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An open folder being read.
struct Reader {
    dir: std::ptr::NonNull<libc::DIR>,
}

// SAFETY: a `DIR` stream may be used from any thread as long as one thread at a time does: `Reader` is not
// `Sync`, and `read` takes it by `&mut`.
unsafe impl Send for Reader {}

impl Reader {
    /// Reads the folder open as `fd` (its own descriptor: `fd` stays usable, for fstatat, until `self` drops).
    fn new(fd: &OwnedFd) -> io::Result<Reader> {
        // SAFETY: dup of an open descriptor.
        let own = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if own < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `own` is an open folder descriptor that nothing else owns; fdopendir takes it over.
        let dir = unsafe { libc::fdopendir(own) };
        match std::ptr::NonNull::new(dir) {
            Some(dir) => Ok(Reader { dir }),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so `own` is still ours to close.
                unsafe { libc::close(own) };
                Err(e)
            }
        }
    }

    /// The next entry's name (without `.` and `..`) and type (`DT_*`), `None` at the end.
    fn next(&mut self) -> io::Result<Option<(&CStr, u8, u64)>> {
        loop {
            clear_errno();
            // SAFETY: `self.dir` is an open stream, used by one thread at a time.
            let entry = unsafe { libc::readdir(self.dir.as_ptr()) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                return if e.raw_os_error() == Some(0) { Ok(None) } else { Err(e) };
            }
            // SAFETY: readdir returned an entry, valid until the next call on this stream (which needs `&mut
            // self`, so the borrow ends first); its name is NUL-terminated.
            let (name, kind, ino) =
                unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type, (*entry).d_ino as u64) };
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                return Ok(Some((name, kind, ino)));
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: the stream is open and dropped once; closedir closes its descriptor.
        unsafe { libc::closedir(self.dir.as_ptr()) };
    }
}

/// Kept files of one folder waiting for their stat: each one's path relative to the walk's base, NUL-
/// terminated, in one buffer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Per file: where its relative path starts in `bytes`, where its name (relative to the folder) starts,
    /// and, for a link, the metadata of what it points to (stated while reading, to know whether it is a
    /// folder).
    files: Vec<(u32, u32, Option<FileMeta>)>,
    /// Per file: its inode number as the folder's entry gives it; files are stated in this order.
    inos: Vec<u64>,
}

impl Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.files.clear();
        self.inos.clear();
    }

    /// The relative path and the name (NUL-terminated) of file `i`.
    fn file(&self, i: usize) -> (&Path, &CStr) {
        let (start, name_at, _) = self.files[i];
        let end = self.files.get(i + 1).map_or(self.bytes.len(), |f| f.0 as usize) - 1;
        let rel = Path::new(OsStr::from_bytes(&self.bytes[start as usize..end]));
        // The terminating NUL is the one pushed after the path; a name holds none (readdir's came from a CStr).
        let name = CStr::from_bytes_with_nul(&self.bytes[name_at as usize..=end]).unwrap_or_default();
        (rel, name)
    }
}

/// A folder to read: its path relative to the walk's base (empty: the base), its depth (1: the base), and
/// the (device, inode) of it and of its ancestors: a loop test.
struct Folder {
    rel: Vec<u8>,
    depth: usize,
    ancestors: Vec<(u64, u64)>,
}

/// Files (anything but folders) under `base`, down to `max_depth` levels (1: its own entries), whose path
/// relative to `base` `keep` accepts: what `visit` makes of each one's relative path and metadata (`None`:
/// leave it out), in no order. `visit` runs as the files are stated, side by side. Symbolic links are
/// followed: a link to a folder is walked as a folder (a link to one of its own ancestors is an error: a
/// loop), a link to a file has the file's metadata. A dangling link, or a file removed during the walk, is
/// not there; neither is anything under a missing `base`.
pub fn files<T: Send>(
    base: &Path,
    max_depth: usize,
    keep: impl Fn(&Path) -> bool + Sync,
    visit: impl Fn(&Path, &FileMeta) -> anyhow::Result<Option<T>> + Sync,
) -> anyhow::Result<Vec<T>> {
    files_entering(base, max_depth, |_| true, keep, visit)
}

/// [`files`], entering only the folders (by path relative to `base`) that `enter` accepts: a folder left out
/// is not read at all.
pub fn files_entering<T: Send>(
    base: &Path,
    max_depth: usize,
    enter: impl Fn(&Path) -> bool + Sync,
    keep: impl Fn(&Path) -> bool + Sync,
    visit: impl Fn(&Path, &FileMeta) -> anyhow::Result<Option<T>> + Sync,
) -> anyhow::Result<Vec<T>> {
    let Ok(base_c) = CString::new(base.as_os_str().as_bytes()) else {
        bail!("cannot read {}: the path holds a NUL byte", base.display());
    };
    let root = match stat_at(libc::AT_FDCWD, &base_c, true) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Ok(Vec::new()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", base.display())),
    };
    let base_fd = match open_dir(libc::AT_FDCWD, &base_c) {
        Ok(fd) => fd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", base.display())),
    };
    let full = |rel: &[u8]| match rel.is_empty() {
        true => base.to_path_buf(),
        false => base.join(OsStr::from_bytes(rel)),
    };
    // Each batch's results, joined once at the end: growing one vector of 10⁶ results doubled and copied it
    // twenty times over.
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut stack = vec![Folder { rel: Vec::new(), depth: 1, ancestors: vec![(root.dev, root.ino)] }];
    let (mut reading, mut stating) = (Batch::default(), Batch::default());
    while let Some(folder) = stack.pop() {
        let fd = match folder.rel.is_empty() {
            true => base_fd.try_clone(),
            false => {
                let rel = CString::new(folder.rel.as_slice()).unwrap_or_default();
                open_dir(base_fd.as_raw_fd(), &rel)
            }
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", full(&folder.rel).display())),
        };
        let mut reader = Reader::new(&fd).with_context(|| format!("cannot read {}", full(&folder.rel).display()))?;
        let dir = fd.as_raw_fd();
        loop {
            // Read the next batch while the last one is stated.
            reading.clear();
            let (read, stated) = rayon::join(
                || read_batch(&mut reader, dir, &folder, max_depth, (&enter, &keep), &mut reading, &full),
                || stat_batch(dir, &stating, &visit, &full),
            );
            stating.clear();
            out.push(stated?);
            let (subfolders, done) = read?;
            stack.extend(subfolders);
            std::mem::swap(&mut reading, &mut stating);
            if done {
                out.push(stat_batch(dir, &stating, &visit, &full)?);
                stating.clear();
                break;
            }
        }
    }
    out.retain(|batch| !batch.is_empty());
    if out.len() == 1 {
        return Ok(out.pop().unwrap_or_default());
    }
    let mut all = Vec::with_capacity(out.iter().map(Vec::len).sum());
    for batch in out {
        all.extend(batch);
    }
    Ok(all)
}

/// Reads up to [`BATCH`] kept files of `folder` into `batch`: the subfolders met on the way (to walk later)
/// and whether the folder is read to its end.
fn read_batch(
    reader: &mut Reader,
    dir: libc::c_int,
    folder: &Folder,
    max_depth: usize,
    (enter, keep): (&(impl Fn(&Path) -> bool + Sync), &(impl Fn(&Path) -> bool + Sync)),
    batch: &mut Batch,
    full: &(impl Fn(&[u8]) -> PathBuf + Sync),
) -> anyhow::Result<(Vec<Folder>, bool)> {
    let mut subfolders = Vec::new();
    while batch.files.len() < BATCH {
        let Some((name, kind, ino)) =
            reader.next().with_context(|| format!("cannot read {}", full(&folder.rel).display()))?
        else {
            return Ok((subfolders, true));
        };
        // The relative path, NUL-terminated, straight into the batch's buffer; taken back out if not kept.
        let start = batch.bytes.len();
        if !folder.rel.is_empty() {
            batch.bytes.extend_from_slice(&folder.rel);
            batch.bytes.push(b'/');
        }
        let name_at = batch.bytes.len();
        batch.bytes.extend_from_slice(name.to_bytes_with_nul());
        let name = CStr::from_bytes_with_nul(&batch.bytes[name_at..]).unwrap_or_default();
        let stat_here = |follow: bool| match stat_at(dir, name, follow) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e)
                .with_context(|| format!("cannot stat {}", full(&batch.bytes[start..batch.bytes.len() - 1]).display())),
        };
        // The type from the entry where the file system gives it, else from a stat of the entry itself (for a
        // folder, the one its loop test needs; a file is stated again, after `keep`).
        let (mut is_dir, mut is_link) = (kind == libc::DT_DIR, kind == libc::DT_LNK);
        let mut own = None;
        if kind == libc::DT_UNKNOWN {
            let Some(meta) = stat_here(false)? else {
                batch.bytes.truncate(start);
                continue;
            };
            (is_dir, is_link) = (meta.is_dir(), meta.is_symlink());
            own = Some(meta);
        }
        // A link is what it points to: stated now, to know whether it is a folder; a dangling one is not there.
        let mut linked = None;
        if is_link {
            let Some(meta) = stat_here(true)? else {
                batch.bytes.truncate(start);
                continue;
            };
            is_dir = meta.is_dir();
            linked = Some(meta);
        }
        let rel = &batch.bytes[start..batch.bytes.len() - 1];
        if is_dir {
            if folder.depth < max_depth && enter(Path::new(OsStr::from_bytes(rel))) {
                // A link's target, else the folder's own stat (taken now if the entry gave its type).
                let meta = match linked.or(own) {
                    Some(meta) => Some(meta),
                    None => stat_here(true)?,
                };
                let Some(meta) = meta else {
                    batch.bytes.truncate(start);
                    continue;
                };
                let id = (meta.dev, meta.ino);
                if folder.ancestors.contains(&id) {
                    bail!("{} links back to a folder it is in: a file system loop", full(rel).display());
                }
                let mut ancestors = folder.ancestors.clone();
                ancestors.push(id);
                subfolders.push(Folder { rel: rel.to_vec(), depth: folder.depth + 1, ancestors });
            }
            batch.bytes.truncate(start);
            continue;
        }
        if !keep(Path::new(OsStr::from_bytes(rel))) {
            batch.bytes.truncate(start);
            continue;
        }
        let (Ok(start), Ok(name_at)) = (u32::try_from(start), u32::try_from(name_at)) else {
            bail!("cannot read {}: too many long names", full(&folder.rel).display());
        };
        batch.files.push((start, name_at, linked));
        batch.inos.push(ino);
    }
    Ok((subfolders, false))
}

/// States the files of `batch`, side by side, and visits each (a file removed since it was read is not
/// there).
fn stat_batch<T: Send>(
    dir: libc::c_int,
    batch: &Batch,
    visit: &(impl Fn(&Path, &FileMeta) -> anyhow::Result<Option<T>> + Sync),
    full: &(impl Fn(&[u8]) -> PathBuf + Sync),
) -> anyhow::Result<Vec<T>> {
    // In inode order: the kernel's inodes (and their dentries) were made in that order, so neighbours in it
    // are neighbours in memory, where the folder's (hash) order sends every stat to a cold cache line.
    let mut order: Vec<u32> = (0..batch.files.len() as u32).collect();
    order.sort_unstable_by_key(|&i| batch.inos[i as usize]);
    let visited: Vec<Option<T>> = order
        .into_par_iter()
        .with_min_len(256)
        .map(|i| {
            let i = i as usize;
            let (rel, name) = batch.file(i);
            let meta = match batch.files[i].2 {
                Some(meta) => meta,
                None => match stat_at(dir, name, false) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot stat {}", full(rel.as_os_str().as_bytes()).display()));
                    }
                },
            };
            visit(rel, &meta)
        })
        .collect::<anyhow::Result<_>>()?;
    // Sized up front: collecting from `flatten` regrew the vector a dozen times per batch.
    let mut kept = Vec::with_capacity(visited.iter().filter(|v| v.is_some()).count());
    kept.extend(visited.into_iter().flatten());
    Ok(kept)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn names(base: &Path, depth: usize, keep: impl Fn(&Path) -> bool + Sync) -> Vec<String> {
        let name = |rel: &Path, meta: &FileMeta| Ok(Some(format!("{} {}", rel.display(), meta.size)));
        let mut found: Vec<String> = files(base, depth, keep, name).unwrap();
        found.sort();
        found
    }

    /// What std's metadata says of each file, by a plain recursive walk: the reference the walk must match.
    fn with_std(base: &Path, rel: &Path, out: &mut Vec<(PathBuf, FileMeta)>) {
        for entry in fs::read_dir(base.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            match fs::metadata(base.join(&rel)) {
                Ok(meta) if meta.is_dir() => with_std(base, &rel, out),
                Ok(meta) => out.push((rel, FileMeta::of(&meta))),
                Err(_) => {}
            }
        }
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
        symlink(base.join("a/mid.txt"), base.join("link.txt")).unwrap();
        symlink(base.join("gone"), base.join("dangling.txt")).unwrap();
        symlink(base.join("a/b"), base.join("linked")).unwrap();

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
        assert!(files(&base.join("top.txt"), 1, |_| true, |_, _| Ok(Some(()))).unwrap().is_empty(), "not a folder");
        // A base that is a link to a folder is walked as the folder.
        let other = tempfile::tempdir().unwrap();
        symlink(base.join("a"), other.path().join("to-a")).unwrap();
        assert_eq!(names(&other.path().join("to-a"), usize::MAX, |_| true), ["b/low.csv 3", "mid.txt 2"]);

        symlink(base.join("a"), base.join("a/b/up")).unwrap();
        let err = files(base, usize::MAX, |_| true, |_, _| Ok(Some(()))).unwrap_err();
        assert!(format!("{err:#}").contains("a file system loop"), "{err:#}");
        assert_eq!(names(base, 2, |_| true).len(), 4, "not deep enough to meet the loop");
    }

    #[test]
    fn a_link_to_itself_is_an_error_and_a_file_removed_before_its_stat_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::write(base.join("stays"), "s").unwrap();
        fs::write(base.join("goes"), "g").unwrap();
        // `keep` runs as the folder is read, before the stats: removing a file there is a removal mid-walk.
        let removing = |rel: &Path| {
            if rel == Path::new("goes") {
                fs::remove_file(base.join(rel)).unwrap();
            }
            true
        };
        assert_eq!(names(base, 1, removing), ["stays 1"]);

        symlink(base.join("self"), base.join("self")).unwrap();
        let err = files(base, 1, |_| true, |_, _| Ok(Some(()))).unwrap_err();
        assert!(format!("{err:#}").contains(&format!("cannot stat {}", base.join("self").display())), "{err:#}");
    }

    #[test]
    fn non_utf8_names_and_errors_of_visit_come_through() {
        let dir = tempfile::tempdir().unwrap();
        let odd = OsStr::from_bytes(b"caf\xe9.txt");
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub").join(odd), "1234").unwrap();
        let found = files(dir.path(), 2, |_| true, |rel, meta| Ok(Some((rel.to_path_buf(), meta.size)))).unwrap();
        assert_eq!(found, [(Path::new("sub").join(odd), 4)]);
        let err = files(dir.path(), 2, |_| true, |_, _| -> anyhow::Result<Option<()>> { bail!("refused") });
        assert_eq!(err.unwrap_err().to_string(), "refused");
    }

    #[test]
    fn many_files_in_several_batches_have_the_metadata_std_gives() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir_all(base.join("x/y")).unwrap();
        let count = BATCH * 2 + 7;
        for i in 0..count {
            let folder = ["", "x/", "x/y/"][i % 3];
            fs::write(base.join(format!("{folder}{i}")), vec![b'.'; i % 5]).unwrap();
        }
        let mut expected = Vec::new();
        with_std(base, Path::new(""), &mut expected);
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let mut found = files(base, usize::MAX, |_| true, |rel, meta| Ok(Some((rel.to_path_buf(), *meta)))).unwrap();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(found.len(), count);
        assert_eq!(found, expected);
        assert!(found.iter().all(|(_, meta)| meta.is_file() && !meta.is_dir()));
        let modified = fs::metadata(base.join("0")).unwrap().modified().unwrap();
        assert_eq!(found.iter().find(|(rel, _)| rel == Path::new("0")).unwrap().1.modified(), Some(modified));
    }
}
