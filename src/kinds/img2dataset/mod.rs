//! `img2dataset`: downloads the images of URL rows and writes them as img2dataset's webdataset output, one
//! target per row shard (`Mapping::Rows(number_sample_per_shard)` over parquet files from `hf-dataset` or
//! `files`). Options, defaults, status values, error texts of its checks and the key scheme are
//! img2dataset's, so that its readers change nothing downstream.
//!
//! **Names.** img2dataset numbers shards `00000`, `00001`, … across one run. Our shards are fixed row ranges
//! of fixed input files (`<file stem>_<part>`, part zero-padded to five digits), so that a new input file
//! adds shards and never renames old ones. A shard's files are `<file stem>_<part>.tar`, `.parquet` and
//! `_stats.json`: readers that glob `*.tar` (webdataset, clip-retrieval) find them; brace ranges such as
//! `{00000..00099}.tar` do not apply. A key is img2dataset's (shard number zero-padded to five digits, then
//! the row's index in the shard zero-padded to the digits of `number_sample_per_shard`), prefixed with the
//! file stem: `<stem>_<part><index>`, unique across files and stable.
//!
//! **Work.** `concurrency` threads download (a per-host connection limit, one DNS cache per shard that is also
//! the HTTP client's resolver); decoding and resizing run on at most one thread per core; a writer appends
//! successes to the tar as they finish. Destinations are checked before every request and after every
//! redirect (see `fetch`).

mod fetch;
mod jpeg;
mod output;
mod previous;
mod process;
mod webp;

