//! `knn-index`: one nearest-neighbour index over every part of a `clip-embed` step (all-to-one), for
//! inner-product queries, with what answers a query beside it:
//!
//! - `image.usearch` (or `text.usearch`): a usearch HNSW graph, vectors stored in f16 by default; keys are
//!   row numbers. Python: `usearch.index.Index.restore(path, view=True)`.
//! - `knn.index`: an exact faiss `IndexFlatIP` (float32), as clip-retrieval's back end and `faiss.read_index`
//!   load it; written by default up to [`EXACT_FAISS_AUTO_MAX`] vectors, where brute force still answers in
//!   well under a second and the file stays a few GB (`exact_faiss` forces it on or off).
//! - `metadata.parquet`: `image_path`, `caption`, `url` of row i = the vector with key i, in the order of
//!   the parts (and of the rows within each part).
//! - `index_infos.json`: autofaiss's summary (index key and parameters, size, compression ratio, search
//!   latency), plus a recall@10 estimate against brute force on a sample of queries.
//!
//! Parts are streamed: only a chunk of rows is in memory at a time besides the index itself.

mod build;
pub mod faiss;
pub mod hnsw;
pub mod meta;
mod parts;
mod probes;
mod settings;
pub mod vectors;

pub use settings::{Embeddings, Metric, Settings, settings};

use crate::kind::{BuildCx, Built, Inputs, Kind, Mapping, SettingError, ShardCx, Shards};
use anyhow::anyhow;

pub struct KnnIndex;

/// Unless `exact_faiss` says otherwise, the exact index is written up to this many vectors (3 GB of float32
/// at 768 dimensions; brute force over it takes ~0.1 s per query on a few cores).
pub const EXACT_FAISS_AUTO_MAX: u64 = 1_000_000;
pub const FAISS_FILE: &str = "knn.index";
pub const METADATA_FILE: &str = "metadata.parquet";
pub const INFOS_FILE: &str = "index_infos.json";
/// Rows read and added per chunk.
pub(crate) const CHUNK: usize = 16_384;
/// Queries sampled from the data for the latency and recall figures in `index_infos.json`.
pub(crate) const PROBES: usize = 100;
/// Multiply-adds the brute-force side of the recall estimate may spend.
pub(crate) const RECALL_BUDGET: f64 = 1e10;

impl Kind for KnnIndex {
    type Settings = Settings;
    const NAME: &'static str = "knn-index";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "an inner-product nearest-neighbour index over every part of a clip-embed step \
                                 (usearch HNSW, an exact faiss IndexFlatIP, metadata.parquet); query it with \
                                 `dsmake search`";
    const INPUTS: Inputs = Inputs::Required;

    fn check(&self, s: &Settings, has_inputs: bool) -> Result<(), SettingError> {
        if !has_inputs {
            return Err(SettingError::new(
                "embeddings",
                "knn-index reads a clip-embed step's parts: the step needs `from`",
            ));
        }
        for (key, v, min) in [
            ("connectivity", s.connectivity, 2),
            ("expansion_add", s.expansion_add, 1),
            ("expansion_search", s.expansion_search, 1),
        ] {
            if v < min || v > 100_000 {
                return Err(SettingError::new(key, format!("`{key}` must be between {min} and 100000, found {v}")));
            }
        }
        Ok(())
    }

    fn shards(&self, _: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        // No parts yet: nothing to index (a target with no input would fail on every build).
        if cx.inputs.iter().all(|i| i.shards.is_empty()) {
            return Ok(Shards::Known(Vec::new()));
        }
        Mapping::All.shards(&cx.inputs).map_err(|e| anyhow!(e))
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        build::build(s, cx)
    }
}
