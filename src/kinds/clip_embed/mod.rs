//! `clip-embed`: CLIP image and text embeddings of WebDataset shards, per part (a contiguous group of input
//! shards), in clip-retrieval's layout: `img_emb/img_emb_N.npy` and `text_emb/text_emb_N.npy` (L2-normalised
//! float16) and `metadata/metadata_N.parquet`, rows aligned across the three. N is the part's shard id (its
//! index, zero-padded to five digits so that file order is part order, as clip-retrieval pads it).
//!
//! Decoding and preprocessing run on the rayon pool in a producer thread while the model runs on the
//! batches it sends through a bounded channel, so the model does not wait while the CPU keeps up.

mod metadata;
mod model;
mod webdataset;

use crate::clip::{self, Clip, npy};
use crate::kind::{BuildCx, Built, Cancelled, Inputs, Kind, Mapping, Resource, SettingError, ShardCx, Shards};
use anyhow::{Context, anyhow, bail};
use metadata::Metadata;
use model::ModelSource;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct ClipEmbed;

crate::setting_enum! {
    /// Where the model runs.
    pub enum Device {
        Auto = "auto",
        Cpu = "cpu",
        Cuda = "cuda",
    }
}

crate::settings! {
    pub struct Settings {
        /// all-clip model name: "ViT-L/14@336px" (when neither this nor `model_path` is set), "ViT-L/14",
        /// "ViT-B/32", "open_clip:ViT-L-14-336/openai", "hf_clip:ORG/NAME", …; weights from the Hugging Face cache
        model: Option<String>,
        /// a local CLIP folder in Hugging Face format (config.json, tokenizer.json, model.safetensors), relative to
        /// the pipeline file; instead of `model`
        model_path: Option<String>,
        /// "auto", "cpu" or "cuda" (fp16; needs the `cuda` build)
        device: Device = Device::Auto,
        /// images per model call
        batch_size: i64 = 64,
        /// input shards per output part (default 1); new shards add parts and never change complete ones
        shards_per_part: Option<i64>,
        /// images per part, as clip-retrieval says it: a multiple of the images per input shard
        /// (`samples_per_shard`, or what the input step fixes, such as img2dataset's `number_sample_per_shard`);
        /// instead of `shards_per_part`
        write_batch_size: Option<i64>,
        /// images per input shard, to turn `write_batch_size` into shards
        samples_per_shard: Option<i64>,
    }
}

/// Keeps the first few failure messages of a part for its manifest.
const FAILURES_KEPT: usize = 20;

/// Outputs of part `shard`, relative to the step's folder.
fn output_names(shard: &str) -> [String; 3] {
    [
        format!("img_emb/img_emb_{shard}.npy"),
        format!("text_emb/text_emb_{shard}.npy"),
        format!("metadata/metadata_{shard}.parquet"),
    ]
}

fn positive(key: &str, v: Option<i64>) -> Result<(), SettingError> {
    match v {
        Some(n) if n <= 0 => Err(SettingError::new(key, format!("`{key}` must be a positive integer, found {n}"))),
        _ => Ok(()),
    }
}

impl ClipEmbed {
    /// Input shards per part. `write_batch_size` converts only when it is a whole number of shards, since a
    /// part is a group of shards: a part never splits a shard, so that new shards never move old rows.
    fn shards_per_part(s: &Settings, cx: &ShardCx) -> anyhow::Result<usize> {
        let Some(images) = s.write_batch_size else {
            return Ok(s.shards_per_part.unwrap_or(1) as usize);
        };
        let from_input = || cx.inputs.iter().find_map(|i| i64::try_from(i.rows_per_shard?).ok());
        let Some(per_shard) = s.samples_per_shard.or_else(from_input) else {
            bail!(
                "`write_batch_size` = {images} images needs the number of images per input shard: set \
                 `samples_per_shard`, or use `shards_per_part`"
            );
        };
        if per_shard <= 0 || images % per_shard != 0 {
            bail!(
                "`write_batch_size` = {images} is not a whole number of input shards of {per_shard} images: a part \
                 is a group of whole shards; use a multiple of {per_shard} or `shards_per_part`"
            );
        }
        Ok((images / per_shard) as usize)
    }
}

impl Kind for ClipEmbed {
    type Settings = Settings;
    const NAME: &'static str = "clip-embed";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "CLIP image and text embeddings of WebDataset shards, in clip-retrieval's layout (npy + parquet)";
    const INPUTS: Inputs = Inputs::Required;

    /// One model run at a time: on a GPU it holds the device, on a CPU its matmuls use every core already.
    fn resource(&self, _: &Settings) -> Resource {
        Resource::Gpu
    }

