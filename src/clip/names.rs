//! Model names as all-clip writes them → a Hub repository and the format its weights are in:
//!
//! - OpenAI's names (`ViT-L/14@336px`, `ViT-L/14`, `ViT-B/16`, `ViT-B/32`, optionally `openai_clip:`-prefixed) and
//!   `open_clip:ARCH/openai`: OpenAI's weights in Hugging Face's CLIP format (`openai/clip-vit-…`), the same
//!   weights open_clip loads for that tag;
//! - `open_clip:ARCH/TAG`: open_clip's pretrained table ([`super::open_clip_table`]): the tag's Hub repo in
//!   open_clip's format, with the model config of ARCH and the tag's preprocessing, as
//!   `open_clip.create_model_and_transforms(ARCH, pretrained=TAG)` builds it. A tag is compared as open_clip
//!   compares it (lower case, `-` read as `_`). ARCH without a tag is an error listing its tags: all-clip would
//!   take open_clip's last one, which changes when open_clip adds a tag;
//! - `open_clip:hf-hub:ORG/NAME`: a repo in open_clip's format with its own `open_clip_config.json`;
//! - `hf_clip:ORG/NAME`: a repo in Hugging Face's CLIP format.

use super::open_clip_table::{ARCHS, TAGS, Tag};
use serde_json::{Value, json};

/// The model used when a step names none: clip-retrieval's LAION choice.
pub const DEFAULT_MODEL: &str = "ViT-L/14@336px";

/// OpenAI's weights in Hugging Face's format, by OpenAI's name and by open_clip's architecture name.
const OPENAI: &[(&str, &str, &str)] = &[
    ("ViT-L/14@336px", "ViT-L-14-336", "openai/clip-vit-large-patch14-336"),
    ("ViT-L/14", "ViT-L-14", "openai/clip-vit-large-patch14"),
    ("ViT-B/16", "ViT-B-16", "openai/clip-vit-base-patch16"),
    ("ViT-B/32", "ViT-B-32", "openai/clip-vit-base-patch32"),
];

/// How a repository's weights are laid out, and where the model's config comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// `config.json`, `tokenizer.json`, `model.safetensors` (transformers' `CLIPModel`).
    HfClip,
    /// `open_clip_config.json` from the repo, with `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`.
    OpenClip,
    /// open_clip's weights files, with this config (`model_cfg` + `preprocess_cfg`) from open_clip's own table in
    /// place of the repo's.
    OpenClipTag { config: Value },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelName {
    /// As written.
    pub name: String,
    pub repo: String,
    pub format: Format,
}

fn valid_repo(repo: &str) -> bool {
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// open_clip's tag normalisation (`_clean_tag`).
fn clean_tag(tag: &str) -> String {
    tag.to_lowercase().replace('-', "_")
}

/// Every architecture named in the table, plain and `-quickgelu`, in the table's order: made once.
fn arch_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut seen = std::collections::HashSet::new();
        TAGS.iter().map(|t| t.arch).filter(|arch| seen.insert(*arch)).collect()
    })
}

fn quoted(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// The config open_clip builds `ARCH` + `TAG` with: ARCH's `model_cfg` (QuickGELU for a `-quickgelu` ARCH) and
/// the tag's preprocessing.
fn tag_config(tag: &Tag) -> Result<Value, String> {
    let base = tag.arch.strip_suffix("-quickgelu").unwrap_or(tag.arch);
    let (_, text) = ARCHS.iter().find(|(a, _)| *a == base).ok_or_else(|| format!("no model config for {base}"))?;
    let mut model_cfg: Value = serde_json::from_str(text).map_err(|e| format!("model config of {base}: {e}"))?;
    if tag.arch.ends_with("-quickgelu") {
        model_cfg["quick_gelu"] = json!(true);
    }
    Ok(json!({
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": tag.mean,
            "std": tag.std,
            "interpolation": tag.interpolation,
            "resize_mode": tag.resize_mode,
        },
    }))
}

