//! Model names in all-clip's syntax → Hugging Face repositories, and the local Hugging Face cache
//! (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`) → the snapshot folder and the commit that a
//! key records. Nothing here downloads: a model not in the cache is reported with the command that gets it.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// (all-clip name, Hugging Face repository). OpenAI's weights, under the names each all-clip backend uses.
pub const NAMES: &[(&str, &str)] = &[
    ("ViT-L/14@336px", "openai/clip-vit-large-patch14-336"),
    ("ViT-L/14", "openai/clip-vit-large-patch14"),
    ("ViT-B/16", "openai/clip-vit-base-patch16"),
    ("ViT-B/32", "openai/clip-vit-base-patch32"),
    ("open_clip:ViT-L-14-336/openai", "openai/clip-vit-large-patch14-336"),
    ("open_clip:ViT-L-14/openai", "openai/clip-vit-large-patch14"),
    ("open_clip:ViT-B-16/openai", "openai/clip-vit-base-patch16"),
    ("open_clip:ViT-B-32/openai", "openai/clip-vit-base-patch32"),
];

/// The model used when a step names none: clip-retrieval's LAION choice.
pub const DEFAULT_MODEL: &str = "ViT-L/14@336px";

/// The repository a model name stands for. `hf_clip:ORG/NAME` names any CLIP repository in Hugging Face
/// format directly.
pub fn repo_for(name: &str) -> Result<String, String> {
    if let Some(repo) = name.strip_prefix("hf_clip:") {
        let valid = repo.split('/').count() == 2
            && repo.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            });
        return if valid { Ok(repo.to_string()) } else { Err(format!("`{name}`: expected hf_clip:ORG/NAME")) };
    }
    if let Some((_, repo)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Ok(repo.to_string());
    }
    let supported = NAMES.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    let hint = crate::util::suggest::closest(name, NAMES.iter().map(|(n, _)| *n))
        .map(|best| format!("did you mean \"{best}\"? "))
        .unwrap_or_default();
    Err(format!(
        "model `{name}` is not supported. {hint}Supported: {supported}, or \"hf_clip:ORG/NAME\" for any CLIP \
         repository in Hugging Face format (or `model_path` for a local folder)"
    ))
}

/// The Hugging Face hub cache folder, as huggingface_hub finds it.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return Some(dir);
    }
    if let Some(home) = env("HF_HOME") {
        return Some(home.join("hub"));
    }
    let cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))?;
    Some(cache.join("huggingface").join("hub"))
}

/// A model resolved in the cache: its snapshot folder and the commit it is at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub repo: String,
    pub commit: String,
    pub dir: PathBuf,
}

/// The snapshot that `refs/main` points at, with the files a model needs.
pub fn resolve(repo: &str) -> anyhow::Result<Snapshot> {
    let cache = cache_dir().context("cannot find the Hugging Face cache: set HF_HOME or HOME")?;
    resolve_in(&cache, repo)
}

pub fn resolve_in(cache: &Path, repo: &str) -> anyhow::Result<Snapshot> {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let get = || {
        format!(
            "download it once where there is network (it is cached in {}):\n    \
             huggingface-cli download {repo} {}\n(set HF_TOKEN for gated repositories; HF_HOME or HF_HUB_CACHE \
             choose the cache), or copy those files into a folder and set `model_path` to it",
            cache.display(),
            super::MODEL_FILES.join(" ")
        )
    };
    let refs = folder.join("refs").join("main");
    let commit = match std::fs::read_to_string(&refs) {
        Ok(text) => text.trim().to_string(),
        Err(_) => bail!("{repo} is not in the Hugging Face cache ({} is missing): {}", refs.display(), get()),
    };
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{} does not hold a commit hash", refs.display());
    }
    let snapshot = snapshot_dir(cache, repo, &commit);
    let missing: Vec<&str> = super::MODEL_FILES.iter().copied().filter(|f| !snapshot.join(f).is_file()).collect();
    if !missing.is_empty() {
        bail!("{repo} at {commit} in the Hugging Face cache lacks {}: {}", missing.join(", "), get());
    }
    Ok(Snapshot { repo: repo.to_string(), commit, dir: snapshot })
}

pub fn snapshot_dir(cache: &Path, repo: &str, commit: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--"))).join("snapshots").join(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_repositories_and_unknown_ones_list_the_supported() {
        assert_eq!(repo_for("ViT-L/14@336px").unwrap(), "openai/clip-vit-large-patch14-336");
        assert_eq!(repo_for("open_clip:ViT-L-14-336/openai").unwrap(), "openai/clip-vit-large-patch14-336");
        assert_eq!(repo_for("hf_clip:openai/clip-vit-large-patch14-336").unwrap(), "openai/clip-vit-large-patch14-336");
        let e = repo_for("ViT-L/14@336").unwrap_err();
        assert!(e.contains("did you mean \"ViT-L/14@336px\"") && e.contains("\"ViT-B/32\""), "{e}");
        assert!(repo_for("hf_clip:../x").is_err());
    }

    #[test]
    fn resolves_the_cached_snapshot_or_says_how_to_get_it() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_in(cache.path(), "openai/clip-vit-base-patch32").unwrap_err().to_string();
        assert!(e.contains("huggingface-cli download openai/clip-vit-base-patch32"), "{e}");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = cache.path().join("models--openai--clip-vit-base-patch32");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snap = snapshot_dir(cache.path(), "openai/clip-vit-base-patch32", commit);
        std::fs::create_dir_all(&snap).unwrap();
        assert!(resolve_in(cache.path(), "openai/clip-vit-base-patch32").unwrap_err().to_string().contains("lacks"));
        for f in crate::clip::MODEL_FILES {
            std::fs::write(snap.join(f), "x").unwrap();
        }
        let s = resolve_in(cache.path(), "openai/clip-vit-base-patch32").unwrap();
        assert_eq!((s.commit.as_str(), s.dir), (commit, snap));
    }
}
