//! How much memory this process may use (the machine's available memory, within its cgroup's limit), and
//! sizes as people write them (`512MiB`, `2G`).

use anyhow::{Context, bail};

/// `mi_option_purge_delay` in the v3 mimalloc.h that libmimalloc-sys vendors (as in main.rs).
const PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

// The allocator's crate, linked into every binary of this crate (tests too), for the options above.
use mimalloc as _;

/// While any is held, mimalloc keeps freed memory for [`HOLD_MS`] milliseconds before giving it back to the
/// system; when the last is dropped, the delay it had before the first is restored (holds may overlap: tests
/// plan in parallel). dsmake purges at once (main.rs, for builds that move hundreds of MB a second), but a plan
/// of 10⁶ targets frees and refills hundreds of MB within moments, and giving pages back only to fault them in
/// again cost up to a tenth of its CPU time. Measured at 10⁶ targets (a plan of about 5 s of CPU): 50 ms
/// faulted 350,000 pages, 200 ms 280,000, 0.9 s 210,000 (0.3 s less kernel time than 50 ms, for 50–80 MB
/// more resident: 720–750 MB), never purging 195,000 (790 MB). Not mimalloc's own default (1 s), so that a
/// test can tell a restored delay from a held one. Nothing changes where `MIMALLOC_PURGE_DELAY` says
/// otherwise.
pub struct HoldFreed(bool);

pub const HOLD_MS: std::ffi::c_long = 900;

/// Holds in force, and the delay before the first of them; changed only under this lock.
static HOLDS: std::sync::Mutex<(usize, std::ffi::c_long)> = std::sync::Mutex::new((0, 0));

pub fn hold_freed() -> HoldFreed {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return HoldFreed(false);
    }
    let mut holds = HOLDS.lock().unwrap_or_else(|p| p.into_inner());
    if holds.0 == 0 {
        // SAFETY: reading and setting a mimalloc option is thread-safe; any non-negative delay is valid.
        holds.1 = unsafe { mi_option_get(PURGE_DELAY) };
        unsafe { mi_option_set(PURGE_DELAY, HOLD_MS) };
    }
    holds.0 += 1;
    HoldFreed(true)
}

impl Drop for HoldFreed {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let mut holds = HOLDS.lock().unwrap_or_else(|p| p.into_inner());
        holds.0 -= 1;
        if holds.0 == 0 {
            // SAFETY: as in `hold_freed`; the value is the one mimalloc gave.
            unsafe { mi_option_set(PURGE_DELAY, holds.1) };
        }
    }
}

/// Bytes this process can still use: the kernel's `MemAvailable`, or less when a cgroup (a container, a
/// systemd slice) limits the process further. `None` where neither can be read.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available(&t));
    let cgroup = cgroup_room();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The room left under the cgroup v2 memory limit of this process, when it has one.
fn cgroup_room() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max: u64 = std::fs::read_to_string(dir.join("memory.max")).ok()?.trim().parse().ok()?;
    let current: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// A size in bytes: a number with an optional unit, `K`/`M`/`G`/`T` (powers of 1024, with or without `iB`
/// or `B`), e.g. `512MiB`, `2G`, `1500000`.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("`{text}` is not a size (say 512MiB or 2G)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => bail!("`{text}`: unknown unit `{other}` (use K, M, G or T, as in 512MiB or 2G)"),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        bail!("`{text}` is not a size this machine can have");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5 gb").unwrap(), 3 << 29);
        assert_eq!(parse_size("1500000").unwrap(), 1_500_000);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        for bad in ["", "MiB", "12 parsecs", "0", "-5M", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn holding_freed_memory_sets_the_delay_and_restores_it() {
        let get = || unsafe { mi_option_get(PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            assert!(!hold_freed().0, "the user's setting stands");
            return;
        }
        let first = hold_freed();
        let second = hold_freed();
        assert_eq!(get(), HOLD_MS);
        drop(first);
        assert_eq!(get(), HOLD_MS, "still held by the second");
        drop(second);
        // Plans of other tests may hold it meanwhile; the last of all restores the delay from before the first.
        let holds = HOLDS.lock().unwrap();
        assert_eq!(get(), if holds.0 == 0 { holds.1 } else { HOLD_MS });
        assert_ne!(holds.1, HOLD_MS, "the delay from before (main.rs's or mimalloc's default) is saved");
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24683032 kB\nMemFree:        12941436 kB\nMemAvailable:   24059012 kB\n";
        assert_eq!(mem_available(text), Some(24_059_012 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert!(available().is_some_and(|a| a > 0), "this machine says what it has");
    }
}
