//! OPQ, the rotation autofaiss puts before IVF-PQ (`OPQ{M}_{d},IVF…,PQ{M}x8`): faiss's `OPQMatrix`. An
//! orthogonal `d × d` matrix `A` turns each vector `x` into `A·x` before the index sees it, chosen so that the
//! rotated vectors spread their variance evenly over the PQ's `M` subspaces and quantise with less error.
//! A rotation keeps inner products, so the IVF-PQ behind it ranks rotated vectors as the originals.
//!
//! Training alternates, as faiss's `OPQMatrix::train` (faiss/VectorTransform.cpp): on the centred sample,
//! rotate, train a PQ on the rotated vectors (from the last round's codebooks), encode and decode them, then
//! the orthogonal Procrustes step: the `A` that best maps the sample onto its reconstructions `Y`,
//! `argmin ‖X·Aᵀ − Y‖ = polar factor of Yᵀ·X` (`U·Vᵀ` of its SVD). faiss gets it from LAPACK's SVD; here it is
//! the Newton–Schulz iteration `Z ← Z·(3I − ZᵀZ)/2`, which converges to that polar factor from `Yᵀ·X` scaled
//! below unit norm, in gemm products only (a tiny pull towards the last rotation keeps the product
//! invertible when the data has fewer directions than dimensions).
//!
//! On disk (faiss/impl/index_write.cpp) the rotation is a generic `LinearTransform`, `LTra`: `have_bias`
//! (one byte, 0), `A` as a vector (`d_out · d_in` values, row-major), the empty bias vector, then `d_in`,
//! `d_out` (i32) and `is_trained` (one byte); an `IndexPreTransform` (`IxPT`: the common header, the chain
//! length as i32, each transform) holds it and then the index.

use super::faiss::{Cursor, Out};
use super::linalg::{View, matmul};
use super::pq::Pq;
use crate::kind::Cancel;
use anyhow::{Context, bail};

pub const FOURCC: &[u8; 4] = b"LTra";
pub const PRE_TRANSFORM: &[u8; 4] = b"IxPT";
/// Outer rounds (faiss's `niter` is 50; the objective changes little after 20 on CLIP-like data).
pub const ITERATIONS: usize = 20;
/// PQ k-means rounds in the first outer round and in each later one (faiss: `niter_pq_0`, `niter_pq`).
const PQ_ITERATIONS_FIRST: usize = super::pq::ITERATIONS;
const PQ_ITERATIONS: usize = 4;
/// Sample rows used, faiss's `max_train_points`: what PQ trains on.
const MAX_TRAIN: usize = super::pq::KSUB * super::pq::MAX_POINTS_PER_CENTROID;

#[derive(Debug, Clone, PartialEq)]
pub struct Opq {
    pub d_in: usize,
    pub d_out: usize,
    /// `d_out × d_in`, row-major: the transformed vector is `A·x`. Its rows are orthonormal when
    /// `d_out ≤ d_in` (a rotation, or one that drops dimensions), its columns when `d_out > d_in` (the vector
    /// padded with zeros, then rotated: inner products kept).
    pub a: Vec<f32>,
}

impl Opq {
    /// Trains the transform for a PQ of `m` subspaces of `d_out` dimensions on the rows of `sample`.
    pub fn train(sample: &[f32], d_in: usize, d_out: usize, m: usize, cancel: &Cancel) -> anyhow::Result<Opq> {
        Opq::train_rounds(sample, d_in, d_out, m, ITERATIONS, cancel)
    }

