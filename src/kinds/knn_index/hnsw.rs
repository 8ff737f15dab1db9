//! The approximate index: a usearch HNSW graph for inner product, its vectors stored quantised (f16 by
//! default), keyed by row number (the vector's row in the concatenated parts, and in `metadata.parquet`).
//! usearch writes one file that `usearch.index.Index.restore(path)` loads in Python and that a server
//! memory-maps (`restore(path, view=True)`) rather than reads: at 10⁸ vectors of 768 dimensions in i8 that is
//! ~80 GB of vectors plus the graph, on one machine.

use anyhow::{anyhow, bail};
use rayon::prelude::*;
use std::path::Path;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

crate::setting_enum! {
    /// How vectors are stored in the index.
    pub enum Quantization {
        F16 = "f16",
        Bf16 = "bf16",
        F32 = "f32",
        I8 = "i8",
    }
}

impl Quantization {
    pub fn bytes(self) -> usize {
        match self {
            Quantization::F32 => 4,
            Quantization::F16 | Quantization::Bf16 => 2,
            Quantization::I8 => 1,
        }
    }

    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::Bf16 => ScalarKind::BF16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// HNSW's M: neighbours per node on the upper levels (twice that on the base level).
    pub connectivity: usize,
    /// ef at construction.
    pub expansion_add: usize,
    /// ef at query time (at least k).
    pub expansion_search: usize,
    pub quantization: Quantization,
}

impl Default for Params {
    fn default() -> Self {
        Params { connectivity: 16, expansion_add: 128, expansion_search: 768, quantization: Quantization::F16 }
    }
}

/// An empty index for `capacity` vectors of `dims`, added to from up to `threads` threads at once.
pub fn create(dims: usize, capacity: usize, threads: usize, p: &Params) -> anyhow::Result<Index> {
    let options = IndexOptions {
        dimensions: dims,
        metric: MetricKind::IP,
        quantization: p.quantization.scalar(),
        connectivity: p.connectivity,
        expansion_add: p.expansion_add,
        expansion_search: p.expansion_search,
        multi: false,
    };
    let index = Index::new(&options).map_err(|e| anyhow!("cannot create a usearch index: {e}"))?;
    index
        .reserve_capacity_and_threads(capacity.max(1), threads.max(1))
        .map_err(|e| anyhow!("cannot reserve a usearch index for {capacity} vectors: {e}"))?;
    Ok(index)
}

/// Adds whole rows (`dims` values each) with keys `first`, `first + 1`, …, on the rayon pool.
pub fn add_rows(index: &Index, first: u64, rows: &[f32], dims: usize) -> anyhow::Result<()> {
    if dims == 0 || !rows.len().is_multiple_of(dims) {
        bail!("{} values are not whole rows of {dims}", rows.len());
    }
    rows.par_chunks_exact(dims).enumerate().try_for_each(|(i, row)| {
        let key = first + i as u64;
        index.add(key, row).map_err(|e| anyhow!("cannot add vector {key}: {e}"))
    })
}

/// The top `k` (row, score) for a query, best first; score is the inner product.
pub fn search(index: &Index, query: &[f32], k: usize) -> anyhow::Result<Vec<(u64, f32)>> {
    let found = index.search(query, k).map_err(|e| anyhow!("search failed: {e}"))?;
    Ok(found.keys.into_iter().zip(found.distances).map(|(key, d)| (key, 1.0 - d)).collect())
}

/// The same by brute force over every stored vector.
pub fn exact_search(index: &Index, query: &[f32], k: usize) -> anyhow::Result<Vec<(u64, f32)>> {
    let found = index.exact_search(query, k).map_err(|e| anyhow!("exact search failed: {e}"))?;
    Ok(found.keys.into_iter().zip(found.distances).map(|(key, d)| (key, 1.0 - d)).collect())
}

pub fn save(index: &Index, path: &Path) -> anyhow::Result<()> {
    let text = path.to_str().ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?;
    index.save(text).map_err(|e| anyhow!("cannot save the index to {}: {e}", path.display()))
}

/// Opens a saved index memory-mapped (nothing read up front), with ef for search set to `expansion_search`.
pub fn open_view(path: &Path, expansion_search: usize) -> anyhow::Result<Index> {
    let text = path.to_str().ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?;
    let index =
        Index::restore_view(text).map_err(|e| anyhow!("cannot open the usearch index {}: {e}", path.display()))?;
    if expansion_search > 0 {
        index.change_expansion_search(expansion_search);
    }
    Ok(index)
}

/// Recall@k of the graph against brute force over the same stored vectors, averaged over `queries`.
pub fn recall(index: &Index, queries: &[Vec<f32>], k: usize) -> anyhow::Result<f64> {
    if queries.is_empty() {
        return Ok(1.0);
    }
    let hits = queries
        .par_iter()
        .map(|q| {
            let approx = search(index, q, k)?;
            let exact = exact_search(index, q, k)?;
            let found = exact.iter().filter(|(key, _)| approx.iter().any(|(a, _)| a == key)).count();
            Ok(found as f64 / exact.len().max(1) as f64)
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(hits.iter().sum::<f64>() / hits.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nearest_by_inner_product_and_round_trips_through_a_file() {
        let dims = 8;
        let mut rows = vec![0f32; 20 * dims];
        for (i, row) in rows.chunks_exact_mut(dims).enumerate() {
            row[i % dims] = 1.0;
            row[(i + 1) % dims] = (i / dims) as f32 * 0.3;
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let index = create(dims, 20, 2, &Params::default()).unwrap();
        add_rows(&index, 0, &rows, dims).unwrap();
        assert!(add_rows(&index, 20, &rows[..3], dims).is_err());
        let top = search(&index, &rows[3 * dims..4 * dims], 1).unwrap();
        assert_eq!(top[0].0, 3);
        assert!((top[0].1 - 1.0).abs() < 1e-2, "{top:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.usearch");
        save(&index, &path).unwrap();
        let view = open_view(&path, 64).unwrap();
        assert_eq!(view.size(), 20);
        assert_eq!(search(&view, &rows[5 * dims..6 * dims], 1).unwrap()[0].0, 5);
        assert!(open_view(&dir.path().join("none.usearch"), 0).is_err());
    }
}
