//! k-means as faiss's `Clustering` does it for an IVF coarse quantizer and for each product-quantiser
//! subspace: centroids seeded from distinct sample points, Lloyd iterations (assignments by gemm), an empty
//! cluster re-seeded by splitting the largest one. With `spherical` (inner-product indices over
//! L2-normalised embeddings) centroids are renormalised after each update, so that ranking by inner product
//! and by distance agree.

use super::linalg::{assign, normalize, norms};
use crate::kind::Cancel;

pub struct Params {
    pub k: usize,
    pub iterations: usize,
    pub spherical: bool,
    pub seed: u64,
}

/// `k` centroids (k·d values) of the rows of `x`. Needs at least `k` rows.
pub fn train(x: &[f32], d: usize, p: &Params, cancel: &Cancel) -> anyhow::Result<Vec<f32>> {
    train_from(x, d, p, None, cancel)
}

/// As [`train`], starting from the centroids `init` (k·d values) when given: OPQ retrains its product
/// quantiser each round from the last round's centroids.
pub fn train_from(x: &[f32], d: usize, p: &Params, init: Option<&[f32]>, cancel: &Cancel) -> anyhow::Result<Vec<f32>> {
    let n = x.len() / d;
    anyhow::ensure!(n >= p.k && p.k > 0, "k-means needs at least {} points, it has {n}", p.k);
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let mut c: Vec<f32> = match init {
        Some(init) if init.len() == p.k * d => init.to_vec(),
        _ => {
            // Distinct seeds: a partial Fisher–Yates shuffle of the row numbers.
            let mut order: Vec<usize> = (0..n).collect();
            for i in 0..p.k {
                let j = rng.usize(i..n);
                order.swap(i, j);
            }
            order[..p.k].iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect()
        }
    };
    for _ in 0..p.iterations {
        cancel.check()?;
        let labels = if p.spherical { assign(x, &c, d, None) } else { assign(x, &c, d, Some(&norms(&c, d))) };
        let mut sums = vec![0f64; p.k * d];
        let mut counts = vec![0usize; p.k];
        for (row, &l) in x.chunks_exact(d).zip(&labels) {
            let l = l as usize;
            counts[l] += 1;
            for (s, v) in sums[l * d..(l + 1) * d].iter_mut().zip(row) {
                *s += *v as f64;
            }
        }
        for j in 0..p.k {
            if counts[j] > 0 {
                for (cv, s) in c[j * d..(j + 1) * d].iter_mut().zip(&sums[j * d..(j + 1) * d]) {
                    *cv = (*s / counts[j] as f64) as f32;
                }
            }
        }
        split_empty(&mut c, &mut counts, d, &mut rng);
        if p.spherical {
            c.chunks_exact_mut(d).for_each(normalize);
        }
    }
    Ok(c)
}

/// An empty cluster takes half of a large one: its centroid copied and both nudged apart, as faiss does.
fn split_empty(c: &mut [f32], counts: &mut [usize], d: usize, rng: &mut fastrand::Rng) {
    const EPS: f32 = 1.0 / 1024.0;
    let total: usize = counts.iter().sum();
    for empty in 0..counts.len() {
        if counts[empty] > 0 {
            continue;
        }
        // Pick a cluster with probability proportional to its size, as faiss does.
        let mut big = 0;
        let mut r = rng.f64() * total.saturating_sub(counts.len()).max(1) as f64;
        for (j, &n) in counts.iter().enumerate() {
            let weight = n.saturating_sub(1) as f64;
            if r < weight {
                big = j;
                break;
            }
            r -= weight;
            big = j;
        }
        for i in 0..d {
            let v = c[big * d + i];
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            c[empty * d + i] = v * (1.0 + sign * EPS);
            c[big * d + i] = v * (1.0 - sign * EPS);
        }
        counts[empty] = counts[big] / 2;
        counts[big] -= counts[empty];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_well_separated_clusters() {
        let d = 4;
        let centers = [[5.0f32, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]];
        let mut rng = fastrand::Rng::with_seed(3);
        let x: Vec<f32> = (0..300).flat_map(|i| centers[i % 3].map(|v| v + rng.f32() * 0.2 - 0.1).to_vec()).collect();
        let c = train(&x, d, &Params { k: 3, iterations: 10, spherical: false, seed: 1 }, &Cancel::default()).unwrap();
        for center in centers {
            let best = c
                .chunks_exact(d)
                .map(|r| r.iter().zip(center).map(|(a, b)| (a - b) * (a - b)).sum::<f32>())
                .fold(f32::INFINITY, f32::min);
            assert!(best < 0.05, "{c:?}");
        }
        assert!(
            train(&x[..2 * d], d, &Params { k: 3, iterations: 1, spherical: true, seed: 1 }, &Cancel::default())
                .is_err()
        );
    }
}
