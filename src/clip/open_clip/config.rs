//! `open_clip_config.json` (what open_clip's `push_to_hub` writes: `model_cfg` and `preprocess_cfg`) → the
//! model's geometry, its preprocessing and its tokenizer. open_clip has many architectures; the ViT CLIPs
//! with its native towers are read here, and every setting that would change the computation in a way this
//! implementation does not follow (timm or HF towers, layer scale, attentional pooling, ...) is refused by
//! name rather than ignored.

use crate::clip::config::{
    Activation, ClipConfig, TextConfig, TextPool, VisionConfig, VisionPool, check_geometry, tower,
};
use crate::clip::preprocess::{Filter, PreprocessConfig, ResizeMode};
use anyhow::{Context, bail};
use serde_json::{Map, Value};
use std::path::Path;

/// How captions become token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSpec {
    /// OpenAI's BPE (open_clip's `SimpleTokenizer`): a CLIP `tokenizer.json`.
    OpenAiBpe,
    /// A Hugging Face tokenizer, `hf_tokenizer_name` (its own Hub repository, e.g. `bert-base-uncased`),
    /// wrapped as open_clip's `HFTokenizer` wraps it.
    HuggingFace { name: String, strip_sep_token: bool, lowercase: bool },
}

#[derive(Debug, Clone)]
pub struct OpenClipConfig {
    pub model: ClipConfig,
    pub preprocess: PreprocessConfig,
    pub tokenizer: TokenizerSpec,
    /// `custom_text`: the text tower's tensors are under `text.` (open_clip's `CustomTextCLIP`).
    pub custom_text: bool,
}

impl OpenClipConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text)
            .with_context(|| format!("{} is not an open_clip model config we can run", path.display()))
    }

    pub fn from_json(json: &str) -> anyhow::Result<Self> {
        let root: Map<String, Value> = serde_json::from_str(json)?;
        let mut model = Section::new("model_cfg", root.get("model_cfg").context("it has no `model_cfg`")?)?;
        let empty = Value::Object(Map::new());
        let mut pre = Section::new("preprocess_cfg", root.get("preprocess_cfg").unwrap_or(&empty))?;

        let embed_dim = model.usize("embed_dim")?.context("model_cfg has no `embed_dim`")?;
        let quick_gelu = model.bool("quick_gelu")?.unwrap_or(false);
        let custom_text = model.bool("custom_text")?.unwrap_or(false);
        // Training-only or scoring-only settings: the embeddings do not depend on them.
        for key in ["cast_dtype", "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"] {
            model.ignore(key);
        }
        let activation = if quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
        let mut v = Section::new("vision_cfg", model.take("vision_cfg").context("model_cfg has no `vision_cfg`")?)?;
        let mut t = Section::new("text_cfg", model.take("text_cfg").context("model_cfg has no `text_cfg`")?)?;
        model.finish()?;

        let vision = vision(&mut v, activation)?;
        let (text, tokenizer) = text(&mut t, activation)?;
        v.finish()?;
        t.finish()?;

        let preprocess = preprocess(&mut pre, vision.image_size)?;
        pre.finish()?;
        Ok(OpenClipConfig {
            model: ClipConfig { text, vision, projection_dim: embed_dim },
            preprocess,
            tokenizer,
            custom_text,
        })
    }
}