fn open_clip(name: &str, spec: &str) -> Result<ModelName, String> {
    if let Some(repo) = spec.strip_prefix("hf-hub:") {
        if !valid_repo(repo) {
            return Err(format!("`{name}`: expected open_clip:hf-hub:ORG/NAME"));
        }
        return Ok(ModelName { name: name.into(), repo: repo.into(), format: Format::OpenClip });
    }
    let (arch, tag) = match spec.split_once('/') {
        Some((arch, tag)) => (arch, Some(tag)),
        None => (spec, None),
    };
    let archs = arch_names();
    let openai = OPENAI.iter().find(|(_, a, _)| *a == arch || arch.strip_suffix("-quickgelu") == Some(*a));
    if !archs.contains(&arch) && openai.is_none() {
        let hint = crate::util::suggest::closest(arch, archs.iter().copied())
            .map(|best| format!("did you mean \"open_clip:{best}/…\"? "))
            .unwrap_or_default();
        return Err(format!(
            "`{name}`: dsmake does not run open_clip architecture `{arch}`. {hint}It runs {} (or \
             \"open_clip:hf-hub:ORG/NAME\" for a repo in open_clip's format with one of these architectures)",
            quoted(archs.iter().map(|a| a.to_string()))
        ));
    }
    // OpenAI's tag is served from OpenAI's own repos (above), not from open_clip's table.
    let tags: Vec<&Tag> = TAGS.iter().filter(|t| t.arch == arch && !(openai.is_some() && t.tag == "openai")).collect();
    let mut listed: Vec<String> = tags.iter().map(|t| format!("open_clip:{arch}/{}", t.tag)).collect();
    if openai.is_some() {
        listed.insert(0, format!("open_clip:{arch}/openai"));
    }
    let Some(tag) = tag else {
        return Err(format!(
            "`{name}` names no pretrained weights: write one of {} (all-clip would take open_clip's last tag, which \
             changes as open_clip adds tags)",
            quoted(listed)
        ));
    };
    let cleaned = clean_tag(tag);
    if cleaned == "openai"
        && let Some((_, _, repo)) = openai
    {
        return Ok(ModelName { name: name.into(), repo: repo.to_string(), format: Format::HfClip });
    }
    let Some(found) = tags.iter().find(|t| t.tag == cleaned) else {
        return Err(format!("`{name}`: open_clip has no tag `{tag}` for {arch}; its tags: {}", quoted(listed)));
    };
    if found.quick_gelu && !arch.ends_with("-quickgelu") {
        // open_clip runs these with GELU and only warns: the embeddings would be wrong.
        return Err(format!(
            "`{name}`: these weights were trained with QuickGELU, which open_clip's `{arch}` config does not use: \
             write \"open_clip:{arch}-quickgelu/{}\"",
            found.tag
        ));
    }
    let config = tag_config(found)?;
    Ok(ModelName { name: name.into(), repo: found.repo.to_string(), format: Format::OpenClipTag { config } })
}

