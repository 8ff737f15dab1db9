//! The model's geometry, read from a Hugging Face `config.json` (`CLIPConfig`). Missing fields take
//! transformers' defaults, as `CLIPConfig.from_pretrained` would: the original OpenAI configs leave many out.
//! open_clip's own configs ([`super::open_clip`]) map onto the same structure, with the variations its
//! models use (pooling, no pre-LayerNorm, no causal mask), which HF's CLIP always has one way.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: what OpenAI's CLIP was trained with.
    QuickGelu,
    /// The exact (erf) GELU: open_clip's LAION models.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => bail!("hidden_act `{other}` is not supported (expected \"quick_gelu\" or \"gelu\")"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TowerConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

/// Which token's output the text tower projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPool {
    /// The position of the largest id: the end token of CLIP's BPE (49407), which is what HF's CLIP does.
    Argmax,
    /// The last position of the context, padding or not (open_clip's `pool_type = "last"`: CLIPA).
    Last,
}

#[derive(Debug, Clone)]
pub struct TextConfig {
    pub tower: TowerConfig,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub pool: TextPool,
    /// Each token attends only to those before it (false: open_clip's `no_causal_mask`).
    pub causal: bool,
}

/// What the image tower projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionPool {
    /// The class token's output.
    ClassToken,
    /// The mean of the patch tokens' outputs, the class token left out (open_clip's `pool_type = "avg"`).
    MeanOfPatches,
}

#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub tower: TowerConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// A LayerNorm before the encoder (false: open_clip's `no_ln_pre`).
    pub pre_norm: bool,
    pub pool: VisionPool,
    /// The final LayerNorm applies to the pooled vector, not to each token before pooling
    /// (open_clip's `final_ln_after_pool`; the same thing for the class token).
    pub norm_after_pool: bool,
}

impl VisionConfig {
    /// Patches per side: 336 / 14 = 24 for ViT-L/14-336.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens the encoder sees: the class token and one per patch (577 for ViT-L/14-336).
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// Width of the shared embedding space (768 for ViT-L/14).
    pub projection_dim: usize,
}

// The raw JSON, with transformers' defaults (CLIPTextConfig / CLIPVisionConfig / CLIPConfig).
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default = "d_projection")]
    projection_dim: usize,
    #[serde(default)]
    text_config: Option<RawText>,
    #[serde(default)]
    vision_config: Option<RawVision>,
}

#[derive(Deserialize)]
struct RawText {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_text_hidden")]
    hidden_size: usize,
    #[serde(default = "d_text_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_positions")]
    max_position_embeddings: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
}

#[derive(Deserialize)]
struct RawVision {
    #[serde(default = "d_vision_hidden")]
    hidden_size: usize,
    #[serde(default = "d_vision_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_vision_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_image_size")]
    image_size: usize,
    #[serde(default = "d_patch")]
    patch_size: usize,
    #[serde(default = "d_channels")]
    num_channels: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
}

fn d_projection() -> usize {
    512
}
fn d_vocab() -> usize {
    49408
}
fn d_text_hidden() -> usize {
    512
}
fn d_text_intermediate() -> usize {
    2048
}
fn d_layers() -> usize {
    12
}
fn d_text_heads() -> usize {
    8
}
fn d_positions() -> usize {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_vision_hidden() -> usize {
    768
}
fn d_vision_intermediate() -> usize {
    3072
}
fn d_vision_heads() -> usize {
    12
}
fn d_image_size() -> usize {
    224
}
fn d_patch() -> usize {
    32
}
fn d_channels() -> usize {
    3
}

pub(crate) fn check_geometry(vision: &VisionConfig, what: &str) -> anyhow::Result<()> {
    if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
        bail!("{what}: image_size {} is not a multiple of patch_size {}", vision.image_size, vision.patch_size);
    }
    Ok(())
}

pub(crate) fn tower(
    what: &str,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    eps: f64,
    act: &str,
) -> anyhow::Result<TowerConfig> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        bail!("{what}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
    }
    let activation = Activation::parse(act).with_context(|| what.to_string())?;
    Ok(TowerConfig {
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        layer_norm_eps: eps,
        activation,
    })
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("{} is not a CLIP config", path.display()))
    }

    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = serde_json::from_str(json)?;
        let t = raw.text_config.unwrap_or_else(|| serde_json::from_str("{}").expect("defaults"));
        let v = raw.vision_config.unwrap_or_else(|| serde_json::from_str("{}").expect("defaults"));
        let text = TextConfig {
            tower: tower(
                "text_config",
                t.hidden_size,
                t.intermediate_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.layer_norm_eps,
                &t.hidden_act,
            )?,
            vocab_size: t.vocab_size,
            max_position_embeddings: t.max_position_embeddings,
            pool: TextPool::Argmax,
            causal: true,
        };
        let vision = VisionConfig {
            tower: tower(
                "vision_config",
                v.hidden_size,
                v.intermediate_size,
                v.num_hidden_layers,
                v.num_attention_heads,
                v.layer_norm_eps,
                &v.hidden_act,
            )?,
            image_size: v.image_size,
            patch_size: v.patch_size,
            num_channels: v.num_channels,
            pre_norm: true,
            pool: VisionPool::ClassToken,
            norm_after_pool: false,
        };
        check_geometry(&vision, "vision_config")?;
        if vision.num_channels != 3 {
            bail!("vision_config: num_channels {} is not supported (RGB models only)", v.num_channels);
        }
        Ok(ClipConfig { text, vision, projection_dim: raw.projection_dim })
    }

    /// ViT-L/14 at 336 px (OpenAI's `ViT-L/14@336px`), for benchmarks with random weights.
    pub fn vit_l_14_336() -> Self {
        let tw = |h, i, l, n| TowerConfig {
            hidden_size: h,
            intermediate_size: i,
            num_hidden_layers: l,
            num_attention_heads: n,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        };
        ClipConfig {
            text: TextConfig {
                tower: tw(768, 3072, 12, 12),
                vocab_size: 49408,
                max_position_embeddings: 77,
                pool: TextPool::Argmax,
                causal: true,
            },
            vision: VisionConfig {
                tower: tw(1024, 4096, 24, 16),
                image_size: 336,
                patch_size: 14,
                num_channels: 3,
                pre_norm: true,
                pool: VisionPool::ClassToken,
                norm_after_pool: false,
            },
            projection_dim: 768,
        }
    }

    /// ViT-B/32 at 224 px (OpenAI's `ViT-B/32`), for benchmarks with random weights.
    pub fn vit_b_32() -> Self {
        let mut c = Self::vit_l_14_336();
        c.text.tower =
            TowerConfig { hidden_size: 512, intermediate_size: 2048, num_attention_heads: 8, ..c.text.tower };
        c.vision = VisionConfig {
            tower: TowerConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                ..c.vision.tower
            },
            image_size: 224,
            patch_size: 32,
            ..c.vision
        };
        c.projection_dim = 512;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_bad_geometry_is_refused() {
        let c = ClipConfig::from_json(r#"{"vision_config": {"image_size": 336, "patch_size": 14}}"#).unwrap();
        assert_eq!(c.vision.tokens(), 577);
        assert_eq!(c.text.tower.activation, Activation::QuickGelu);
        assert_eq!(c.projection_dim, 512);
        let e = ClipConfig::from_json(r#"{"vision_config": {"image_size": 300, "patch_size": 14}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("multiple of patch_size"));
        let e = ClipConfig::from_json(r#"{"text_config": {"hidden_act": "relu"}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("hidden_act `relu`"));
    }
}
