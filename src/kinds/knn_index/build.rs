//! Building the index folder that clip-retrieval's `clip_back` serves: per side, a first pass over the parts'
//! shapes, the index type chosen (or read from a knn-train input), the quantizers trained if no knn-train
//! step did, then the vectors streamed chunk by chunk into the index; the metadata parts copied beside.

use super::factory::IndexKey;
use super::faiss::FlatIpWriter;
use super::ivfpq::IvfPq;
use super::linalg::{TopK, scores};
use super::parts::{Part, collect_parts, part_number};
use super::probes::probe_queries;
use super::settings::{Choice, Settings};
use super::train::{TRAIN_INFO, read_sample, trained_file};
use super::{CHUNK, METADATA_DIR, PROBES, RECALL_BUDGET, hnsw, meta, vectors};
use crate::kind::{BuildCx, Built, LocalInput};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn build(s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
    let choice = s.choice().map_err(|e| anyhow::anyhow!("{e}"))?;
    let trained = trained_inputs(&cx.inputs)?;
    if let (Some(t), Some(own)) = (&trained, choice.index_key)
        && t.key != own
    {
        bail!("index_key `{own}` differs from `{}` that the knn-train input was trained for: set it there", t.key);
    }
    let mut outputs = Vec::new();
    let mut stats = serde_json::Map::new();
    let mut rows = None;
    for (side, prefix) in s.embeddings.sides() {
        let mut parts = collect_parts(&cx.inputs, prefix)?;
        // clip_back reads metadata/*.parquet in sorted order: the index's rows follow it.
        parts.sort_by_key(metadata_name);
        if let Some(w) = parts.windows(2).find(|w| metadata_name(&w[0]) == metadata_name(&w[1])) {
            bail!(
                "parts {} and {} have one number: their metadata would share {}",
                w[0].name(),
                w[1].name(),
                metadata_name(&w[0])
            );
        }
        if rows.is_none() {
            rows = Some(copy_metadata(&parts, cx.out_dir, &mut outputs)?);
        }
        let infos = build_side(s, &choice, trained.as_ref(), (side, prefix), &parts, cx, &mut outputs)?;
        stats.insert(side.to_string(), infos);
    }
    Ok(Built { outputs, rows, failures: None, retryable: None, stats: Value::Object(stats) })
}

fn metadata_name(p: &Part) -> String {
    format!("metadata_{}.parquet", p.number)
}

/// The parts' metadata, byte for byte, as clip-retrieval's index step copies the embeddings' metadata folder.
fn copy_metadata(parts: &[Part], out_dir: &Path, outputs: &mut Vec<String>) -> anyhow::Result<u64> {
    let dir = out_dir.join(METADATA_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut rows = 0;
    for p in parts {
        let name = format!("{METADATA_DIR}/{}", metadata_name(p));
        std::fs::copy(&p.metadata, out_dir.join(&name))
            .with_context(|| format!("cannot copy {} to {name}", p.metadata.display()))?;
        rows += meta::count_rows(&p.metadata)?;
        outputs.push(name);
    }
    Ok(rows)
}

/// What a knn-train input holds.
pub(super) struct Trained {
    pub key: IndexKey,
    files: Vec<PathBuf>,
}

pub(super) fn trained_inputs(inputs: &[LocalInput]) -> anyhow::Result<Option<Trained>> {
    let files: Vec<&PathBuf> = inputs.iter().flat_map(|i| &i.files).collect();
    let Some(info) =
        files.iter().find(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(TRAIN_INFO)))
    else {
        return Ok(None);
    };
    let value: Value =
        serde_json::from_slice(&std::fs::read(info).with_context(|| format!("cannot read {}", info.display()))?)
            .with_context(|| format!("{} is not JSON", info.display()))?;
    let key = IndexKey::parse(value["index_key"].as_str().context("train.json has no index_key")?)?;
    Ok(Some(Trained { key, files: files.into_iter().cloned().collect() }))
}

