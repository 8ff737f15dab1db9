//! open_clip's own model format, as its Hub repositories hold it: `open_clip_config.json` (`model_cfg`,
//! `preprocess_cfg`) with the weights as `open_clip_model.safetensors` or the pickled
//! `open_clip_pytorch_model.bin` (many repositories ship only that), in open_clip's tensor names. The tokenizer
//! is not in the model's folder on the Hub: OpenAI's BPE (a CLIP `tokenizer.json`), or the Hugging Face
//! tokenizer that `hf_tokenizer_name` names (its own repository, e.g. `bert-base-uncased` for CLIPA).

pub mod config;
pub mod weights;

use super::tokenizer::ClipTokenizer;
use super::{Clip, TOKENIZER_FILE};
use anyhow::{Context, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
pub use config::{OpenClipConfig, TokenizerSpec};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "open_clip_config.json";
pub const SAFETENSORS_FILE: &str = "open_clip_model.safetensors";
pub const PICKLE_FILE: &str = "open_clip_pytorch_model.bin";
/// The weight files, in the order they are preferred when a folder holds both.
pub const WEIGHT_FILES: [&str; 2] = [SAFETENSORS_FILE, PICKLE_FILE];

/// The weights file of an open_clip folder: the safetensors when there is one (mapped, not unpickled).
pub fn weights_file(dir: &Path) -> Option<PathBuf> {
    WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// Loads an open_clip model folder. `tokenizer_dir` holds the tokenizer (`tokenizer.json`, and for a
/// Hugging Face tokenizer its `tokenizer_config.json` / `special_tokens_map.json`); without it, or when it
/// lacks `tokenizer.json`, the model's own folder is used (open_clip's `local-dir:` reads it from there too).
pub fn load(dir: &Path, tokenizer_dir: Option<&Path>, device: &Device, dtype: DType) -> anyhow::Result<Clip> {
    let config = OpenClipConfig::from_file(&dir.join(CONFIG_FILE))?;
    let weights = weights_file(dir).with_context(|| {
        format!(
            "{} has {CONFIG_FILE} but no weights: it needs {} or {}",
            dir.display(),
            WEIGHT_FILES[0],
            WEIGHT_FILES[1]
        )
    })?;
    let tokenizer = tokenizer(&config, dir, tokenizer_dir)?;
    let tensors = read_weights(&weights)?;
    let tensors = weights::to_hf_names(tensors, config.custom_text)
        .with_context(|| format!("cannot load the model in {}", weights.display()))?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let preprocess = super::preprocess::Preprocess::new(config.preprocess.clone());
    Clip::from_parts(config.model, tokenizer, preprocess, vb)
        .with_context(|| format!("cannot load the model in {} with {CONFIG_FILE}", weights.display()))
}

/// The state dict of either weights file, on the CPU in its stored dtype.
pub fn read_weights(path: &Path) -> anyhow::Result<Vec<(String, candle_core::Tensor)>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is mapped read-only for the time of this copy; like every mmap user we rely on
        // nobody truncating it meanwhile (a changed model is caught by its identity in the target's key).
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .with_context(|| format!("cannot read {}", path.display()))?;
        st.tensors()
            .into_iter()
            .map(|(name, _)| {
                let t = st.load(&name, &Device::Cpu).with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                Ok((name, t))
            })
            .collect()
    } else {
        super::pth::read_state_dict(path)
    }
}

/// The tokenizer the config asks for, from `tokenizer_dir` or else the model's folder.
fn tokenizer(config: &OpenClipConfig, dir: &Path, tokenizer_dir: Option<&Path>) -> anyhow::Result<ClipTokenizer> {
    let context = config.model.text.max_position_embeddings;
    let found = tokenizer_dir.into_iter().chain([dir]).find(|d| d.join(TOKENIZER_FILE).is_file());
    let searched =
        || tokenizer_dir.into_iter().chain([dir]).map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ");
    match &config.tokenizer {
        TokenizerSpec::OpenAiBpe => match found {
            Some(d) => ClipTokenizer::from_file(&d.join(TOKENIZER_FILE), context),
            None => bail!(
                "the model in {} uses OpenAI's BPE tokenizer, and no {TOKENIZER_FILE} is in {}: put the one of any \
                 OpenAI CLIP repository (e.g. openai/clip-vit-base-patch32) there",
                dir.display(),
                searched()
            ),
        },
        TokenizerSpec::HuggingFace { name, strip_sep_token, lowercase } => match found {
            Some(d) => ClipTokenizer::hugging_face(d, context, *strip_sep_token, *lowercase).with_context(|| {
                format!("the tokenizer `{name}` (hf_tokenizer_name) of the model in {}", dir.display())
            }),
            None => bail!(
                "the model in {} uses the tokenizer `{name}` (hf_tokenizer_name), and no {TOKENIZER_FILE} is in {}: \
                 put that repository's tokenizer.json and tokenizer_config.json there",
                dir.display(),
                searched()
            ),
        },
    }
}
