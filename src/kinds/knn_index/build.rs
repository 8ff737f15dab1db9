//! Building the index: a first pass over the parts' shapes, then the vectors streamed chunk by chunk into the
//! HNSW graph (and the exact faiss file), the metadata written alongside, and the summary measured.

use super::parts::{Part, collect_parts};
use super::probes::{latency, probe_queries};
use super::settings::Settings;
use super::{
    CHUNK, EXACT_FAISS_AUTO_MAX, FAISS_FILE, INFOS_FILE, METADATA_FILE, PROBES, RECALL_BUDGET, faiss, hnsw, meta,
    vectors,
};
use crate::kind::{BuildCx, Built};
use anyhow::{Context, bail};
use serde_json::json;
use std::time::Instant;

pub fn build(s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
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
        meta::read_part(&part.metadata, |row| metadata.push(row)).with_context(|| format!("part {}", part.name()))?;
        let mut npy = vectors::NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
        if metadata.rows() - before != npy.rows as u64 {
            bail!("part {}: {} rows of metadata read, {} vectors", part.name(), metadata.rows() - before, npy.rows);
        }
        loop {
            cx.cancel.check()?;
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