use super::{BuildCx, Built, Inputs, Kind, Resource, ShardCx};
use crate::exec::failure::Cancelled;
use crate::pipeline::settings::{Setting, SettingError, SettingType};
use crate::plan::shard::{InputShard, InputShards, Mapping, Shards};
use anyhow::{Context, anyhow, bail};
use fetch::{FetchOptions, Fetcher};
use output::{ColumnType, TarOut};
use process::{Encode, ProcessOptions, ResizeMode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Img2Dataset;

const SETTINGS: &[Setting] = &[
    Setting::default("url_col", SettingType::String, r#""url""#, "the column of image URLs"),
    Setting::optional("caption_col", SettingType::String, "the column of captions, written as KEY.txt"),
    Setting::default(
        "save_additional_columns",
        SettingType::StringList,
        "[]",
        "input columns copied to KEY.json and the shard's parquet",
    ),
    Setting::default(
        "number_sample_per_shard",
        SettingType::Integer,
        "10000",
        "rows per shard; shard i of a file always covers rows [i·n, (i+1)·n)",
    ),
    Setting::default("image_size", SettingType::Integer, "256", "the target size in pixels"),
    Setting::default(
        "resize_mode",
        SettingType::String,
        r#""border""#,
        "\"no\", \"keep_ratio\" (smaller side = image_size), \"keep_ratio_largest\" (larger side), \"center_crop\", \
         \"border\" (larger side, padded white to a square)",
    ),
    Setting::default("resize_only_if_bigger", SettingType::Bool, "false", "never upscale"),
    Setting::default(
        "skip_reencode",
        SettingType::Bool,
        "false",
        "keep the downloaded bytes when no resize is needed and the format is already encode_format",
    ),
    Setting::default("encode_format", SettingType::String, r#""jpg""#, "\"jpg\", \"png\" or \"webp\" (lossless)"),
    Setting::default(
        "encode_quality",
        SettingType::Integer,
        "95",
        "JPEG quality 0–100; for png the compression level 0–9",
    ),
    Setting::default("min_image_size", SettingType::Integer, "0", "smaller side below this fails the row"),
    Setting::optional("max_image_area", SettingType::Float, "width × height above this fails the row"),
    Setting::optional("max_aspect_ratio", SettingType::Float, "larger side / smaller side above this fails the row"),
    Setting::default("timeout", SettingType::Float, "10", "seconds per download"),
    Setting::default(
        "retries",
        SettingType::Integer,
        "0",
        "extra attempts after a timeout, a broken connection, 429 or 5xx (Retry-After is honoured)",
    ),
    Setting::optional(
        "user_agent_token",
        SettingType::String,
        "a token added to the User-Agent, and matched against agent-specific X-Robots-Tag directives",
    ),
    Setting::default(
        "disallowed_header_directives",
        SettingType::StringList,
        r#"["noai", "noimageai", "noindex", "noimageindex"]"#,
        "X-Robots-Tag directives that forbid using the image",
    ),
    Setting::default(
        "extract_exif",
        SettingType::Bool,
        "true",
        "an `exif` column: the image's EXIF tags as JSON text (exifread's names)",
    ),
    Setting::default(
        "compute_hash",
        SettingType::String,
        r#""sha256""#,
        "\"sha256\" of the downloaded bytes, or \"none\"",
    ),
    Setting::optional(
        "verify_hash",
        SettingType::StringList,
        "[COLUMN, \"sha256\"]: rows whose download does not hash to COLUMN fail with \"hash mismatch\"",
    ),
    Setting::default(
        "concurrency",
        SettingType::Integer,
        "64",
        "downloads in flight per shard (img2dataset's processes × threads)",
    ),
    Setting::default("per_host_connections", SettingType::Integer, "16", "downloads in flight per host"),
    Setting::default(
        "allow_hosts",
        SettingType::StringList,
        "[]",
        "hosts allowed even though they are loopback, private or link-local (\"*\" for all); \
         DSMAKE_ALLOW_HOSTS (comma-separated) adds to it",
    ),
    Setting::default("max_redirects", SettingType::Integer, "10", "redirects followed per image"),
    Setting::default("max_image_bytes", SettingType::Integer, "33554432", "bytes downloaded per image at most"),
    Setting::default(
        "max_pixels",
        SettingType::Integer,
        "89478485",
        "decoded pixels per image at most, checked from the header before decoding (Pillow's limit)",
    ),
];

#[derive(Debug, Deserialize)]
struct Settings {
    url_col: String,
    caption_col: Option<String>,
    save_additional_columns: Vec<String>,
    number_sample_per_shard: i64,
    image_size: i64,
    resize_mode: String,
    resize_only_if_bigger: bool,
    skip_reencode: bool,
    encode_format: String,
    encode_quality: i64,
    min_image_size: i64,
    max_image_area: Option<f64>,
    max_aspect_ratio: Option<f64>,
    timeout: f64,
    retries: i64,
    user_agent_token: Option<String>,
    disallowed_header_directives: Vec<String>,
    extract_exif: bool,
    compute_hash: String,
    verify_hash: Option<Vec<String>>,
    concurrency: i64,
    per_host_connections: i64,
    allow_hosts: Vec<String>,
    max_redirects: i64,
    max_image_bytes: i64,
    max_pixels: i64,
}

fn settings(value: &Value) -> anyhow::Result<Settings> {
    serde_json::from_value(value.clone()).context("img2dataset settings")
}

/// Shard `NAME`'s outputs.
fn output_names(shard: &str) -> [String; 3] {
    [format!("{shard}.tar"), format!("{shard}.parquet"), format!("{shard}_stats.json")]
}

/// img2dataset's `oom_sample_per_shard`: digits of a row's index in its shard.
fn index_digits(per_shard: u64) -> usize {
    ((per_shard as f64).log10().ceil() as usize).max(1)
}

/// img2dataset's key: the shard number (five digits) then the index, here after the file stem.
fn key(shard: &str, index: u64, digits: usize) -> String {
    format!("{shard}{index:0digits$}")
}

impl Kind for Img2Dataset {
    fn name(&self) -> &'static str {
        "img2dataset"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "downloads and resizes the images of URL rows into img2dataset's webdataset shards (tar + parquet + stats)"
    }
    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }
    fn inputs(&self) -> Inputs {
        Inputs::Required
    }
    fn resource(&self, _settings: &Value) -> Resource {
        Resource::Net
    }

    fn check(&self, value: &Value, has_inputs: bool) -> Result<(), SettingError> {
        let s = settings(value).map_err(|e| SettingError::new("url_col", format!("{e:#}")))?;
        if !has_inputs {
            return Err(SettingError::new("url_col", "img2dataset reads URL rows: the step needs `from`")
                .help("e.g. from = \"metadata\", a `hf-dataset` or `files` step of parquet files"));
        }
        if ResizeMode::parse(&s.resize_mode).is_none() {
            return Err(SettingError::new("resize_mode", format!("unknown resize_mode \"{}\"", s.resize_mode))
                .help("expected \"no\", \"keep_ratio\", \"keep_ratio_largest\", \"center_crop\" or \"border\""));
        }
        let Some(encode) = Encode::parse(&s.encode_format) else {
            return Err(SettingError::new("encode_format", format!("unknown encode_format \"{}\"", s.encode_format))
                .help("expected \"jpg\", \"png\" or \"webp\""));
        };
        let range = if encode == Encode::Png { 0..=9 } else { 0..=100 };
        if !range.contains(&s.encode_quality) {
            return Err(SettingError::new(
                "encode_quality",
                format!(
                    "encode_quality {} is out of {}–{} for {}",
                    s.encode_quality,
                    range.start(),
                    range.end(),
                    s.encode_format
                ),
            ));
        }
        for (key, v) in [
            ("number_sample_per_shard", s.number_sample_per_shard),
            ("image_size", s.image_size),
            ("concurrency", s.concurrency),
            ("per_host_connections", s.per_host_connections),
            ("max_image_bytes", s.max_image_bytes),
            ("max_pixels", s.max_pixels),
        ] {
            if v <= 0 {
                return Err(SettingError::new(key, format!("`{key}` must be a positive integer, found {v}")));
            }
        }
        for (key, v) in
            [("min_image_size", s.min_image_size), ("retries", s.retries), ("max_redirects", s.max_redirects)]
        {
            if v < 0 {
                return Err(SettingError::new(key, format!("`{key}` must not be negative, found {v}")));
            }
        }
        if s.timeout <= 0.0 {
            return Err(SettingError::new("timeout", "`timeout` must be positive (seconds)"));
        }
        if !matches!(s.compute_hash.as_str(), "sha256" | "none") {
            return Err(SettingError::new("compute_hash", format!("unknown compute_hash \"{}\"", s.compute_hash))
                .help("expected \"sha256\" or \"none\""));
        }
        if let Some(v) = &s.verify_hash
            && !(v.len() == 2 && v[1] == "sha256")
        {
            return Err(SettingError::new("verify_hash", "verify_hash is [COLUMN, \"sha256\"]"));
        }
        Ok(())
    }

    fn shards(&self, cx: &ShardCx) -> anyhow::Result<Shards> {
        let s = settings(&cx.step.settings)?;
        // Sources (`files`) are never built, so their row counts come from their parquet footers here.
        let mut owned: Vec<Vec<InputShard>> = Vec::with_capacity(cx.inputs.len());
        for input in &cx.inputs {
            let step = cx.pipeline.step_index(input.step).map(|i| &cx.pipeline.steps[i]);
            match step {
                Some(step) if step.kind.is_source() => {
                    let inner = ShardCx { pipeline: cx.pipeline, step, inputs: Vec::new(), stat_cache: cx.stat_cache };
                    let Shards::Known(specs) = step.kind.shards(&inner)? else {
                        bail!("the files of `{}` are not known", input.step);
                    };
                    let mut shards = Vec::with_capacity(specs.len());
                    for (spec, shard) in specs.iter().zip(input.shards) {
                        let rows = match &spec.source {
                            Some(file) => Some(
                                super::hf_dataset::parquet_rows(&file.path)
                                    .with_context(|| format!("input {}/{}", input.step, spec.id))?,
                            ),
                            None => None,
                        };
                        shards.push(InputShard { id: shard.id.clone(), rows });
                    }
                    owned.push(shards);
                }
                _ => owned.push(input.shards.to_vec()),
            }
        }
        let views: Vec<InputShards> =
            cx.inputs.iter().zip(&owned).map(|(i, shards)| InputShards { step: i.step, shards }).collect();
        Mapping::Rows(s.number_sample_per_shard as u64).shards(&views).map_err(|e| anyhow!(e))
    }

    fn retries_failed_rows(&self) -> bool {
        true
    }

    fn build(&self, cx: &BuildCx) -> anyhow::Result<Built> {
        let s = settings(cx.job.settings())?;
        let input = cx.inputs.first().ok_or_else(|| anyhow!("{} has no input", cx.job.target))?;
        let file = input
            .files
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "parquet"))
            .or(input.files.first())
            .ok_or_else(|| anyhow!("input {} has no file", input.target))?;
        let range = &cx.job.key_parts.coords["rows"];
        let (start, end) = (range[0].as_u64().unwrap_or(0), range[1].as_u64().unwrap_or(0));
        let mut wanted = vec![s.url_col.clone()];
        wanted.extend(s.caption_col.iter().cloned());
        wanted.extend(s.save_additional_columns.iter().cloned());
        if let Some(v) = &s.verify_hash {
            wanted.push(v[0].clone());
        }
        let rows = read_rows(file, start, end, &wanted)
            .with_context(|| format!("input {} ({})", input.target, file.display()))?;
        run_shard(cx, &s, &rows, start)
    }
}

