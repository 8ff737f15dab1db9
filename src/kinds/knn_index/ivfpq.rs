//! An inverted-file index with product-quantised residuals for inner product: faiss's `IndexIVFPQ`
//! (`IVF{nlist},PQ{M}x8`, `by_residual`), built, searched, written and read in faiss's layout.
//!
//! A vector goes to the list of its best coarse centroid (inner product, the `IndexFlatIP` quantizer) and is
//! stored as the PQ code of its residual (vector − centroid) with its id. A query's score for a stored
//! vector is `q·centroid + q·decode(code)`, faiss's IVFPQ inner-product scan; the `nprobe` best lists are
//! scanned.
//!
//! On disk (faiss/impl/index_write.cpp, `IwPQ`): the IVF header (the common header, `nlist` and `nprobe` as
//! u64, the quantizer as a whole `IxFI` index or `IHNf` graph ([`super::graph`]), the direct map: a zero byte and an empty vector), `by_residual`
//! (one byte), `code_size` (u64), the PQ (`d`, `M`, `nbits` as u64, its centroids as a vector), then the
//! inverted lists as `ilar`: `nlist` and `code_size` (u64), `full`, the list sizes as a u64 vector, and each
//! non-empty list's codes followed by its ids (i64), list after list.

use super::faiss::{Cursor, IVF_PQ, Out, finish_file};
use super::graph::{self, Graph};
use super::kmeans;
use super::linalg::{TopK, assign, dot};
use super::opq::{self, Opq};
use super::pq::{self, Pq};
use crate::kind::Cancel;
use anyhow::{Context, bail};
use rayon::prelude::*;
use std::io::BufWriter;
use std::path::Path;

