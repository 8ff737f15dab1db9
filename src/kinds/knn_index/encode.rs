//! `knn-encode`: one target per clip-embed part, holding that part's vectors encoded by a `knn-train` step's
//! quantizers: each vector's list and PQ code, grouped by list (`img_emb_N.ivfpq`, `text_emb_N.ivfpq`). A
//! knn-index step that reads it (`from = ["emb", "knn_train", "knn_encode"]`) concatenates the parts' lists
//! in its row order instead of encoding: adding a part encodes that part only, and the index written is the
//! very one a build that encodes every part itself writes (each list holds its vectors in id order either
//! way, and a part is encoded in the same chunks).
//!
//! `from` is the parts' step, then the knn-train step. A part's encoding records the trained index it was
//! made with (the blake3 of its file), which the knn-index checks.
//!
//! File layout (little-endian): `DKpl`, the trained file's blake3 (32 bytes), rows, nlist, code size (u64),
//! the list sizes (u64 each), then each list's codes and its row numbers within the part (u32).

use super::build::trained_inputs;
use super::ivfpq::{IvfPq, List};
use super::parts::{any_part_number, collect_parts};
use super::settings::EncodeSettings;
use super::{CHUNK, vectors};
use crate::kind::{BuildCx, Built, Inputs, Kind, SettingError, ShardCx, ShardSpec, Shards};
use anyhow::{Context, bail};
use serde_json::json;
use std::io::{BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 4] = b"DKpl";

pub struct KnnEncode;

/// How the encoding of a part ends (what a knn-index looks for among its inputs).
pub const ENCODED_EXT: &str = ".ivfpq";

/// The encoding of part `number` of the side whose parts are `{prefix}_N.npy`.
pub fn encoded_file(prefix: &str, number: &str) -> String {
    format!("{prefix}_{number}{ENCODED_EXT}")
}

impl Kind for KnnEncode {
    type Settings = EncodeSettings;
    const NAME: &'static str = "knn-encode";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "encodes each clip-embed part with a knn-train step's quantizers, one target a part \
                                 (from = [parts, knn-train]): a knn-index reading it adds a new part by encoding \
                                 that part only";
    const INPUTS: Inputs = Inputs::Required;

    fn check(&self, _: &EncodeSettings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new(
                "embeddings",
                "knn-encode reads a clip-embed step's parts and a knn-train step: `from = [parts, knn_train]`",
            ));
        }
        Ok(())
    }

    fn shards(&self, _: &EncodeSettings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let [parts, train] = cx.inputs.as_slice() else {
            bail!("knn-encode reads two steps, `from = [parts, knn_train]`; it has {}", cx.inputs.len());
        };
        if train.shards.len() > 1 {
            bail!(
                "knn-encode's second input ({}) is a knn-train step, one target; it has {}",
                train.step,
                train.shards.len()
            );
        }
        if train.shards.is_empty() {
            return Ok(Shards::Known(Vec::new()));
        }
        // A built shard (clip-embed's) is one part; a source's files are grouped by part number.
        let mut out: Vec<ShardSpec> = Vec::new();
        for (j, shard) in parts.shards.iter().enumerate() {
            let id = match &shard.file {
                None => shard.id.clone(),
                Some(file) => {
                    let Some(number) = any_part_number(file) else { continue };
                    number
                }
            };
            match out.iter_mut().find(|s| s.id == id) {
                Some(s) => s.inputs.push((0, j)),
                None => out.push(ShardSpec { id, coords: json!({}), inputs: vec![(0, j)], source: None }),
            }
        }
        for s in &mut out {
            s.inputs.push((1, 0));
            s.inputs.sort_unstable();
        }
        Ok(Shards::Known(out))
    }

    fn build(&self, s: &EncodeSettings, cx: &BuildCx) -> anyhow::Result<Built> {
        let trained = trained_inputs(&cx.inputs)?
            .with_context(|| format!("{}: no knn-train input (train.json): `from = [parts, knn_train]`", cx.target))?;
        let mut outputs = Vec::new();
        let mut rows = 0;
        for (side, prefix) in s.embeddings.sides() {
            let parts = collect_parts(&cx.inputs, prefix)?;
            let [part] = parts.as_slice() else {
                bail!("{}: {} {prefix} parts where one was expected", cx.target, parts.len());
            };
            let (mut ivf, hash) = trained.side_with_hash(side)?;
            let mut npy = vectors::NpyRows::open(&part.vectors).with_context(|| format!("part {}", part.name()))?;
            if npy.rows > 0 && npy.cols != ivf.input_dim() {
                bail!(
                    "part {}: vectors of {} dimensions, the quantizers take {}",
                    part.name(),
                    npy.cols,
                    ivf.input_dim()
                );
            }
            let mut chunk = Vec::with_capacity(CHUNK * npy.cols);
            loop {
                cx.cancel.check()?;
                chunk.clear();
                let at = npy.position();
                if npy.next_rows(CHUNK, &mut chunk).with_context(|| format!("part {}", part.name()))? == 0 {
                    break;
                }
                ivf.add(at as i64, &chunk);
            }
            let name = encoded_file(prefix, &part.number);
            write(&cx.out_dir.join(&name), &hash, npy.rows as u64, &ivf)?;
            outputs.push(name);
            rows = npy.rows as u64;
        }
        Ok(Built { outputs, rows: Some(rows), failures: None, retryable: None, stats: json!({ "rows": rows }) })
    }
}

fn write(path: &Path, hash: &[u8; 32], rows: u64, ivf: &IvfPq) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    (|| -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(hash)?;
        for v in [rows, ivf.nlist() as u64, ivf.pq.m as u64] {
            out.write_all(&v.to_le_bytes())?;
        }
        for l in &ivf.lists {
            out.write_all(&(l.ids.len() as u64).to_le_bytes())?;
        }
        for l in &ivf.lists {
            out.write_all(&l.codes)?;
            let ids: Vec<u8> = l.ids.iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
            out.write_all(&ids)?;
        }
        Ok(())
    })()
    .with_context(|| format!("cannot write {}", path.display()))?;
    super::faiss::finish_file(out, path)
}

/// One part's encoded lists, read back: row numbers within the part.
pub struct Encoded {
    pub rows: u64,
    pub lists: Vec<List>,
}

/// Reads an encoding made with the trained file whose blake3 is `hash`, for an index of `nlist` lists and
/// `m`-byte codes.
pub fn read(path: &Path, hash: &[u8; 32], nlist: usize, m: usize) -> anyhow::Result<Encoded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut c = super::faiss::Cursor::new(&bytes);
    (|| -> anyhow::Result<Encoded> {
        if &c.fourcc()? != MAGIC {
            bail!("not a knn-encode part");
        }
        if c.take(32)? != hash {
            bail!("encoded with other quantizers than the knn-train input's: rebuild the knn-encode step");
        }
        let (rows, n, code) = (c.u64()?, c.u64()? as usize, c.u64()? as usize);
        if n != nlist || code != m {
            bail!("{n} lists of {code}-byte codes, the index has {nlist} of {m}");
        }
        let sizes = (0..n).map(|_| Ok(c.u64()? as usize)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut lists = Vec::with_capacity(n);
        for size in sizes {
            let codes = c.take(size.checked_mul(m).context("implausible list size")?)?.to_vec();
            let ids = c.take(size * 4)?.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64);
            lists.push(List { codes, ids: ids.collect() });
        }
        if c.at != bytes.len() {
            bail!("{} bytes left after the lists", bytes.len() - c.at);
        }
        Ok(Encoded { rows, lists })
    })()
    .with_context(|| format!("{}", path.display()))
}
