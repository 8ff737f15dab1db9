//! Building one shard: download the rows' images with `concurrency` threads (per-host limits, destinations
//! checked before every request and redirect), decode and resize them, and write the tar as successes finish,
//! then the parquet and the stats, in img2dataset's formats. Bodies and decodes count against the build's
//! memory budget (`cx.memory`), shared with the other shards built at once: a body is read once there is room
//! for it and held until its image is processed; decodes take the build's slots (about one per core).

use super::decoding;
use super::destination;
use super::exif::exif_json;
use super::fetch::{FetchOptions, Fetcher};
use super::options::ProcessOptions;
use super::output::{ColumnType, TarOut};
use super::process::{self, Processed};
use super::settings::Settings;
use super::{index_digits, key, output_names, previous};
use crate::formats::parquet::InvalidText;
use crate::kind::{BuildCx, Built};
use anyhow::{Context, anyhow};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// What became of one row.
pub struct Outcome {
    pub index: usize,
    pub status: &'static str,
    pub error: Option<String>,
    pub sha256: Option<String>,
    /// The downloaded image's EXIF tags as a JSON object in text, for successes when asked.
    pub exif: Option<String>,
    pub image: Option<Processed>,
}

/// `invalid_text` names the input's text cells that were not UTF-8 (read with U+FFFD in their place): a URL
/// among them fails its row; any other (a caption) is kept as read and noted in the stats.
pub fn run_shard(
    cx: &BuildCx,
    s: &Settings,
    rows: &[Map<String, Value>],
    invalid_text: &[InvalidText],
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let shard = cx.shard.to_string();
    let names = output_names(&shard);
    let digits = index_digits(s.number_sample_per_shard as u64);
    let mut allow = s.allow_hosts.clone();
    allow.extend(cx.allow_hosts.iter().cloned());
    if let Ok(extra) = std::env::var("DSMAKE_ALLOW_HOSTS") {
        allow.extend(extra.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string));
    }
    let token = s.user_agent_token.clone();
    let user_agent = match &token {
        Some(t) => format!("Mozilla/5.0 (compatible; {t}; dsmake/{}; img2dataset)", env!("CARGO_PKG_VERSION")),
        None => format!("Mozilla/5.0 (compatible; dsmake/{}; img2dataset)", env!("CARGO_PKG_VERSION")),
    };
    let fetcher = Fetcher::new(
        FetchOptions {
            timeout: Duration::from_secs_f64(s.timeout),
            retries: s.retries as u32,
            user_agent,
            user_agent_token: token.map(|t| t.to_ascii_lowercase()),
            disallowed_directives: s.disallowed_header_directives.iter().map(|d| d.to_ascii_lowercase()).collect(),
            allow_hosts: allow,
            max_redirects: s.max_redirects as u32,
            max_bytes: s.max_image_bytes as u64,
            per_host: s.per_host_connections as usize,
            max_retry_after: Duration::from_secs(60),
            proxy: destination::proxy_from_env()?,
            ignore_ssl_certificate: s.ignore_ssl_certificate,
        },
        cx.memory.clone(),
        cx.cancel.clone(),
    );
    let popts = ProcessOptions {
        image_size: s.image_size as u32,
        mode: s.resize_mode,
        resize_only_if_bigger: s.resize_only_if_bigger,
        skip_reencode: s.skip_reencode,
        encode: s.encode_format,
        quality: s.encode_quality.clamp(0, 100) as u8,
        min_image_size: s.min_image_size as u32,
        max_image_area: s.max_image_area.unwrap_or(f64::INFINITY),
        max_aspect_ratio: s.max_aspect_ratio.unwrap_or(f64::INFINITY),
        max_pixels: s.max_pixels as u64,
    };
    let mut tar = TarOut::create(&cx.out_dir.join(&names[0]))?;
    let mut outcomes: Vec<Option<Outcome>> = (0..rows.len()).map(|_| None).collect();
    let ext = popts.encode.ext();
    // --retry-failed: what the last build got right is kept as it was; only its failed downloads are tried.
    if !cx.previous.is_empty() {
        let optional: Vec<&str> = [(s.extract_exif, "exif"), (s.hashing(), "sha256")]
            .into_iter()
            .filter_map(|(on, c)| on.then_some(c))
            .collect();
        let kept = previous::load(&cx.previous, &names, rows, &s.url_col, &optional)
            .with_context(|| format!("the last build of {}", cx.target))?;
        for (index, k) in kept {
            if !k.members.is_empty() {
                let mut members: Vec<(&str, &[u8])> =
                    k.members.iter().map(|(e, b)| (e.as_str(), b.as_slice())).collect();
                tar.write(&key(&shard, index as u64, digits), &mut members)
                    .with_context(|| format!("cannot write {}", names[0]))?;
            }
            outcomes[index] = Some(k.outcome);
        }
    }
    // A URL that is not UTF-8 has no one right reading: fetching its lossy form would pair the row's caption with
    // some other resource. Its row fails alone, as a download that could not be made.
    for bad in invalid_text.iter().filter(|b| b.column == s.url_col) {
        if let Some(slot @ None) = outcomes.get_mut(bad.row) {
            *slot = Some(Outcome {
                index: bad.row,
                status: "failed_to_download",
                error: Some(format!("the URL is not valid UTF-8 (at byte {})", bad.offset)),
                sha256: None,
                exif: None,
                image: None,
            });
        }
    }
    let todo: Vec<usize> = (0..rows.len()).filter(|&i| outcomes[i].is_none()).collect();
    let threads = (s.concurrency as usize).min(todo.len()).max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Outcome>(threads * 2);
    let downloads = Downloads {
        todo: &todo,
        next: AtomicUsize::new(0),
        started: AtomicUsize::new(1),
        threads,
        rows,
        s,
        cx,
        fetcher: &fetcher,
        popts: &popts,
        hashing: s.hashing() || s.verify_hash.is_some(),
    };

    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (d, tx) = (&downloads, tx);
        scope.spawn(move || download(scope, d, tx));
        for outcome in rx {
            cx.cancel.check()?;
            let index = outcome.index;
            if let Some(image) = &outcome.image {
                let row = &rows[index];
                let k = key(&shard, index as u64, digits);
                let meta = sample_meta(row, s, &k, &outcome);
                let json = pretty4(&Value::Object(meta))?;
                let caption = s.caption_col.as_ref().and_then(|c| row.get(c)).and_then(|v| match v {
                    Value::Null => None,
                    Value::String(t) => Some(t.clone()),
                    other => Some(other.to_string()),
                });
                let mut members: Vec<(&str, &[u8])> = vec![(ext, &image.bytes), ("json", json.as_bytes())];
                if let Some(c) = &caption {
                    members.push(("txt", c.as_bytes()));
                }
                tar.write(&k, &mut members).with_context(|| format!("cannot write {}", names[0]))?;
            }
            let mut kept = outcome;
            kept.image = kept.image.map(|p| process::Processed { bytes: Vec::new(), ..p });
            outcomes[index] = Some(kept);
        }
        Ok(())
    })?;
    cx.cancel.check()?;
    tar.finish()?;

    // The parquet: every row in input order, img2dataset's columns after the input's.
    let mut metas = Vec::with_capacity(rows.len());
    let mut status_dict: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut successes, mut failed_download, mut failed_resize) = (0u64, 0u64, 0u64);
    for (index, outcome) in outcomes.iter().enumerate() {
        let outcome = outcome.as_ref().ok_or_else(|| anyhow!("row {index} of {shard} was never processed"))?;
        match outcome.status {
            "success" => successes += 1,
            "failed_to_download" => failed_download += 1,
            _ => failed_resize += 1,
        }
        *status_dict.entry(outcome.error.clone().unwrap_or_else(|| "success".into())).or_default() += 1;
        metas.push(sample_meta(&rows[index], s, &key(&shard, index as u64, digits), outcome));
    }
    let mut columns: Vec<(String, ColumnType)> = Vec::new();
    let mut add = |name: &str, ty: ColumnType| {
        if !columns.iter().any(|(n, _)| n == name) {
            columns.push((name.to_string(), ty));
        }
    };
    // img2dataset's reader order: the saved columns, then caption, then url.
    for c in &s.save_additional_columns {
        add(c, ColumnType::infer(rows.iter().filter_map(|r| r.get(c))));
    }
    if s.caption_col.is_some() {
        add("caption", ColumnType::Text);
    }
    add("url", ColumnType::Text);
    for c in ["key", "status", "error_message"] {
        add(c, ColumnType::Text);
    }
    for c in ["width", "height", "original_width", "original_height"] {
        add(c, ColumnType::Int32);
    }
    if s.extract_exif {
        add("exif", ColumnType::Text);
    }
    if s.hashing() {
        add("sha256", ColumnType::Text);
    }
    crate::formats::parquet::write(&cx.out_dir.join(&names[1]), &columns, &metas)?;

    let count = rows.len() as u64;
    let end_time = SystemTime::now();
    let epoch = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut stats = json!({
        "count": count,
        "successes": successes,
        "failed_to_download": failed_download,
        "failed_to_resize": failed_resize,
        "duration": started.elapsed().as_secs_f64(),
        "start_time": epoch(start_time),
        "end_time": epoch(end_time),
        "status_dict": status_dict,
    });
    // The note on text read lossily: where, never the bytes. Only when there is some, so that every other
    // shard's stats stay as img2dataset writes them.
    if !invalid_text.is_empty() {
        let cells: Vec<Value> = invalid_text
            .iter()
            .take(MAX_NOTED)
            .map(|b| {
                json!({"key": key(&shard, b.row as u64, digits), "column": b.column, "byte": b.offset,
                       "excerpt": b.excerpt})
            })
            .collect();
        stats["invalid_utf8"] = json!({
            "cells": invalid_text.len(),
            "read_as": "U+FFFD in place of each invalid sequence; a URL fails its row",
            "first": cells,
        });
    }
    std::fs::write(cx.out_dir.join(&names[2]), pretty4(&stats)?)
        .with_context(|| format!("cannot write {}", names[2]))?;
    Ok(Built {
        outputs: names.to_vec(),
        rows: Some(count),
        failures: Some(count - successes),
        retryable: Some(failed_download),
        stats: json!({
            "count": count,
            "successes": successes,
            "failed_to_download": failed_download,
            "failed_to_resize": failed_resize,
            "dns_lookups": fetcher.dns.lookups.load(Ordering::Relaxed),
        }),
    })
}

