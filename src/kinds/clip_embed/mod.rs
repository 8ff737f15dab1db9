//! `clip-embed`: CLIP image and text embeddings of WebDataset shards, per part (a contiguous group of input
//! shards), in clip-retrieval's layout: `img_emb/img_emb_N.npy` and `text_emb/text_emb_N.npy` (L2-normalised
//! float16) and `metadata/metadata_N.parquet`, rows aligned across the three. N is the part's shard id (its
//! index, zero-padded to five digits so that file order is part order, as clip-retrieval pads it).
//!
//! Decoding and preprocessing run on the rayon pool in a producer thread while the model runs on the
//! batches it sends through a bounded channel, so the model does not wait while the CPU keeps up.

mod embed;
mod metadata;
mod model;
mod settings;
mod webdataset;
mod weights;

use crate::clip;
use crate::kind::{BuildCx, Built, Inputs, Kind, Mapping, Resource, SettingError, ShardCx, Shards};
use anyhow::{anyhow, bail};
use embed::{embed_part, load_cached};
use model::ModelSource;
use serde_json::json;
use settings::Settings;
use std::path::PathBuf;

pub struct ClipEmbed;

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

fn source(s: &Settings, base_dir: &std::path::Path) -> anyhow::Result<ModelSource> {
    ModelSource::from_settings(s.model.as_deref(), s.model_path.as_deref(), &s.model_revision, base_dir)
}

/// The folder holding the model of a clip-embed step with these effective settings, as its workers load it:
/// pinned from the listing the last plan saved (`dsmake search` runs after a plan) and fetched if this machine
/// lacks it.
pub fn model_folder(settings: &serde_json::Value, step: &str, base_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let s =
        <Settings as crate::kind::Settings>::from_effective(settings.as_object().unwrap_or(&serde_json::Map::new()))
            .map_err(|e| anyhow!("the settings of clip-embed step `{step}`: {}", e.message))?;
    let source = source(&s, base_dir)?;
    let stat_cache = crate::util::stat_cache::StatCache::default();
    let identity = source.identity(step, &stat_cache, true)?;
    Ok(source.folder_for(&identity, &crate::kind::Cancel::default())?.0)
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
            clip::names::resolve(name).map_err(|e| SettingError::new("model", e))?;
        }
        if s.model_revision.trim().is_empty() {
            return Err(
                SettingError::new("model_revision", "`model_revision` is empty").help("e.g. \"main\" or a commit sha")
            );
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
        if let clip::gpu::Choice::Refused(why) = clip::gpu::choose_here(s.device.as_str()) {
            crate::util::say_once(format!("clip-embed `{}`: warning: {why}; its targets fail if built here", cx.step));
        }
        let source = source(s, cx.base_dir)?;
        // The weights' identity is part of every part's key: a new model rebuilds them all, and the plan's
        // reason shows the identity that changed. Pinned even before the inputs' shards are known, so that a
        // plan says which weights it would fetch; offline with no saved listing, the step is unavailable (an
        // error), not "known later": building other steps would not tell it.
        let identity = source.identity(cx.step, cx.stat_cache, cx.local_only)?;
        let shards = Mapping::Group(per_part).shards(&cx.inputs).map_err(|e| anyhow!(e))?;
        let Shards::Known(mut specs) = shards else {
            return Ok(shards);
        };
        for spec in &mut specs {
            spec.coords["model"] = identity.clone();
        }
        Ok(Shards::Known(specs))
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        let source = source(s, cx.base_dir)?;
        let identity =
            cx.coords.get("model").ok_or_else(|| anyhow!("{} has no model in its coordinates", cx.target))?;
        let (dir, model_bytes_fetched) = source.folder_for(identity, cx.cancel)?;
        // The GPU when the machine has one, or an error: never a quiet CPU run on a GPU machine.
        let device = match clip::gpu::choose_here(s.device.as_str()) {
            clip::gpu::Choice::Cpu => candle_core::Device::Cpu,
            clip::gpu::Choice::Cuda => clip::device("cuda")?,
            clip::gpu::Choice::Refused(why) => bail!("clip-embed `{}`: {why}", cx.step),
        };
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
                "device_setting": s.device.as_str(),
                "model_seconds": run.model_seconds,
                "model_bytes_fetched": model_bytes_fetched,
            }),
        })
    }
}
