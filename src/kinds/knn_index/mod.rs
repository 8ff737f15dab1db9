//! `knn-index`: one nearest-neighbour index over every part of a `clip-embed` step (all-to-one), for
//! inner-product queries, with what answers a query beside it:
//!
//! - `image.usearch` (or `text.usearch`): a usearch HNSW graph, vectors stored in f16 by default; keys are
//!   row numbers. Python: `usearch.index.Index.restore(path, view=True)`.
//! - `knn.index`: an exact faiss `IndexFlatIP` (float32), as clip-retrieval's back end and `faiss.read_index`
//!   load it; written by default up to [`EXACT_FAISS_AUTO_MAX`] vectors, where brute force still answers in
//!   well under a second and the file stays a few GB (`exact_faiss` forces it on or off).
//! - `metadata.parquet`: `image_path`, `caption`, `url` of row i = the vector with key i, in the order of
//!   the parts (and of the rows within each part).
//! - `index_infos.json`: autofaiss's summary (index key and parameters, size, compression ratio, search
//!   latency), plus a recall@10 estimate against brute force on a sample of queries.
//!
//! Parts are streamed: only a chunk of rows is in memory at a time besides the index itself.

pub mod faiss;
pub mod hnsw;
pub mod meta;
pub mod vectors;

use crate::kind::settings::Settings as _;
use crate::kind::{BuildCx, Built, Cancelled, Inputs, Kind, LocalInput, Mapping, SettingError, ShardCx, Shards};
use anyhow::{Context, anyhow, bail};
use hnsw::Quantization;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct KnnIndex;

/// Unless `exact_faiss` says otherwise, the exact index is written up to this many vectors (3 GB of float32
/// at 768 dimensions; brute force over it takes ~0.1 s per query on a few cores).
pub const EXACT_FAISS_AUTO_MAX: u64 = 1_000_000;
pub const FAISS_FILE: &str = "knn.index";
pub const METADATA_FILE: &str = "metadata.parquet";
pub const INFOS_FILE: &str = "index_infos.json";
/// Rows read and added per chunk.
const CHUNK: usize = 16_384;
/// Queries sampled from the data for the latency and recall figures in `index_infos.json`.
const PROBES: usize = 100;
/// Multiply-adds the brute-force side of the recall estimate may spend.
const RECALL_BUDGET: f64 = 1e10;

crate::setting_enum! {
    /// Which embeddings of the clip-embed parts are indexed.
    pub enum Embeddings {
        Image = "image",
        Text = "text",
    }
}

crate::setting_enum! {
    /// The similarity the index ranks by.
    pub enum Metric {
        /// Inner product: cosine similarity for clip-embed's L2-normalised vectors.
        Ip = "ip",
    }
}

crate::settings! {
    pub struct Settings {
        /// which embeddings to index: "image" (img_emb/) or "text" (text_emb/)
        embeddings: Embeddings = Embeddings::Image,
        /// "ip" (inner product: cosine similarity for clip-embed's normalised vectors)
        metric: Metric = Metric::Ip,
        /// HNSW neighbours per node (M)
        connectivity: i64 = 16,
        /// HNSW candidates while building (efConstruction)
        expansion_add: i64 = 128,
        /// HNSW candidates per query (efSearch; recall@10 ≥ 0.95 even on uniformly random vectors); `dsmake
        /// search` uses at least k
        expansion_search: i64 = 768,
        /// how the index stores vectors: "f16", "bf16", "f32" or "i8" (a quarter of f32's memory)
        quantization: Quantization = Quantization::F16,
        /// also write an exact faiss IndexFlatIP (`knn.index`, float32); default: when there are at most
        /// 1,000,000 vectors
        exact_faiss: Option<bool>,
    }
}

/// A knn-index step's settings, from its effective settings (for `dsmake search`).
pub fn settings(value: &Value) -> anyhow::Result<Settings> {
    let map = value.as_object().ok_or_else(|| anyhow!("knn-index settings are not a table"))?;
    Ok(Settings::from_effective(map)?)
}

impl Settings {
    /// `img_emb` or `text_emb`: the folder and file prefix of the parts' embeddings.
    pub fn prefix(&self) -> &'static str {
        match self.embeddings {
            Embeddings::Image => "img_emb",
            Embeddings::Text => "text_emb",
        }
    }

    /// The usearch file's name: `image.usearch` or `text.usearch`, as clip-retrieval names its indices.
    pub fn index_file(&self) -> String {
        format!("{}.usearch", self.embeddings)
    }

    pub fn params(&self) -> hnsw::Params {
        hnsw::Params {
            connectivity: self.connectivity as usize,
            expansion_add: self.expansion_add as usize,
            expansion_search: self.expansion_search as usize,
            quantization: self.quantization,
        }
    }
}

