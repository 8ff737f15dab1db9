//! CLIP with candle: a model folder in Hugging Face's format (`config.json`, `model.safetensors`,
//! `tokenizer.json`) or in open_clip's ([`open_clip`]) → image and text embeddings that match
//! transformers' `CLIPModel` and open_clip's model, preprocessing and tokenizer. [`format`] tells the two
//! apart. The `clip-embed` kind runs it over WebDataset shards; a query embedder (`dsmake search`) can load
//! the same [`Clip`].

pub mod config;
pub mod cpu;
pub mod format;
pub mod gpu;
pub mod names;
pub mod npy;
pub mod open_clip;
pub mod open_clip_table;
pub mod preprocess;
pub mod pth;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vision;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use config::ClipConfig;
use std::path::{Path, PathBuf};

pub use transformer::l2_normalize;

/// The files a model folder must hold.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const MODEL_FILES: [&str; 3] = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE];

pub struct Clip {
    pub config: ClipConfig,
    pub vision: vision::VisionTower,
    pub text: text::TextTower,
    pub tokenizer: tokenizer::ClipTokenizer,
    pub preprocess: preprocess::Preprocess,
    pub device: Device,
    pub dtype: DType,
}

/// Where a model runs, as the `device` setting says it.
pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(),
        "auto" => Ok(cuda_device().unwrap_or(Device::Cpu)),
        other => bail!("unknown device `{other}` (expected \"auto\", \"cpu\" or \"cuda\")"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device() -> anyhow::Result<Device> {
    Device::new_cuda(0).context("no usable CUDA device")
}

#[cfg(not(feature = "cuda"))]
fn cuda_device() -> anyhow::Result<Device> {
    bail!("this dsmake was built without CUDA: rebuild with `cargo build --release --features cuda` (needs nvcc)")
}

/// fp16 on a GPU (what clip-retrieval runs), fp32 on CPU where half precision is slower, not faster.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() { DType::F16 } else { DType::F32 }
}

impl Clip {
    /// Loads a model folder in either format, the tokenizer from the same folder.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Clip> {
        Self::load_with_tokenizer(dir, None, device, dtype)
    }

    /// Loads a model folder in either format; an open_clip model's tokenizer is read from `tokenizer_dir`
    /// when given (see [`open_clip::load`]). A Hugging Face folder holds its own tokenizer.
    pub fn load_with_tokenizer(
        dir: &Path,
        tokenizer_dir: Option<&Path>,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Clip> {
        match format::detect(dir)? {
            format::Format::OpenClip { .. } => open_clip::load(dir, tokenizer_dir, device, dtype),
            format::Format::HuggingFace => Self::load_hugging_face(dir, device, dtype),
        }
    }

    /// Loads a folder in Hugging Face's format. The weights are memory-mapped, converted to `dtype` as they
    /// are read.
    pub fn load_hugging_face(dir: &Path, device: &Device, dtype: DType) -> anyhow::Result<Clip> {
        let file = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} has no {name} (a CLIP model folder in Hugging Face format needs {})",
                    dir.display(),
                    MODEL_FILES.join(", ")
                );
            }
            Ok(path)
        };
        let config = ClipConfig::from_file(&file(CONFIG_FILE)?)?;
        let tokenizer =
            tokenizer::ClipTokenizer::from_file(&file(TOKENIZER_FILE)?, config.text.max_position_embeddings)?;
        let weights = file(WEIGHTS_FILE)?;
        // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody truncating it while we
        // run (a changed model is caught by its blake3 in the target's key).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device) }
            .with_context(|| format!("cannot read {}", weights.display()))?;
        Self::from_var_builder(config, tokenizer, vb)
            .with_context(|| format!("cannot load the model in {}", weights.display()))
    }

    pub fn from_var_builder(
        config: ClipConfig,
        tokenizer: tokenizer::ClipTokenizer,
        vb: VarBuilder,
    ) -> anyhow::Result<Clip> {
        let preprocess = preprocess::Preprocess::openai(config.vision.image_size as u32);
        Self::from_parts(config, tokenizer, preprocess, vb)
    }

    /// A model from its geometry, tokenizer, preprocessing and the tensors under HF's names.
    pub fn from_parts(
        config: ClipConfig,
        tokenizer: tokenizer::ClipTokenizer,
        preprocess: preprocess::Preprocess,
        vb: VarBuilder,
    ) -> anyhow::Result<Clip> {
        if preprocess.size as usize != config.vision.image_size {
            bail!(
                "the preprocessing makes {0}x{0} images for a model of {1}x{1}",
                preprocess.size,
                config.vision.image_size
            );
        }
        let vision = vision::VisionTower::new(&config.vision, config.projection_dim, vb.clone())?;
        let text = text::TextTower::new(&config.text, config.projection_dim, vb.clone())?;
        Ok(Clip { config, vision, text, tokenizer, preprocess, device: vb.device().clone(), dtype: vb.dtype() })
    }

    /// Preprocessed pixels, [n·3·size·size] f32 as [`preprocess::Preprocess`] makes them → image embeddings
    /// [n, projection_dim] in f32, not normalised.
    pub fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Tensor> {
        let s = self.config.vision.image_size;
        let t = Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu)?.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(self.vision.forward(&t)?.to_dtype(DType::F32)?)
    }

    /// Token rows from [`tokenizer::ClipTokenizer::encode`] → text embeddings [n, projection_dim], f32.
    pub fn embed_tokens(&self, ids: &[Vec<u32>]) -> anyhow::Result<Tensor> {
        Ok(self.text.forward(ids, &self.device)?.to_dtype(DType::F32)?)
    }

    /// Texts → text embeddings, f32, not normalised.
    pub fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Tensor> {
        let ids = texts.iter().map(|t| self.tokenizer.encode(t)).collect::<anyhow::Result<Vec<_>>>()?;
        self.embed_tokens(&ids)
    }
}
