//! The dense products behind k-means, product quantisation and search: `A·Bᵀ` in f32 through gemm (the
//! crate's matmul, also under CLIP's CPU layers), and the bookkeeping that turns scores into assignments.

use gemm::Parallelism;

/// `out [n, k] = a [n, d] · b [k, d]ᵀ`: every row of `a` against every row of `b`. One thread: callers
/// parallelise over blocks of rows, which keeps each block's scores in cache.
pub fn scores(a: &[f32], b: &[f32], d: usize, out: &mut Vec<f32>) {
    assert!(d > 0 && a.len().is_multiple_of(d) && b.len().is_multiple_of(d), "rows of {d} values");
    let (n, k) = (a.len() / d, b.len() / d);
    out.clear();
    out.resize(n * k, 0.0);
    if n == 0 || k == 0 {
        return;
    }
    // SAFETY: `out` holds n·k values (row stride k), `a` n·d (row stride d); `b` read as the [d, k] matrix
    // Bᵀ, element (i, j) at b[j·d + i], all inside `b`'s k·d values. gemm writes only `out`.
    unsafe {
        gemm::gemm(
            n,
            k,
            d,
            out.as_mut_ptr(),
            1,
            k as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// A matrix view over a slice: element (i, j) at `data[i·rs + j·cs]` (a transpose is the same data with the
/// strides swapped).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }
    pub fn t(self) -> View<'a> {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `a · b` as a row-major matrix, on the rayon pool (for the few large products of OPQ training).
pub fn matmul(a: View, b: View) -> Vec<f32> {
    assert!(a.cols == b.rows && a.fits() && b.fits(), "matmul of {}x{} by {}x{}", a.rows, a.cols, b.rows, b.cols);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    // SAFETY: `out` holds m·n values (row stride n); every element gemm reads of `a` and `b` lies inside their
    // slices (`fits`: the last element's offset is below the length). gemm writes only `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
    out
}

/// Squared norms of rows of `d` values.
pub fn norms(rows: &[f32], d: usize) -> Vec<f32> {
    rows.chunks_exact(d).map(|r| r.iter().map(|x| x * x).sum()).collect()
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scales a row to unit length (a zero row stays zero).
pub fn normalize(row: &mut [f32]) {
    let n = dot(row, row).sqrt();
    if n > 0.0 {
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// Rows of `a` per block and rows of `b` per chunk in [`assign`]: a block's scores (1024 × 256 f32, 1 MB) stay
/// in one thread's cache and in one buffer that thread reuses, whatever the number of centroids.
const BLOCK_ROWS: usize = 256;
const CHUNK_COLS: usize = 1024;

thread_local! {
    /// [`assign`]'s scores: allocated once a thread, not once a block (a fresh megabyte a block cost more in
    /// page faults than the products themselves).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// For each row of `a`, the row of `b` nearest to it: the largest inner product, or (with `l2`) the
/// smallest squared distance `|a|² − 2·a·b + |b|²`, ranked as `a·b − |b|²/2` (`b_norms` from [`norms`]), as
/// faiss's exhaustive search does it: the products by gemm for a block of rows and a chunk of `b` at a time,
/// each row's best kept across chunks (the first of equals, as a plain loop finds it). Blocks run on the rayon
/// pool; memory is one block's scores a thread.
pub fn assign(a: &[f32], b: &[f32], d: usize, l2: Option<&[f32]>) -> Vec<u32> {
    use rayon::prelude::*;
    let (n, k) = (a.len() / d, b.len() / d);
    let offsets: Vec<f32> = match l2 {
        Some(norms) => norms.iter().map(|v| 0.5 * v).collect(),
        None => vec![0.0; k],
    };
    let mut labels = vec![0u32; n];
    labels.par_chunks_mut(BLOCK_ROWS).zip(a.par_chunks(BLOCK_ROWS * d)).for_each(|(at, block)| {
        let mut best = vec![f32::NEG_INFINITY; at.len()];
        SCORES.with_borrow_mut(|s| {
            for (c, chunk) in b.chunks(CHUNK_COLS * d).enumerate() {
                // Centroids × rows: a row's scores lie down a column, so that the search for each row's best
                // runs across rows, in SIMD lanes, with nothing to merge at the end of a row.
                scores(chunk, block, d, s);
                let first = c * CHUNK_COLS;
                best_down_columns(s, &offsets[first..first + chunk.len() / d], first as u32, &mut best, at);
            }
        });
    });
    labels
}

crate::util::simd::simd_dispatch! {
    /// `s` holds a row per centroid (`first`, `first + 1`, …) and a column per vector: where a centroid's score
    /// less its offset beats a vector's `best`, it becomes its best and `at`.
    fn best_down_columns(s: &[f32], offsets: &[f32], first: u32, best: &mut [f32], at: &mut [u32]) {
        for (j, (row, &offset)) in s.chunks_exact(best.len()).zip(offsets).enumerate() {
            let j = first + j as u32;
            for ((v, best), at) in row.iter().zip(best.iter_mut()).zip(at.iter_mut()) {
                let v = v - offset;
                let better = v > *best;
                *best = if better { v } else { *best };
                *at = if better { j } else { *at };
            }
        }
    }
}

/// The `k` best (score, id) pairs seen, best first once [`TopK::sorted`] is called.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    /// A min-heap on score: the root is the worst kept.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Score, i64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f32);
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k, heap: std::collections::BinaryHeap::with_capacity(k + 1) }
    }

    /// The score a candidate must beat to enter.
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |r| r.0.0.0)
        }
    }

    pub fn push(&mut self, score: f32, id: i64) {
        if self.k == 0 || score.is_nan() {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse((Score(score), id)));
        } else if score > self.threshold() {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse((Score(score), id)));
        }
    }

    /// (id, score), best first; ties by smaller id.
    pub fn sorted(self) -> Vec<(i64, f32)> {
        let mut v: Vec<(i64, f32)> = self.heap.into_iter().map(|r| (r.0.1, r.0.0.0)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_assignments_match_the_plain_loops() {
        let d = 5;
        let a: Vec<f32> = (0..7 * d).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..3 * d).map(|i| ((i * 17 % 7) as f32 - 3.0) / 2.0).collect();
        let mut s = Vec::new();
        scores(&a, &b, d, &mut s);
        for i in 0..7 {
            for j in 0..3 {
                let want = dot(&a[i * d..(i + 1) * d], &b[j * d..(j + 1) * d]);
                assert!((s[i * 3 + j] - want).abs() < 1e-4);
            }
        }
        let nb = norms(&b, d);
        let near = assign(&a, &b, d, Some(&nb));
        for (i, &j) in near.iter().enumerate() {
            let dist = |j: usize| -> f32 {
                a[i * d..(i + 1) * d].iter().zip(&b[j * d..(j + 1) * d]).map(|(x, y)| (x - y) * (x - y)).sum()
            };
            assert!((0..3).all(|o| dist(j as usize) <= dist(o) + 1e-4));
        }
        let p = matmul(View::rows(&a, 7, d), View::rows(&b, 3, d).t());
        assert!(p.iter().zip(&s).all(|(x, y)| (x - y).abs() < 1e-4));
        // aᵀ·a: a 5×5 product over the 7 rows.
        let g = matmul(View::rows(&a, 7, d).t(), View::rows(&a, 7, d));
        let want: f32 = (0..7).map(|r| a[r * d + 1] * a[r * d + 3]).sum();
        assert!((g[d + 3] - want).abs() < 1e-4 && (g[3 * d + 1] - want).abs() < 1e-4);
        // Many rows and centroids: several row blocks and centroid chunks, lanes and a tail; the first of
        // equal centroids wins, as in a plain loop.
        let (d, n, k) = (3, 600, 2 * CHUNK_COLS + 37);
        let mut rng = fastrand::Rng::with_seed(5);
        let a: Vec<f32> = (0..n * d).map(|_| rng.f32() - 0.5).collect();
        let mut b: Vec<f32> = (0..k * d).map(|_| rng.f32() - 0.5).collect();
        b.copy_within(0..d, (k - 1) * d);
        let nb = norms(&b, d);
        for l2 in [true, false] {
            let got = assign(&a, &b, d, l2.then_some(&nb[..]));
            for (i, row) in a.chunks_exact(d).enumerate() {
                let rank = |j: usize| {
                    let p = dot(row, &b[j * d..(j + 1) * d]);
                    if l2 { p - 0.5 * nb[j] } else { p }
                };
                let want = (0..k).fold(0, |best, j| if rank(j) > rank(best) { j } else { best });
                assert!((rank(got[i] as usize) - rank(want)).abs() < 1e-5 && got[i] != k as u32 - 1, "row {i}");
            }
        }
        let mut top = TopK::new(2);
        for (id, score) in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.9)] {
            top.push(score, id);
        }
        assert_eq!(top.sorted(), vec![(2, 0.9), (4, 0.9)]);
    }
}
