//! `knn-train`: training as its own target. It reads the first clip-embed parts, enough for the training
//! sample, and writes the trained, empty index of each side (`image.trained.index`, `text.trained.index`:
//! faiss `IndexIVFPQ` files with no vectors, which faiss reads as they are) and `train.json`. A knn-index step
//! that reads it (`from = ["clip", "knn_train"]`) adds every part's vectors to those quantizers without
//! training again.
//!
//! Its shard's coordinates are the chosen index key and the sample size, and it reads only the parts that
//! the sample covers: adding a part leaves its key unchanged while the key chosen for the new count is the
//! same. When the count passes the point where that key no longer fits the budget (or autofaiss would choose
//! other coarse centroids), the coordinates change and the plan shows the target stale with the old and new
//! key. Planning needs the vectors' dimension before anything is read: the `.npy` headers of a `files` step
//! say it; for clip-embed parts not yet read, `dimensions` (768, CLIP ViT-L/14's) does, and the build checks it.

use super::factory::IndexKey;
use super::ivfpq::IvfPq;
use super::parts::{Part, collect_parts};
use super::settings::TrainSettings;
use super::vectors::NpyRows;
use crate::kind::{BuildCx, Built, Inputs, Kind, SettingError, ShardCx, ShardSpec, Shards};
use anyhow::{Context, bail};
use serde_json::json;
use std::time::Instant;

pub const TRAIN_INFO: &str = "train.json";

pub fn trained_file(side: &str) -> String {
    format!("{side}.trained.index")
}

pub struct KnnTrain;

impl Kind for KnnTrain {
    type Settings = TrainSettings;
    const NAME: &'static str = "knn-train";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "trains the quantizers of a knn-index (IVF coarse centroids, PQ codebooks) on the \
                                 first clip-embed parts, as its own target: a knn-index step reading it adds new \
                                 parts without retraining";
    const INPUTS: Inputs = Inputs::Required;

    fn check(&self, s: &TrainSettings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new(
                "embeddings",
                "knn-train reads a clip-embed step's parts: the step needs `from`",
            ));
        }
        if !(1..=65_536).contains(&s.dimensions) {
            return Err(SettingError::new(
                "dimensions",
                format!("`dimensions` must be between 1 and 65536, found {}", s.dimensions),
            ));
        }
        s.choice().map(|_| ())
    }

    fn shards(&self, s: &TrainSettings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let prefix = s.embeddings.sides()[0].1;
        let units = match units(cx, prefix)? {
            Ok(units) => units,
            Err(why) => return Ok(Shards::Unknown(why)),
        };
        if units.is_empty() {
            return Ok(Shards::Known(Vec::new()));
        }
        let n: u64 = units.iter().map(|u| u.rows).sum();
        let d = units.iter().find_map(|u| u.dimensions).unwrap_or(s.dimensions as usize);
        let choice = s.choice().map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = choice.key(n, d)?;
        let sample = key.train_rows(n, d, choice.memory);
        // The first parts that hold the sample: parts added later never change what this shard reads.
        let mut inputs = Vec::new();
        let mut covered = 0u64;
        for u in &units {
            if covered >= sample {
                break;
            }
            inputs.extend(&u.shards);
            covered += u.rows;
        }
        inputs.sort_unstable();
        Ok(Shards::Known(vec![ShardSpec {
            id: crate::kind::shard::SINGLE_SHARD.into(),
            coords: json!({ "index_key": key.to_string(), "train_rows": sample, "dimensions": d }),
            inputs,
            source: None,
        }]))
    }

    fn build(&self, s: &TrainSettings, cx: &BuildCx) -> anyhow::Result<Built> {
        #[derive(serde::Deserialize)]
        struct Coords {
            index_key: String,
            train_rows: u64,
            dimensions: usize,
        }
        let c: Coords = cx.coords()?;
        let key = IndexKey::parse(&c.index_key)?;
        let started = Instant::now();
        let mut outputs = Vec::new();
        let mut sides = serde_json::Map::new();
        for (side, prefix) in s.embeddings.sides() {
            let IndexKey::IvfPq { nlist, m, hnsw, opq } = key else { break };
            let parts = collect_parts(&cx.inputs, prefix)?;
            let (d, sample) = read_sample(&parts, c.train_rows as usize)?;
            if d != c.dimensions {
                bail!(
                    "the {side} embeddings have {d} dimensions, the plan assumed {} (`dimensions = {}`): set it to {d}",
                    c.dimensions,
                    s.dimensions
                );
            }
            let t = Instant::now();
            let ivf = IvfPq::train(&sample, d, nlist, m, hnsw, opq, cx.cancel)?;
            let name = trained_file(side);
            ivf.write(&cx.out_dir.join(&name))?;
            sides.insert(side.to_string(), json!({ "dimensions": d, "train_seconds": t.elapsed().as_secs_f64() }));
            outputs.push(name);
        }
        let info = json!({
            "index_key": key.to_string(),
            "train_rows": c.train_rows,
            "sides": sides,
            "seconds": started.elapsed().as_secs_f64(),
        });
        std::fs::write(cx.out_dir.join(TRAIN_INFO), serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("cannot write {TRAIN_INFO}"))?;
        outputs.push(TRAIN_INFO.into());
        Ok(Built { outputs, rows: Some(c.train_rows), failures: None, retryable: None, stats: info })
    }
}

