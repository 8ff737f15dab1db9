//! A counting semaphore with a pool: CPU work runs on at most one thread per core, each with its scratch.

use super::process::Scratch;
use std::sync::{Condvar, Mutex};

/// A counting semaphore: CPU work runs on at most one thread per core, each with a scratch (decode buffer,
/// codec handles) from a pool, so they are reused rather than made afresh for every image.
pub struct Permits {
    free: Mutex<Vec<Scratch>>,
    cv: Condvar,
}

impl Permits {
    pub fn new(n: usize) -> Permits {
        Permits { free: Mutex::new((0..n).map(|_| Scratch::default()).collect()), cv: Condvar::new() }
    }

    pub fn run<T>(&self, f: impl FnOnce(&mut Scratch) -> T) -> T {
        let mut scratch = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = free.pop() {
                    break s;
                }
                free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
            }
        };
        let out = f(&mut scratch);
        scratch.shrink_after_huge_image();
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
        self.cv.notify_one();
        out
    }
}