impl Kind for KnnIndex {
    type Settings = Settings;
    const NAME: &'static str = "knn-index";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "an inner-product nearest-neighbour index over every part of a clip-embed step \
                                 (usearch HNSW, an exact faiss IndexFlatIP, metadata.parquet); query it with \
                                 `dsmake search`";
    const INPUTS: Inputs = Inputs::Required;

    fn check(&self, s: &Settings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new(
                "embeddings",
                "knn-index reads a clip-embed step's parts: the step needs `from`",
            ));
        }
        for (key, v, min) in [
            ("connectivity", s.connectivity, 2),
            ("expansion_add", s.expansion_add, 1),
            ("expansion_search", s.expansion_search, 1),
        ] {
            if v < min || v > 100_000 {
                return Err(SettingError::new(key, format!("`{key}` must be between {min} and 100000, found {v}")));
            }
        }
        Ok(())
    }

    fn shards(&self, _: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        // No parts yet: nothing to index (a target with no input would fail on every build).
        if cx.inputs.iter().all(|i| i.shards.is_empty()) {
            return Ok(Shards::Known(Vec::new()));
        }
        Mapping::All.shards(&cx.inputs).map_err(|e| anyhow!(e))
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        let params = s.params();
        let parts = collect_parts(&cx.inputs, s.prefix())?;
        let started = Instant::now();

        // First pass: shapes only, so that the index and the faiss header know the total up front, and a
        // bad part fails the build before any work.
        let mut dims: Option<(usize, &Part)> = None;
        let mut total = 0u64;
        for part in &parts {
            let npy = vectors::NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
            let meta_rows = meta::count_rows(&part.metadata).with_context(|| format!("part {}", part.name()))?;
            if meta_rows != npy.rows as u64 {
                bail!(
                    "part {}: {} has {} rows but {} has {meta_rows}: rows must align",
                    part.name(),
                    part.vectors.display(),
                    npy.rows,
                    part.metadata.display()
                );
            }
            if npy.rows > 0 {
                match dims {
                    None => dims = Some((npy.cols, part)),
                    Some((d, first)) if d != npy.cols => bail!(
                        "part {} has vectors of {} dimensions but part {} has {d}: one index needs one model",
                        part.name(),
                        npy.cols,
                        first.name()
                    ),
                    _ => {}
                }
            }
            total += npy.rows as u64;
        }
        let Some((dims, _)) = dims else {
            bail!("no vectors to index: the {} input part(s) hold no rows", parts.len());
        };
        let exact = s.exact_faiss.unwrap_or(total <= EXACT_FAISS_AUTO_MAX);
        let threads = rayon::current_num_threads();
        let index = hnsw::create(dims, total as usize, threads, &params)?;
        let mut flat = match exact {
            true => Some(faiss::FlatIpWriter::create(&cx.out_dir.join(FAISS_FILE), dims, total)?),
            false => None,
        };
        let mut metadata = meta::MetaWriter::create(&cx.out_dir.join(METADATA_FILE))?;
        let stride = (total / PROBES as u64).max(1);
        let mut probes: Vec<Vec<f32>> = Vec::new();
        let mut worst_norm = 0f32;

        let mut key = 0u64;
        let mut chunk = Vec::with_capacity(CHUNK * dims);
        for part in &parts {
            let before = metadata.rows();
            meta::read_part(&part.metadata, |row| metadata.push(row))
                .with_context(|| format!("part {}", part.name()))?;
            let mut npy = vectors::NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
            if metadata.rows() - before != npy.rows as u64 {
                bail!("part {}: {} rows of metadata read, {} vectors", part.name(), metadata.rows() - before, npy.rows);
            }
            loop {
                if cx.cancel.is_cancelled() {
                    return Err(Cancelled.into());
                }
                chunk.clear();
                let at = npy.position();
                let n = npy.next_rows(CHUNK, &mut chunk).with_context(|| format!("part {}", part.name()))?;
                if n == 0 {
                    break;
                }
                for (i, row) in chunk.chunks_exact(dims).enumerate() {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if !norm.is_finite() {
                        bail!("part {}: row {} of {} is not finite", part.name(), at + i, part.vectors.display());
                    }
                    worst_norm = worst_norm.max((norm - 1.0).abs());
                    if (key + i as u64).is_multiple_of(stride) && probes.len() < PROBES {
                        probes.push(row.to_vec());
                    }
                }
                if let Some(flat) = &mut flat {
                    flat.push(&chunk)?;
                }
                hnsw::add_rows(&index, key, &chunk, dims).with_context(|| format!("part {}", part.name()))?;
                key += n as u64;
            }
        }
        let rows = metadata.finish()?;
        if let Some(flat) = flat {
            flat.finish()?;
        }
        let index_file = s.index_file();
        hnsw::save(&index, &cx.out_dir.join(&index_file))?;
        let build_seconds = started.elapsed().as_secs_f64();

        let queries = probe_queries(&probes);
        let (avg_ms, p99_ms) = latency(&index, &queries)?;
        let recall_queries = ((RECALL_BUDGET / (total as f64 * dims as f64)) as usize).min(queries.len());
        let recall = if recall_queries >= 10 || recall_queries == queries.len() {
            Some(hnsw::recall(&index, &queries[..recall_queries], 10)?)
        } else {
            None
        };
        let size =
            std::fs::metadata(cx.out_dir.join(&index_file)).with_context(|| format!("cannot stat {index_file}"))?.len();
        let index_key = format!("HNSW{},{} (usearch {})", params.connectivity, params.quantization, usearch::version());
        let infos = json!({
            "index_key": index_key,
            "index_param": format!("efSearch={},efConstruction={}", params.expansion_search, params.expansion_add),
            "index_path": index_file,
            "size in bytes": size,
            "avg_search_speed_ms": avg_ms,
            "99p_search_speed_ms": p99_ms,
            "nb vectors": total,
            "vectors dimension": dims,
            "compression ratio": (total as f64 * dims as f64 * 4.0) / size.max(1) as f64,
            "metric": "ip",
            "recall@10": recall,
            "recall queries": recall.map(|_| recall_queries),
            "exact_index_path": exact.then_some(FAISS_FILE),
            "metadata_path": METADATA_FILE,
            "embeddings": s.embeddings.as_str(),
            "build_seconds": build_seconds,
            "threads": threads,
        });
        let infos_path = cx.out_dir.join(INFOS_FILE);
        std::fs::write(&infos_path, serde_json::to_vec_pretty(&infos)?)
            .with_context(|| format!("cannot write {}", infos_path.display()))?;

        let mut outputs = vec![index_file.clone()];
        if exact {
            outputs.push(FAISS_FILE.to_string());
        }
        outputs.extend([METADATA_FILE.to_string(), INFOS_FILE.to_string()]);
        Ok(Built {
            outputs,
            rows: Some(rows),
            failures: None,
            retryable: None,
            stats: json!({
                "vectors": total,
                "dimensions": dims,
                "parts": parts.len(),
                "index": index_file,
                "index_key": index_key,
                "exact_faiss": exact,
                "build_seconds": build_seconds,
                "recall@10": recall,
                "avg_search_speed_ms": avg_ms,
                "max_norm_error": worst_norm,
            }),
        })
    }
}