/// The shard's downloads, shared by its download threads.
struct Downloads<'a> {
    todo: &'a [usize],
    next: AtomicUsize,
    /// Threads started, at most `threads` (`concurrency`, or fewer rows).
    started: AtomicUsize,
    threads: usize,
    rows: &'a [Map<String, Value>],
    s: &'a Settings,
    cx: &'a BuildCx<'a>,
    fetcher: &'a Fetcher,
    popts: &'a ProcessOptions,
    hashing: bool,
}

/// A download thread: takes rows until none is left. Before each, it starts another thread while the shard has
/// fewer than `concurrency` and the build's memory budget has room for another request: a thread that could
/// only wait for memory would cost memory itself (its stack, its allocator's pages), hundreds of times over
/// when many shards run at once.
fn download<'scope, 'env: 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    d: &'scope Downloads<'scope>,
    tx: std::sync::mpsc::SyncSender<Outcome>,
) {
    while let Some(&index) = d.todo.get(d.next.fetch_add(1, Ordering::Relaxed)) {
        if d.cx.cancel.is_cancelled() {
            break;
        }
        let more = d.next.load(Ordering::Relaxed) < d.todo.len()
            && d.cx.memory.has_room(d.fetcher.request_bytes())
            && d.started
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < d.threads).then_some(n + 1))
                .is_ok();
        if more {
            let tx = tx.clone();
            scope.spawn(move || download(scope, d, tx));
        }
        let Some(outcome) = one_row(index, &d.rows[index], d.s, d.cx, d.fetcher, d.popts, d.hashing) else {
            break;
        };
        if tx.send(outcome).is_err() {
            break;
        }
    }
}

