//! Listing a prefix in key ranges, side by side. ListObjectsV2 pages come one after another (each page's
//! continuation token is in the previous answer), so a listing of P pages is P round trips in sequence: at
//! 2.4 × 10⁶ objects and S3's latency, minutes. Cut at split points (`StartAfter`), the ranges are listed at
//! once, a bounded number at a time, and the wall time grows with pages / concurrency.
//!
//! Throttling is honoured twice: every page request retries on the retry budget (backoff with jitter, see
//! `crate::retry`), and each throttled answer (503 SlowDown, 429) takes one slot away from the listing for
//! good, down to one, so a server that asks for fewer requests gets fewer.

use super::S3Store;
use super::errors::{describe, status};
use crate::retry::{Budget, RetryPolicy};
use crate::store::ObjectMeta;
use aws_sdk_s3::error::ProvideErrorMetadata;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// Range listings in flight at once, unless `DSMAKE_S3_LIST_CONCURRENCY` says otherwise (1: one plain
/// paginated listing, as before ranges; for comparison).
pub const CONCURRENCY: usize = 16;
/// Keys per page: S3's most, unless `DSMAKE_S3_LIST_PAGE` says otherwise (tests cross page boundaries with a
/// few objects).
pub const PAGE: usize = 1000;

pub fn concurrency() -> usize {
    env_number("DSMAKE_S3_LIST_CONCURRENCY").unwrap_or(CONCURRENCY).max(1)
}

pub fn page_size() -> usize {
    env_number("DSMAKE_S3_LIST_PAGE").unwrap_or(PAGE).clamp(1, PAGE)
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

/// The slots of one listing: a semaphore whose size shrinks by one on each throttled answer.
struct Slots {
    semaphore: Semaphore,
    size: AtomicUsize,
}

impl Slots {
    /// Gives up the slot `permit` holds for good (unless it is the last one) and waits for another.
    async fn shrink<'a>(&'a self, permit: tokio::sync::SemaphorePermit<'a>) -> tokio::sync::SemaphorePermit<'a> {
        let shrunk = self.size.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 1).then(|| n - 1)).is_ok();
        if !shrunk {
            return permit;
        }
        permit.forget();
        self.acquire().await
    }

    async fn acquire(&self) -> tokio::sync::SemaphorePermit<'_> {
        // The semaphore is never closed.
        self.semaphore.acquire().await.expect("listing slots are never closed")
    }
}

/// One key range: keys after `after` (all when `None`) up to and including `upto` (the end when `None`).
struct Range {
    after: Option<String>,
    upto: Option<String>,
}

impl S3Store {
    /// Every object under the key prefix `key_prefix`, listed in the ranges that `split_after` (keys, sorted)
    /// cuts, at most [`concurrency`] requests at a time.
    pub(super) fn list_ranges(&self, key_prefix: &str, split_after: &[String]) -> anyhow::Result<Vec<ObjectMeta>> {
        let mut bounds: Vec<Option<String>> = vec![None];
        bounds.extend(
            split_after.iter().filter(|k| k.starts_with(key_prefix) && k.len() > key_prefix.len()).cloned().map(Some),
        );
        bounds.dedup();
        let ranges: Vec<Range> = bounds
            .iter()
            .enumerate()
            .map(|(i, after)| Range { after: after.clone(), upto: bounds.get(i + 1).cloned().flatten() })
            .collect();
        let slots = Arc::new(Slots { semaphore: Semaphore::new(concurrency()), size: AtomicUsize::new(concurrency()) });
        // Inside an operation (a target's build) every range draws on its budget; otherwise each range is an
        // operation of its own, as a whole listing was before ranges.
        let shared = Budget::current();
        let page = page_size();
        self.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for range in ranges {
                let (store, slots, key_prefix) = (self.clone(), slots.clone(), key_prefix.to_string());
                let budget = shared.clone().unwrap_or_else(|| Budget::new(RetryPolicy::DEFAULT));
                tasks.spawn(async move { store.list_range(&key_prefix, range, page, &budget, &slots).await });
            }
            let mut out = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                out.extend(joined??);
            }
            Ok(out)
        })
    }

    async fn list_range(
        &self,
        key_prefix: &str,
        range: Range,
        page: usize,
        budget: &Budget,
        slots: &Slots,
    ) -> anyhow::Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let what = format!("listing s3://{}/{key_prefix}", self.bucket);
        loop {
            let mut permit = slots.acquire().await;
            let answer = loop {
                let mut request =
                    self.client.list_objects_v2().bucket(&self.bucket).prefix(key_prefix).max_keys(page as i32);
                // S3 ignores StartAfter once there is a continuation token; s3s-fs takes the larger: give one.
                request = match (&token, &range.after) {
                    (Some(token), _) => request.continuation_token(token),
                    (None, Some(after)) => request.start_after(after),
                    (None, None) => request,
                };
                match request.send().await {
                    Ok(answer) => break answer,
                    Err(e) => {
                        let throttled = matches!(status(&e), Some(503 | 429))
                            || e.as_service_error().and_then(|s| s.code()).is_some_and(|c| c == "SlowDown");
                        let err = describe(e, &what);
                        let Some(wait) = budget.should_retry(&err) else { return Err(err) };
                        if throttled {
                            permit = slots.shrink(permit).await;
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            };
            drop(permit);
            for object in answer.contents() {
                let Some(key) = object.key() else { continue };
                if range.upto.as_deref().is_some_and(|upto| key > upto) {
                    return Ok(out);
                }
                if object.e_tag().is_none_or(str::is_empty) {
                    self.etagless.store(true, Ordering::Relaxed);
                }
                out.push(ObjectMeta {
                    path: self.unkey(key),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    version: super::version(object.e_tag(), object.last_modified()),
                });
            }
            match answer.next_continuation_token() {
                Some(next) if answer.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(out),
            }
        }
    }
}
