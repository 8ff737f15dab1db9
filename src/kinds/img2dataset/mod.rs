//! `img2dataset`: downloads the images of URL rows and writes them as img2dataset's webdataset output, one
//! target per row shard (`Mapping::Rows(number_sample_per_shard)` over parquet files from `hf-dataset` or
//! `files`). Options, defaults, status values, error texts of its checks and the key scheme are
//! img2dataset's, so that its readers change nothing downstream.
//!
//! **Names.** img2dataset numbers shards `00000`, `00001`, … across one run. Our shards are fixed row ranges
//! of fixed input files (`<file stem>_<part>`, part zero-padded to five digits; the stem is
//! [`row_stem`](crate::kind::shard::row_stem), which escapes dots and slashes), so that a new input file
//! adds shards and never renames old ones. A shard's files are `<file stem>_<part>.tar`, `.parquet` and
//! `_stats.json`: readers that glob `*.tar` (webdataset, clip-retrieval) find them; brace ranges such as
//! `{00000..00099}.tar` do not apply. A key is img2dataset's (shard number zero-padded to five digits, then
//! the row's index in the shard zero-padded to the digits of `number_sample_per_shard`), prefixed with the
//! file stem: `<stem>_<part><index>`, unique across files and stable.
//!
//! **Work.** `concurrency` threads download (a per-host connection limit, one DNS cache per shard that is also
//! the HTTP client's resolver); decoding and resizing run in the build's decode slots (`-j` for the whole build,
//! `decoding`), and bodies wait to be decoded within the build's memory budget (`fetch`); a writer appends
//! successes to the tar as they finish. Destinations are checked before every request and after every
//! redirect (see `destination` and `fetch`).

mod dc_scans;
mod decoding;
mod destination;
mod exif;
mod fetch;
#[cfg(test)]
mod fuzz;
mod jpeg;
mod options;
mod output;
mod png;
mod previous;
mod process;
mod settings;
mod shard;
mod webp;

use crate::formats::parquet;
use crate::kind::{
    BuildCx, Built, InputShard, InputShards, Inputs, Kind, Mapping, Resource, SettingError, ShardCx, Shards,
};
use anyhow::{Context, anyhow};
use options::Encode;
use settings::Settings;

pub struct Img2Dataset;

/// Shard `NAME`'s outputs.
fn output_names(shard: &str) -> [String; 3] {
    [format!("{shard}.tar"), format!("{shard}.parquet"), format!("{shard}_stats.json")]
}

/// img2dataset's `oom_sample_per_shard`: digits of a row's index in its shard.
fn index_digits(per_shard: u64) -> usize {
    ((per_shard as f64).log10().ceil() as usize).max(1)
}

/// img2dataset's key: the shard number (five digits) then the index, here after the file stem.
fn key(shard: &str, index: u64, digits: usize) -> String {
    format!("{shard}{index:0digits$}")
}

/// What a step that opted out of certificate checks says, in the plan and the worker's log.
fn ssl_note(step: &str) -> String {
    format!(
        "img2dataset `{step}`: ignore_ssl_certificate = true: image hosts' TLS certificates are not verified (the \
         step opts in; remove it to verify them)"
    )
}

impl Kind for Img2Dataset {
    type Settings = Settings;
    const NAME: &'static str = "img2dataset";
    /// 2: cut files and absurd dimensions fail their rows (they were kept as half-grey images or failed the
    /// shard); captions that are not UTF-8 are kept lossily instead of failing the shard.
    const VERSION: u32 = 2;
    const ABOUT: &'static str =
        "downloads and resizes the images of URL rows into img2dataset's webdataset shards (tar + parquet + stats)";
    const INPUTS: Inputs = Inputs::Required;
    const RETRIES_FAILED_ROWS: bool = true;

    fn resource(&self, _: &Settings) -> Resource {
        Resource::Net
    }

    fn rows_per_shard(&self, s: &Settings) -> Option<u64> {
        u64::try_from(s.number_sample_per_shard).ok()
    }