/// Coarse k-means iterations (faiss's `Clustering` default is 25; ten gets most of the gain for a fraction of
/// the time at 10⁴–10⁵ centroids).
const COARSE_ITERATIONS: usize = 10;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct List {
    pub codes: Vec<u8>,
    pub ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IvfPq {
    /// The dimension of the IVF-PQ: the vectors', or OPQ's output.
    pub d: usize,
    /// OPQ's transform applied to vectors and queries before anything else (`OPQ{M}_{d},IVF…`); faiss's
    /// `IndexPreTransform` around the `IndexIVFPQ` in the file.
    pub opq: Option<Opq>,
    /// The coarse centroids, `nlist · d` values.
    pub centroids: Vec<f32>,
    pub pq: Pq,
    /// The HNSW graph over the centroids that faiss searches for a query's lists (`IVF…_HNSW…`); dsmake
    /// itself compares the query with every centroid (as exact as the graph at best, and cheap).
    pub graph: Option<Graph>,
    pub nprobe: usize,
    pub lists: Vec<List>,
}

impl IvfPq {
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }
    pub fn ntotal(&self) -> u64 {
        self.lists.iter().map(|l| l.ids.len() as u64).sum()
    }
    /// The dimension of the vectors and queries it takes.
    pub fn input_dim(&self) -> usize {
        self.opq.as_ref().map_or(self.d, |o| o.d_in)
    }

    /// Trains the OPQ transform (when `opq` gives its output dimension; 0: the input's) on `sample`, then on
    /// the transformed sample the coarse quantizer (spherical k-means; an HNSW graph over it with `hnsw`
    /// neighbours) and the PQ (on residuals), as faiss trains an `IndexPreTransform` and the index it holds.
    pub fn train(
        sample: &[f32],
        d: usize,
        nlist: usize,
        m: usize,
        hnsw: Option<usize>,
        opq: Option<usize>,
        cancel: &Cancel,
    ) -> anyhow::Result<IvfPq> {
        let n = sample.len() / d;
        if n < nlist {
            bail!("IVF{nlist} needs at least {nlist} training vectors, the sample has {n}");
        }
        let opq = match opq {
            Some(d_out) => Some(Opq::train(sample, d, if d_out == 0 { d } else { d_out }, m, cancel)?),
            None => None,
        };
        let rotated;
        let (sample, d) = match &opq {
            Some(o) => {
                rotated = o.apply(sample);
                (&rotated[..], o.d_out)
            }
            None => (sample, d),
        };
        let p = kmeans::Params { k: nlist, iterations: COARSE_ITERATIONS, spherical: true, seed: 1234 };
        let centroids = kmeans::train(sample, d, &p, cancel)?;
        let residuals = residuals(sample, d, &centroids);
        let pq = Pq::train(&residuals, d, m, 4321, cancel)?;
        let graph = hnsw.map(|h| Graph::build(&centroids, d, h, 5678));
        Ok(IvfPq { d, opq, centroids, pq, graph, nprobe: 1, lists: vec![List::default(); nlist] })
    }

    /// Lists scanned per query, stored in the file for faiss; an HNSW quantizer searches `2·nprobe` candidates
    /// (at least 16), as clip_back sets `efSearch`.
    pub fn set_nprobe(&mut self, nprobe: usize) {
        self.nprobe = nprobe.clamp(1, self.nlist());
        if let Some(g) = &mut self.graph {
            g.ef_search = (2 * self.nprobe).max(16) as i32;
        }
    }

    /// Adds whole rows (of [`IvfPq::input_dim`]) with ids `first`, `first + 1`, …
    pub fn add(&mut self, first: i64, rows: &[f32]) {
        let rows = &*self.transform(rows);
        let d = self.d;
        let labels = assign(rows, &self.centroids, d, None);
        let mut res = Vec::with_capacity(rows.len());
        for (row, &l) in rows.chunks_exact(d).zip(&labels) {
            let c = &self.centroids[l as usize * d..(l as usize + 1) * d];
            res.extend(row.iter().zip(c).map(|(x, y)| x - y));
        }
        let codes = self.pq.encode(&res);
        for (i, &l) in labels.iter().enumerate() {
            let list = &mut self.lists[l as usize];
            list.codes.extend_from_slice(&codes[i * self.pq.m..(i + 1) * self.pq.m]);
            list.ids.push(first + i as i64);
        }
    }

    /// Rows as the IVF-PQ takes them: through OPQ's transform when there is one (one product for many rows).
    pub fn transform<'a>(&self, rows: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match &self.opq {
            Some(o) => o.apply(rows).into(),
            None => rows.into(),
        }
    }

    /// The lists to scan for a query: the `nprobe` best centroids.
    fn probe(&self, q: &[f32], nprobe: usize) -> Vec<(i64, f32)> {
        let mut top = TopK::new(nprobe.clamp(1, self.nlist()));
        for (j, c) in self.centroids.chunks_exact(self.d).enumerate() {
            top.push(dot(q, c), j as i64);
        }
        top.sorted()
    }

    /// The top `k` (id, score) scanning `nprobe` lists.
    pub fn search(&self, q: &[f32], k: usize, nprobe: usize) -> Vec<(i64, f32)> {
        self.search_transformed(&self.transform(q), k, nprobe)
    }

    /// As [`IvfPq::search`] for a query already through [`IvfPq::transform`].
    fn search_transformed(&self, q: &[f32], k: usize, nprobe: usize) -> Vec<(i64, f32)> {
        let table = self.pq.ip_table(q);
        let m = self.pq.m;
        let mut top = TopK::new(k);
        for (list, coarse) in self.probe(q, nprobe) {
            let list = &self.lists[list as usize];
            for (code, &id) in list.codes.chunks_exact(m).zip(&list.ids) {
                top.push(coarse + pq::score(&table, code), id);
            }
        }
        top.sorted()
    }

    /// Searches many queries, already through [`IvfPq::transform`] (once for all: tuning `nprobe` searches
    /// the same queries many times), on the rayon pool.
    pub fn search_many_transformed(&self, queries: &[f32], k: usize, nprobe: usize) -> Vec<Vec<(i64, f32)>> {
        queries.par_chunks_exact(self.d).map(|q| self.search_transformed(q, k, nprobe)).collect()
    }

    /// Bytes the index takes in memory and on disk, near enough: codes, ids and the trained tables.
    pub fn bytes(&self) -> u64 {
        let opq = self.opq.as_ref().map_or(0, |o| o.a.len());
        self.ntotal() * (self.pq.m as u64 + 8) + 4 * (self.centroids.len() + self.pq.centroids.len() + opq) as u64
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = Out(BufWriter::with_capacity(1 << 20, file));
        self.write_to(&mut out).with_context(|| format!("cannot write {}", path.display()))?;
        finish_file(out.0, path)
    }

    fn write_to<W: std::io::Write>(&self, out: &mut Out<W>) -> std::io::Result<()> {
        let nlist = self.nlist() as u64;
        if let Some(o) = &self.opq {
            // faiss's IndexPreTransform: its header (the input dimension), one transform, then the index.
            out.bytes(opq::PRE_TRANSFORM)?;
            out.header(o.d_in, self.ntotal(), true)?;
            out.i32(1)?;
            o.write_to(out)?;
        }
        out.bytes(IVF_PQ)?;
        out.header(self.d, self.ntotal(), true)?;
        out.u64(nlist)?;
        out.u64(self.nprobe as u64)?;
        match &self.graph {
            Some(g) => g.write_to(out, self.d, &self.centroids)?,
            None => out.flat_ip(self.d, &self.centroids)?,
        }
        // Direct map: none (clip_back's search_and_reconstruct decodes from the lists).
        out.u8(0)?;
        out.u64(0)?;
        out.u8(1)?; // by_residual
        out.u64(self.pq.m as u64)?; // code_size
        out.u64(self.d as u64)?;
        out.u64(self.pq.m as u64)?;
        out.u64(8)?;
        out.f32_vec(&self.pq.centroids)?;
        out.bytes(b"ilar")?;
        out.u64(nlist)?;
        out.u64(self.pq.m as u64)?;
        out.bytes(b"full")?;
        out.u64(nlist)?;
        for l in &self.lists {
            out.u64(l.ids.len() as u64)?;
        }
        for l in &self.lists {
            out.bytes(&l.codes)?;
            for id in &l.ids {
                out.i64(*id)?;
            }
        }
        Ok(())
    }

    /// Reads what follows an `IxPT` code: one OPQ transform, then the `IwPQ` index.
    pub fn read_pre_transform(c: &mut Cursor) -> anyhow::Result<IvfPq> {
        let (d, ntotal) = c.header()?;
        if c.i32()? != 1 || &c.fourcc()? != opq::FOURCC {
            bail!("an IndexPreTransform other than one linear transform is not one dsmake writes");
        }
        let o = Opq::read_body(c)?;
        if &c.fourcc()? != IVF_PQ {
            bail!("the IndexPreTransform holds an index other than IndexIVFPQ");
        }
        let mut ivf = IvfPq::read_body(c)?;
        if o.d_in != d || o.d_out != ivf.d || ivf.ntotal() != ntotal {
            bail!("the transform {} → {} does not fit the index of {} ({d} outside)", o.d_in, o.d_out, ivf.d);
        }
        ivf.opq = Some(o);
        Ok(ivf)
    }

    /// Reads what follows the `IwPQ` code.
    pub fn read_body(c: &mut Cursor) -> anyhow::Result<IvfPq> {
        let (d, ntotal) = c.header()?;
        let nlist = c.u64()? as usize;
        let nprobe = c.u64()? as usize;
        let (graph, qd, centroids) = match &c.fourcc()? {
            super::faiss::FLAT_IP => {
                let (qd, centroids) = c.flat_ip_body()?;
                (None, qd, centroids)
            }
            graph::FOURCC => {
                let (g, qd, centroids) = Graph::read_body(c)?;
                (Some(g), qd, centroids)
            }
            other => bail!(
                "the coarse quantizer {:?} is not an IndexFlatIP or IndexHNSWFlat",
                String::from_utf8_lossy(other)
            ),
        };
        if qd != d || centroids.len() != nlist * d {
            bail!("the quantizer holds {} values, not {nlist} centroids of {d}", centroids.len());
        }
        if c.u8()? != 0 || c.u64()? != 0 {
            bail!("an IVF index with a direct map is not one dsmake writes");
        }
        if c.u8()? != 1 {
            bail!("IVFPQ without by_residual is not one dsmake writes");
        }
        let code_size = c.u64()? as usize;
        let (pd, m, nbits) = (c.u64()? as usize, c.u64()? as usize, c.u64()?);
        if pd != d || m != code_size || nbits != 8 || m == 0 || !d.is_multiple_of(m) {
            bail!("PQ of d={pd}, M={m}, nbits={nbits} does not fit codes of {code_size} bytes for d={d}");
        }
        let pq = Pq { d, m, centroids: c.f32_vec()? };
        if pq.centroids.len() != d * pq::KSUB {
            bail!("PQ centroids hold {} values, not {}", pq.centroids.len(), d * pq::KSUB);
        }
        if &c.fourcc()? != b"ilar" || c.u64()? as usize != nlist || c.u64()? as usize != m {
            bail!("the inverted lists are not faiss's array lists of {nlist} lists of {m}-byte codes");
        }
        let sizes: Vec<(usize, usize)> = match &c.fourcc()? {
            b"full" => {
                if c.u64()? as usize != nlist {
                    bail!("list sizes do not number {nlist}");
                }
                (0..nlist).map(|i| Ok((i, c.u64()? as usize))).collect::<anyhow::Result<_>>()?
            }
            b"sprs" => {
                let n = c.u64()? as usize;
                (0..n / 2).map(|_| Ok((c.u64()? as usize, c.u64()? as usize))).collect::<anyhow::Result<_>>()?
            }
            other => bail!("list layout {:?} is not full or sparse", String::from_utf8_lossy(other)),
        };
        let mut lists = vec![List::default(); nlist];
        for (i, n) in sizes {
            let list = lists.get_mut(i).with_context(|| format!("list {i} of {nlist}"))?;
            list.codes = c.take(n.checked_mul(m).context("implausible list size")?)?.to_vec();
            list.ids =
                c.take(n * 8)?.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect();
        }
        let index = IvfPq { d, opq: None, centroids, pq, graph, nprobe, lists };
        if index.ntotal() != ntotal {
            bail!("the lists hold {} vectors, the header says {ntotal}", index.ntotal());
        }
        Ok(index)
    }
}

