//! Streaming multipart upload: parts are read from the file as they are sent (no whole-file buffer), a few
//! at a time, and an upload that fails is aborted so that no half-object lingers (S3 shows none anyway
//! until the upload completes).

use super::errors::describe;
use crate::retry::Budget;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Files above this go up in parts.
pub const THRESHOLD: u64 = 16 * 1024 * 1024;
/// S3 allows at most 10,000 parts of at least 5 MiB.
const MIN_PART: u64 = 16 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// Parts in flight: memory stays near this many part buffers of the HTTP stack, whatever the file size.
const PARALLEL_PARTS: usize = 4;

pub fn part_size(size: u64) -> u64 {
    MIN_PART.max(size.div_ceil(MAX_PARTS))
}

/// A note kept in the store while an upload runs, so that `dsmake gc --uploads` can abort the uploads of
/// killed builds even on S3-compatible servers that cannot list multipart uploads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct UploadNote {
    pub key: String,
    pub upload_id: String,
    pub started_unix: u64,
}

/// `notes` is the key prefix (ending in `/`) under which upload notes are kept. A part that fails is sent
/// again on `budget` (the operation's: see `crate::retry`); the caller retries the rest. Returns the object's
/// ETag, where the server gives one.
pub async fn upload(
    client: &Client,
    bucket: &str,
    key: &str,
    file: &Path,
    size: u64,
    notes: &str,
    budget: &Budget,
) -> anyhow::Result<Option<String>> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| describe(e, &format!("starting the upload of s3://{bucket}/{key}")))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let note_key = format!("{notes}{}", blake3::hash(upload_id.as_bytes()).to_hex());
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let note = UploadNote { key: key.to_string(), upload_id: upload_id.clone(), started_unix };
    let _ = client
        .put_object()
        .bucket(bucket)
        .key(&note_key)
        .body(ByteStream::from(serde_json::to_vec(&note)?))
        .send()
        .await;
    let result = upload_parts(client, bucket, key, file, size, &upload_id, budget).await;
    if result.is_err() {
        // Best effort: `dsmake gc --uploads` cleans whatever this misses (a killed process, say).
        let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
    }
    let _ = client.delete_object().bucket(bucket).key(&note_key).send().await;
    result
}

async fn upload_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    file: &Path,
    size: u64,
    upload_id: &str,
    budget: &Budget,
) -> anyhow::Result<Option<String>> {
    let part = part_size(size);
    let count = size.div_ceil(part).max(1);
    let limit = Arc::new(Semaphore::new(PARALLEL_PARTS));
    let mut tasks = JoinSet::new();
    for n in 0..count {
        let permit = limit.clone().acquire_owned().await?;
        let (client, bucket, key, upload_id, budget) =
            (client.clone(), bucket.to_string(), key.to_string(), upload_id.to_string(), budget.clone());
        let offset = n * part;
        let length = part.min(size - offset);
        let file = file.to_path_buf();
        tasks.spawn(async move {
            let _permit = permit;
            let number = (n + 1) as i32;
            let done = budget
                .run_async(|| async {
                    let body = ByteStream::read_from()
                        .path(&file)
                        .offset(offset)
                        .length(Length::Exact(length))
                        .build()
                        .await?;
                    client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .content_length(length as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| describe(e, &format!("uploading part {number} of s3://{bucket}/{key}")))
                })
                .await?;
            anyhow::Ok(CompletedPart::builder().part_number(number).set_e_tag(done.e_tag().map(str::to_string)).build())
        });
    }
    let mut parts = Vec::with_capacity(count as usize);
    while let Some(joined) = tasks.join_next().await {
        parts.push(joined??);
    }
    parts.sort_by_key(|p| p.part_number());
    let completed = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| describe(e, &format!("completing the upload of s3://{bucket}/{key}")))?;
    Ok(completed.e_tag().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_stay_within_s3_limits() {
        assert_eq!(part_size(100 * 1024 * 1024), MIN_PART);
        let huge: u64 = 5 * 1024 * 1024 * 1024 * 1024; // 5 TiB, the largest S3 object
        assert!(huge.div_ceil(part_size(huge)) <= MAX_PARTS);
    }
}
