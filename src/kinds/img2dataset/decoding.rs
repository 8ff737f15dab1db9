//! Decoding under the build's memory budget: a decode slot from the build (about one per core for the whole
//! build, not per shard), the decode's pixels admitted from the image's header before they are allocated, and a
//! scratch (decode buffer, codec handles) from a pool the process shares, so that there are never more scratches
//! than decodes that ran at once, and they are reused rather than made afresh for every image.

use super::process::Scratch;
use crate::kind::{Cancel, Cancelled, MemoryBudget};
use std::sync::Mutex;

/// Scratches between decodes. Their pixel buffers stay small (`Scratch::shrink_after_huge_image`).
static POOL: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// Runs `f` in a decode slot of `memory` with a scratch; `f` admits its pixels through the closure it is handed
/// (an error there means the build was interrupted). `Cancelled` when interrupted while waiting for a slot.
pub fn decode<T>(
    memory: &MemoryBudget,
    cancel: &Cancel,
    f: impl FnOnce(&mut Scratch, &mut dyn FnMut(u64) -> Result<(), String>) -> T,
) -> Result<T, Cancelled> {
    let mut slot = memory.decode(cancel)?;
    let mut scratch = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
    let mut admit = |bytes| slot.admit(bytes, cancel).map_err(|e| e.to_string());
    let out = f(&mut scratch, &mut admit);
    scratch.shrink_after_huge_image();
    POOL.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
    Ok(out)
}