    fn check(&self, s: &Settings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new("url_col", "img2dataset reads URL rows: the step needs `from`")
                .help("e.g. from = \"metadata\", a `hf-dataset` or `files` step of parquet files"));
        }
        let range = if s.encode_format == Encode::Png { 0..=9 } else { 0..=100 };
        if !range.contains(&s.encode_quality) {
            return Err(SettingError::new(
                "encode_quality",
                format!(
                    "encode_quality {} is out of {}–{} for {}",
                    s.encode_quality,
                    range.start(),
                    range.end(),
                    s.encode_format
                ),
            ));
        }
        for (key, v) in [
            ("number_sample_per_shard", s.number_sample_per_shard),
            ("image_size", s.image_size),
            ("concurrency", s.concurrency),
            ("per_host_connections", s.per_host_connections),
            ("max_image_bytes", s.max_image_bytes),
            ("max_pixels", s.max_pixels),
        ] {
            if v <= 0 {
                return Err(SettingError::new(key, format!("`{key}` must be a positive integer, found {v}")));
            }
        }
        for (key, v) in
            [("min_image_size", s.min_image_size), ("retries", s.retries), ("max_redirects", s.max_redirects)]
        {
            if v < 0 {
                return Err(SettingError::new(key, format!("`{key}` must not be negative, found {v}")));
            }
        }
        if s.timeout <= 0.0 {
            return Err(SettingError::new("timeout", "`timeout` must be positive (seconds)"));
        }
        if let Some(v) = &s.verify_hash
            && !(v.len() == 2 && v[1] == "sha256")
        {
            return Err(SettingError::new("verify_hash", "verify_hash is [COLUMN, \"sha256\"]"));
        }
        Ok(())
    }

    fn shards(&self, s: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        if s.ignore_ssl_certificate {
            crate::util::say_once(ssl_note(cx.step));
        }
        // Sources (`files`) are never built, so their row counts come from their parquet footers here.
        let mut owned: Vec<Vec<InputShard>> = Vec::with_capacity(cx.inputs.len());
        for input in &cx.inputs {
            let mut shards = Vec::with_capacity(input.shards.len());
            for shard in input.shards {
                let rows = match (&shard.file, shard.rows) {
                    (Some(file), None) => {
                        Some(parquet::row_count(file).with_context(|| format!("input {}/{}", input.step, shard.id))?)
                    }
                    (_, rows) => rows,
                };
                shards.push(InputShard { rows, ..shard.clone() });
            }
            owned.push(shards);
        }
        let views: Vec<InputShards> =
            cx.inputs.iter().zip(&owned).map(|(i, shards)| InputShards { shards, ..*i }).collect();
        Mapping::Rows(s.number_sample_per_shard as u64).shards(&views).map_err(|e| anyhow!(e))
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        if s.ignore_ssl_certificate {
            crate::util::say_once(ssl_note(cx.step));
        }
        let input = cx.inputs.first().ok_or_else(|| anyhow!("{} has no input", cx.target))?;
        let file = input
            .files
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "parquet"))
            .or(input.files.first())
            .ok_or_else(|| anyhow!("input {} has no file", input.target))?;
        let range = cx.rows()?;
        let mut wanted = vec![s.url_col.clone()];
        wanted.extend(s.caption_col.iter().cloned());
        wanted.extend(s.save_additional_columns.iter().cloned());
        if let Some(v) = &s.verify_hash {
            wanted.push(v[0].clone());
        }
        let table = parquet::read_rows(file, range, &wanted)
            .with_context(|| format!("input {} ({})", input.target, file.display()))?;
        shard::run_shard(cx, s, &table.rows, &table.invalid_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_img2dataset() {
        assert_eq!(index_digits(10_000), 4);
        assert_eq!(index_digits(7), 1);
        assert_eq!(index_digits(1), 1);
        assert_eq!(key("part-0_00003", 42, 4), "part-0_000030042");
        assert_eq!(output_names("a_00001"), ["a_00001.tar", "a_00001.parquet", "a_00001_stats.json"]);
    }
}
