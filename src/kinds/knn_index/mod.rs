//! `knn-index`: the folder clip-retrieval's `clip_back` serves, built over every part of a `clip-embed` step
//! (all-to-one), for inner-product queries:
//!
//! - `image.index` and `text.index`: faiss indices in faiss's own format ([`faiss`]): an exact `IndexFlatIP`
//!   where autofaiss keeps the vectors, else `IVF{nlist},PQ{M}x8` ([`ivfpq`]; with an HNSW coarse quantizer,
//!   `IVF{nlist}_HNSW{M}`; behind OPQ, `OPQ{M}_{y},…`) chosen from the count and the budget as autofaiss
//!   chooses ([`factory`]), or the `index_key` given. clip_back loads them with
//!   `faiss.read_index`; the IVF's `nprobe` is stored in the file, where clip_back finds it.
//! - `image.json`, `text.json`: autofaiss's index infos (index key and parameters, size, compression ratio,
//!   latency), plus recall@10 against exact search on sample queries.
//! - `metadata/metadata_N.parquet`: the parts' metadata as clip-retrieval's index step copies them; clip_back
//!   concatenates them in sorted name order, the order of the index's ids.
//! - with `usearch = true`, a usearch HNSW graph per side beside (`image.usearch`).
//!
//! Training is its own target when the step reads a `knn-train` step ([`train`]); otherwise the step trains
//! on a sample itself. Encoding is one target a part when it also reads a `knn-encode` step ([`encode`]):
//! adding a part then encodes that part only. Parts are streamed: a chunk of rows is in memory at a time besides the index, and the
//! index's size is bounded by `max_index_memory_usage`.

mod build;
pub mod encode;
pub mod factory;
pub mod faiss;
mod graph;
pub mod hnsw;
pub mod ivfpq;
mod kmeans;
pub mod linalg;
pub mod meta;
pub mod opq;
mod parts;
pub mod pq;
mod probes;
mod settings;
pub mod train;
pub mod vectors;

pub use encode::KnnEncode;
pub use settings::{Embeddings, EncodeSettings, Metric, Settings, TrainSettings, settings};
pub use train::KnnTrain;

use crate::kind::{BuildCx, Built, Inputs, Kind, Mapping, SettingError, ShardCx, Shards};
use anyhow::anyhow;

pub struct KnnIndex;

/// Where the metadata parts go, as clip_back expects them (`indice_folder + "/metadata"`).
pub const METADATA_DIR: &str = "metadata";
/// Rows read and added per chunk.
pub(crate) const CHUNK: usize = 16_384;
/// Queries sampled from the data for the recall and latency figures.
pub(crate) const PROBES: usize = 100;
/// Multiply-adds the exact side of the recall estimate may spend.
pub(crate) const RECALL_BUDGET: f64 = 1e11;

impl Kind for KnnIndex {
    type Settings = Settings;
    const NAME: &'static str = "knn-index";
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "the index folder clip-retrieval's clip_back serves (image.index, text.index in \
                                 faiss's format: exact or IVF-PQ within max_index_memory_usage; their .json \
                                 infos; metadata/) over every part of a clip-embed step; query it with `dsmake \
                                 search`";
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
            ("nprobe", s.nprobe.unwrap_or(1), 1),
        ] {
            if v < min || v > 100_000 {
                return Err(SettingError::new(key, format!("`{key}` must be between {min} and 100000, found {v}")));
            }
        }
        s.choice().map(|_| ())
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
