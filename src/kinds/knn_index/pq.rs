//! A product quantiser with 8-bit codes, laid out as faiss's `ProductQuantizer` (`d`, `M`, `nbits = 8`,
//! centroids `[M][256][d/M]`): a vector is cut into `M` sub-vectors, each replaced by the number of its
//! nearest (L2) centroid among 256 trained for that subspace by k-means.

use super::kmeans;
use super::linalg::{assign, norms, scores};
use crate::kind::Cancel;
use rayon::prelude::*;

pub const KSUB: usize = 256;
/// Sample points per centroid for training, faiss's `max_points_per_centroid`.
pub(super) const MAX_POINTS_PER_CENTROID: usize = 256;
/// faiss's `ProductQuantizer::cp.niter`.
pub(super) const ITERATIONS: usize = 25;

#[derive(Debug, Clone, PartialEq)]
pub struct Pq {
    pub d: usize,
    pub m: usize,
    /// `m · 256 · (d/m)` values.
    pub centroids: Vec<f32>,
}

impl Pq {
    pub fn dsub(&self) -> usize {
        self.d / self.m
    }

    /// Trains on the rows of `x` (at most 65,536 of them are used, as faiss does).
    pub fn train(x: &[f32], d: usize, m: usize, seed: u64, cancel: &Cancel) -> anyhow::Result<Pq> {
        Pq::train_from(x, d, m, seed, ITERATIONS, None, cancel)
    }

    /// As [`Pq::train`] with `iterations` k-means rounds a subspace, starting from `init`'s centroids if given.
    pub fn train_from(
        x: &[f32],
        d: usize,
        m: usize,
        seed: u64,
        iterations: usize,
        init: Option<&Pq>,
        cancel: &Cancel,
    ) -> anyhow::Result<Pq> {
        anyhow::ensure!(m > 0 && d.is_multiple_of(m), "PQ{m} needs a dimension divisible by {m}, not {d}");
        let n = (x.len() / d).min(KSUB * MAX_POINTS_PER_CENTROID);
        anyhow::ensure!(n >= KSUB, "product quantisation needs at least {KSUB} training vectors, it has {n}");
        let dsub = d / m;
        let subs = (0..m)
            .into_par_iter()
            .map(|sub| {
                let part: Vec<f32> =
                    x[..n * d].chunks_exact(d).flat_map(|r| r[sub * dsub..(sub + 1) * dsub].iter().copied()).collect();
                let p = kmeans::Params { k: KSUB, iterations, spherical: false, seed: seed + sub as u64 };
                kmeans::train_from(&part, dsub, &p, init.map(|pq| pq.sub(sub)), cancel)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Pq { d, m, centroids: subs.concat() })
    }

    fn sub(&self, sub: usize) -> &[f32] {
        let size = KSUB * self.dsub();
        &self.centroids[sub * size..(sub + 1) * size]
    }

    /// The codes (`m` bytes per row) of whole rows.
    pub fn encode(&self, x: &[f32]) -> Vec<u8> {
        let (d, dsub) = (self.d, self.dsub());
        let n = x.len() / d;
        let mut codes = vec![0u8; n * self.m];
        let per_sub: Vec<Vec<u32>> = (0..self.m)
            .into_par_iter()
            .map(|sub| {
                let part: Vec<f32> =
                    x.chunks_exact(d).flat_map(|r| r[sub * dsub..(sub + 1) * dsub].iter().copied()).collect();
                let c = self.sub(sub);
                assign(&part, c, dsub, Some(&norms(c, dsub)))
            })
            .collect();
        for (sub, labels) in per_sub.iter().enumerate() {
            for (i, &l) in labels.iter().enumerate() {
                codes[i * self.m + sub] = l as u8;
            }
        }
        codes
    }

    /// The vectors the codes (`m` bytes a row) stand for.
    pub fn decode_all(&self, codes: &[u8]) -> Vec<f32> {
        let mut out = vec![0f32; codes.len() / self.m * self.d];
        for (code, row) in codes.chunks_exact(self.m).zip(out.chunks_exact_mut(self.d)) {
            self.decode(code, row);
        }
        out
    }

    /// The vector a code stands for.
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        let dsub = self.dsub();
        for (sub, &c) in code.iter().enumerate() {
            let at = c as usize * dsub;
            out[sub * dsub..(sub + 1) * dsub].copy_from_slice(&self.sub(sub)[at..at + dsub]);
        }
    }

    /// `m × 256` inner products of the query's sub-vectors with every centroid: a code's inner product
    /// with the query is the sum of its `m` entries.
    pub fn ip_table(&self, q: &[f32]) -> Vec<f32> {
        let dsub = self.dsub();
        let mut table = Vec::with_capacity(self.m * KSUB);
        let mut s = Vec::new();
        for sub in 0..self.m {
            scores(&q[sub * dsub..(sub + 1) * dsub], self.sub(sub), dsub, &mut s);
            table.extend_from_slice(&s);
        }
        table
    }
}

/// A code's score from a table made by [`Pq::ip_table`].
#[inline]
pub fn score(table: &[f32], code: &[u8]) -> f32 {
    code.iter().enumerate().map(|(sub, &c)| table[sub * KSUB + c as usize]).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::knn_index::linalg::dot;

    #[test]
    fn codes_approximate_the_vectors_and_tables_score_them() {
        let (d, m, n) = (16, 4, 2000);
        let mut rng = fastrand::Rng::with_seed(9);
        let x: Vec<f32> = (0..n * d).map(|_| rng.f32() - 0.5).collect();
        let pq = Pq::train(&x, d, m, 1, &Cancel::default()).unwrap();
        assert_eq!(pq.centroids.len(), m * KSUB * d / m);
        let codes = pq.encode(&x);
        let mut err = 0.0;
        let mut energy = 0.0;
        let mut back = vec![0f32; d];
        for (row, code) in x.chunks_exact(d).zip(codes.chunks_exact(m)) {
            pq.decode(code, &mut back);
            err += row.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
            energy += dot(row, row);
        }
        assert!(err / energy < 0.2, "relative error {}", err / energy);
        let q = &x[..d];
        let table = pq.ip_table(q);
        pq.decode(&codes[m..2 * m], &mut back);
        assert!((score(&table, &codes[m..2 * m]) - dot(q, &back)).abs() < 1e-4);
        assert!(Pq::train(&x, d, 5, 1, &Cancel::default()).is_err());
    }
}
