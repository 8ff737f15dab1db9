//! Where dsmake keeps what it may throw away: listings, partial downloads, the stat cache.

use std::path::PathBuf;

/// `$DSMAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/dsmake`, else `~/.cache/dsmake`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSMAKE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("dsmake")
}