/// What `name` stands for, or why it cannot be run (with the names that can).
pub fn resolve(name: &str) -> Result<ModelName, String> {
    if let Some(repo) = name.strip_prefix("hf_clip:") {
        if !valid_repo(repo) {
            return Err(format!("`{name}`: expected hf_clip:ORG/NAME"));
        }
        return Ok(ModelName { name: name.into(), repo: repo.into(), format: Format::HfClip });
    }
    if let Some(spec) = name.strip_prefix("open_clip:") {
        return open_clip(name, spec);
    }
    let plain = name.strip_prefix("openai_clip:").unwrap_or(name);
    if let Some((_, _, repo)) = OPENAI.iter().find(|(n, _, _)| *n == plain) {
        return Ok(ModelName { name: name.into(), repo: repo.to_string(), format: Format::HfClip });
    }
    let names = OPENAI.iter().map(|(n, _, _)| *n);
    let hint = crate::util::suggest::closest(plain, names.clone())
        .map(|best| format!("did you mean \"{best}\"? "))
        .unwrap_or_default();
    Err(format!(
        "model `{name}` is not supported. {hint}Supported: OpenAI's {}, \"open_clip:ARCH/TAG\" (open_clip's pretrained \
         tags for ViT architectures, e.g. \"open_clip:ViT-H-14-CLIPA-336/laion2b\"), \"open_clip:hf-hub:ORG/NAME\", \
         \"hf_clip:ORG/NAME\" (or `model_path` for a local folder)",
        quoted(names.map(String::from))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> String {
        resolve(name).unwrap_or_else(|e| panic!("{e}")).repo
    }

    #[test]
    fn all_clip_names_resolve_to_the_repos_open_clip_uses() {
        assert_eq!(repo("ViT-L/14@336px"), "openai/clip-vit-large-patch14-336");
        assert_eq!(repo("openai_clip:ViT-L/14"), "openai/clip-vit-large-patch14");
        assert_eq!(repo("ViT-B/32"), "openai/clip-vit-base-patch32");
        assert_eq!(repo("open_clip:ViT-L-14-336/openai"), "openai/clip-vit-large-patch14-336");
        assert_eq!(repo("open_clip:ViT-B-16-quickgelu/openai"), "openai/clip-vit-base-patch16");
        assert_eq!(repo("open_clip:ViT-H-14-CLIPA-336/laion2b"), "UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B");
        assert_eq!(repo("open_clip:ViT-H-14/laion2b_s32b_b79k"), "laion/CLIP-ViT-H-14-laion2B-s32B-b79K");
        // Tags compare as open_clip cleans them.
        assert_eq!(repo("open_clip:ViT-H-14/laion2b-s32b-B79K"), "laion/CLIP-ViT-H-14-laion2B-s32B-b79K");
        assert_eq!(repo("open_clip:ViT-L-14/datacomp_xl_s13b_b90k"), "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K");
        assert_eq!(repo("open_clip:hf-hub:UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B"), "UCSC-VLAA/ViT-L-14-CLIPA-datacomp1B");
        assert_eq!(repo("hf_clip:laion/CLIP-ViT-H-14-laion2B-s32B-b79K"), "laion/CLIP-ViT-H-14-laion2B-s32B-b79K");
        assert_eq!(resolve("open_clip:hf-hub:o/n").unwrap().format, Format::OpenClip);
        assert_eq!(resolve("ViT-L/14").unwrap().format, Format::HfClip);
    }

    #[test]
    fn a_tag_brings_open_clips_config_for_its_architecture_and_its_preprocessing() {
        let Format::OpenClipTag { config } = resolve("open_clip:ViT-H-14-CLIPA-336/laion2b").unwrap().format else {
            panic!("not a tag");
        };
        assert_eq!(config["model_cfg"]["vision_cfg"]["image_size"], 336);
        assert_eq!(config["model_cfg"]["vision_cfg"]["pool_type"], "avg");
        assert_eq!(config["model_cfg"]["text_cfg"]["hf_tokenizer_name"], "bert-base-uncased");
        assert_eq!(config["preprocess_cfg"]["resize_mode"], "squash");
        assert_eq!(config["preprocess_cfg"]["interpolation"], "bilinear");
        assert_eq!(config["preprocess_cfg"]["mean"][0], 0.485);
        let Format::OpenClipTag { config } = resolve("open_clip:ViT-H-14-quickgelu/dfn5b").unwrap().format else {
            panic!("not a tag");
        };
        assert_eq!(config["model_cfg"]["quick_gelu"], true);
        assert_eq!(config["preprocess_cfg"]["resize_mode"], "squash");
        assert_eq!(config["model_cfg"]["vision_cfg"]["head_width"], 80);
    }

    #[test]
    fn names_that_cannot_run_say_what_can() {
        let e = resolve("open_clip:ViT-H-14").unwrap_err();
        assert!(
            e.contains("names no pretrained weights") && e.contains("\"open_clip:ViT-H-14/laion2b_s32b_b79k\""),
            "{e}"
        );
        assert!(e.contains("\"open_clip:ViT-H-14/metaclip_altogether\""), "{e}");
        let e = resolve("open_clip:ViT-H-14-CLIPA-336").unwrap_err();
        assert!(
            e.contains("open_clip:ViT-H-14-CLIPA-336/laion2b") && e.contains("open_clip:ViT-H-14-CLIPA-336/datacomp1b"),
            "{e}"
        );
        let e = resolve("open_clip:ViT-L-14").unwrap_err();
        assert!(e.contains("\"open_clip:ViT-L-14/openai\""), "{e}");
        let e = resolve("open_clip:ViT-H-14/laion5b").unwrap_err();
        assert!(e.contains("no tag `laion5b` for ViT-H-14"), "{e}");
        let e = resolve("open_clip:ViT-H-14/dfn5b").unwrap_err();
        assert!(e.contains("open_clip:ViT-H-14-quickgelu/dfn5b"), "{e}");
        let e = resolve("open_clip:convnext_base/laion400m_s13b_b51k").unwrap_err();
        assert!(e.contains("does not run open_clip architecture `convnext_base`"), "{e}");
        let e = resolve("open_clip:ViT-H-14-CLIPA-33/laion2b").unwrap_err();
        assert!(e.contains("did you mean \"open_clip:ViT-H-14-CLIPA-336/…\""), "{e}");
        let e = resolve("ViT-L/14@336").unwrap_err();
        assert!(e.contains("did you mean \"ViT-L/14@336px\"") && e.contains("\"ViT-B/32\""), "{e}");
        assert!(resolve("hf_clip:../x").is_err());
        assert!(resolve("open_clip:hf-hub:x").is_err());
    }
}
