//! Which format a model folder is in, decided in one place: Hugging Face's CLIP (`config.json`,
//! `model.safetensors`, `tokenizer.json`) or open_clip's own (`open_clip_config.json` with
//! `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`). A folder with both (LAION's repositories
//! ship both) is read as open_clip's: its config is what open_clip itself runs.

use super::open_clip;
use super::tokenizer::HF_TOKENIZER_FILES;
use anyhow::bail;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    HuggingFace,
    /// open_clip's, with the weights file that is read.
    OpenClip {
        weights: PathBuf,
    },
}

pub fn detect(dir: &Path) -> anyhow::Result<Format> {
    if dir.join(open_clip::CONFIG_FILE).is_file() {
        return match open_clip::weights_file(dir) {
            Some(weights) => Ok(Format::OpenClip { weights }),
            None => bail!(
                "{} has {} but neither {} nor {}",
                dir.display(),
                open_clip::CONFIG_FILE,
                open_clip::WEIGHT_FILES[0],
                open_clip::WEIGHT_FILES[1]
            ),
        };
    }
    if dir.join(super::CONFIG_FILE).is_file() {
        return Ok(Format::HuggingFace);
    }
    if !dir.is_dir() {
        bail!("the model folder {} does not exist", dir.display());
    }
    bail!(
        "{} holds no CLIP model: a folder in Hugging Face format has {}; one in open_clip's format has {} and {} \
         or {}",
        dir.display(),
        super::MODEL_FILES.join(", "),
        open_clip::CONFIG_FILE,
        open_clip::WEIGHT_FILES[0],
        open_clip::WEIGHT_FILES[1]
    )
}

/// The files of `dir` that make the model, by name, for its identity: what [`super::Clip::load`] reads from
/// it. A file the format needs and the folder lacks is an error that names it.
pub fn model_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    match detect(dir)? {
        Format::HuggingFace => {
            let missing: Vec<&str> = super::MODEL_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
            if !missing.is_empty() {
                bail!(
                    "{} lacks {} (a CLIP model folder in Hugging Face format needs {})",
                    dir.display(),
                    missing.join(", "),
                    super::MODEL_FILES.join(", ")
                );
            }
            Ok(super::MODEL_FILES.iter().map(|f| f.to_string()).collect())
        }
        Format::OpenClip { weights } => {
            let mut files = vec![open_clip::CONFIG_FILE.to_string()];
            files.extend(weights.file_name().map(|n| n.to_string_lossy().into_owned()));
            files.extend(HF_TOKENIZER_FILES.iter().filter(|f| dir.join(f).is_file()).map(|f| f.to_string()));
            Ok(files)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_format_and_says_what_a_folder_lacks() {
        let d = tempfile::tempdir().unwrap();
        let e = detect(d.path()).unwrap_err().to_string();
        assert!(e.contains("open_clip_config.json") && e.contains("model.safetensors"), "{e}");
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        assert_eq!(detect(d.path()).unwrap(), Format::HuggingFace);
        assert!(model_files(d.path()).unwrap_err().to_string().contains("lacks tokenizer.json, model.safetensors"));
        std::fs::write(d.path().join("open_clip_config.json"), "{}").unwrap();
        assert!(detect(d.path()).unwrap_err().to_string().contains("neither"));
        std::fs::write(d.path().join("open_clip_pytorch_model.bin"), "").unwrap();
        let bin = d.path().join("open_clip_pytorch_model.bin");
        assert_eq!(detect(d.path()).unwrap(), Format::OpenClip { weights: bin });
        std::fs::write(d.path().join("open_clip_model.safetensors"), "").unwrap();
        std::fs::write(d.path().join("tokenizer.json"), "").unwrap();
        assert_eq!(
            model_files(d.path()).unwrap(),
            ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"]
        );
    }
}