impl Trained {
    pub(super) fn side_path(&self, side: &str) -> anyhow::Result<PathBuf> {
        let name = trained_file(side);
        let path = self
            .files
            .iter()
            .find(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&name)))
            .with_context(|| format!("the knn-train input has no {name}: train the {side} side there (embeddings)"))?;
        Ok(path.clone())
    }

    /// The trained index of a side and the blake3 of its file (read once for both).
    pub fn side_with_hash(&self, side: &str) -> anyhow::Result<(IvfPq, [u8; 32])> {
        let path = self.side_path(side)?;
        match super::faiss::read_hashed(&path, true)? {
            (super::faiss::Index::IvfPq(ivf), Some(hash)) => Ok((*ivf, hash)),
            _ => bail!("{} is not an IVF-PQ index", path.display()),
        }
    }
}

/// The exact top 10 of the probe queries, kept while the vectors stream by.
struct Exact {
    queries: Vec<f32>,
    top: Vec<TopK>,
}

impl Exact {
    fn push(&mut self, first: u64, rows: &[f32], d: usize) {
        if self.top.is_empty() {
            return;
        }
        let mut s = Vec::new();
        scores(rows, &self.queries, d, &mut s);
        let q = self.top.len();
        for (i, row) in s.chunks_exact(q).enumerate() {
            for (t, &v) in self.top.iter_mut().zip(row) {
                if v > t.threshold() {
                    t.push(v, first as i64 + i as i64);
                }
            }
        }
    }
}

enum Sink {
    Flat(FlatIpWriter),
    Ivf(Box<IvfPq>),
}