/// Rows [start, end) of a parquet file, the `wanted` columns of each as JSON values.
fn read_rows(path: &Path, start: u64, end: u64, wanted: &[String]) -> anyhow::Result<Vec<Map<String, Value>>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut fields = Vec::new();
    let mut seen = Vec::new();
    for name in wanted {
        if seen.contains(name) {
            continue;
        }
        seen.push(name.clone());
        let field = root.get_fields().iter().find(|f| f.name() == name).ok_or_else(|| {
            let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
            anyhow!("{} has no column `{name}` (columns: {})", path.display(), have.join(", "))
        })?;
        fields.push(field.clone());
    }
    let projection = parquet::schema::types::Type::group_type_builder("schema").with_fields(fields).build()?;
    let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
    let mut first = 0u64;
    for g in 0..reader.num_row_groups() {
        let n = reader.metadata().row_group(g).num_rows().max(0) as u64;
        let group_range = first..first + n;
        first += n;
        if group_range.end <= start || group_range.start >= end {
            continue;
        }
        let group = reader.get_row_group(g)?;
        let iter = group.get_row_iter(Some(projection.clone()))?;
        let skip = start.saturating_sub(group_range.start) as usize;
        let take = (end.min(group_range.end) - group_range.start.max(start)) as usize;
        for row in iter.skip(skip).take(take) {
            let row = row.with_context(|| format!("{}: unreadable row", path.display()))?;
            let mut map = Map::new();
            for (name, field) in row.get_column_iter() {
                map.insert(name.clone(), field_json(field));
            }
            out.push(map);
        }
    }
    if out.len() as u64 != end - start {
        bail!("{} has {} rows in [{start}, {end}): the file changed since it was planned", path.display(), out.len());
    }
    Ok(out)
}

