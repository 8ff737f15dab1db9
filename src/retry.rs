//! Retrying transient failures, with one budget per operation.
//!
//! An error is *transient* (a network blip, a busy server: worth another attempt) or permanent. Several layers
//! retry transient errors: a target as a whole (`exec`), each store request (`store::s3`; the AWS SDK's own
//! retries are off), each part of a multipart upload, and Hub downloads (`kinds::hf_dataset`). Each retrying on
//! its own would multiply (the SDK's 6 × the store's 5 × a target's 4 made 120 attempts of one request). So an
//! operation has one [`Budget`], and every layer inside it draws on that one count:
//!
//! - **A target** gets a budget of `--retries` retries (default [`RetryPolicy::DEFAULT`]) when it starts.
//!   The worker runs it with that budget entered on its thread ([`Budget::enter`]), so that the store requests
//!   and Hub downloads made while building it ([`Budget::current_or_default`]) and the target's own retries
//!   share it: a target retried after a store failure does not get a fresh set of store retries. A
//!   `dsmake worker` process (remote builds) has one budget for its target too; the scheduler's task retries
//!   (Spark's `spark.task.maxFailures`) come on top.
//! - **Anything else** (planning's listings, `dsmake copy`, `gc`, the build lease) gets a fresh default budget
//!   per store operation.
//!
//! So at most `retries + 1` attempts are made of any one request within an operation, and at most `retries`
//! retries in all. Work that a layer hands to other threads takes the budget along explicitly (multipart
//! parts do); a thread that has none entered gets a fresh budget per operation.
//!
//! Waits grow with the budget's count (exponential backoff with jitter), so nested layers back off together.
//! Permanent errors are never retried and cost nothing. img2dataset's per-image `retries` are its own (a
//! setting per image, as img2dataset has it), outside this budget.

use std::cell::RefCell;
use std::fmt;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Marks an error as transient (a network blip, a busy server): retried with backoff.
#[derive(Debug)]
pub struct Transient(pub String);

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Transient {}

/// Whether another attempt may succeed: a [`Transient`] anywhere in the chain, or an I/O error of a kind that
/// passes (a reset or aborted connection, a timeout).
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<Transient>()
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::TimedOut
                        | ErrorKind::Interrupted
                        | ErrorKind::BrokenPipe
                        | ErrorKind::WouldBlock
                )
            })
    })
}

/// How many retries an operation may make, and how long to wait before each.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries in all, across every layer of the operation (attempts beyond the first).
    pub retries: u32,
    /// The wait before the first retry; each further retry doubles it…
    pub base: Duration,
    /// …up to this.
    pub cap: Duration,
    /// The fraction of each wait taken off at random (0: none, 0.5: waits fall in [½, 1] of the nominal
    /// wait), so that workers that failed together do not come back together.
    pub jitter: f64,
}

impl RetryPolicy {
    /// What `--retries` defaults to. Enough for a blip that fails every request in flight at once (a multipart
    /// upload has four parts in flight) and a few more.
    pub const DEFAULT: RetryPolicy =
        RetryPolicy { retries: 8, base: Duration::from_millis(250), cap: Duration::from_secs(30), jitter: 0.5 };

    pub fn with_retries(self, retries: u32) -> RetryPolicy {
        RetryPolicy { retries, ..self }
    }

    /// The wait before retry number `retry + 1`: `base · 2^retry`, at most `cap`, less the jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let nominal = self.base.saturating_mul(1 << retry.min(20)).min(self.cap);
        nominal.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * fastrand::f64())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// The retries left to one operation, shared by every layer that retries inside it. Cheap to clone: clones
/// draw on the same count.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    used: AtomicU32,
}