#[allow(clippy::too_many_arguments)]
fn build_side(
    s: &Settings,
    choice: &Choice,
    trained: Option<&Trained>,
    (side, prefix): (&str, &str),
    parts: &[Part],
    cx: &BuildCx,
    outputs: &mut Vec<String>,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    // Parts a knn-encode input encoded already, by number: their lists are taken as they are.
    let encoded: HashMap<String, PathBuf> = cx
        .inputs
        .iter()
        .flat_map(|i| &i.files)
        .filter_map(|f| Some((part_number(f, prefix, super::encode::ENCODED_EXT)?, f.clone())))
        .collect();
    let mut trained_hash = None;
    let (d, total) = shapes(parts)?;
    let key = match trained {
        Some(t) => t.key,
        None => choice.key(total, d)?,
    };
    key.check(total, d)?;
    if key.trained() && !key.fits(total, d, choice.budget) {
        bail!(
            "{key} takes {} bytes for {total} vectors of {d} (its codes and ids, as autofaiss counts them: {} \
             bytes), over max_index_memory_usage ({} bytes): raise it, or choose fewer PQ bytes{}",
            key.bytes(total, d),
            key.code_bytes(total),
            choice.budget,
            if trained.is_some() { " (the knn-train step retrains once its plan sees the new count)" } else { "" }
        );
    }
    let index_file = format!("{side}.index");
    let mut train_seconds = 0.0;
    let mut sink = match key {
        IndexKey::Flat => Sink::Flat(FlatIpWriter::create(&cx.out_dir.join(&index_file), d, total)?),
        IndexKey::IvfPq { nlist, m, hnsw, opq } => {
            let ivf = match trained {
                Some(t) => {
                    let (ivf, hash) = t.side_with_hash(side)?;
                    trained_hash = Some(hash);
                    if ivf.input_dim() != d {
                        bail!(
                            "the knn-train input was trained on {} dimensions, the {side} parts have {d}",
                            ivf.input_dim()
                        );
                    }
                    ivf
                }
                None => {
                    let t = Instant::now();
                    let (_, sample) = read_sample(parts, key.train_rows(total, d, choice.memory) as usize)?;
                    let ivf = IvfPq::train(&sample, d, nlist, m, hnsw, opq, cx.cancel)?;
                    train_seconds = t.elapsed().as_secs_f64();
                    ivf
                }
            };
            Sink::Ivf(Box::new(ivf))
        }
    };
    let graph = match s.usearch {
        true => Some(hnsw::create(d, total as usize, rayon::current_num_threads(), &s.params())?),
        false => None,
    };

    let recall_queries = ((RECALL_BUDGET / (total as f64 * d as f64)) as usize).clamp(1, PROBES);
    let mut exact: Option<Exact> = None;
    let mut worst_norm = 0f32;
    let mut id = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK * d);
    let mut from_encode = 0;
    for part in parts {
        let mut npy = vectors::NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
        let mut encode_here = true;
        if let (Sink::Ivf(ivf), Some(hash), Some(path)) = (&mut sink, &trained_hash, encoded.get(&part.number)) {
            let e = super::encode::read(path, hash, ivf.nlist(), ivf.pq.m)?;
            if e.rows != npy.rows as u64 {
                bail!("part {}: {} holds {} rows, the part {}", part.name(), path.display(), e.rows, npy.rows);
            }
            // The part's rows come after the `id` before it: its vectors keep their order within each list.
            for (list, from) in ivf.lists.iter_mut().zip(e.lists) {
                list.codes.extend_from_slice(&from.codes);
                list.ids.extend(from.ids.iter().map(|r| r + id as i64));
            }
            encode_here = false;
            from_encode += 1;
        }
        loop {
            cx.cancel.check()?;
            chunk.clear();
            let at = npy.position();
            let n = npy.next_rows(CHUNK, &mut chunk).with_context(|| format!("part {}", part.name()))?;
            if n == 0 {
                break;
            }
            for (i, row) in chunk.chunks_exact(d).enumerate() {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                if !norm.is_finite() {
                    bail!("part {}: row {} of {} is not finite", part.name(), at + i, part.vectors.display());
                }
                worst_norm = worst_norm.max((norm - 1.0).abs());
            }
            let e = exact.get_or_insert_with(|| {
                // Queries that are not stored vectors, from rows spread over the first chunk.
                let stride = (n / (2 * recall_queries)).max(1);
                let samples: Vec<Vec<f32>> =
                    chunk.chunks_exact(d).step_by(stride).take(2 * recall_queries).map(<[f32]>::to_vec).collect();
                let queries: Vec<Vec<f32>> = probe_queries(&samples).into_iter().step_by(2).collect();
                Exact { top: queries.iter().map(|_| TopK::new(10)).collect(), queries: queries.concat() }
            });
            e.push(id, &chunk, d);
            match &mut sink {
                Sink::Flat(w) => w.push(&chunk)?,
                Sink::Ivf(ivf) if encode_here => ivf.add(id as i64, &chunk),
                Sink::Ivf(_) => {}
            }
            if let Some(g) = &graph {
                hnsw::add_rows(g, id, &chunk, d).with_context(|| format!("part {}", part.name()))?;
            }
            id += n as u64;
        }
    }
    let add_seconds = started.elapsed().as_secs_f64() - train_seconds;
    let exact = exact.context("no vectors streamed")?;
    let truth: Vec<Vec<i64>> =
        exact.top.into_iter().map(|t| t.sorted().into_iter().map(|(i, _)| i).collect()).collect();
    let queries = exact.queries;

    let (recall, nprobe, latency) = match sink {
        Sink::Flat(w) => {
            w.finish()?;
            (1.0, None, None)
        }
        Sink::Ivf(mut ivf) => {
            let transformed = ivf.transform(&queries);
            let (nprobe, recall) = match s.nprobe {
                Some(n) => (n as usize, recall_at(&ivf, &transformed, &truth, n as usize)),
                None => tune_nprobe(&ivf, &transformed, &truth),
            };
            drop(transformed);
            ivf.set_nprobe(nprobe);
            let nprobe = ivf.nprobe;
            let latency = latency_ms(&ivf, &queries, nprobe);
            ivf.write(&cx.out_dir.join(&index_file))?;
            (recall, Some(nprobe), Some(latency))
        }
    };
    outputs.push(index_file.clone());
    if let Some(g) = &graph {
        let name = format!("{side}.usearch");
        hnsw::save(g, &cx.out_dir.join(&name))?;
        outputs.push(name);
    }
    let size =
        std::fs::metadata(cx.out_dir.join(&index_file)).with_context(|| format!("cannot stat {index_file}"))?.len();
    // autofaiss's index infos (external/quantize.py, scores.py), with dsmake's figures after them.
    let infos = json!({
        "index_key": key.to_string(),
        "index_param": nprobe.map_or(String::new(), |n| format!("nprobe={n},efSearch={},ht=2048", (2 * n).max(16))),
        "index_path": index_file,
        "size in bytes": size,
        "avg_search_speed_ms": latency.map(|l| l.0),
        "99p_search_speed_ms": latency.map(|l| l.1),
        "nb vectors": total,
        "vectors dimension": d,
        "compression ratio": (total as f64 * d as f64 * 4.0) / size.max(1) as f64,
        "metric": "ip",
        "10-recall@10": recall,
        "recall queries": queries.len() / d,
        "nprobe": nprobe,
        "trained_by": if trained.is_some() { "knn-train" } else if key.trained() { "this step" } else { "none" },
        "parts_encoded_by_knn_encode": from_encode,
        "train_seconds": train_seconds,
        "add_seconds": add_seconds,
        "max_norm_error": worst_norm,
        "metadata_path": METADATA_DIR,
        "usearch_path": graph.as_ref().map(|_| format!("{side}.usearch")),
    });
    let json_name = format!("{side}.json");
    std::fs::write(cx.out_dir.join(&json_name), serde_json::to_vec_pretty(&infos)?)
        .with_context(|| format!("cannot write {json_name}"))?;
    outputs.push(json_name);
    Ok(infos)
}