/// A parquet cell as JSON: numbers, strings and booleans as such, anything else as its text.
fn field_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match field {
        F::Null => Value::Null,
        F::Bool(b) => json!(b),
        F::Byte(n) => json!(n),
        F::Short(n) => json!(n),
        F::Int(n) => json!(n),
        F::Long(n) => json!(n),
        F::UByte(n) => json!(n),
        F::UShort(n) => json!(n),
        F::UInt(n) => json!(n),
        F::ULong(n) => json!(n),
        F::Float(x) => serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number),
        F::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        F::Str(s) => json!(s),
        other => json!(other.to_string()),
    }
}

/// What became of one row.
struct Outcome {
    index: usize,
    status: &'static str,
    error: Option<String>,
    sha256: Option<String>,
    /// The downloaded image's EXIF tags as a JSON object in text, for successes when asked.
    exif: Option<String>,
    image: Option<process::Processed>,
}

/// A counting semaphore: CPU work runs on at most one thread per core, each with a scratch (decode buffer,
/// codec handles) from a pool, so they are reused rather than made afresh for every image.
struct Permits {
    free: Mutex<Vec<process::Scratch>>,
    cv: Condvar,
}

impl Permits {
    fn new(n: usize) -> Permits {
        Permits { free: Mutex::new((0..n).map(|_| process::Scratch::default()).collect()), cv: Condvar::new() }
    }