/// Cells noted by name in a shard's stats when their text is not UTF-8; the count covers the rest.
const MAX_NOTED: usize = 20;

/// What became of one row; `None` when the build was interrupted while it waited for a decode slot.
fn one_row(
    index: usize,
    row: &Map<String, Value>,
    s: &Settings,
    cx: &BuildCx,
    fetcher: &Fetcher,
    popts: &ProcessOptions,
    hashing: bool,
) -> Option<Outcome> {
    let fail =
        |status, error: String| Outcome { index, status, error: Some(error), sha256: None, exif: None, image: None };
    let url = match row.get(&s.url_col) {
        Some(Value::String(u)) if !u.trim().is_empty() => u.clone(),
        _ => return Some(fail("failed_to_download", "no URL".to_string())),
    };
    let body = match fetcher.fetch(&url) {
        Ok(b) => b,
        Err(e) => return Some(fail("failed_to_download", e)),
    };
    let bytes = &body.bytes;
    let sha = hashing.then(|| Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>());
    if let (Some(v), Some(sha)) = (&s.verify_hash, &sha) {
        let expected = row.get(&v[0]).and_then(Value::as_str).unwrap_or_default();
        if !expected.eq_ignore_ascii_case(sha) {
            return Some(fail("failed_to_download", "hash mismatch".to_string()));
        }
    }
    let processed = decoding::decode(cx.memory, cx.cancel, decoding::decodes_large(bytes), |scratch, admit| {
        process::process_within(bytes, popts, scratch, admit)
    });
    Some(match processed.ok()? {
        Ok(image) => {
            let exif = if s.extract_exif { exif_json(bytes) } else { None };
            Outcome { index, status: "success", error: None, sha256: sha, exif, image: Some(image) }
        }
        Err(e) => Outcome { index, status: "failed_to_resize", error: Some(e), sha256: sha, exif: None, image: None },
    })
}