    pub fn train_rounds(
        sample: &[f32],
        d_in: usize,
        d_out: usize,
        m: usize,
        rounds: usize,
        cancel: &Cancel,
    ) -> anyhow::Result<Opq> {
        anyhow::ensure!(m > 0 && d_out.is_multiple_of(m), "OPQ{m}_{d_out} needs an output dimension divisible by {m}");
        // Vectors padded with zeros to d when d_out > d_in, as faiss does.
        let d = d_in.max(d_out);
        let n = (sample.len() / d_in).min(MAX_TRAIN);
        // Centred, as faiss trains it (the transform itself has no bias).
        let mut mean = vec![0f64; d_in];
        for row in sample[..n * d_in].chunks_exact(d_in) {
            mean.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
        }
        mean.iter_mut().for_each(|s| *s /= n as f64);
        let mut x = vec![0f32; n * d];
        for (row, out) in sample[..n * d_in].chunks_exact(d_in).zip(x.chunks_exact_mut(d)) {
            out.iter_mut().zip(row.iter().zip(&mean)).for_each(|(o, (v, s))| *o = v - *s as f32);
        }
        // The first d_out rows of a random d × d rotation.
        let mut r = random_rotation(d, 1234).context("OPQ's random start did not converge")?;
        r.truncate(d_out * d);
        let mut pq: Option<Pq> = None;
        for round in 0..rounds {
            cancel.check()?;
            let rotated = matmul(View::rows(&x, n, d), View::rows(&r, d_out, d).t());
            let iterations = if round == 0 { PQ_ITERATIONS_FIRST } else { PQ_ITERATIONS };
            let trained = Pq::train_from(&rotated, d_out, m, 4321, iterations, pq.as_ref(), cancel)?;
            let y = trained.decode_all(&trained.encode(&rotated));
            drop(rotated);
            let mut c = matmul(View::rows(&y, n, d_out).t(), View::rows(&x, n, d));
            // The pull towards the last transform: keeps `c` of full rank (padding, data of fewer directions than
            // dimensions), moving the optimum by ~1e-4 of its scale.
            let eps = 1e-4 * frobenius(&c) / (d_out as f32).sqrt();
            c.iter_mut().zip(&r).for_each(|(v, p)| *v += eps * p);
            r = polar(&c, d_out, d).context("OPQ's rotation did not converge")?;
            pq = Some(trained);
        }
        let a = r.chunks_exact(d).flat_map(|row| row[..d_in].iter().copied()).collect();
        Ok(Opq { d_in, d_out, a })
    }

    /// The transformed rows `x·Aᵀ` (`d_out` values each).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.d_in;
        if n <= 16 {
            let mut out = Vec::new();
            super::linalg::scores(x, &self.a, self.d_in, &mut out);
            return out;
        }
        matmul(View::rows(x, n, self.d_in), View::rows(&self.a, self.d_out, self.d_in).t())
    }

    pub fn write_to<W: std::io::Write>(&self, out: &mut Out<W>) -> std::io::Result<()> {
        out.bytes(FOURCC)?;
        out.u8(0)?; // have_bias
        out.f32_vec(&self.a)?;
        out.u64(0)?; // the bias: empty
        out.i32(self.d_in as i32)?;
        out.i32(self.d_out as i32)?;
        out.u8(1) // is_trained
    }

    /// Reads what follows `LTra`: a transform without bias, as dsmake writes.
    pub fn read_body(c: &mut Cursor) -> anyhow::Result<Opq> {
        let have_bias = c.u8()?;
        let a = c.f32_vec()?;
        let b = c.f32_vec()?;
        let (d_in, d_out) = (c.i32()?, c.i32()?);
        c.u8()?;
        if have_bias != 0 && b.iter().any(|v| *v != 0.0) {
            bail!("a linear transform with a bias is not one dsmake writes");
        }
        let (Ok(d_in), Ok(d_out)) = (usize::try_from(d_in), usize::try_from(d_out)) else {
            bail!("a linear transform of negative dimension");
        };
        if d_in == 0 || a.len() != d_in * d_out {
            bail!("a linear transform {d_in} → {d_out} holds {} values", a.len());
        }
        Ok(Opq { d_in, d_out, a })
    }
}