/// Each row minus its best (inner-product) centroid.
fn residuals(rows: &[f32], d: usize, centroids: &[f32]) -> Vec<f32> {
    let labels = assign(rows, centroids, d, None);
    let mut out = Vec::with_capacity(rows.len());
    for (row, &l) in rows.chunks_exact(d).zip(&labels) {
        out.extend(row.iter().zip(&centroids[l as usize * d..(l as usize + 1) * d]).map(|(x, y)| x - y));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::knn_index::linalg::normalize;

    pub fn clustered(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let centers: Vec<f32> = (0..32 * d).map(|_| rng.f32() - 0.5).collect();
        let mut x = Vec::with_capacity(n * d);
        for _ in 0..n {
            let c = rng.usize(0..32);
            let mut row: Vec<f32> = centers[c * d..(c + 1) * d].iter().map(|v| v + (rng.f32() - 0.5) * 0.3).collect();
            normalize(&mut row);
            x.extend(row);
        }
        x
    }

    #[test]
    fn finds_neighbours_and_round_trips_through_faiss_layout() {
        let (d, n) = (32, 4000);
        // m = 16: two dimensions a code byte.
        let x = clustered(n, d, 5);
        let mut ivf = IvfPq::train(&x, d, 16, 16, Some(4), None, &Cancel::default()).unwrap();
        ivf.set_nprobe(4);
        assert_eq!(ivf.graph.as_ref().map(|g| g.ef_search), Some(16));
        ivf.add(0, &x[..2000 * d]);
        ivf.add(2000, &x[2000 * d..]);
        assert_eq!(ivf.ntotal(), n as u64);
        // With every list scanned, the result is the top 10 by inner product with the decoded vectors
        // (centroid + decoded residual), which stay close to the originals.
        let mut decoded = vec![0f32; n * d];
        let mut back = vec![0f32; d];
        for (l, list) in ivf.lists.iter().enumerate() {
            for (code, &id) in list.codes.chunks_exact(ivf.pq.m).zip(&list.ids) {
                ivf.pq.decode(code, &mut back);
                let row = &mut decoded[id as usize * d..(id as usize + 1) * d];
                for ((o, r), c) in row.iter_mut().zip(&back).zip(&ivf.centroids[l * d..(l + 1) * d]) {
                    *o = r + c;
                }
            }
        }
        let (mut err, mut hits) = (0.0, 0);
        for i in 0..50 {
            let q = &x[i * d..(i + 1) * d];
            let (mut on_decoded, mut exact) = (TopK::new(10), TopK::new(10));
            for j in 0..n {
                on_decoded.push(dot(q, &decoded[j * d..(j + 1) * d]), j as i64);
                exact.push(dot(q, &x[j * d..(j + 1) * d]), j as i64);
            }
            let found = ivf.search(q, 10, 16);
            let want = on_decoded.sorted();
            for (f, w) in found.iter().zip(&want) {
                assert!((f.1 - w.1).abs() < 1e-4, "{found:?} {want:?}");
            }
            hits += exact.sorted().iter().filter(|e| found.iter().any(|f| f.0 == e.0)).count();
            err += x[i * d..(i + 1) * d]
                .iter()
                .zip(&decoded[i * d..(i + 1) * d])
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>();
        }
        assert!(err / 50.0 < 0.01, "mean squared reconstruction error {}", err / 50.0);
        assert!(hits >= 250, "recall@10 {}", hits as f64 / 500.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.index");
        ivf.write(&path).unwrap();
        let super::super::faiss::Index::IvfPq(back) = super::super::faiss::read(&path).unwrap() else { panic!() };
        assert_eq!(*back, ivf);
        assert!(IvfPq::train(&x[..10 * d], d, 16, 8, None, None, &Cancel::default()).is_err());
    }
}
