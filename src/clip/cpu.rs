//! The encoder's hot paths on CPU in f32, as candle custom ops. Each of candle's generic ops is one pass
//! over memory into a fresh buffer, which on CPU costs more than the arithmetic for all but the matmuls:
//! - a dense layer is one gemm call whose output starts as the bias rows (no second pass to add it), with
//!   quick_gelu applied right after;
//! - attention reads q, k and v where the fused projection wrote them and writes each head's output in
//!   place: no transposes or copies, no [batch, heads, tokens, tokens] tensor (a block of query rows of one
//!   head at a time, in cache), and a softmax with a vectorised exp.
//!
//! Other devices and dtypes take candle's ops (transformer.rs); the results agree to float rounding.

use crate::util::simd::simd_dispatch;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether `x` takes these kernels: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => bail!("the CPU kernels take contiguous tensors"),
    }
}

/// gemm's own threading, as candle's matmul sets it.
fn parallelism() -> Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// One thread: the attention tasks are the parallelism.
const ONE: Parallelism = Parallelism::None;

/// `dst [m, n] = lhs [m, k] · rhs [k, n]`, or `+=` if `accumulate`, in f32. `dst` and `lhs` are given with
/// their row stride (their columns are contiguous), `rhs` as (pointer, row stride, column stride).
///
/// # Safety
/// Each pointer with its strides and sizes must stay inside its buffer; `dst` must not overlap the others.
#[allow(clippy::too_many_arguments)] // gemm's own call takes 19
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    let s = |stride: usize| stride as isize;
    // SAFETY: as the caller promises; gemm computes dst = 1·dst (if read) + 1·lhs·rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            s(dst_rs),
            accumulate,
            lhs,
            1,
            s(lhs_rs),
            rhs,
            s(rhs_cs),
            s(rhs_rs),
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `x [.., in] · weight_t [in, out] + bias [out]`, then quick_gelu if asked.
pub struct Dense {
    pub quick_gelu: bool,
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "clip-dense"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (contiguous(x, x_layout)?, contiguous(w, w_layout)?, contiguous(b, b_layout)?);
        let (k, n) = w_layout.shape().dims2()?;
        let mut dims = x_layout.shape().dims().to_vec();
        if dims.last() != Some(&k) || b.len() != n {
            bail!("clip-dense: input {:?}, weight [{k}, {n}], bias [{}]", dims, b.len());
        }
        let m: usize = dims[..dims.len() - 1].iter().product();
        // The bias in every row, on every thread: on one it costs the others a wait as long as a small matmul.
        let mut out = Vec::with_capacity(m * n);
        let rows_per_task = (1 << 16) / n.max(1) + 1;
        out.spare_capacity_mut()[..m * n].par_chunks_mut(rows_per_task * n.max(1)).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                for (o, &v) in row.iter_mut().zip(b) {
                    o.write(v);
                }
            }
        });
        // SAFETY: the loop above wrote all m·n elements (whole rows of n).
        unsafe { out.set_len(m * n) };
        if m > 0 && k > 0 {
            // SAFETY: row-major buffers of the sizes checked above: x [m, k], w [k, n], out [m, n].
            unsafe { matmul(m, n, k, out.as_mut_ptr(), n, x.as_ptr(), k, (w.as_ptr(), n, 1), true, parallelism()) };
        }
        if self.quick_gelu {
            out.par_chunks_mut(1 << 14).for_each(quick_gelu);
        }
        *dims.last_mut().expect("checked above") = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Multi-head self-attention over the fused projection's output: `qkv` [batch, tokens, 3·hidden] (q, k, v
/// side by side, q already scaled) → [batch, queries, hidden], heads side by side as HF's out_proj takes
/// them.
pub struct Attention {
    pub heads: usize,
    /// Each token attends only to itself and the tokens before it (the text tower).
    pub causal: bool,
    /// The outputs of the first `queries` tokens (all of them, or the class token for the last layer of
    /// the image tower), over every token's keys and values.
    pub queries: usize,
}

