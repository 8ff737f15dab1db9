//! One memory budget per build, shared by every target that runs in the process: bytes that kinds buffer
//! (downloaded bodies) and the pixels of decodes in flight count against one limit, and decodes take one of a
//! fixed number of slots (about one per core, for the whole build, not per target). The executor sizes it
//! (`--memory`, `DSMAKE_MEMORY`, or a share of the memory available) and hands it to kinds in `BuildCx`; a
//! remote worker runs one target per process, so the same code bounds it.
//!
//! **Never a deadlock.** A wait never depends on a waiter: a buffer that is held is released once its owner's
//! decode runs; a decode that holds a slot waits only for the pixels of decodes that are running. Where one
//! item is larger than what is free, it still goes ahead, alone of its class: a buffer when no other buffer is
//! held, the oldest buffer when it grows, a decode when no other decode holds pixels. So the bytes in use stay
//! at or under the limit, except by one such item at a time. Buffers may fill the limit less a share kept for
//! decodes ([`DECODE_SHARE`] per slot, at most half), so that decodes do not wait on bodies.
//!
//! **Cancellable.** Every wait gives up with [`Cancelled`] once the build is interrupted; whatever was
//! reserved is released when its handle is dropped.

use super::cancel::{Cancel, Cancelled};
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The part of the budget each decode slot keeps free of buffers (at most half of it in all).
pub const DECODE_SHARE: u64 = 32 << 20;

/// How often a wait looks at cancellation: `Cancel` is a flag, with nothing to wake a waiter. Not much more
/// often: hundreds of threads may wait at once.
const POLL: Duration = Duration::from_millis(200);

/// The build's memory budget. Cloning shares it.
#[derive(Clone)]
pub struct MemoryBudget(Arc<Inner>);

impl Inner {
    /// Whether `bytes` more of buffers fit.
    fn fits(&self, s: &State, bytes: u64) -> bool {
        s.buffered + bytes <= self.buffer_limit && s.used + bytes <= self.limit
    }

    /// Wakes those that may go ahead after a change of `s`: the first new buffer in line if it now fits, the
    /// first decode in line for a slot if one is free, every growing buffer and every decode waiting for room
    /// for its pixels (few: one per connection held open, one per slot). Nobody else is woken: hundreds may
    /// wait, and waking them all for every body read or freed cost more CPU than the decodes.
    fn wake(&self, s: &State) {
        if let Some((_, bytes, first)) = s.queue.0.front()
            && self.buffer_ready(s, *bytes)
        {
            first.notify_one();
        }
        if s.growing > 0 {
            self.grown.notify_all();
        }
        if s.admitting > 0 {
            self.decoded.notify_all();
        }
        if s.decodes < self.slots
            && let Some((.., first)) = s.slot_queue.0.front()
        {
            first.notify_one();
        }
    }

    /// Whether a new buffer of `bytes` may go ahead, its turn come: it fits, or no other buffer is held.
    fn buffer_ready(&self, s: &State, bytes: u64) -> bool {
        s.buffers.is_empty() || (s.growing == 0 && self.fits(s, bytes))
    }
}

struct Inner {
    limit: u64,
    /// What buffers may hold together; the rest is kept for decodes.
    buffer_limit: u64,
    slots: usize,
    state: Mutex<State>,
    /// Growing buffers wait here (few: one per connection held open).
    grown: Condvar,
    /// Decodes wait here for room for their pixels (at most one per slot).
    decoded: Condvar,
}

#[derive(Default)]
struct State {
    used: u64,
    buffered: u64,
    peak: u64,
    decodes: usize,
    /// Decodes holding pixel bytes.
    decoding: usize,
    /// Live buffers by age, so that the oldest may always grow.
    buffers: BTreeSet<u64>,
    /// Buffers waiting to grow: new buffers wait behind them (a growing one is a body whose connection is
    /// open, with its timeout running).
    growing: usize,
    /// New buffers waiting for room (ticket, bytes), first come first served, each on its own condition
    /// variable: only the first is woken, once it fits, and it wakes the next when it gets in.
    queue: Line,
    /// Decodes waiting for a slot, served the same way: one woken per slot freed.
    slot_queue: Line,
    /// Decodes waiting for room for their pixels.
    admitting: usize,
    next_ticket: u64,
}