fn vision(v: &mut Section, activation: Activation) -> anyhow::Result<VisionConfig> {
    let width = v.usize("width")?.unwrap_or(768);
    let layers = match v.take("layers") {
        None => 12,
        Some(Value::Number(n)) => n.as_u64().context("vision_cfg.layers is not a count")? as usize,
        Some(_) => bail!("vision_cfg.layers is a list: ResNet towers are not supported (ViT only)"),
    };
    let head_width = v.usize("head_width")?.unwrap_or(64);
    let mlp_ratio = v.f64("mlp_ratio")?.unwrap_or(4.0);
    let patch_size = v.usize("patch_size")?.unwrap_or(16);
    let image_size = match v.take("image_size") {
        None => 224,
        Some(Value::Number(n)) => n.as_u64().context("vision_cfg.image_size is not a size")? as usize,
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => {
            a[0].as_u64().context("vision_cfg.image_size is not a size")? as usize
        }
        Some(other) => bail!("vision_cfg.image_size {other} is not square: only square inputs are supported"),
    };
    let pre_norm = !v.bool("no_ln_pre")?.unwrap_or(false);
    let pool = match v.str("pool_type")?.as_deref() {
        None | Some("tok") => VisionPool::ClassToken,
        Some("avg") => VisionPool::MeanOfPatches,
        Some(other) => bail!("vision_cfg.pool_type {other:?} is not supported (expected \"tok\" or \"avg\")"),
    };
    let norm_after_pool = v.bool("final_ln_after_pool")?.unwrap_or(false);
    let eps = v.norm_eps()?;
    v.expect_default("pos_embed_type", &["learnable"])?;
    for key in ["patch_dropout", "output_tokens", "image_seq_len"] {
        v.ignore(key);
    }
    // Meaningful only with a timm tower, which `timm_model_name` would name (and is refused below if set).
    for key in ["timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path"] {
        v.ignore(key);
    }
    v.refuse_set(&["timm_model_name", "timm_model_kwargs", "ls_init_value", "attentional_pool", "act_kwargs"])?;
    v.refuse_set(&["block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner"])?;
    v.refuse_set(&["scale_attn", "scale_fc"])?;
    v.ignore("attn_pooler_queries");
    v.ignore("attn_pooler_heads");
    if head_width == 0 || !width.is_multiple_of(head_width) {
        bail!("vision_cfg: width {width} is not a multiple of head_width {head_width}");
    }
    let vision = VisionConfig {
        tower: tower("vision_cfg", width, mlp_width(width, mlp_ratio), layers, width / head_width, eps, "gelu")
            .map(|t| crate::clip::config::TowerConfig { activation, ..t })?,
        image_size,
        patch_size,
        num_channels: 3,
        pre_norm,
        pool,
        norm_after_pool,
    };
    check_geometry(&vision, "vision_cfg")?;
    Ok(vision)
}

