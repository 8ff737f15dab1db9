//! The pre-LayerNorm transformer encoder that both CLIP towers share (HF `CLIPEncoderLayer`). On CPU in f32
//! the dense layers and attention run as the fused kernels of [`super::cpu`]; elsewhere as candle's ops.

use super::config::{Activation, TowerConfig};
use super::cpu;
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder, layer_norm};

/// A linear layer (`x·Wᵀ + b`) with W stored transposed, [in, out]: gemm then reads it row by row, which
/// suits it better than HF's [out, in], and the CPU kernel adds the bias within the matmul.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    /// From HF's weight [out, in] and bias [out].
    fn new(weight: &Tensor, bias: Tensor) -> Result<Self> {
        Ok(Dense { weight_t: weight.t()?.contiguous()?, bias })
    }

    fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(&vb.get((outputs, inputs), "weight")?, vb.get(outputs, "bias")?)
    }

    /// `x` [.., in] → [.., out], then quick_gelu if asked.
    fn forward(&self, x: &Tensor, quick_gelu: bool) -> Result<Tensor> {
        if cpu::applies(x) {
            return x.contiguous()?.apply_op3_no_bwd(&self.weight_t, &self.bias, &cpu::Dense { quick_gelu });
        }
        let (inputs, outputs) = self.weight_t.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / inputs;
        let y = x.reshape((rows, inputs))?.matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
        let y = if quick_gelu { (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)? } else { y };
        if let Some(last) = dims.last_mut() {
            *last = outputs;
        }
        y.reshape(dims)
    }
}

/// Multi-head self-attention. The q, k and v projections are fused into one matrix at load time: one
/// matmul per layer instead of three, which matters on CPU where each call has its own overhead.
struct Attention {
    qkv: Dense,
    out: Dense,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TowerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((vb.get((d, d), "weight")?, vb.get(d, "bias")?))
        };
        let (qw, qb) = part("q_proj")?;
        let (kw, kb) = part("k_proj")?;
        let (vw, vbias) = part("v_proj")?;
        // HF scales q by head_dim^-0.5 after the projection; folding the scale into q's weights and bias
        // is the same arithmetic up to rounding and saves a pass over the activations.
        let head_dim = d / cfg.num_attention_heads;
        let scale = (head_dim as f64).powf(-0.5);
        let (qw, qb) = ((qw * scale)?, (qb * scale)?);
        let qkv = Dense::new(&Tensor::cat(&[&qw, &kw, &vw], 0)?, Tensor::cat(&[&qb, &kb, &vbias], 0)?)?;
        Ok(Attention { qkv, out: Dense::load(d, d, vb.pp("out_proj"))?, heads: cfg.num_attention_heads, head_dim })
    }

    /// `x`: [batch, tokens, hidden] → the first `queries` tokens' outputs, [batch, queries, hidden];
    /// `causal`: each token sees only those before it (the text tower), which candle's path applies as
    /// `mask`, added to the scores.
    fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>, queries: usize) -> Result<Tensor> {
        let qkv = self.qkv.forward(x, false)?;
        let y = if cpu::applies(&qkv) {
            qkv.apply_op1_no_bwd(&cpu::Attention { heads: self.heads, causal, queries })?
        } else {
            let (b, t, d) = x.dims3()?;
            let qkv = qkv.reshape((b, t, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.narrow(2, 0, queries)?.contiguous()?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(mask) = mask {
                scores = scores.broadcast_add(&mask.narrow(0, 0, queries)?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            probs.matmul(&v)?.transpose(1, 2)?.reshape((b, queries, d))?
        };
        self.out.forward(&y, false)
    }
}

struct Mlp {
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match self.activation {
            Activation::QuickGelu => self.fc1.forward(x, true)?,
            Activation::Gelu => self.fc1.forward(x, false)?.gelu_erf()?,
        };
        self.fc2.forward(&h, false)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    /// `x` [batch, tokens, hidden] → the first `queries` tokens' outputs, [batch, queries, hidden].
    fn forward(&self, x: &Tensor, causal: bool, mask: Option<&Tensor>, queries: usize) -> Result<Tensor> {
        let attended = self.attn.forward(&self.ln1.forward(x)?, causal, mask, queries)?;
        let x = (x.narrow(1, 0, queries)? + attended)?;
        &x + self.mlp.forward(&self.ln2.forward(&x)?)?
    }
}

pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    /// `vb` points at the tower's `encoder`.
    pub fn new(cfg: &TowerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(Layer {
                    ln1: layer_norm(d, eps, vb.pp("layer_norm1"))?,
                    attn: Attention::new(cfg, vb.pp("self_attn"))?,
                    ln2: layer_norm(d, eps, vb.pp("layer_norm2"))?,
                    mlp: Mlp {
                        fc1: Dense::load(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
                        fc2: Dense::load(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
                        activation: cfg.activation,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    /// `x`: [batch, tokens, hidden] → the same shape; `causal`: each token attends only to itself and the
    /// tokens before it.
    pub fn forward(&self, x: &Tensor, causal: bool) -> Result<Tensor> {
        self.run(x, causal, x.dim(1)?)
    }

    /// The first token's output only, [batch, 1, hidden], which is all the image tower pools: the last
    /// layer computes attention, out_proj and the MLP for that token alone (about 1/layers of the work).
    pub fn forward_first_token(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false, 1)
    }

    fn run(&self, x: &Tensor, causal: bool, last_queries: usize) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let mask = if causal && !cpu::applies(x) { Some(causal_mask(t, x.dtype(), x.device())?) } else { None };
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let queries = if i + 1 == self.layers.len() { last_queries } else { t };
            x = layer.forward(&x, causal, mask.as_ref(), queries)?;
        }
        x.narrow(1, 0, last_queries) // as asked even without layers
    }
}

/// 0 on and below the diagonal, -inf above: a token sees only the tokens before it.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}

/// Rows divided by their L2 norm, computed in f32 whatever the model's dtype.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}