/// A row's metadata, as img2dataset writes it to KEY.json and the parquet.
fn sample_meta(row: &Map<String, Value>, s: &Settings, key: &str, o: &Outcome) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("url".into(), row.get(&s.url_col).cloned().unwrap_or(Value::Null));
    if let Some(c) = &s.caption_col {
        m.insert("caption".into(), row.get(c).cloned().unwrap_or(Value::Null));
    }
    for c in &s.save_additional_columns {
        m.insert(c.clone(), row.get(c).cloned().unwrap_or(Value::Null));
    }
    m.insert("key".into(), json!(key));
    m.insert("status".into(), json!(o.status));
    m.insert("error_message".into(), o.error.as_ref().map_or(Value::Null, |e| json!(e)));
    let dims = o.image.as_ref();
    m.insert("width".into(), dims.map_or(Value::Null, |p| json!(p.width)));
    m.insert("height".into(), dims.map_or(Value::Null, |p| json!(p.height)));
    m.insert("original_width".into(), dims.map_or(Value::Null, |p| json!(p.original_width)));
    m.insert("original_height".into(), dims.map_or(Value::Null, |p| json!(p.original_height)));
    if s.extract_exif {
        m.insert("exif".into(), o.exif.as_ref().map_or(Value::Null, |e| json!(e)));
    }
    if s.hashing() {
        m.insert("sha256".into(), o.sha256.as_ref().map_or(Value::Null, |h| json!(h)));
    }
    m
}

/// JSON with four-space indents, as Python's `json.dumps(meta, indent=4)` writes it.
fn pretty4(value: &Value) -> anyhow::Result<String> {
    use serde::Serialize;
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out)?)
}