/// Waiters (ticket, bytes asked, their own condition variable) in the order they came.
#[derive(Default)]
struct Line(VecDeque<(u64, u64, Arc<Condvar>)>);

impl State {
    fn add(&mut self, bytes: u64) {
        self.used += bytes;
        self.peak = self.peak.max(self.used);
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBudget({} bytes, {} decode slots)", self.0.limit, self.0.slots)
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes and `decode_slots` decodes at once (both at least 1).
    pub fn new(limit: u64, decode_slots: usize) -> MemoryBudget {
        let (limit, slots) = (limit.max(1), decode_slots.max(1));
        let kept = (DECODE_SHARE.saturating_mul(slots as u64)).min(limit / 2);
        MemoryBudget(Arc::new(Inner {
            limit,
            buffer_limit: limit - kept,
            slots,
            state: Mutex::default(),
            grown: Condvar::new(),
            decoded: Condvar::new(),
        }))
    }

    /// The default budget for `decode_slots` decodes: a quarter of the memory available to this process,
    /// at most 64 MiB per slot (more buffers do not make decoding faster, and each request in flight costs
    /// memory outside the budget too: its thread, its allocator pages), at least 64 MiB.
    pub fn default_for(decode_slots: usize) -> MemoryBudget {
        MemoryBudget::new(default_limit(crate::util::memory::available(), decode_slots), decode_slots)
    }

    pub fn limit(&self) -> u64 {
        self.0.limit
    }
    pub fn decode_slots(&self) -> usize {
        self.0.slots
    }
    /// The most bytes ever in use at once.
    pub fn peak(&self) -> u64 {
        self.state().peak
    }
    pub fn in_use(&self) -> u64 {
        self.state().used
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A decode waits (polling `cancel`) until `ready` says there is room for its pixels, then lets `take`
    /// change the state.
    fn wait_for_room<T>(
        &self,
        cancel: &Cancel,
        ready: impl Fn(&State) -> bool,
        take: impl FnOnce(&mut State) -> T,
    ) -> Result<T, Cancelled> {
        let mut state = self.state();
        if !ready(&state) {
            state.admitting += 1;
            while !ready(&state) && !cancel.is_cancelled() {
                state = self.0.decoded.wait_timeout(state, POLL).unwrap_or_else(|p| p.into_inner()).0;
            }
            state.admitting -= 1;
            if !ready(&state) {
                return Err(Cancelled);
            }
        }
        Ok(take(&mut state))
    }

    /// Waits in `line` (polling `cancel`) until first in it and `ready`, then lets `take` change the state
    /// (with this waiter's ticket); goes ahead at once when nobody waits and `ready`. Whoever may go ahead
    /// next is woken, also when this one gives up.
    fn wait_in_line<T>(
        &self,
        cancel: &Cancel,
        bytes: u64,
        line: fn(&mut State) -> &mut Line,
        ready: impl Fn(&State) -> bool,
        take: impl FnOnce(&mut State, u64) -> T,
    ) -> Result<T, Cancelled> {
        let mut state = self.state();
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        if line(&mut state).0.is_empty() && ready(&state) {
            return Ok(take(&mut state, ticket));
        }
        let mine = Arc::new(Condvar::new());
        line(&mut state).0.push_back((ticket, bytes, mine.clone()));
        let admitted = loop {
            let first = line(&mut state).0.front().is_some_and(|(t, ..)| *t == ticket);
            if first && ready(&state) {
                break true;
            }
            if cancel.is_cancelled() {
                break false;
            }
            state = mine.wait_timeout(state, POLL).unwrap_or_else(|p| p.into_inner()).0;
        };
        line(&mut state).0.retain(|(t, ..)| *t != ticket);
        let out = admitted.then(|| take(&mut state, ticket));
        self.0.wake(&state);
        out.ok_or(Cancelled)
    }

    /// Changes the state with `f`, then wakes whoever may now go ahead (see `Inner::wake`).
    fn release(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state();
        f(&mut state);
        self.0.wake(&state);
    }

    /// `bytes` to be buffered (a body to download): waits its turn until they fit beside what is held, or no
    /// other buffer is held.
    pub fn buffer(&self, bytes: u64, cancel: &Cancel) -> Result<Buffer, Cancelled> {
        let inner = &self.0;
        let ticket = self.wait_in_line(
            cancel,
            bytes,
            |s| &mut s.queue,
            |s| inner.buffer_ready(s, bytes),
            |s, ticket| {
                s.buffered += bytes;
                s.add(bytes);
                s.buffers.insert(ticket);
                ticket
            },
        )?;
        Ok(Buffer { budget: self.clone(), bytes, ticket })
    }

    /// Whether a buffer of `bytes` would go ahead now, with no other waiting for room.
    pub fn has_room(&self, bytes: u64) -> bool {
        let s = self.state();
        s.queue.0.is_empty() && self.0.buffer_ready(&s, bytes)
    }

    /// A decode slot: waits its turn until one of the build's slots is free. Its pixels are admitted on the
    /// slot.
    pub fn decode(&self, cancel: &Cancel) -> Result<Decode, Cancelled> {
        let slots = self.0.slots;
        self.wait_in_line(cancel, 0, |s| &mut s.slot_queue, |s| s.decodes < slots, |s, _| s.decodes += 1)?;
        Ok(Decode { budget: self.clone(), bytes: 0 })
    }
}

/// Bytes buffered under the budget, released when dropped.
#[derive(Debug)]
pub struct Buffer {
    budget: MemoryBudget,
    bytes: u64,
    ticket: u64,
}

impl Buffer {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `more` bytes on top: waits until they fit, unless this is the oldest buffer held (which always may,
    /// so that buffers that grow never wait on each other in a circle). New buffers wait while one grows: a
    /// growing buffer is a body whose connection is open, its timeout running.
    pub fn grow(&mut self, more: u64, cancel: &Cancel) -> Result<(), Cancelled> {
        let inner = &self.budget.0;
        let ticket = self.ticket;
        let ready = |s: &State| s.buffers.first() == Some(&ticket) || inner.fits(s, more);
        let mut state = self.budget.state();
        if !ready(&state) {
            state.growing += 1;
            while !ready(&state) && !cancel.is_cancelled() {
                state = inner.grown.wait_timeout(state, POLL).unwrap_or_else(|p| p.into_inner()).0;
            }
            state.growing -= 1;
            if state.growing == 0 {
                // New buffers wait while one grows.
                inner.wake(&state);
            }
            if !ready(&state) {
                return Err(Cancelled);
            }
        }
        state.buffered += more;
        state.add(more);
        self.bytes += more;
        Ok(())
    }

    /// Gives back what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        let less = self.bytes.saturating_sub(bytes);
        if less > 0 {
            self.bytes -= less;
            self.budget.release(|s| {
                s.buffered -= less;
                s.used -= less;
            });
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let (bytes, ticket) = (self.bytes, self.ticket);
        self.budget.release(|s| {
            s.buffered -= bytes;
            s.used -= bytes;
            s.buffers.remove(&ticket);
        });
    }
}

/// A decode slot and the pixel bytes admitted on it, released when dropped.
#[derive(Debug)]
pub struct Decode {
    budget: MemoryBudget,
    bytes: u64,
}

impl Decode {
    /// The bytes the decode will allocate, from the image's header, before it allocates them. The first
    /// admission waits until they fit, or no other decode holds pixels; later ones are added without waiting
    /// (a decode that holds pixels never waits for more, so decodes never wait on each other in a circle).
    pub fn admit(&mut self, bytes: u64, cancel: &Cancel) -> Result<(), Cancelled> {
        if bytes == 0 {
            return Ok(());
        }
        if self.bytes > 0 {
            self.budget.release(|s| s.add(bytes));
        } else {
            let limit = self.budget.0.limit;
            self.budget.wait_for_room(
                cancel,
                |s| s.decoding == 0 || s.used + bytes <= limit,
                |s| {
                    s.decoding += 1;
                    s.add(bytes);
                },
            )?;
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Decode {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.budget.release(|s| {
            s.decodes -= 1;
            s.used -= bytes;
            if bytes > 0 {
                s.decoding -= 1;
            }
        });
    }
}

/// See [`MemoryBudget::default_for`].
fn default_limit(available: Option<u64>, slots: usize) -> u64 {
    const MIB: u64 = 1 << 20;
    let per_slot = 64 * MIB * slots.max(1) as u64;
    available.map_or(per_slot, |a| (a / 4).min(per_slot)).max(64 * MIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    const MIB: u64 = 1 << 20;

    /// Runs `f` on a thread and says whether it finished within `within`.
    fn finishes(within: Duration, f: impl FnOnce() + Send + 'static) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            f();
            flag.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        while start.elapsed() < within {
            if done.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn buffers_wait_until_they_fit_and_are_released_on_drop() {
        // 100 MiB, one slot: buffers may hold 68 MiB (32 MiB are kept for the decode).
        let budget = MemoryBudget::new(100 * MIB, 1);
        let cancel = Cancel::default();
        let a = budget.buffer(40 * MIB, &cancel).unwrap();
        let b = budget.buffer(28 * MIB, &cancel).unwrap();
        assert_eq!(budget.in_use(), 68 * MIB);
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        let blocked = finishes(Duration::from_millis(300), move || drop(budget2.buffer(MIB, &cancel2).unwrap()));
        assert!(!blocked, "a buffer past the buffers' share waits");
        drop(a);
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        assert!(finishes(Duration::from_secs(5), move || drop(budget2.buffer(MIB, &cancel2).unwrap())));
        drop(b);
        // The waiter above took its megabyte and dropped it.
        assert!(finishes(Duration::from_secs(5), {
            let budget = budget.clone();
            move || while budget.in_use() != 0 {}
        }));
        assert_eq!(budget.peak(), 68 * MIB);
    }

    /// An item larger than the whole budget goes ahead alone; it does not wait forever.
    #[test]
    fn an_oversize_item_goes_ahead_alone() {
        let budget = MemoryBudget::new(10 * MIB, 1);
        let cancel = Cancel::default();
        let big = budget.buffer(50 * MIB, &cancel).unwrap();
        assert_eq!(budget.in_use(), 50 * MIB);
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        assert!(!finishes(Duration::from_millis(300), move || drop(budget2.buffer(1, &cancel2).unwrap())));
        drop(big);
        let mut decode = budget.decode(&cancel).unwrap();
        decode.admit(80 * MIB, &cancel).unwrap();
        assert_eq!(budget.in_use(), 80 * MIB);
        drop(decode);
        assert_eq!((budget.in_use(), budget.peak()), (0, 80 * MIB));
    }

    /// The oldest buffer grows past the limit rather than wait for younger ones that wait for it.
    #[test]
    fn the_oldest_buffer_always_grows() {
        let budget = MemoryBudget::new(100 * MIB, 1);
        let cancel = Cancel::default();
        let mut old = budget.buffer(30 * MIB, &cancel).unwrap();
        let mut young = budget.buffer(30 * MIB, &cancel).unwrap();
        old.grow(30 * MIB, &cancel).unwrap();
        assert_eq!((old.bytes(), budget.in_use()), (60 * MIB, 90 * MIB));
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel2 = cancel.clone();
        std::thread::spawn(move || {
            young.grow(MIB, &cancel2).unwrap();
            tx.send(young).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a younger buffer waits");
        // While it waits, a new buffer that would fit waits behind it.
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        assert!(!finishes(Duration::from_millis(300), move || drop(budget2.buffer(1, &cancel2).unwrap())));
        old.shrink_to(10 * MIB);
        let young = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(young.bytes(), 31 * MIB);
        // The new buffer got in after the grow, and let go.
        assert!(finishes(Duration::from_secs(5), {
            let budget = budget.clone();
            move || while budget.in_use() != 41 * MIB {}
        }));
    }

    /// New buffers go ahead in the order they asked: a small one that would fit waits behind a larger one
    /// that does not; when the first gives up (cancelled), the next goes ahead.
    #[test]
    fn new_buffers_are_served_in_order() {
        let budget = MemoryBudget::new(100 * MIB, 1);
        let (cancel, cancel_big) = (Cancel::default(), Cancel::default());
        let held = budget.buffer(60 * MIB, &cancel).unwrap();
        let (budget2, cancel2) = (budget.clone(), cancel_big.clone());
        let big = std::thread::spawn(move || budget2.buffer(20 * MIB, &cancel2).is_err());
        while budget.state().queue.0.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        let small = std::thread::spawn(move || drop(budget2.buffer(MIB, &cancel2).unwrap()));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!small.is_finished(), "1 MiB fits, but waits behind the 20 MiB asked first");
        cancel_big.cancel();
        assert!(big.join().unwrap(), "the first gives up");
        small.join().unwrap();
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.state().queue.0.is_empty());
    }

    /// Decode slots are shared by the whole budget; a decode's pixels wait for room but never for buffers'
    /// share, and a decode that waits gives up when cancelled.
    #[test]
    fn decodes_take_slots_and_wait_for_pixels() {
        let budget = MemoryBudget::new(100 * MIB, 2);
        let cancel = Cancel::default();
        // Buffers fill their share (100 − 2×32 MiB), and decodes still get in.
        let _bodies = budget.buffer(36 * MIB, &cancel).unwrap();
        let mut one = budget.decode(&cancel).unwrap();
        one.admit(40 * MIB, &cancel).unwrap();
        let mut two = budget.decode(&cancel).unwrap();
        let (budget2, cancel2) = (budget.clone(), cancel.clone());
        assert!(!finishes(Duration::from_millis(300), move || drop(budget2.decode(&cancel2).unwrap())), "two slots");
        let cancel2 = cancel.clone();
        let handle = std::thread::spawn(move || two.admit(30 * MIB, &cancel2).map(|()| two));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!handle.is_finished(), "30 MiB more do not fit");
        drop(one);
        let two = handle.join().unwrap().unwrap();
        assert_eq!(budget.in_use(), 66 * MIB);
        // Cancelled while waiting: an error, and nothing is held.
        let mut three = budget.decode(&cancel).unwrap();
        let cancel2 = cancel.clone();
        let handle = std::thread::spawn(move || three.admit(60 * MIB, &cancel2).is_err());
        std::thread::sleep(Duration::from_millis(100));
        cancel.cancel();
        assert!(handle.join().unwrap());
        assert!(budget.buffer(90 * MIB, &cancel).is_err());
        drop(two);
        assert_eq!(budget.in_use(), 36 * MIB);
        assert!(budget.peak() <= budget.limit());
    }

    /// Decodes waiting for a slot get it in the order they asked, one per slot freed.
    #[test]
    fn decodes_get_slots_in_order() {
        let budget = MemoryBudget::new(100 * MIB, 1);
        let cancel = Cancel::default();
        let held = budget.decode(&cancel).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (budget2, cancel2, order2) = (budget.clone(), cancel.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                let slot = budget2.decode(&cancel2).unwrap();
                order2.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(20));
                drop(slot);
            }));
            while budget.state().slot_queue.0.len() <= i {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(order.lock().unwrap().is_empty(), "the one slot is held");
        drop(held);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
        assert!(budget.state().slot_queue.0.is_empty());
        assert_eq!(budget.state().decodes, 0);
    }

    /// Many threads buffering and decoding at once: the budget is never exceeded, nothing is left held.
    #[test]
    fn many_threads_stay_within_the_limit() {
        let budget = MemoryBudget::new(64 * MIB, 2);
        let cancel = Cancel::default();
        std::thread::scope(|scope| {
            for t in 0..32u64 {
                let (budget, cancel) = (&budget, &cancel);
                scope.spawn(move || {
                    for i in 0..50u64 {
                        let mut body = budget.buffer((t * 7 + i) % 5 * MIB + 1, cancel).unwrap();
                        body.grow((i % 3) * MIB, cancel).unwrap();
                        let mut decode = budget.decode(cancel).unwrap();
                        decode.admit((t + i) % 7 * MIB, cancel).unwrap();
                    }
                });
            }
        });
        assert_eq!(budget.in_use(), 0);
        assert!(budget.peak() <= budget.limit(), "{} > {}", budget.peak(), budget.limit());
    }

    #[test]
    fn the_default_is_a_quarter_of_what_is_available_within_bounds() {
        assert_eq!(default_limit(Some(24 << 30), 2), 128 * MIB);
        assert_eq!(default_limit(Some(512 * MIB), 8), 128 * MIB);
        assert_eq!(default_limit(Some(100 * MIB), 2), 64 * MIB);
        assert_eq!(default_limit(None, 4), 256 * MIB);
    }
}
