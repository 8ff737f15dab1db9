//! A build lease in the bucket: one `dsmake build` of a pipeline at a time per store, across machines. Taken
//! with a conditional put (If-None-Match), renewed with If-Match on its ETag, and taken over once expired,
//! so a crashed holder blocks others for one lease period at most.

use super::S3Store;
use super::errors::{describe, is_not_found, is_precondition_failed};
use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    id: String,
    host: String,
    pid: u32,
    expires_unix: u64,
}

pub struct Lease {
    stop: Arc<AtomicBool>,
    renewal: Option<JoinHandle<()>>,
    store: Arc<S3Store>,
    key: String,
    id: String,
}

/// Why this process lost a build lease, once it has. Shared by every clone of the store: the renewal thread
/// sets it and every write checks it, because a build that no longer holds its lease may be racing another
/// build that took it over, and its later writes could put a manifest over the other build's bytes (or the
/// other way round). Git refuses a push whose lock it lost in the same way: the holder stops, it does not
/// warn and carry on.
#[derive(Clone, Default)]
pub struct LeaseGuard(Arc<Mutex<Option<String>>>);

impl LeaseGuard {
    pub fn lose(&self, why: String) {
        let mut lost = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lost.get_or_insert(why);
    }

    /// An error naming what was not written and why, once a lease was lost.
    pub fn check(&self, what: &str) -> anyhow::Result<()> {
        let lost = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*lost {
            Some(why) => anyhow::bail!(
                "not writing {what}: this build lost its build lease ({why}), so another build may be writing the \
                 same objects; run the build again"
            ),
            None => Ok(()),
        }
    }
}

/// Whether a lease last renewed `since` ago must be counted as lost: the next renewal attempt would come after
/// its expiry, when another build may already have taken it over. Judged before expiry, not at it, so that a
/// write under way when it expires was checked while the lease still held.
fn renewal_too_late(since: Duration, ttl: Duration) -> bool {
    since + ttl / 3 >= ttl
}