/// One embedding part and its metadata: `img_emb_N.npy` and `metadata_N.parquet`.
#[derive(Debug, Clone)]
pub struct Part {
    pub target: String,
    pub number: String,
    pub vectors: PathBuf,
    pub metadata: PathBuf,
}

impl Part {
    fn name(&self) -> String {
        format!("{} ({})", self.number, self.target)
    }
}

/// The part number in a file name `…{prefix}_N.{ext}` (a store may prefix fetched files: `3-img_emb_7.npy`).
fn part_number(path: &Path, prefix: &str, ext: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let at = name.rfind(&format!("{prefix}_"))?;
    let number = name[at + prefix.len() + 1..].strip_suffix(ext)?;
    (!number.is_empty()).then(|| number.to_string())
}

/// Pairs every `{prefix}_N.npy` of the inputs with a `metadata_N.parquet`: the one of the same input target
/// (clip-embed's part), else the only one of that number among all inputs (`files` steps holding
/// clip-retrieval output made elsewhere). Parts keep the inputs' order.
pub fn collect_parts(inputs: &[LocalInput], prefix: &str) -> anyhow::Result<Vec<Part>> {
    let mut embeddings = Vec::new();
    let mut metadata = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        for file in &input.files {
            if let Some(n) = part_number(file, prefix, ".npy") {
                embeddings.push((i, n, file.clone()));
            } else if let Some(n) = part_number(file, "metadata", ".parquet") {
                metadata.push((i, n, file.clone()));
            }
        }
    }
    if embeddings.is_empty() {
        let names: Vec<String> = inputs.iter().map(|i| i.target.clone()).take(3).collect();
        bail!(
            "no {prefix}_N.npy among the inputs ({}{}): knn-index reads clip-embed's parts{}",
            names.join(", "),
            if inputs.len() > 3 { ", …" } else { "" },
            if prefix == "img_emb" { "" } else { " (text embeddings, as `embeddings = \"text\"` asks)" }
        );
    }
    embeddings
        .into_iter()
        .map(|(i, n, vectors)| {
            let same = metadata.iter().find(|(j, m, _)| *j == i && *m == n);
            let any: Vec<_> = metadata.iter().filter(|(_, m, _)| *m == n).collect();
            let found = match (same, any.as_slice()) {
                (Some(m), _) => m,
                (None, [one]) => *one,
                (None, []) => bail!(
                    "part {n} ({}): no metadata_{n}.parquet beside {}: the index needs each row's key and caption",
                    inputs[i].target,
                    vectors.display()
                ),
                (None, _) => bail!(
                    "part {n} ({}): several inputs have a metadata_{n}.parquet and none is beside {}",
                    inputs[i].target,
                    vectors.display()
                ),
            };
            Ok(Part { target: inputs[i].target.clone(), number: n, vectors, metadata: found.2.clone() })
        })
        .collect()
}