    fn run<T>(&self, f: impl FnOnce(&mut process::Scratch) -> T) -> T {
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

fn run_shard(cx: &BuildCx, s: &Settings, rows: &[Map<String, Value>], _start: u64) -> anyhow::Result<Built> {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let shard = cx.job.shard.clone();
    let names = output_names(&shard);
    let digits = index_digits(s.number_sample_per_shard as u64);
    let mut allow = s.allow_hosts.clone();
    allow.extend(cx.job.allow_hosts.iter().cloned());
    if let Ok(extra) = std::env::var("DSMAKE_ALLOW_HOSTS") {
        allow.extend(extra.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string));
    }
    let token = s.user_agent_token.clone();
    let user_agent = match &token {
        Some(t) => format!("Mozilla/5.0 (compatible; {t}; dsmake/{}; img2dataset)", env!("CARGO_PKG_VERSION")),
        None => format!("Mozilla/5.0 (compatible; dsmake/{}; img2dataset)", env!("CARGO_PKG_VERSION")),
    };
    let fetcher = Fetcher::new(FetchOptions {
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
    });
    let popts = ProcessOptions {
        image_size: s.image_size as u32,
        mode: ResizeMode::parse(&s.resize_mode).unwrap_or(ResizeMode::Border),
        resize_only_if_bigger: s.resize_only_if_bigger,
        skip_reencode: s.skip_reencode,
        encode: Encode::parse(&s.encode_format).unwrap_or(Encode::Jpg),
        quality: s.encode_quality.clamp(0, 100) as u8,
        min_image_size: s.min_image_size as u32,
        max_image_area: s.max_image_area.unwrap_or(f64::INFINITY),
        max_aspect_ratio: s.max_aspect_ratio.unwrap_or(f64::INFINITY),
        max_pixels: s.max_pixels as u64,
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let permits = Permits::new(cores);
    let mut tar = TarOut::create(&cx.out_dir.join(&names[0]))?;
    let mut outcomes: Vec<Option<Outcome>> = (0..rows.len()).map(|_| None).collect();
    let ext = popts.encode.ext();
    // --retry-failed: what the last build got right is kept as it was; only its failed downloads are tried.
    if !cx.previous.is_empty() {
        let optional: Vec<&str> = [(s.extract_exif, "exif"), (s.compute_hash == "sha256", "sha256")]
            .into_iter()
            .filter_map(|(on, c)| on.then_some(c))
            .collect();
        let kept = previous::load(&cx.previous, &names, rows, &s.url_col, &optional)
            .with_context(|| format!("the last build of {}", cx.job.target))?;
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
    let todo: Vec<usize> = (0..rows.len()).filter(|&i| outcomes[i].is_none()).collect();
    let next = AtomicUsize::new(0);
    let threads = (s.concurrency as usize).min(todo.len()).max(1);
    let hashing = s.compute_hash == "sha256" || s.verify_hash.is_some();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Outcome>(threads * 2);

    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, fetcher, popts, permits, todo) = (&next, &fetcher, &popts, &permits, &todo);
            scope.spawn(move || {
                while let Some(&index) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if cx.cancel.is_cancelled() {
                        break;
                    }
                    let outcome = one_row(index, &rows[index], s, fetcher, popts, permits, hashing);
                    if tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for outcome in rx {
            if cx.cancel.is_cancelled() {
                return Err(Cancelled.into());
            }
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
    if cx.cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
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
    if s.compute_hash == "sha256" {
        add("sha256", ColumnType::Text);
    }
    crate::formats::parquet::write(&cx.out_dir.join(&names[1]), &columns, &metas)?;

    let count = rows.len() as u64;
    let end_time = SystemTime::now();
    let epoch = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let stats = json!({
        "count": count,
        "successes": successes,
        "failed_to_download": failed_download,
        "failed_to_resize": failed_resize,
        "duration": started.elapsed().as_secs_f64(),
        "start_time": epoch(start_time),
        "end_time": epoch(end_time),
        "status_dict": status_dict,
    });
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

fn one_row(
    index: usize,
    row: &Map<String, Value>,
    s: &Settings,
    fetcher: &Fetcher,
    popts: &ProcessOptions,
    permits: &Permits,
    hashing: bool,
) -> Outcome {
    let fail =
        |status, error: String| Outcome { index, status, error: Some(error), sha256: None, exif: None, image: None };
    let url = match row.get(&s.url_col) {
        Some(Value::String(u)) if !u.trim().is_empty() => u.clone(),
        _ => return fail("failed_to_download", "no URL".to_string()),
    };
    let bytes = match fetcher.fetch(&url) {
        Ok(b) => b,
        Err(e) => return fail("failed_to_download", e),
    };
    let sha = hashing.then(|| Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>());
    if let (Some(v), Some(sha)) = (&s.verify_hash, &sha) {
        let expected = row.get(&v[0]).and_then(Value::as_str).unwrap_or_default();
        if !expected.eq_ignore_ascii_case(sha) {
            return fail("failed_to_download", "hash mismatch".to_string());
        }
    }
    match permits.run(|scratch| process::process(&bytes, popts, scratch)) {
        Ok(image) => {
            let exif = if s.extract_exif { exif_json(&bytes) } else { None };
            Outcome { index, status: "success", error: None, sha256: sha, exif, image: Some(image) }
        }
        Err(e) => Outcome { index, status: "failed_to_resize", error: Some(e), sha256: sha, exif: None, image: None },
    }
}

/// EXIF tags as img2dataset records them (exifread's `process_file(details=False)`): a JSON object in text,
/// `"IFD Tag": "value"` with exifread's IFD names (Image, EXIF, GPS, Interoperability, Thumbnail); values are
/// kamadak-exif's renderings, so an enumerated value may read differently from exifread's. None when the image
/// has no EXIF.
fn exif_json(bytes: &[u8]) -> Option<String> {
    let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).ok()?;
    let mut tags = Map::new();
    for f in exif.fields() {
        let ifd = if f.ifd_num == exif::In::THUMBNAIL {
            "Thumbnail"
        } else {
            match f.tag.context() {
                exif::Context::Tiff => "Image",
                exif::Context::Exif => "EXIF",
                exif::Context::Gps => "GPS",
                exif::Context::Interop => "Interoperability",
                _ => "Image",
            }
        };
        // Maker notes and thumbnails are what details=False leaves out.
        if f.tag == exif::Tag::MakerNote || matches!(f.value, exif::Value::Undefined(ref v, _) if v.len() > 256) {
            continue;
        }
        let value = f.display_value().with_unit(&exif).to_string();
        tags.insert(format!("{ifd} {}", f.tag), json!(value.trim()));
    }
    (!tags.is_empty()).then(|| Value::Object(tags).to_string())
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
    if s.compute_hash == "sha256" {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_img2dataset() {
        assert_eq!(index_digits(10_000), 4);
        assert_eq!(index_digits(7), 1);
        assert_eq!(index_digits(1), 1);
        assert_eq!(key("part-0_00003", 42, 4), "part-0_000030042");
        assert_eq!(output_names("a_00001"), ["a_00001.tar", "a_00001.parquet", "a_00001_stats.json"]);
    }
}
