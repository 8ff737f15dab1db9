//! The S3 store: the same contract as the local folder. Objects appear whole (single PUT or a completed
//! multipart upload); manifests are put last and conditionally; freshness comes from paginated listings.

mod config;
mod errors;
mod lease;
mod listing;
mod multipart;

use super::{ObjectMeta, ReadLimit, Store, TooLarge};
use crate::retry::{Budget, Transient};
use anyhow::{Context, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
pub use config::S3Options;
use errors::{describe, is_not_found, is_precondition_failed};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::AsyncReadExt;

use std::time::{Duration, SystemTime};

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix of the store inside the bucket, without a trailing `/` ("" for the bucket's root).
    prefix: String,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Set when a listing came back without ETags (some S3-compatible servers): object versions are then
    /// their LastModified times, and a write asks for it with a HEAD so that the index can match listings.
    etagless: Arc<AtomicBool>,
    requests: config::RequestCounter,
    /// Set once a build lease this process held is lost: from then on this process may not know that it is
    /// the only writer, so it publishes nothing more (see `lease::LeaseGuard`).
    lease: lease::LeaseGuard,
}

/// An object's version as a listing shows it: the ETag, or the LastModified time where there is no ETag.
fn version(etag: Option<&str>, modified: Option<&aws_sdk_s3::primitives::DateTime>) -> String {
    match (etag, modified) {
        (Some(etag), _) if !etag.is_empty() => etag.to_string(),
        (_, Some(t)) => format!("{}{}", super::MODIFIED_VERSION, t.to_millis().unwrap_or_default()),
        _ => String::new(),
    }
}

/// Where running multipart uploads leave their notes (store-relative).
const UPLOAD_NOTES: &str = ".dsmake/uploads";

/// Splits `s3://bucket/prefix`.
pub fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").context("an S3 store URL starts with s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid {
        bail!("`{bucket}` in `{url}` is not a valid S3 bucket name (3–63 lowercase letters, digits, `-`, `.`)");
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl S3Store {
    pub fn open(url: &str, options: &S3Options) -> anyhow::Result<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        // Its own runtime: the Store trait is synchronous (called from planning threads and blocking workers).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dsmake-s3")
            .enable_all()
            .build()?;
        let requests = config::RequestCounter::default();
        let client = runtime.block_on(config::client(&bucket, options, &requests))?;
        Ok(S3Store {
            client,
            bucket,
            prefix,
            runtime: Arc::new(runtime),
            etagless: Arc::default(),
            requests,
            lease: lease::LeaseGuard::default(),
        })
    }

    /// Deletes an object whatever the lease says: for the lease itself, released by its holder.
    fn remove(&self, path: &str) -> anyhow::Result<()> {
        self.retrying(|| async {
            match self.client.delete_object().bucket(&self.bucket).key(self.key(path)).send().await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(describe(e, &format!("deleting {}", self.where_(path)))),
            }
        })
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs a whole request (a listing with all its pages, a read with its body) until it succeeds, fails for
    /// good, or the retry budget of the operation in progress is spent: the target's that this thread builds,
    /// or a fresh one (`crate::retry`). The only retries of S3 requests: the SDK makes none of its own.
    fn retrying<T, F, Fut>(&self, request: F) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.block_on(Budget::current_or_default().run_async(request))
    }

    fn key(&self, path: &str) -> String {
        if self.prefix.is_empty() { path.to_string() } else { format!("{}/{path}", self.prefix) }
    }

    fn unkey(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            key.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(key).to_string()
        }
    }

    fn where_(&self, path: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(path))
    }

    async fn put(&self, path: &str, bytes: Vec<u8>, condition: Condition<'_>) -> anyhow::Result<Option<ObjectMeta>> {
        let size = bytes.len() as u64;
        let mut put = self.client.put_object().bucket(&self.bucket).key(self.key(path)).body(ByteStream::from(bytes));
        put = match condition {
            Condition::None => put,
            Condition::Absent => put.if_none_match("*"),
            Condition::Tag(etag) => put.if_match(etag),
        };
        match put.send().await {
            Ok(out) => {
                Ok(Some(ObjectMeta { path: path.to_string(), size, version: self.written(path, out.e_tag()).await? }))
            }
            Err(e) if !matches!(condition, Condition::None) && is_precondition_failed(&e) => Ok(None),
            Err(e) => Err(describe(e, &format!("writing {}", self.where_(path)))),
        }
    }

    /// The version of an object just written, as listings will show it: the ETag the write returned, or, on a
    /// server whose listings carry none, its LastModified time (asked with a HEAD).
    async fn written(&self, path: &str, etag: Option<&str>) -> anyhow::Result<String> {
        if !self.etagless.load(Ordering::Relaxed) {
            return Ok(version(etag, None));
        }
        let head = self.client.head_object().bucket(&self.bucket).key(self.key(path)).send().await;
        let head = head.map_err(|e| describe(e, &format!("checking {}", self.where_(path))))?;
        Ok(version(None, head.last_modified()))
    }

    /// The ETag a conditional write or delete names, refused where the server gives none.
    fn etag_of<'a>(&self, path: &str, tag: &'a str) -> anyhow::Result<&'a str> {
        if tag.is_empty() || tag.starts_with(super::MODIFIED_VERSION) {
            bail!(
                "cannot replace {} conditionally: this S3-compatible server gives no ETags, so a concurrent writer \
                 could not be detected",
                self.where_(path)
            );
        }
        Ok(tag)
    }
}