/// Queries that are not stored vectors: the normalised mean of two neighbouring samples.
fn probe_queries(samples: &[Vec<f32>]) -> Vec<Vec<f32>> {
    if samples.len() < 2 {
        return samples.to_vec();
    }
    (0..samples.len())
        .map(|i| {
            let (a, b) = (&samples[i], &samples[(i + 1) % samples.len()]);
            let mut q: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                q.iter_mut().for_each(|x| *x /= norm);
            }
            q
        })
        .collect()
}

/// Average and 99th-percentile latency of one query at a time, in milliseconds.
fn latency(index: &usearch::Index, queries: &[Vec<f32>]) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        hnsw::search(index, q, 10)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if times.is_empty() {
        return Ok((0.0, 0.0));
    }
    times.sort_by(f64::total_cmp);
    let avg = times.iter().sum::<f64>() / times.len() as f64;
    let p99 = times[((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((avg, p99))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(target: &str, files: &[&str]) -> LocalInput {
        LocalInput {
            target: target.into(),
            shard: target.rsplit('/').next().unwrap_or(target).into(),
            files: files.iter().map(PathBuf::from).collect(),
            rows: None,
        }
    }

    #[test]
    fn parts_pair_embeddings_with_their_metadata() {
        let inputs = [
            input(
                "clip/00000",
                &["s/img_emb/img_emb_00000.npy", "s/text_emb/text_emb_00000.npy", "s/metadata/metadata_00000.parquet"],
            ),
            input("clip/00001", &["in/0-img_emb_00001.npy", "in/1-text_emb_00001.npy", "in/2-metadata_00001.parquet"]),
        ];
        let parts = collect_parts(&inputs, "img_emb").unwrap();
        assert_eq!(parts.iter().map(|p| p.number.as_str()).collect::<Vec<_>>(), ["00000", "00001"]);
        assert_eq!(parts[1].metadata, PathBuf::from("in/2-metadata_00001.parquet"));
        let text = collect_parts(&inputs, "text_emb").unwrap();
        assert_eq!(text[0].vectors, PathBuf::from("s/text_emb/text_emb_00000.npy"));

        // A files step: one file per input, paired by number across inputs.
        let files = [input("emb/a", &["e/img_emb_3.npy"]), input("meta/b", &["m/metadata_3.parquet"])];
        assert_eq!(collect_parts(&files, "img_emb").unwrap()[0].metadata, PathBuf::from("m/metadata_3.parquet"));

        let e = collect_parts(&[input("clip/00002", &["img_emb_00002.npy"])], "img_emb").unwrap_err().to_string();
        assert!(e.contains("part 00002 (clip/00002): no metadata_00002.parquet"), "{e}");
        let e = collect_parts(&[input("x/a", &["a.tar"])], "img_emb").unwrap_err().to_string();
        assert!(e.contains("no img_emb_N.npy among the inputs (x/a)"), "{e}");
    }
}
