//! A build lease in the bucket: one `dsmake build` of a pipeline at a time per store, across machines. Taken
//! with a conditional put (If-None-Match), renewed with If-Match on its ETag, and taken over once expired,
//! so a crashed holder blocks others for one lease period at most.

use super::S3Store;
use super::errors::{describe, is_not_found, is_precondition_failed};
use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        std::thread::spawn(move || {
            let mut etag = etag;
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
                    Ok(Put::Done(next)) => etag = next,
                    Ok(Put::Conflict) => match store.get_lease(&key) {
                        // A retried renewal whose first try went through, but whose answer was lost.
                        Ok(Some((ours, next))) if ours.id == id => etag = next,
                        _ => {
                            eprintln!(
                                "warning: the build lease was taken over by another build (this one was too slow to \
                                 renew it)"
                            );
                            return;
                        }
                    },
                    Err(e) => eprintln!("warning: cannot renew the build lease: {e:#}"),
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
            let _ = crate::store::Store::delete(&*self.store, &self.store.unkey(&self.key));
        }
    }
}