fn text(t: &mut Section, activation: Activation) -> anyhow::Result<(TextConfig, TokenizerSpec)> {
    let context = t.usize("context_length")?.unwrap_or(77);
    let vocab_size = t.usize("vocab_size")?.unwrap_or(49408);
    let width = t.usize("width")?.unwrap_or(512);
    let heads = t.usize("heads")?.unwrap_or(8);
    let layers = t.usize("layers")?.unwrap_or(12);
    let mlp_ratio = t.f64("mlp_ratio")?.unwrap_or(4.0);
    let causal = !t.bool("no_causal_mask")?.unwrap_or(false);
    let pool = match t.str("pool_type")?.as_deref() {
        None | Some("argmax") => TextPool::Argmax,
        Some("last") => TextPool::Last,
        Some(other) => bail!("text_cfg.pool_type {other:?} is not supported (expected \"argmax\" or \"last\")"),
    };
    let eps = t.norm_eps()?;
    t.expect_default("text_arch", &["clip"])?;
    t.expect_default("proj_type", &["linear"])?;
    t.expect_default("tokenizer_type", &[""])?;
    // open_clip's CLIP ignores these for its native text tower (no pad mask, no eos pooling, no final LN
    // after pooling) or uses them only in training.
    for key in ["pad_id", "bos_id", "eos_id", "final_ln_after_pool", "output_tokens", "tiktoken_name"] {
        t.ignore(key);
    }
    t.ignore("hf_model_pretrained");
    t.ignore("hf_proj_type");
    t.ignore("hf_pooler_type");
    t.refuse_set(&["hf_model_name", "hf_model_config", "embed_cls", "proj_bias", "ls_init_value", "act_kwargs"])?;
    t.refuse_set(&["block_type", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn"])?;
    t.refuse_set(&["scale_fc", "variable_text", "tokenizer_mode"])?;

    let no_kwargs = Value::Object(Map::new());
    let kwargs = t.take("tokenizer_kwargs");
    let mut kw = Section::new("text_cfg.tokenizer_kwargs", kwargs.unwrap_or(&no_kwargs))?;
    let tokenizer = match t.str("hf_tokenizer_name")? {
        Some(name) => {
            let strip_sep_token = kw.bool("strip_sep_token")?.unwrap_or(false);
            let lowercase = match kw.str("clean")?.as_deref() {
                None | Some("whitespace") => false,
                Some("lower") => true,
                Some(other) => bail!("tokenizer_kwargs.clean {other:?} is not supported (\"whitespace\" or \"lower\")"),
            };
            TokenizerSpec::HuggingFace { name, strip_sep_token, lowercase }
        }
        None => {
            kw.expect_default("clean", &["lower"])?;
            TokenizerSpec::OpenAiBpe
        }
    };
    kw.finish()?;
    let text = TextConfig {
        tower: tower("text_cfg", width, mlp_width(width, mlp_ratio), layers, heads, eps, "gelu")
            .map(|t| crate::clip::config::TowerConfig { activation, ..t })?,
        vocab_size,
        max_position_embeddings: context,
        pool,
        causal,
    };
    Ok((text, tokenizer))
}

fn preprocess(p: &mut Section, image_size: usize) -> anyhow::Result<PreprocessConfig> {
    use crate::clip::preprocess::{OPENAI_MEAN, OPENAI_STD};
    if let Some(size) = p.take("size") {
        let ok = match size {
            Value::Number(n) => n.as_u64() == Some(image_size as u64),
            Value::Array(a) => a.iter().all(|s| s.as_u64() == Some(image_size as u64)),
            _ => false,
        };
        if !ok {
            bail!("preprocess_cfg.size {size} differs from the model's image_size {image_size}");
        }
    }
    p.expect_default("mode", &["RGB"])?;
    let mean = p.triple("mean")?.unwrap_or(OPENAI_MEAN);
    let std = p.triple("std")?.unwrap_or(OPENAI_STD);
    if std.iter().any(|s| *s <= 0.0) {
        bail!("preprocess_cfg.std {std:?} has a value that is not positive");
    }
    let filter = match p.str("interpolation")?.as_deref() {
        // open_clip's eval transform takes "random" as bicubic.
        None | Some("bicubic") | Some("random") => Filter::Bicubic,
        Some("bilinear") => Filter::Bilinear,
        Some(other) => bail!("preprocess_cfg.interpolation {other:?} is not supported (bicubic or bilinear)"),
    };
    let resize = match p.str("resize_mode")?.as_deref() {
        None | Some("shortest") => ResizeMode::ShortestThenCrop,
        Some("squash") => ResizeMode::Squash,
        Some("longest") => ResizeMode::LongestThenPad,
        Some(other) => bail!("preprocess_cfg.resize_mode {other:?} is not supported (shortest, squash or longest)"),
    };
    let fill = match p.take("fill_color") {
        None => 0,
        Some(Value::Number(n)) => {
            n.as_u64().filter(|v| *v <= 255).context("preprocess_cfg.fill_color is not 0–255")? as u8
        }
        Some(other) => bail!("preprocess_cfg.fill_color {other} is not supported (one 0–255 level)"),
    };
    Ok(PreprocessConfig { size: image_size as u32, mean, std, filter, resize, fill, alpha_before_convert: true })
}

/// open_clip's MLP width: `int(width * mlp_ratio)`.
fn mlp_width(width: usize, ratio: f64) -> usize {
    (width as f64 * ratio) as usize
}

/// One JSON object whose keys are taken one by one; [`Section::finish`] refuses the keys nobody took, so a
/// setting we do not know never passes silently.
struct Section<'a> {
    name: &'static str,
    map: &'a Map<String, Value>,
    taken: Vec<&'a str>,
}

impl<'a> Section<'a> {
    fn new(name: &'static str, value: &'a Value) -> anyhow::Result<Self> {
        let map = value.as_object().with_context(|| format!("`{name}` is not an object"))?;
        Ok(Section { name, map, taken: Vec::new() })
    }

    fn take(&mut self, key: &'a str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn ignore(&mut self, key: &'a str) {
        self.taken.push(key);
    }

    fn usize(&mut self, key: &'a str) -> anyhow::Result<Option<usize>> {
        self.take(key)
            .map(|v| v.as_u64().map(|n| n as usize).with_context(|| format!("{}.{key} is not a count", self.name)))
            .transpose()
    }

    fn f64(&mut self, key: &'a str) -> anyhow::Result<Option<f64>> {
        self.take(key).map(|v| v.as_f64().with_context(|| format!("{}.{key} is not a number", self.name))).transpose()
    }

    fn bool(&mut self, key: &'a str) -> anyhow::Result<Option<bool>> {
        self.take(key)
            .map(|v| v.as_bool().with_context(|| format!("{}.{key} is not true or false", self.name)))
            .transpose()
    }

    fn str(&mut self, key: &'a str) -> anyhow::Result<Option<String>> {
        self.take(key)
            .map(|v| v.as_str().map(str::to_owned).with_context(|| format!("{}.{key} is not a string", self.name)))
            .transpose()
    }

    fn triple(&mut self, key: &'a str) -> anyhow::Result<Option<[f32; 3]>> {
        let Some(v) = self.take(key) else { return Ok(None) };
        let values: Vec<f32> = match v {
            Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32; 3],
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect(),
            _ => Vec::new(),
        };
        match <[f32; 3]>::try_from(values) {
            Ok(t) if t.iter().all(|x| x.is_finite()) => Ok(Some(t)),
            _ => bail!("{}.{key} is not three numbers", self.name),
        }
    }

    /// `norm_kwargs: {"eps": ...}`, LayerNorm's epsilon (1e-5 without it).
    fn norm_eps(&mut self) -> anyhow::Result<f64> {
        let Some(v) = self.take("norm_kwargs") else { return Ok(1e-5) };
        let mut kw = Section::new("norm_kwargs", v)?;
        let eps = kw.f64("eps")?.unwrap_or(1e-5);
        kw.finish().with_context(|| format!("{}.norm_kwargs", self.name))?;
        Ok(eps)
    }

    /// A setting whose only supported values are `allowed` (or leaving it out).
    fn expect_default(&mut self, key: &'a str, allowed: &[&str]) -> anyhow::Result<()> {
        if let Some(v) = self.take(key)
            && !allowed.iter().any(|a| v.as_str() == Some(a))
        {
            bail!("{}.{key} = {v} is not supported (only {allowed:?})", self.name);
        }
        Ok(())
    }

    /// Settings that change the computation when set (anything but null, false, 0 or an empty value).
    fn refuse_set(&mut self, keys: &[&'a str]) -> anyhow::Result<()> {
        for &key in keys {
            if let Some(v) = self.take(key) {
                let unset = match v {
                    Value::Bool(b) => !b,
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    Value::String(s) => s.is_empty(),
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Null => true,
                };
                if !unset {
                    bail!("{}.{key} = {v} is not supported: this open_clip architecture cannot be run here", self.name);
                }
            }
        }
        Ok(())
    }

    fn finish(&self) -> anyhow::Result<()> {
        let unknown: Vec<&str> = self.map.keys().map(String::as_str).filter(|k| !self.taken.contains(k)).collect();
        if !unknown.is_empty() {
            bail!(
                "{} has settings this reader does not know: {} (refused rather than ignored)",
                self.name,
                unknown.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIPA: &str = r#"{"model_cfg": {"embed_dim": 1024,
        "vision_cfg": {"image_size": 336, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14,
                       "no_ln_pre": true, "pool_type": "avg", "final_ln_after_pool": true},
        "text_cfg": {"context_length": 32, "vocab_size": 32000, "hf_tokenizer_name": "bert-base-uncased",
                     "tokenizer_kwargs": {"strip_sep_token": true}, "width": 1024, "heads": 16, "layers": 24,
                     "pool_type": "last", "no_causal_mask": true}},
        "preprocess_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "interpolation": "bilinear", "resize_mode": "squash"}}"#;

    #[test]
    fn clipa_336_reads_as_open_clip_builds_it() {
        let c = OpenClipConfig::from_json(CLIPA).unwrap();
        let (v, t) = (&c.model.vision, &c.model.text);
        assert_eq!((v.tower.num_attention_heads, v.tower.intermediate_size, v.tokens()), (16, 5120, 577));
        assert_eq!((v.pre_norm, v.pool, v.norm_after_pool), (false, VisionPool::MeanOfPatches, true));
        assert_eq!(v.tower.activation, Activation::Gelu);
        assert_eq!(
            (t.max_position_embeddings, t.pool, t.causal, t.tower.num_attention_heads),
            (32, TextPool::Last, false, 16)
        );
        assert_eq!(
            c.tokenizer,
            TokenizerSpec::HuggingFace { name: "bert-base-uncased".into(), strip_sep_token: true, lowercase: false }
        );
        assert_eq!((c.preprocess.filter, c.preprocess.resize), (Filter::Bilinear, ResizeMode::Squash));
        assert_eq!(c.model.projection_dim, 1024);
    }

    #[test]
    fn defaults_are_open_clips_and_quick_gelu_is_read() {
        let c = OpenClipConfig::from_json(
            r#"{"model_cfg": {"embed_dim": 768, "quick_gelu": true,
                "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
                "text_cfg": {"width": 768, "heads": 12}}}"#,
        )
        .unwrap();
        assert_eq!(c.model.vision.tower.activation, Activation::QuickGelu);
        assert_eq!(c.model.vision.tower.num_attention_heads, 16);
        assert_eq!(
            (c.model.text.pool, c.model.text.causal, c.model.text.max_position_embeddings),
            (TextPool::Argmax, true, 77)
        );
        assert_eq!(c.tokenizer, TokenizerSpec::OpenAiBpe);
        assert_eq!((c.preprocess.filter, c.preprocess.resize), (Filter::Bicubic, ResizeMode::ShortestThenCrop));
    }

    #[test]
    fn unsupported_or_unknown_settings_are_refused_by_name() {
        let with = |vision_extra: &str| {
            let json = format!(
                r#"{{"model_cfg": {{"embed_dim": 8, "vision_cfg": {{"width": 64, "head_width": 16 {vision_extra}}},
                    "text_cfg": {{"width": 64, "heads": 4}}}}}}"#
            );
            OpenClipConfig::from_json(&json).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        assert!(with("").is_ok());
        assert!(with(r#", "ls_init_value": null, "patch_dropout": 0.5"#).is_ok());
        let e = with(r#", "timm_model_name": "vit_so400m_patch14_siglip_384""#).unwrap_err();
        assert!(e.contains("vision_cfg.timm_model_name"), "{e}");
        let e = with(r#", "ls_init_value": 0.1"#).unwrap_err();
        assert!(e.contains("ls_init_value"), "{e}");
        let e = with(r#", "layers": [3, 4, 6, 3]"#).unwrap_err();
        assert!(e.contains("ResNet"), "{e}");
        let e = with(r#", "brand_new_thing": 1"#).unwrap_err();
        assert!(e.contains("brand_new_thing") && e.contains("refused"), "{e}");
        let e = with(r#", "pool_type": "map""#).unwrap_err();
        assert!(e.contains("pool_type"), "{e}");
    }
}
