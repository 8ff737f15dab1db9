//! The text tower (HF `CLIPTextTransformer` + `text_projection`): token and position embeddings, a causal
//! encoder, final LayerNorm, the end token's output, projection. open_clip's variants: no causal mask, and
//! the last position's output instead of the end token's.

use super::config::{TextConfig, TextPool};
use super::transformer::Encoder;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear_no_bias};

pub struct TextTower {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_ln: LayerNorm,
    projection: Linear,
    pool: TextPool,
    causal: bool,
}

impl TextTower {
    pub fn new(cfg: &TextConfig, projection_dim: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.tower.hidden_size;
        let m = vb.pp("text_model");
        let e = m.pp("embeddings");
        Ok(TextTower {
            token_embedding: embedding(cfg.vocab_size, d, e.pp("token_embedding"))?,
            position_embedding: e.get((cfg.max_position_embeddings, d), "position_embedding.weight")?,
            encoder: Encoder::new(&cfg.tower, m.pp("encoder"))?,
            final_ln: layer_norm(d, cfg.tower.layer_norm_eps, m.pp("final_layer_norm"))?,
            projection: linear_no_bias(d, projection_dim, vb.pp("text_projection"))?,
            pool: cfg.pool,
            causal: cfg.causal,
        })
    }

    /// `ids`: one row of token ids per text, all the same length (77, zero padded) → text embeddings
    /// [batch, projection_dim] (not normalised: HF's `text_embeds`).
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        if b == 0 || t == 0 {
            candle_core::bail!("no tokens to embed");
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        if flat.len() != b * t {
            candle_core::bail!("token rows differ in length");
        }
        let input = Tensor::from_vec(flat, (b, t), device)?;
        let x = self.token_embedding.forward(&input)?.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        let x = self.encoder.forward(&x, self.causal)?;
        let x = self.final_ln.forward(&x)?;
        // The end token has the largest id (49407), so its position is the argmax: this is what HF does for
        // the original configs (eos_token_id = 2) and equals its first-eos rule for the new ones, since
        // open_clip pads with 0 and truncation keeps the end token.
        let at: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(row, r)| {
                let pos = match self.pool {
                    TextPool::Argmax => {
                        r.iter().enumerate().fold((0, 0), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
                    }
                    TextPool::Last => t - 1,
                };
                (row * t + pos) as u32
            })
            .collect();
        let d = x.dim(2)?;
        let pooled = x.reshape((b * t, d))?.index_select(&Tensor::new(at, device)?, 0)?;
        self.projection.forward(&pooled)
    }
}