/// One part as the plan sees it: the input shards it is made of and its vector count.
struct Unit {
    shards: Vec<(usize, usize)>,
    rows: u64,
    dimensions: Option<usize>,
}

/// The parts of the inputs, in order: a built shard (clip-embed's) is one part, its row count recorded; the
/// files of a source (`files` steps holding clip-retrieval output) are grouped by part number, the count read
/// from the `.npy` header as a parquet footer is. `Err` says what must be built first.
fn units(cx: &ShardCx, prefix: &str) -> anyhow::Result<Result<Vec<Unit>, String>> {
    let mut out: Vec<Unit> = Vec::new();
    let mut by_number: std::collections::HashMap<String, usize> = Default::default();
    for (i, input) in cx.inputs.iter().enumerate() {
        for (j, shard) in input.shards.iter().enumerate() {
            let Some(file) = &shard.file else {
                match shard.rows {
                    Some(rows) => out.push(Unit { shards: vec![(i, j)], rows, dimensions: None }),
                    None => {
                        return Ok(Err(format!("the vector count is known once {}/{} is built", input.step, shard.id)));
                    }
                }
                continue;
            };
            let Some(number) = super::parts::any_part_number(file) else { continue };
            let at = *by_number.entry(number).or_insert_with(|| {
                out.push(Unit { shards: Vec::new(), rows: 0, dimensions: None });
                out.len() - 1
            });
            out[at].shards.push((i, j));
            if super::parts::part_number(file, prefix, ".npy").is_some() {
                let npy = NpyRows::open(file)?;
                out[at].rows = npy.rows as u64;
                out[at].dimensions = Some(npy.cols);
            }
        }
    }
    Ok(Ok(out))
}

/// The first `rows` vectors of the parts, in order: (dimension, values).
pub fn read_sample(parts: &[Part], rows: usize) -> anyhow::Result<(usize, Vec<f32>)> {
    let mut out = Vec::new();
    let mut d = 0;
    let mut have = 0;
    for part in parts {
        if have >= rows {
            break;
        }
        let mut npy = NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
        if npy.rows == 0 {
            continue;
        }
        if d != 0 && npy.cols != d {
            bail!("part {} has vectors of {} dimensions, earlier parts {d}", part.name(), npy.cols);
        }
        d = npy.cols;
        have += npy.next_rows(rows - have, &mut out).with_context(|| format!("part {}", part.name()))?;
    }
    if have < rows {
        bail!("the training sample needs {rows} vectors, the parts hold {have}");
    }
    Ok((d, out))
}
