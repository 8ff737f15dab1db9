//! The parts a knn-index reads: each `{prefix}_N.npy` paired with its `metadata_N.parquet`.

use crate::kind::LocalInput;
use anyhow::bail;
use std::path::{Path, PathBuf};

/// One embedding part and its metadata: `img_emb_N.npy` and `metadata_N.parquet`.
#[derive(Debug, Clone)]
pub struct Part {
    pub target: String,
    pub number: String,
    pub vectors: PathBuf,
    pub metadata: PathBuf,
}

impl Part {
    pub fn name(&self) -> String {
        format!("{} ({})", self.number, self.target)
    }
}

/// The part number in a file name `…{prefix}_N.{ext}` (a store may prefix fetched files: `3-img_emb_7.npy`).
pub(super) fn part_number(path: &Path, prefix: &str, ext: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let at = name.rfind(&format!("{prefix}_"))?;
    let number = name[at + prefix.len() + 1..].strip_suffix(ext)?;
    (!number.is_empty()).then(|| number.to_string())
}

/// The part number of any file of a clip-retrieval embeddings folder: `img_emb_N.npy`, `text_emb_N.npy` or
/// `metadata_N.parquet`.
pub(super) fn any_part_number(path: &Path) -> Option<String> {
    ["img_emb", "text_emb"]
        .iter()
        .find_map(|p| part_number(path, p, ".npy"))
        .or_else(|| part_number(path, "metadata", ".parquet"))
}

/// Pairs every `{prefix}_N.npy` of the inputs with a `metadata_N.parquet`: the one of the same input target
/// (clip-embed's part), else the only one of that number among all inputs (`files` steps holding
/// clip-retrieval output made elsewhere). Parts keep the inputs' order.
pub fn collect_parts(inputs: &[LocalInput], prefix: &str) -> anyhow::Result<Vec<Part>> {
    let mut embeddings = Vec::new();
    let mut metadata = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        for file in &input.files {
            if let Some(n) = part_number(file, prefix, ".npy") {
                embeddings.push((i, n, file.clone()));
            } else if let Some(n) = part_number(file, "metadata", ".parquet") {
                metadata.push((i, n, file.clone()));
            }
        }
    }
    if embeddings.is_empty() {
        let names: Vec<String> = inputs.iter().map(|i| i.target.clone()).take(3).collect();
        bail!(
            "no {prefix}_N.npy among the inputs ({}{}): knn-index reads clip-embed's parts{}",
            names.join(", "),
            if inputs.len() > 3 { ", …" } else { "" },
            if prefix == "img_emb" { "" } else { " (text embeddings, as `embeddings = \"text\"` asks)" }
        );
    }
    embeddings
        .into_iter()
        .map(|(i, n, vectors)| {
            let same = metadata.iter().find(|(j, m, _)| *j == i && *m == n);
            let any: Vec<_> = metadata.iter().filter(|(_, m, _)| *m == n).collect();
            let found = match (same, any.as_slice()) {
                (Some(m), _) => m,
                (None, [one]) => *one,
                (None, []) => bail!(
                    "part {n} ({}): no metadata_{n}.parquet beside {}: the index needs each row's key and caption",
                    inputs[i].target,
                    vectors.display()
                ),
                (None, _) => bail!(
                    "part {n} ({}): several inputs have a metadata_{n}.parquet and none is beside {}",
                    inputs[i].target,
                    vectors.display()
                ),
            };
            Ok(Part { target: inputs[i].target.clone(), number: n, vectors, metadata: found.2.clone() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(target: &str, files: &[&str]) -> LocalInput {
        LocalInput {
            target: target.into(),
            shard: target.rsplit('/').next().unwrap_or(target).into(),
            files: files.iter().map(PathBuf::from).collect(),
            rows: None,
        }
    }

    #[test]
    fn parts_pair_embeddings_with_their_metadata() {
        let inputs = [
            input(
                "clip/00000",
                &["s/img_emb/img_emb_00000.npy", "s/text_emb/text_emb_00000.npy", "s/metadata/metadata_00000.parquet"],
            ),
            input("clip/00001", &["in/0-img_emb_00001.npy", "in/1-text_emb_00001.npy", "in/2-metadata_00001.parquet"]),
        ];
        let parts = collect_parts(&inputs, "img_emb").unwrap();
        assert_eq!(parts.iter().map(|p| p.number.as_str()).collect::<Vec<_>>(), ["00000", "00001"]);
        assert_eq!(parts[1].metadata, PathBuf::from("in/2-metadata_00001.parquet"));
        let text = collect_parts(&inputs, "text_emb").unwrap();
        assert_eq!(text[0].vectors, PathBuf::from("s/text_emb/text_emb_00000.npy"));

        // A files step: one file per input, paired by number across inputs.
        let files = [input("emb/a", &["e/img_emb_3.npy"]), input("meta/b", &["m/metadata_3.parquet"])];
        assert_eq!(collect_parts(&files, "img_emb").unwrap()[0].metadata, PathBuf::from("m/metadata_3.parquet"));

        let e = collect_parts(&[input("clip/00002", &["img_emb_00002.npy"])], "img_emb").unwrap_err().to_string();
        assert!(e.contains("part 00002 (clip/00002): no metadata_00002.parquet"), "{e}");
        let e = collect_parts(&[input("x/a", &["a.tar"])], "img_emb").unwrap_err().to_string();
        assert!(e.contains("no img_emb_N.npy among the inputs (x/a)"), "{e}");
    }
}