fn ttl() -> Duration {
    let seconds = std::env::var("DSMAKE_LEASE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(seconds)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

enum Put {
    Done(String),
    Conflict,
}

impl S3Store {
    fn put_lease(&self, key: &str, holder: &Holder, condition: Condition) -> anyhow::Result<Put> {
        let body = serde_json::to_vec(holder)?;
        self.retrying(|| async {
            let mut put = self.client.put_object().bucket(&self.bucket).key(key).body(ByteStream::from(body.clone()));
            put = match condition {
                Condition::Absent => put.if_none_match("*"),
                Condition::Matches(etag) => put.if_match(etag),
            };
            match put.send().await {
                Ok(out) => Ok(Put::Done(out.e_tag().unwrap_or_default().to_string())),
                Err(e) if is_precondition_failed(&e) => Ok(Put::Conflict),
                Err(e) => Err(describe(e, &format!("writing the build lease s3://{}/{key}", self.bucket))),
            }
        })
    }

    fn get_lease(&self, key: &str) -> anyhow::Result<Option<(Holder, String)>> {
        self.retrying(|| async {
            match self.client.get_object().bucket(&self.bucket).key(key).send().await {
                Ok(out) => {
                    let etag = out.e_tag().unwrap_or_default().to_string();
                    let bytes = out.body.collect().await.context("reading the build lease")?.into_bytes();
                    let holder = serde_json::from_slice(&bytes).context("corrupt build lease")?;
                    Ok(Some((holder, etag)))
                }
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(describe(e, &format!("reading the build lease s3://{}/{key}", self.bucket))),
            }
        })
    }
}

#[derive(Clone, Copy)]
enum Condition<'a> {
    Absent,
    Matches(&'a str),
}

pub fn acquire(store: Arc<S3Store>, pipeline: &str) -> anyhow::Result<Lease> {
    let key = store.key(&format!(".dsmake/leases/{pipeline}.json"));
    let id = format!("{:016x}", fastrand::u64(..));
    let holder_id = id.clone();
    let holder = move || Holder {
        id: holder_id.clone(),

        host: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        expires_unix: now() + ttl().as_secs(),
    };
    let mut told = false;
    let etag = loop {
        if let Put::Done(etag) = store.put_lease(&key, &holder(), Condition::Absent)? {
            break etag;
        }
        match store.get_lease(&key)? {
            None => continue,
            // A retried put whose first try took the lease, but whose answer was lost.
            Some((other, etag)) if other.id == id => break etag,
            Some((other, etag)) if other.expires_unix < now() => {
                if let Put::Done(etag) = store.put_lease(&key, &holder(), Condition::Matches(&etag))? {
                    eprintln!("Took over the expired build lease of {} (pid {}).", other.host, other.pid);
                    break etag;
                }
            }
            Some((other, _)) => {
                if !told {
                    eprintln!(
                        "Waiting for the build of `{pipeline}` by {} (pid {}) on this store to finish (its lease \
                         expires in {}s unless renewed)…",
                        other.host,
                        other.pid,
                        other.expires_unix.saturating_sub(now())
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let renewal = {
        let (stop, store, key, holder, id) = (stop.clone(), store.clone(), key.clone(), holder, id.clone());
        let guard = store.lease.clone();
        std::thread::spawn(move || {
            let mut etag = etag;
            let mut renewed = std::time::Instant::now();
            loop {
                let period = ttl() / 3;
                let started = std::time::Instant::now();
                while started.elapsed() < period {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                match store.put_lease(&key, &holder(), Condition::Matches(&etag)) {
                    Ok(Put::Done(next)) => (etag, renewed) = (next, std::time::Instant::now()),
                    Ok(Put::Conflict) => match store.get_lease(&key) {
                        // A retried renewal whose first try went through, but whose answer was lost.
                        Ok(Some((ours, next))) if ours.id == id => (etag, renewed) = (next, std::time::Instant::now()),
                        _ => {
                            guard.lose(format!(
                                "{key} was taken over or removed by someone else (another build, or a clean-up) before this build renewed it"
                            ));
                            eprintln!("error: the build lease {key} was taken over by another build; publishing stops");
                            return;
                        }
                    },
                    Err(e) if renewal_too_late(renewed.elapsed(), ttl()) => {
                        guard.lose(format!("{key} could not be renewed before it expired: {e:#}"));
                        eprintln!(
                            "error: cannot renew the build lease {key} before it expires ({e:#}); publishing stops"
                        );
                        return;
                    }
                    Err(e) => eprintln!("warning: cannot renew the build lease {key}, will try again: {e:#}"),
                }
            }
        })
    };
    Ok(Lease { stop, renewal: Some(renewal), store, key, id })
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.renewal.take() {
            let _ = thread.join();
        }
        if let Ok(Some((holder, _))) = self.store.get_lease(&self.key)
            && holder.id == self.id
        {
            let _ = self.store.remove(&self.store.unkey(&self.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_stops_every_later_write_with_the_reason() {
        let guard = LeaseGuard::default();
        let clone = guard.clone();
        clone.check("s3://b/x").expect("a held lease lets writes through");
        guard.lose("taken over".into());
        // The first reason stands: it is the one that explains what happened.
        guard.lose("later".into());
        let err = format!("{:#}", clone.check("s3://b/step/out.tar").unwrap_err());
        assert!(err.contains("s3://b/step/out.tar") && err.contains("lost its build lease (taken over)"), "{err}");
    }

    #[test]
    fn a_lease_counts_as_lost_before_it_expires() {
        let ttl = Duration::from_secs(60);
        assert!(!renewal_too_late(Duration::from_secs(20), ttl), "one missed renewal leaves time for another");
        assert!(!renewal_too_late(Duration::from_secs(39), ttl));
        assert!(renewal_too_late(Duration::from_secs(40), ttl), "the next try would come at expiry");
        assert!(renewal_too_late(Duration::from_secs(90), ttl));
    }
}