thread_local! {
    /// The budget of the operation this thread works for (see [`Budget::enter`]).
    static CURRENT: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

impl Budget {
    pub fn new(policy: RetryPolicy) -> Budget {
        Budget(Arc::new(Shared { policy, used: AtomicU32::new(0) }))
    }

    /// Whether to retry after `err`, and after how long: `None` for a permanent error (which costs nothing)
    /// or when the budget is spent; otherwise one retry is drawn and its wait returned.
    pub fn should_retry(&self, err: &anyhow::Error) -> Option<Duration> {
        if !is_transient(err) {
            return None;
        }
        let limit = self.0.policy.retries;
        let drawn =
            self.0.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| (used < limit).then_some(used + 1));
        drawn.ok().map(|before| self.0.policy.backoff(before))
    }

    /// Retries drawn so far.
    pub fn used(&self) -> u32 {
        self.0.used.load(Ordering::SeqCst)
    }

    pub fn policy(&self) -> RetryPolicy {
        self.0.policy
    }

    /// Makes this the budget of the operation in progress on this thread until the guard is dropped (then the
    /// one before it, if any, is current again).
    pub fn enter(&self) -> Entered {
        Entered { previous: CURRENT.with(|c| c.replace(Some(self.clone()))), _not_send: std::marker::PhantomData }
    }

    /// The budget entered on this thread, if any.
    pub fn current() -> Option<Budget> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// The budget entered on this thread, or else a fresh default one: an operation of its own.
    pub fn current_or_default() -> Budget {
        Budget::current().unwrap_or_else(|| Budget::new(RetryPolicy::DEFAULT))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the budget is spent, sleeping between attempts.
    pub fn run<T>(&self, mut attempt: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
        loop {
            match attempt() {
                Err(e) => match self.should_retry(&e) {
                    Some(wait) => std::thread::sleep(wait),
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    /// [`Budget::run`] for async work, waiting on tokio's timer.
    pub async fn run_async<T, F, Fut>(&self, attempt: F) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        loop {
            match attempt().await {
                Err(e) => match self.should_retry(&e) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }
}

/// While alive, its budget is this thread's current one (see [`Budget::enter`]). Not `Send`: it belongs to
/// the thread that entered.
pub struct Entered {
    previous: Option<Budget>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The default policy's wait before retry `retry + 1`, for loops with a count of their own (img2dataset's
/// per-image retries).
pub fn backoff(retry: u32) -> Duration {
    RetryPolicy::DEFAULT.backoff(retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn transient() -> anyhow::Error {
        anyhow::Error::new(Transient("busy".into()))
    }

    fn quick(retries: u32) -> RetryPolicy {
        RetryPolicy { retries, base: Duration::from_millis(1), cap: Duration::from_millis(4), jitter: 0.5 }
    }

    #[test]
    fn classifies_through_context() {
        let reset: anyhow::Error = std::io::Error::from(ErrorKind::ConnectionReset).into();
        assert!(is_transient(&reset.context("uploading")));
        let missing: anyhow::Error = std::io::Error::from(ErrorKind::NotFound).into();
        assert!(!is_transient(&missing));
        assert!(is_transient(&Err::<(), _>(transient()).context("reading").unwrap_err()));
    }

    #[test]
    fn backoff_grows_within_its_bounds() {
        let policy = RetryPolicy::DEFAULT;
        for _ in 0..100 {
            let first = policy.backoff(0);
            assert!(first >= Duration::from_millis(125) && first <= Duration::from_millis(250), "{first:?}");
            let fourth = policy.backoff(3);
            assert!(fourth >= Duration::from_millis(1000) && fourth <= Duration::from_millis(2000), "{fourth:?}");
            let late = policy.backoff(u32::MAX);
            assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30), "{late:?}");
        }
        let steady = RetryPolicy { jitter: 0.0, ..policy };
        assert_eq!(steady.backoff(2), Duration::from_millis(1000));
        assert!(backoff(30) <= Duration::from_secs(30));
    }

    #[test]
    fn the_budget_is_spent_and_then_says_no() {
        let budget = Budget::new(quick(2));
        assert!(budget.should_retry(&transient()).is_some());
        assert!(budget.should_retry(&transient()).is_some());
        assert_eq!(budget.should_retry(&transient()), None);
        assert_eq!(budget.used(), 2);
        assert_eq!(Budget::new(quick(0)).should_retry(&transient()), None);
    }

    #[test]
    fn permanent_errors_are_not_retried_and_cost_nothing() {
        let budget = Budget::new(quick(3));
        let mut attempts = 0;
        let result: anyhow::Result<()> = budget.run(|| {
            attempts += 1;
            anyhow::bail!("no such bucket")
        });
        assert!(result.is_err());
        assert_eq!((attempts, budget.used()), (1, 0));
    }

    #[test]
    fn nested_layers_draw_on_one_count() {
        // A target's loop around a store's loop: without a shared count, 4 × 4 attempts.
        let budget = Budget::new(quick(3));
        let mut requests = 0;
        let outer: anyhow::Result<()> = budget.run(|| {
            let _entered = budget.enter();
            Budget::current_or_default().run(|| {
                requests += 1;
                Err(transient())
            })
        });
        assert!(outer.is_err());
        assert_eq!(requests, 4, "one first attempt and the budget's 3 retries, across both layers");
        assert_eq!(budget.used(), 3);
    }

    #[test]
    fn clones_share_the_count_and_threads_without_one_get_their_own() {
        let budget = Budget::new(quick(5));
        let clone = budget.clone();
        assert!(clone.should_retry(&transient()).is_some());
        assert_eq!(budget.used(), 1);

        assert!(Budget::current().is_none());
        {
            let _outer = budget.enter();
            assert_eq!(Budget::current_or_default().used(), 1);
            let inner = Budget::new(quick(1));
            {
                let _inner = inner.enter();
                assert_eq!(Budget::current().map(|b| b.policy()), Some(quick(1)));
            }
            assert_eq!(Budget::current().map(|b| b.policy()), Some(quick(5)));
            let elsewhere = std::thread::spawn(|| Budget::current().is_none()).join().unwrap();
            assert!(elsewhere);
        }
        assert!(Budget::current().is_none());
        assert_eq!(Budget::current_or_default().policy(), RetryPolicy::DEFAULT);
    }
}