/// What a put requires of the object it replaces.
#[derive(Clone, Copy)]
enum Condition<'a> {
    None,
    Absent,
    /// Still this ETag.
    Tag(&'a str),
}

impl Store for S3Store {
    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectMeta>> {
        self.list_split(prefix, &[])
    }

    fn list_range_size(&self) -> Option<usize> {
        (listing::concurrency() > 1).then(listing::page_size)
    }

    fn list_split(&self, prefix: &str, split_after: &[String]) -> anyhow::Result<Vec<ObjectMeta>> {
        let key_prefix = format!("{}/", self.key(prefix.trim_end_matches('/')));
        let splits: Vec<String> = match listing::concurrency() {
            1 => Vec::new(),
            _ => split_after.iter().map(|path| self.key(path)).collect(),
        };
        self.list_ranges(&key_prefix, &splits)
    }

    fn read(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.read_tagged(path, limit)?.map(|(bytes, _)| bytes))
    }

    fn write(&self, path: &str, bytes: &[u8]) -> anyhow::Result<ObjectMeta> {
        self.lease.check(&self.where_(path))?;
        let meta = self.retrying(|| self.put(path, bytes.to_vec(), Condition::None))?;
        meta.with_context(|| format!("writing {}", self.where_(path)))
    }

    fn write_if_absent(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Option<ObjectMeta>> {
        self.lease.check(&self.where_(path))?;
        self.retrying(|| self.put(path, bytes.to_vec(), Condition::Absent))
    }

    fn read_tagged(&self, path: &str, limit: ReadLimit) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        let too_large = |size| TooLarge { at: self.where_(path), size, limit };
        self.retrying(|| async {
            match self.client.get_object().bucket(&self.bucket).key(self.key(path)).send().await {
                Ok(out) => {
                    let etag = out.e_tag().unwrap_or_default().to_string();
                    // Refused by its announced size, or as its bytes pass the bound (a body without a length).
                    let size = out.content_length().unwrap_or(0).max(0) as u64;
                    if size > limit.bytes {
                        return Err(too_large(Some(size)).into());
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    let mut body = out.body;
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|e| Transient(format!("reading {}: {e}", self.where_(path))))?;
                        if (bytes.len() + chunk.len()) as u64 > limit.bytes {
                            return Err(too_large(None).into());
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(Some((bytes, etag)))
                }
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(describe(e, &format!("reading {}", self.where_(path)))),
            }
        })
    }

    fn write_if_tag(&self, path: &str, bytes: &[u8], tag: &str) -> anyhow::Result<Option<ObjectMeta>> {
        self.lease.check(&self.where_(path))?;
        let etag = self.etag_of(path, tag)?;
        self.retrying(|| self.put(path, bytes.to_vec(), Condition::Tag(etag)))
    }

    fn delete_if_tag(&self, path: &str, tag: &str) -> anyhow::Result<bool> {
        self.lease.check(&self.where_(path))?;
        let etag = self.etag_of(path, tag)?;
        let deleted = self.retrying(|| async {
            let request = self.client.delete_object().bucket(&self.bucket).key(self.key(path)).if_match(etag);
            match request.send().await {
                Ok(_) => Ok(Some(true)),
                Err(e) if is_not_found(&e) || is_precondition_failed(&e) => Ok(Some(false)),
                // A server without conditional deletes: removing a manifest never makes one vouch for other
                // bytes, it only costs a rebuild, so the plain delete is the safe fallback.
                Err(e) if errors::status(&e) == Some(501) => Ok(None),
                Err(e) => Err(describe(e, &format!("deleting {}", self.where_(path)))),
            }
        })?;
        match deleted {
            Some(deleted) => Ok(deleted),
            None => self.remove(path).map(|()| true),
        }
    }

    fn publish(&self, local: &Path, path: &str) -> anyhow::Result<ObjectMeta> {
        self.lease.check(&self.where_(path))?;
        let size = std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?.len();
        let key = self.key(path);
        // Taken here, not in `retrying`: the parts of a multipart upload, sent from other threads, draw on it too.
        let budget = Budget::current_or_default();
        self.block_on(budget.run_async(|| async {
            if size > multipart::THRESHOLD {
                let notes = format!("{}/", self.key(UPLOAD_NOTES));
                return multipart::upload(&self.client, &self.bucket, &key, local, size, &notes, &budget).await;
            }
            let body =
                ByteStream::from_path(local).await.with_context(|| format!("cannot read {}", local.display()))?;
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_length(size as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| describe(e, &format!("uploading {}", self.where_(path))))?;
            Ok(out.e_tag().map(str::to_string))
        }))
        .map(|etag| ObjectMeta { path: path.to_string(), size, version: etag.unwrap_or_default() })
    }

    fn delete(&self, path: &str) -> anyhow::Result<()> {
        // Deleting is writing: a build without its lease could remove the manifest of the build that took it.
        self.lease.check(&self.where_(path))?;
        self.remove(path)
    }

    fn local_path(&self, _path: &str) -> Option<PathBuf> {
        None
    }

    fn fetch(&self, path: &str, dest: &Path, size: u64) -> anyhow::Result<()> {
        let partial = dest.with_extension("partial");
        let too_large = |found| TooLarge { at: self.where_(path), size: found, limit: ReadLimit::recorded(size) };
        self.retrying(|| async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.key(path))
                .send()
                .await
                .map_err(|e| describe(e, &format!("downloading {}", self.where_(path))))?;
            let announced = out.content_length().unwrap_or(0).max(0) as u64;
            if announced > size {
                return Err(too_large(Some(announced)).into());
            }
            let mut reader = out.body.into_async_read().take(size + 1);
            let mut file = tokio::fs::File::create(&partial).await?;
            let copied = tokio::io::copy(&mut reader, &mut file)
                .await
                .map_err(|e| Transient(format!("downloading {}: {e}", self.where_(path))))?;
            if copied > size {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(too_large(None).into());
            }
            anyhow::Ok(())
        })?;
        std::fs::rename(&partial, dest)?;
        Ok(())
    }

    fn head(&self, path: &str) -> anyhow::Result<Option<ObjectMeta>> {
        self.retrying(|| async {
            match self.client.head_object().bucket(&self.bucket).key(self.key(path)).send().await {
                Ok(out) => Ok(Some(ObjectMeta {
                    path: path.to_string(),
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    version: version(out.e_tag(), out.last_modified()),
                })),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(describe(e, &format!("checking {}", self.where_(path)))),
            }
        })
    }

    fn scratch_root(&self) -> PathBuf {
        std::env::temp_dir().join("dsmake-scratch")
    }

    fn versions_identify_content(&self) -> bool {
        true
    }

    fn requests(&self) -> u64 {
        self.requests.0.load(Ordering::Relaxed)
    }

    fn lock(&self, pipeline: &str) -> anyhow::Result<Box<dyn std::any::Any + Send>> {
        Ok(Box::new(lease::acquire(Arc::new(self.clone()), pipeline)?))
    }

    fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> anyhow::Result<Vec<String>> {
        let key_prefix = format!("{}/", self.key(prefix));
        let cutoff = SystemTime::now() - older_than;
        let mut found: Vec<(String, String)> = Vec::new();
        // The notes that our own uploads leave while they run (any S3-compatible server)…
        for note in self.list(UPLOAD_NOTES)? {
            // A note no upload of ours wrote (too large, or not one) is not ours to act on.
            let bytes = match self.read(&note.path, ReadLimit::NOTE) {
                Ok(Some(bytes)) => bytes,
                Err(e) if e.downcast_ref::<TooLarge>().is_none() => return Err(e),
                _ => continue,
            };
            let Ok(upload) = serde_json::from_slice::<multipart::UploadNote>(&bytes) else { continue };
            let started = SystemTime::UNIX_EPOCH + Duration::from_secs(upload.started_unix);
            if upload.key.starts_with(&key_prefix) && started <= cutoff {
                found.push((upload.key, upload.upload_id));
                self.delete(&note.path)?;
            }
        }
        // …and whatever S3 lists, where the server can (s3s-fs answers 501 Not Implemented).
        let listed = self.retrying(|| async {
            match self.client.list_multipart_uploads().bucket(&self.bucket).prefix(&key_prefix).send().await {
                Ok(listed) => Ok(Some(listed)),
                Err(e) if errors::status(&e) == Some(501) => Ok(None),
                Err(e) => Err(describe(e, &format!("listing uploads under s3://{}/{key_prefix}", self.bucket))),
            }
        })?;
        for upload in listed.iter().flat_map(|l| l.uploads()) {
            let started = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
            if started.is_some_and(|t| t > cutoff) {
                continue;
            }
            if let (Some(key), Some(id)) = (upload.key(), upload.upload_id())
                && !found.iter().any(|(_, known)| known == id)
            {
                found.push((key.to_string(), id.to_string()));
            }
        }
        let mut aborted = Vec::new();
        for (key, id) in found {
            let gone = self.retrying(|| async {
                match self.client.abort_multipart_upload().bucket(&self.bucket).key(&key).upload_id(&id).send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_not_found(&e) => Ok(false),
                    Err(e) => Err(describe(e, &format!("aborting the upload of s3://{}/{key}", self.bucket))),
                }
            })?;
            if gone {
                aborted.push(self.unkey(&key));
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(parse_url("s3://data-bkt/datasets/x/").unwrap(), ("data-bkt".into(), "datasets/x".into()));
        assert_eq!(parse_url("s3://data-bkt").unwrap(), ("data-bkt".into(), String::new()));
        assert!(parse_url("s3://Bad_Bucket/x").unwrap_err().to_string().contains("not a valid S3 bucket name"));
    }
}
