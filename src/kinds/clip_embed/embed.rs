//! Embedding one part: decoding and preprocessing run on the rayon pool in a producer thread while the model
//! runs on the batches it sends through a bounded channel; rows are written to the three outputs in order.

use super::metadata::Metadata;
use super::webdataset;
use crate::clip::{self, Clip, npy};
use anyhow::{Context, anyhow, bail};
use rayon::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The model stays loaded between the parts that one process builds (a build runs the parts of a step one
/// after another), keyed by folder, weights identity and device.
pub fn load_cached(dir: &Path, identity: &Value, device: &candle_core::Device) -> anyhow::Result<Arc<Clip>> {
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

pub struct PartRun {
    pub rows: usize,
    pub failures: Vec<String>,
    pub without_caption: usize,
    pub model_seconds: f64,
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

pub fn embed_part(
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
            cancel.check()?;
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
            cancel.check()?;
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