fn frobenius(m: &[f32]) -> f32 {
    m.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// The polar factor of the `rows × cols` matrix `m` (`rows ≤ cols`; `U·Vᵀ` of its SVD: orthonormal rows) by
/// Newton–Schulz, `Z ← (3I − Z·Zᵀ)·Z / 2`, which converges for a full-rank matrix scaled to singular values in
/// (0, √3): here below 1, by its Frobenius norm.
fn polar(m: &[f32], rows: usize, cols: usize) -> anyhow::Result<Vec<f32>> {
    let norm = frobenius(m);
    anyhow::ensure!(norm > 0.0 && norm.is_finite(), "the matrix is zero or not finite");
    let mut z: Vec<f32> = m.iter().map(|v| v / norm).collect();
    let mut settled = 0;
    for _ in 0..200 {
        let mut g = matmul(View::rows(&z, rows, cols), View::rows(&z, rows, cols).t());
        for i in 0..rows {
            g[i * rows + i] -= 1.0;
        }
        // Two more steps once orthogonal to f32 precision: each squares the error.
        if frobenius(&g) < 1e-3 {
            settled += 1;
            if settled > 2 {
                return Ok(z);
            }
        }
        // z ← (1.5·I − 0.5·z·zᵀ)·z = (I − 0.5·(z·zᵀ − I))·z.
        g.iter_mut().for_each(|v| *v *= -0.5);
        for i in 0..rows {
            g[i * rows + i] += 1.0;
        }
        z = matmul(View::rows(&g, rows, rows), View::rows(&z, rows, cols));
    }
    bail!("Newton–Schulz did not reach an orthogonal matrix in 200 steps")
}

/// A random `d × d` rotation: the polar factor of a Gaussian matrix (faiss takes the Q of its QR; both are
/// uniformly distributed rotations), in gemm products rather than a scalar O(d³) Gram–Schmidt.
fn random_rotation(d: usize, seed: u64) -> anyhow::Result<Vec<f32>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let g: Vec<f32> = (0..d * d)
        .map(|_| {
            // Box–Muller.
            let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    polar(&g, d, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest deviation of `AᵀA` (or `AAᵀ` when `A` is wide) from the identity.
    fn orthogonality_error(o: &Opq) -> f32 {
        let v = View::rows(&o.a, o.d_out, o.d_in);
        let (g, k) = if o.d_out > o.d_in { (matmul(v.t(), v), o.d_in) } else { (matmul(v, v.t()), o.d_out) };
        (0..k * k).map(|i| (g[i] - if i % (k + 1) == 0 { 1.0 } else { 0.0 }).abs()).fold(0.0, f32::max)
    }

    /// Data whose variance sits in a few coordinates: plain PQ wastes most subspaces on noise; OPQ's rotation
    /// spreads it and quantises with less error, and stays a rotation (inner products kept).
    #[test]
    fn the_rotation_is_orthogonal_and_lowers_the_quantisation_error() {
        let (d, m, n) = (32, 8, 4000);
        let mut rng = fastrand::Rng::with_seed(3);
        let x: Vec<f32> = (0..n * d)
            .map(|i| {
                let scale = if i % d < 4 { 1.0 } else { 0.02 };
                (rng.f32() - 0.5) * scale
            })
            .collect();
        let cancel = Cancel::default();
        let opq = Opq::train_rounds(&x, d, d, m, 6, &cancel).unwrap();
        assert!(orthogonality_error(&opq) < 1e-4, "{}", orthogonality_error(&opq));
        let error = |rows: &[f32]| {
            let pq = Pq::train(rows, d, m, 1, &cancel).unwrap();
            let back = pq.decode_all(&pq.encode(rows));
            rows.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
        };
        let rotated = opq.apply(&x);
        let (plain, with_opq) = (error(&x), error(&rotated));
        assert!(with_opq < 0.7 * plain, "OPQ {with_opq} vs plain {plain}");
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&x[..d], &x[d..2 * d]) - dot(&rotated[..d], &rotated[d..2 * d])).abs() < 1e-5);
        let one = opq.apply(&x[..d]);
        assert!(one.iter().zip(&rotated[..d]).all(|(a, b)| (a - b).abs() < 1e-5));

        let mut bytes = Vec::new();
        opq.write_to(&mut Out(&mut bytes)).unwrap();
        assert_eq!(bytes.len(), 4 + 1 + 8 + 4 * d * d + 8 + 4 + 4 + 1);
        let mut c = Cursor::new(&bytes);
        assert_eq!(&c.fourcc().unwrap(), FOURCC);
        assert_eq!(Opq::read_body(&mut c).unwrap(), opq);

        // A singular input (all variance in one direction) still gives a rotation.
        let flat: Vec<f32> = (0..n * d).map(|i| if i % d == 0 { rng.f32() } else { 0.0 }).collect();
        let opq = Opq::train_rounds(&flat, d, d, m, 2, &cancel).unwrap();
        assert!(orthogonality_error(&opq) < 1e-4);
        // autofaiss's shapes: fewer output dimensions (orthonormal rows), more (padding: inner products kept).
        for d_out in [16, 48] {
            let opq = Opq::train_rounds(&x, d, d_out, m, 2, &cancel).unwrap();
            assert_eq!((opq.a.len(), opq.apply(&x[..d]).len()), (d * d_out, d_out));
            assert!(orthogonality_error(&opq) < 1e-4, "{d_out}: {}", orthogonality_error(&opq));
        }
        let wide = Opq::train_rounds(&x, d, 48, m, 2, &cancel).unwrap().apply(&x[..2 * d]);
        assert!((dot(&x[..d], &x[d..2 * d]) - dot(&wide[..48], &wide[48..])).abs() < 1e-5);
    }
}