    fn check(&self, s: &Settings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new("model", "clip-embed reads WebDataset shards: the step needs `from`"));
        }
        if s.model.is_some() && s.model_path.is_some() {
            return Err(SettingError::new("model_path", "set either `model` or `model_path`, not both")
                .help("`model_path` is a local folder that replaces the Hub download of `model`"));
        }
        if let Some(name) = &s.model {
            clip::hub::repo_for(name).map_err(|e| SettingError::new("model", e))?;
        }
        positive("batch_size", Some(s.batch_size))?;
        positive("shards_per_part", s.shards_per_part)?;
        positive("write_batch_size", s.write_batch_size)?;
        positive("samples_per_shard", s.samples_per_shard)?;
        if s.shards_per_part.is_some() && s.write_batch_size.is_some() {
            return Err(SettingError::new(
                "write_batch_size",
                "set either `shards_per_part` or `write_batch_size`, not both",
            ));
        }
        Ok(())
    }

    fn shards(&self, s: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let per_part = Self::shards_per_part(s, cx)?;
        let source = ModelSource::from_settings(s.model.as_deref(), s.model_path.as_deref(), cx.base_dir)?;
        let shards = Mapping::Group(per_part).shards(&cx.inputs).map_err(|e| anyhow!(e))?;
        let Shards::Known(mut specs) = shards else {
            return Ok(shards);
        };
        if specs.is_empty() {
            return Ok(Shards::Known(specs));
        }
        // The weights' identity is part of every part's key: a new model rebuilds them all, and the plan's
        // reason shows the identity that changed.
        let identity = source.identity(cx.stat_cache)?;
        for spec in &mut specs {
            spec.coords["model"] = identity.clone();
        }
        Ok(Shards::Known(specs))
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        let source = ModelSource::from_settings(s.model.as_deref(), s.model_path.as_deref(), cx.base_dir)?;
        let identity =
            cx.coords.get("model").ok_or_else(|| anyhow!("{} has no model in its coordinates", cx.target))?;
        let dir = source.folder_for(identity)?;
        let device = clip::device(s.device.as_str())?;
        let model = load_cached(&dir, identity, &device)?;

        let mut tars = Vec::new();
        for input in &cx.inputs {
            let found: Vec<&PathBuf> =
                input.files.iter().filter(|f| f.extension().is_some_and(|e| e == "tar")).collect();
            if found.is_empty() {
                bail!("input {} has no .tar file (clip-embed reads WebDataset shards)", input.target);
            }
            tars.extend(found.into_iter().map(|f| (input.target.clone(), f.clone())));
        }
        let names = output_names(cx.shard);
        let run = embed_part(&model, &tars, cx.out_dir, &names, s.batch_size as usize, cx.cancel)?;
        Ok(Built {
            outputs: names.to_vec(),
            rows: Some(run.rows as u64),
            failures: Some(run.failures.len() as u64),
            retryable: None,
            stats: json!({
                "images": run.rows,
                "failed": run.failures.len(),
                "failures": run.failures.iter().take(FAILURES_KEPT).collect::<Vec<_>>(),
                "without_caption": run.without_caption,
                "model": identity,
                "device": if device.is_cuda() { "cuda" } else { "cpu" },
                "model_seconds": run.model_seconds,
            }),
        })
    }
}

/// The model stays loaded between the parts that one process builds (a build runs the parts of a step one
/// after another), keyed by folder, weights identity and device.
fn load_cached(dir: &Path, identity: &Value, device: &candle_core::Device) -> anyhow::Result<Arc<Clip>> {
    static LOADED: Mutex<Option<(String, Arc<Clip>)>> = Mutex::new(None);
    let key = format!("{}|{identity}|{device:?}", dir.display());
    let mut slot = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((k, m)) = slot.as_ref()
        && *k == key
    {
        return Ok(m.clone());
    }
    *slot = None;
    let model = Arc::new(Clip::load(dir, device, clip::default_dtype(device))?);
    *slot = Some((key, model.clone()));
    Ok(model)
}

struct PartRun {
    rows: usize,
    failures: Vec<String>,
    without_caption: usize,
    model_seconds: f64,
}

/// One batch, decoded and preprocessed, ready for the model.
struct Prepared {
    pixels: Vec<f32>,
    tokens: Vec<Vec<u32>>,
    keys: Vec<String>,
    captions: Vec<String>,
    json: Vec<Option<serde_json::Map<String, Value>>>,
    failures: Vec<String>,
    without_caption: usize,
}

/// Batches in flight between the producer and the model: enough to hide a slow batch, bounded so that
/// memory stays at a few batches of pixels.
const QUEUE: usize = 2;

