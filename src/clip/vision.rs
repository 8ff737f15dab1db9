//! The image tower (HF `CLIPVisionTransformer` + `visual_projection`): patches, class token and positions,
//! pre-LayerNorm, encoder, the class token's output after post-LayerNorm, projection. open_clip's variants:
//! no pre-LayerNorm, and the mean of the patch tokens instead of the class token, normalised before or after
//! pooling.

use super::config::{VisionConfig, VisionPool};
use super::transformer::Encoder;
use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder, layer_norm, linear_no_bias};

pub struct VisionTower {
    /// The patch convolution as a matrix, [hidden, channels·patch·patch]: a stride-equals-kernel conv is a
    /// matmul over non-overlapping patches, cheaper than candle's general conv2d (im2col + copy).
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_ln: Option<LayerNorm>,
    encoder: Encoder,
    post_ln: LayerNorm,
    projection: Linear,
    cfg: VisionConfig,
}

impl VisionTower {
    /// `vb` is the model's root (`vision_model.*` and `visual_projection.*`).
    pub fn new(cfg: &VisionConfig, projection_dim: usize, vb: VarBuilder) -> Result<Self> {
        let (d, p, c) = (cfg.tower.hidden_size, cfg.patch_size, cfg.num_channels);
        let eps = cfg.tower.layer_norm_eps;
        let m = vb.pp("vision_model");
        let e = m.pp("embeddings");
        let patch_weight = e.get((d, c, p, p), "patch_embedding.weight")?.reshape((d, c * p * p))?;
        Ok(VisionTower {
            patch_weight,
            class_embedding: e.get(d, "class_embedding")?,
            position_embedding: e.get((cfg.tokens(), d), "position_embedding.weight")?,
            pre_ln: if cfg.pre_norm { Some(layer_norm(d, eps, m.pp("pre_layrnorm"))?) } else { None },
            encoder: Encoder::new(&cfg.tower, m.pp("encoder"))?,
            post_ln: layer_norm(d, eps, m.pp("post_layernorm"))?,
            projection: linear_no_bias(d, projection_dim, vb.pp("visual_projection"))?,
            cfg: cfg.clone(),
        })
    }

    /// `pixels`: [batch, 3, size, size] in the model's dtype → image embeddings [batch, projection_dim]
    /// (not normalised: HF's `image_embeds`).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let (p, g) = (self.cfg.patch_size, self.cfg.grid());
        if h != self.cfg.image_size || w != self.cfg.image_size {
            candle_core::bail!("expected {0}x{0} pixels, got {h}x{w}", self.cfg.image_size);
        }
        // [b, c, g, p, g, p] → [b, g, g, c, p, p] → [b, g·g, c·p·p]: each row is one patch in conv order.
        let patches =
            pixels.reshape((b, c, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, g * g, c * p * p))?;
        let x = patches.broadcast_matmul(&self.patch_weight.t()?)?;
        let d = self.cfg.tower.hidden_size;
        let cls = self.class_embedding.reshape((1, 1, d))?.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding)?;
        let x = match &self.pre_ln {
            Some(ln) => ln.forward(&x)?,
            None => x,
        };
        let pooled = match self.cfg.pool {
            // LayerNorm acts on each token alone: before or after taking the class token is the same.
            VisionPool::ClassToken => self.post_ln.forward(&self.encoder.forward_first_token(&x)?.squeeze(1)?)?,
            VisionPool::MeanOfPatches => {
                let x = self.encoder.forward(&x, false)?;
                // Summed in f32: 576 tokens' worth of f16 additions would lose the low bits.
                let mean =
                    |x: &Tensor| x.narrow(1, 1, g * g)?.to_dtype(candle_core::DType::F32)?.mean(1)?.to_dtype(x.dtype());
                if self.cfg.norm_after_pool {
                    self.post_ln.forward(&mean(&x)?)?
                } else {
                    mean(&self.post_ln.forward(&x)?)?
                }
            }
        };
        self.projection.forward(&pooled)
    }
}
