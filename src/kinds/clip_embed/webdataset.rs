//! Reading WebDataset shards: a tar file whose consecutive members `KEY.EXT` form one sample (img2dataset
//! writes `KEY.jpg`, `KEY.txt`, `KEY.json`). Members are read as data only: names are checked, links and
//! folders are skipped, and oversized members are refused without being read.

use anyhow::Context;
use serde_json::{Map, Value};
use std::io::Read;
use std::path::Path;

/// The largest image member read; a larger one fails its sample (a dataset is untrusted input).
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// The largest caption or json member read.
pub const MAX_TEXT_BYTES: u64 = 1 << 20;
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

#[derive(Debug, Default)]
pub struct Sample {
    pub key: String,
    /// The image member's name and bytes.
    pub image: Option<(String, Vec<u8>)>,
    pub caption: Option<String>,
    pub json: Option<Map<String, Value>>,
    /// What went wrong with this sample's members (oversized, unreadable json, …).
    pub problems: Vec<String>,
}

/// webdataset's `base_plus_ext`: the key is the path up to the first '.' of its last component, the
/// extension (lower-cased) the rest. Hidden files, names without an extension and unsafe paths give None.
pub fn split_name(name: &str) -> Option<(&str, String)> {
    let unsafe_path = name.starts_with('/') || name.split('/').any(|c| c == "..") || name.contains('\0');
    let base = name.rsplit('/').next()?;
    if unsafe_path || base.starts_with('.') || base.starts_with("__") {
        return None;
    }
    let dot = base.find('.')?;
    let key_len = name.len() - base.len() + dot;
    let ext = &name[key_len + 1..];
    if dot == 0 || ext.is_empty() {
        return None;
    }
    Some((&name[..key_len], ext.to_ascii_lowercase()))
}

/// Calls `on_sample` for each sample of the shard at `path`, in order.
pub fn read_samples(path: &Path, mut on_sample: impl FnMut(Sample) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut current: Option<Sample> = None;
    let entries = archive.entries().with_context(|| format!("{} is not a tar file", path.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: corrupt tar member", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_name(&name) else {
            continue;
        };
        if current.as_ref().is_some_and(|s| s.key != key)
            && let Some(done) = current.take()
        {
            on_sample(done)?;
        }
        let sample = current.get_or_insert_with(|| Sample { key: key.to_string(), ..Default::default() });
        let size = entry.header().size().unwrap_or(u64::MAX);
        let limit = if IMAGE_EXTENSIONS.contains(&ext.as_str()) { MAX_IMAGE_BYTES } else { MAX_TEXT_BYTES };
        let wanted = IMAGE_EXTENSIONS.contains(&ext.as_str()) || ext == "txt" || ext == "json";
        if !wanted {
            continue;
        }
        if size > limit {
            sample.problems.push(format!("member {name} is {size} bytes, over the {limit}-byte limit"));
            continue;
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read member {name}", path.display()))?;
        match ext.as_str() {
            "txt" => sample.caption = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "json" => match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => sample.json = Some(map),
                Ok(_) => sample.problems.push(format!("member {name} is not a JSON object")),
                Err(e) => sample.problems.push(format!("member {name} is not JSON: {e}")),
            },
            _ if sample.image.is_none() => sample.image = Some((name.clone(), bytes)),
            _ => sample.problems.push(format!("member {name}: the sample already has an image")),
        }
    }
    if let Some(done) = current {
        on_sample(done)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_like_webdataset() {
        assert_eq!(split_name("000001.jpg"), Some(("000001", "jpg".to_string())));
        assert_eq!(split_name("dir/a.b.JSON"), Some(("dir/a", "b.json".to_string())));
        assert_eq!(split_name("./x.txt"), Some(("./x", "txt".to_string())));
        assert_eq!(split_name("../x.txt"), None);
        assert_eq!(split_name("/abs/x.txt"), None);
        assert_eq!(split_name("dir/.hidden.txt"), None);
        assert_eq!(split_name("noext"), None);
    }

    #[test]
    fn groups_consecutive_members_and_refuses_oversized_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("a.jpg", b"img");
        add("a.txt", b"cap a");
        add("a.json", br#"{"url": "http://x/a"}"#);
        add("b.txt", b"cap b");
        add("b.json", b"not json");
        add("b.xyz", b"ignored");
        b.finish().unwrap();
        drop(b);
        let mut got = Vec::new();
        read_samples(&path, |s| {
            got.push(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key, "a");
        assert_eq!(got[0].image.as_ref().unwrap().1, b"img");
        assert_eq!(got[0].json.as_ref().unwrap()["url"], "http://x/a");
        assert_eq!(got[1].caption.as_deref(), Some("cap b"));
        assert!(got[1].image.is_none() && got[1].problems[0].contains("b.json is not JSON"));
    }
}
