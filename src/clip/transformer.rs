//! The pre-LayerNorm transformer encoder that both CLIP towers share (HF `CLIPEncoderLayer`).

use super::config::{Activation, TowerConfig};
use candle_core::{D, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear};

/// Multi-head self-attention. The q, k and v projections are fused into one matrix at load time: one
/// matmul per layer instead of three, which matters on CPU where each call has its own overhead.
struct Attention {
    qkv: Linear,
    out: Linear,
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
        let qkv = Linear::new(Tensor::cat(&[&qw, &kw, &vw], 0)?, Some(Tensor::cat(&[&qb, &kb, &vbias], 0)?));
        Ok(Attention { qkv, out: linear(d, d, vb.pp("out_proj"))?, heads: cfg.num_attention_heads, head_dim })
    }

    /// `x`: [batch, tokens, hidden]; `mask`: added to the scores, [tokens, tokens] (the text tower's causal
    /// mask) or none.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let qkv = self.qkv.forward(x)?.reshape((b, t, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out.forward(&y)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.activation {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward(&h)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, mask)?)?;
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
                        fc1: linear(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
                        fc2: linear(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
                        activation: cfg.activation,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// Rows divided by their L2 norm, computed in f32 whatever the model's dtype.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(candle_core::DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}