/// Query rows per task: their scores (rows × tokens) stay in cache between the two matmuls and the
/// softmax, and long sequences (577 tokens at 336 px) give each thread several tasks.
const BLOCK_ROWS: usize = 64;

thread_local! {
    /// One task's scores, kept by each worker thread from one call to the next (gemm overwrites them).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output buffer, shared by the tasks that each write their own rows of one head's columns.
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements (one block of rows of one head each) and the buffer outlives them.
unsafe impl Sync for Out {}
impl Out {
    fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer (offsets of its own rows and columns).
        unsafe { self.0.add(offset) }
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "clip-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout)?;
        let (b, t, d3) = layout.shape().dims3()?;
        let (d, heads) = (d3 / 3, self.heads);
        if d3 != 3 * d || heads == 0 || d % heads != 0 {
            bail!("clip-attention: [{b}, {t}, {d3}] is not q, k and v of {heads} heads");
        }
        let (hd, queries) = (d / heads, self.queries.min(t));
        let blocks = queries.div_ceil(BLOCK_ROWS).max(1);
        let per_block = queries.div_ceil(blocks).max(1); // balanced: 577 tokens → 10 blocks of ≤ 58 rows
        let mut out = vec![0f32; b * queries * d];
        let dst = Out(out.as_mut_ptr());
        (0..b * heads * blocks).into_par_iter().for_each(|task| {
            let (batch, head, block) = (task / (heads * blocks), task / blocks % heads, task % blocks);
            let first = block * per_block;
            let rows = per_block.min(queries.saturating_sub(first));
            if rows == 0 {
                return;
            }
            // Causal: no row of this block sees a token after its last row.
            let cols = if self.causal { first + rows } else { t };
            let base = batch * t * d3 + head * hd;
            let (q, k, v) = (&qkv[base + first * d3..], &qkv[base + d..], &qkv[base + 2 * d..]);
            let out_at = (batch * queries + first) * d + head * hd;
            SCORES.with_borrow_mut(|scores| {
                scores.resize(rows * cols + rows, 0.0);
                let (scores, inverse_sums) = scores.split_at_mut(rows * cols);
                // SAFETY: q is `rows` rows and k, v `cols` rows of `hd` values, `d3` apart, inside qkv; scores
                // is [rows, cols]; the output block is `rows` rows of `hd` values, `d` apart, inside out. Each
                // task runs gemm on one thread: the tasks are the parallelism.
                unsafe {
                    // scores = q · kᵀ (kᵀ's rows are 1 apart, its columns d3).
                    matmul(rows, cols, hd, scores.as_mut_ptr(), cols, q.as_ptr(), d3, (k.as_ptr(), 1, d3), false, ONE);
                    exp_rows(scores, cols, if self.causal { first + 1 } else { cols }, self.causal, inverse_sums);
                    matmul(rows, hd, cols, dst.at(out_at), d, scores.as_ptr(), cols, (v.as_ptr(), d3, 1), false, ONE);
                }
                // Softmax's division, on the output rows (hd values) rather than the scores (cols values).
                for (i, inverse) in inverse_sums.iter().enumerate() {
                    // SAFETY: row i of this task's output block, which no other task writes.
                    let row = unsafe { std::slice::from_raw_parts_mut(dst.at(out_at + i * d), hd) };
                    row.iter_mut().for_each(|x| *x *= inverse);
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, queries, d))))
    }
}

simd_dispatch! {
    /// `x · sigmoid(1.702 x)` in place: HF's quick_gelu.
    fn quick_gelu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x /= 1.0 + exp(-1.702 * *x);
        }
    }
}