/// (dimension, vector count) over every part, checking that each part's rows align with its metadata.
fn shapes(parts: &[Part]) -> anyhow::Result<(usize, u64)> {
    let mut dims: Option<(usize, &Part)> = None;
    let mut total = 0u64;
    for part in parts {
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
    let Some((d, _)) = dims else {
        bail!("no vectors to index: the {} input part(s) hold no rows", parts.len());
    };
    Ok((d, total))
}

/// recall@10 of `queries` (through [`IvfPq::transform`]) against `truth`.
fn recall_at(ivf: &IvfPq, queries: &[f32], truth: &[Vec<i64>], nprobe: usize) -> f64 {
    let found = ivf.search_many_transformed(queries, 10, nprobe);
    let hits: usize =
        found.iter().zip(truth).map(|(f, t)| t.iter().filter(|id| f.iter().any(|r| r.0 == **id)).count()).sum();
    hits as f64 / truth.iter().map(Vec::len).sum::<usize>().max(1) as f64
}

/// The fewest lists that reach (within 1%) the best recall@10 of up to 1024 lists, as autofaiss searches for
/// the smallest nprobe that covers the neighbours.
fn tune_nprobe(ivf: &IvfPq, queries: &[f32], truth: &[Vec<i64>]) -> (usize, f64) {
    let mut tried = Vec::new();
    let mut n = 1;
    while n <= ivf.nlist().min(1024) {
        tried.push((n, recall_at(ivf, queries, truth, n)));
        n *= 2;
    }
    let best = tried.iter().map(|t| t.1).fold(0.0, f64::max);
    tried.into_iter().find(|t| t.1 >= best - 0.01).unwrap_or((1, 0.0))
}

/// Average and 99th-percentile latency of one query at a time, in milliseconds.
fn latency_ms(ivf: &IvfPq, queries: &[f32], nprobe: usize) -> (f64, f64) {
    let mut times: Vec<f64> = queries
        .chunks_exact(ivf.input_dim())
        .map(|q| {
            let t = Instant::now();
            std::hint::black_box(ivf.search(q, 10, nprobe));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    if times.is_empty() {
        return (0.0, 0.0);
    }
    times.sort_by(f64::total_cmp);
    let avg = times.iter().sum::<f64>() / times.len() as f64;
    (avg, times[((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len()) - 1])
}