fn embed_part(
    model: &Clip,
    tars: &[(String, PathBuf)],
    out_dir: &Path,
    names: &[String; 3],
    batch_size: usize,
    cancel: &crate::kind::Cancel,
) -> anyhow::Result<PartRun> {
    let dim = model.config.projection_dim;
    let mut img = npy::RowWriter::create(&out_dir.join(&names[0]), npy::Dtype::F16, dim)?;
    let mut txt = npy::RowWriter::create(&out_dir.join(&names[1]), npy::Dtype::F16, dim)?;
    let mut meta = Metadata::default();
    let mut run = PartRun { rows: 0, failures: Vec::new(), without_caption: 0, model_seconds: 0.0 };
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Prepared>>(QUEUE);

    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(move || {
            let result = produce(model, tars, batch_size, cancel, &tx);
            if let Err(e) = result {
                // The consumer may be gone already (it failed first); then there is nobody to tell.
                let _ = tx.send(Err(e));
            }
        });
        for batch in rx {
            let batch = batch?;
            if cancel.is_cancelled() {
                return Err(Cancelled.into());
            }
            run.failures.extend(batch.failures);
            run.without_caption += batch.without_caption;
            let n = batch.keys.len();
            if n == 0 {
                continue;
            }
            let started = Instant::now();
            let images = clip::l2_normalize(&model.embed_pixels(batch.pixels, n)?)?;
            let texts = clip::l2_normalize(&model.embed_tokens(&batch.tokens)?)?;
            img.push(&images.flatten_all()?.to_vec1::<f32>()?)?;
            txt.push(&texts.flatten_all()?.to_vec1::<f32>()?)?;
            run.model_seconds += started.elapsed().as_secs_f64();
            for ((key, caption), json) in batch.keys.into_iter().zip(batch.captions).zip(batch.json) {
                meta.push(key, caption, json);
            }
        }
        Ok(())
    })?;
    run.rows = img.rows();
    if txt.rows() != run.rows || meta.len() != run.rows {
        bail!("internal error: {} image rows, {} text rows, {} metadata rows", run.rows, txt.rows(), meta.len());
    }
    img.finish()?;
    txt.finish()?;
    meta.write(&out_dir.join(&names[2]))?;
    Ok(run)
}

/// The producer: reads the shards in order, and sends batches decoded and tokenised on the rayon pool.
fn produce(
    model: &Clip,
    tars: &[(String, PathBuf)],
    batch_size: usize,
    cancel: &crate::kind::Cancel,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<Prepared>>,
) -> anyhow::Result<()> {
    // Each sample travels with the input target it came from, so that a failure names its shard.
    let mut pending: Vec<(&str, webdataset::Sample)> = Vec::with_capacity(batch_size);
    let mut failures = Vec::new();
    let send = |samples: Vec<(&str, webdataset::Sample)>, failures: Vec<String>| -> anyhow::Result<()> {
        let batch = prepare(model, samples, failures);
        // A closed channel means the model loop stopped (with an error it reports itself).
        tx.send(Ok(batch)).map_err(|_| anyhow!("the model loop stopped"))
    };
    for (target, path) in tars {
        webdataset::read_samples(path, |sample| {
            if cancel.is_cancelled() {
                return Err(Cancelled.into());
            }
            if sample.image.is_none() {
                let mut problems = sample.problems;
                problems.push("no image member".into());
                failures.push(format!("{target}: sample {}: {}", sample.key, problems.join("; ")));
                return Ok(());
            }
            pending.push((target.as_str(), sample));
            if pending.len() >= batch_size {
                send(std::mem::take(&mut pending), std::mem::take(&mut failures))?;
            }
            Ok(())
        })
        .with_context(|| format!("input {target} ({})", path.display()))?;
    }
    if !pending.is_empty() || !failures.is_empty() {
        send(pending, failures)?;
    }
    Ok(())
}

/// Decodes, preprocesses and tokenises a batch in parallel. A sample whose image does not decode is left
/// out (and counted), as clip-retrieval's reader skips it.
fn prepare(model: &Clip, samples: Vec<(&str, webdataset::Sample)>, mut failures: Vec<String>) -> Prepared {
    let results: Vec<_> = samples
        .into_par_iter()
        .map(|(target, sample)| {
            let result = (|| -> anyhow::Result<(Vec<f32>, Vec<u32>)> {
                let (name, bytes) = sample.image.as_ref().context("no image member")?;
                let pixels = model.preprocess.pixels_from_bytes(bytes).with_context(|| format!("member {name}"))?;
                let tokens = model.tokenizer.encode(sample.caption.as_deref().unwrap_or(""))?;
                Ok((pixels, tokens))
            })();
            (target, sample, result)
        })
        .collect();
    let per_image = model.preprocess.len();
    let mut out = Prepared {
        pixels: Vec::with_capacity(results.len() * per_image),
        tokens: Vec::with_capacity(results.len()),
        keys: Vec::new(),
        captions: Vec::new(),
        json: Vec::new(),
        failures: Vec::new(),
        without_caption: 0,
    };
    for (target, sample, result) in results {
        match result {
            Ok((pixels, tokens)) => {
                out.pixels.extend_from_slice(&pixels);
                out.tokens.push(tokens);
                out.without_caption += usize::from(sample.caption.is_none());
                out.keys.push(sample.key);
                out.captions.push(sample.caption.unwrap_or_default());
                out.json.push(sample.json);
            }
            Err(e) => failures.push(format!("{target}: sample {}: {e:#}", sample.key)),
        }
    }
    out.failures = failures;
    out
}
