//! Decoding under the build's memory budget: a decode slot from the build (about one per core for the whole
//! build, not per shard), the decode's pixels admitted from the image's header before they are allocated, and a
//! scratch (decode buffer, codec handles) from a pool the process shares, so that there are never more scratches
//! than decodes that ran at once, and they are reused rather than made afresh for every image.

use super::process::{LARGE, SMALL, Scratch};
use crate::kind::{Cancel, Cancelled, MemoryBudget};
use std::sync::Mutex;

/// Scratches between decodes. Their pixel buffers stay small (`process::SMALL`), except for up to
/// `KEEP_LARGE` of up to `process::LARGE`: a wallpaper-sized PNG decodes whole, and faulting in and zeroing
/// a fresh 28 MB buffer for each one cost a tenth of decoding it. What the pool keeps idle, outside the
/// memory budget, stays bounded whatever the number of cores.
static POOL: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// Large scratches the pool keeps at most.
const KEEP_LARGE: usize = 2;

/// Whether an image of these bytes is likely to decode whole at a large size: a large file of a format decoded
/// at full size (JPEG and WebP are scaled while decoding, to about the output size; a PNG shrunk fourfold is
/// reduced row by row, but which PNG is, only its header says).
pub fn decodes_large(bytes: &[u8]) -> bool {
    bytes.len() > 1 << 20 && !bytes.starts_with(&[0xff, 0xd8]) && !bytes.starts_with(b"RIFF")
}

/// Runs `f` in a decode slot of `memory` with a scratch (a large one when `large` and the pool has one); `f`
/// admits its pixels through the closure it is handed (an error there means the build was interrupted).
/// `Cancelled` when interrupted while waiting for a slot.
pub fn decode<T>(
    memory: &MemoryBudget,
    cancel: &Cancel,
    large: bool,
    f: impl FnOnce(&mut Scratch, &mut dyn FnMut(u64) -> Result<(), String>) -> T,
) -> Result<T, Cancelled> {
    let mut slot = memory.decode(cancel)?;
    let mut scratch = {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        match pool.iter().rposition(|s| s.is_large() == large) {
            Some(at) => pool.swap_remove(at),
            None => pool.pop().unwrap_or_default(),
        }
    };
    let mut admit = |bytes| slot.admit(bytes, cancel).map_err(|e| e.to_string());
    let out = f(&mut scratch, &mut admit);
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    let kept_large = pool.iter().filter(|s| s.is_large()).count();
    scratch.shrink_past(if kept_large < KEEP_LARGE { LARGE } else { SMALL });
    pool.push(scratch);
    Ok(out)
}