simd_dispatch! {
    /// The unnormalised softmax of each row of `scores` [rows, cols] in place, e^(x - row max), and 1 / the
    /// row's sum in `inverse_sums`. Row i covers its first `live + i` entries if `causal` (the rest become 0,
    /// what adding -inf above the diagonal gives), else all of them.
    fn exp_rows(scores: &mut [f32], cols: usize, live: usize, causal: bool, inverse_sums: &mut [f32]) {
        for (i, (row, inverse)) in scores.chunks_exact_mut(cols).zip(inverse_sums.iter_mut()).enumerate() {
            let (row, masked) = row.split_at_mut(if causal { (live + i).min(cols) } else { cols });
            masked.fill(0.0);
            let max = lanes(row, f32::NEG_INFINITY, |acc, x| if x > acc { x } else { acc });
            // e^x and the sum in one pass, 16 lanes of sums so that it vectorises.
            let mut sums = [0f32; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for chunk in &mut chunks {
                for (x, sum) in chunk.iter_mut().zip(sums.iter_mut()) {
                    *x = exp(*x - max);
                    *sum += *x;
                }
            }
            let mut sum = sums.iter().sum::<f32>();
            for x in chunks.into_remainder() {
                *x = exp(*x - max);
                sum += *x;
            }
            *inverse = 1.0 / sum;
        }
    }
}

/// A reduction over 16 independent lanes, so that it vectorises (one running value would be a serial
/// chain: floating-point addition is not reassociated for us).
#[inline(always)]
fn lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = f(*a, x);
        }
    }
    rest.iter().fold(acc.into_iter().fold(init, &f), |a, &x| f(a, x))
}

/// e^x to about 1 ulp for x in [-87.3, 88] (clamped outside: ~1e-38 below, e^88 above), in operations that
/// vectorise (libm's expf is a call per value). Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then
/// Cephes' degree-6 polynomial for e^r and 2^n built in the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer, kept in the low bits
    let x = x.clamp(-87.336_54, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n + 127 in the exponent field: t's low bits hold n (two's complement), and ROUND's own bits vanish
    // from the shifted value.
    y * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::Clip;
    use candle_core::Device;

    /// The fused kernels (f32) against candle's ops, the path CUDA takes (f16 here, so that the kernels are
    /// not used; candle's CPU layer norm has no f64), on the fixture's tiny CLIP: both towers, the text
    /// tower's causal mask and the image tower's class-token-only last layer included. A wrong mask or
    /// layout would be far off; f16 rounding alone keeps the cosine above 0.9999.
    #[test]
    fn kernels_agree_with_candles_ops() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden/tiny-clip");
        let fused = Clip::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let reference = Clip::load(&dir, &Device::Cpu, DType::F16).unwrap();
        agree(&fused, &reference);
    }

    /// The same for open_clip's variants (no causal mask, last-token and mean-of-patches pooling, no
    /// pre-LayerNorm): the CLIPA-shaped fixture.
    #[test]
    fn kernels_agree_with_candles_ops_on_open_clips_variants() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip-golden");
        let (dir, tokenizer) = (root.join("clipa-tiny"), root.join("bert-tiny"));
        let load = |dtype| Clip::load_with_tokenizer(&dir, Some(&tokenizer), &Device::Cpu, dtype).unwrap();
        agree(&load(DType::F32), &load(DType::F16));
    }

    fn agree(fused: &Clip, reference: &Clip) {
        let size = fused.config.vision.image_size;
        let mut rng = fastrand::Rng::with_seed(3);
        let pixels: Vec<f32> = (0..2 * 3 * size * size).map(|_| rng.f32() * 4.0 - 2.0).collect();
        let texts = ["a photo of a cat", "", "two dogs playing in the snow, 4k"];
        let pairs = [
            (fused.embed_pixels(pixels.clone(), 2).unwrap(), reference.embed_pixels(pixels, 2).unwrap()),
            (fused.embed_texts(&texts).unwrap(), reference.embed_texts(&texts).unwrap()),
        ];
        for (got, want) in pairs {
            let (got, want) = (got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
            for (a, b) in got.iter().zip(&want) {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cosine = dot / (norm(a) * norm(b));
                assert!(cosine > 0.9999, "cosine {cosine}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        // Every value softmax and quick_gelu meet that is not clamped, in steps of about 0.001.
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.234e-4;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert!(exp(-1e4) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }
}
