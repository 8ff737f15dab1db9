//! knn-index's settings.

use super::hnsw::{self, Quantization};
use crate::kind::settings::Settings as _;
use anyhow::anyhow;
use serde_json::Value;

crate::setting_enum! {
    /// Which embeddings of the clip-embed parts are indexed.
    pub enum Embeddings {
        Image = "image",
        Text = "text",
    }
}

crate::setting_enum! {
    /// The similarity the index ranks by.
    pub enum Metric {
        /// Inner product: cosine similarity for clip-embed's L2-normalised vectors.
        Ip = "ip",
    }
}

crate::settings! {
    pub struct Settings {
        /// which embeddings to index: "image" (img_emb/) or "text" (text_emb/)
        embeddings: Embeddings = Embeddings::Image,
        /// "ip" (inner product: cosine similarity for clip-embed's normalised vectors)
        metric: Metric = Metric::Ip,
        /// HNSW neighbours per node (M)
        connectivity: i64 = 16,
        /// HNSW candidates while building (efConstruction)
        expansion_add: i64 = 128,
        /// HNSW candidates per query (efSearch; recall@10 ≥ 0.95 even on uniformly random vectors); `dsmake
        /// search` uses at least k
        expansion_search: i64 = 768,
        /// how the index stores vectors: "f16", "bf16", "f32" or "i8" (a quarter of f32's memory)
        quantization: Quantization = Quantization::F16,
        /// also write an exact faiss IndexFlatIP (`knn.index`, float32); default: when there are at most
        /// 1,000,000 vectors
        exact_faiss: Option<bool>,
    }
}

/// A knn-index step's settings, from its effective settings (for `dsmake search`).
pub fn settings(value: &Value) -> anyhow::Result<Settings> {
    let map = value.as_object().ok_or_else(|| anyhow!("knn-index settings are not a table"))?;
    Ok(Settings::from_effective(map)?)
}

impl Settings {
    /// `img_emb` or `text_emb`: the folder and file prefix of the parts' embeddings.
    pub fn prefix(&self) -> &'static str {
        match self.embeddings {
            Embeddings::Image => "img_emb",
            Embeddings::Text => "text_emb",
        }
    }

    /// The usearch file's name: `image.usearch` or `text.usearch`, as clip-retrieval names its indices.
    pub fn index_file(&self) -> String {
        format!("{}.usearch", self.embeddings)
    }

    pub fn params(&self) -> hnsw::Params {
        hnsw::Params {
            connectivity: self.connectivity as usize,
            expansion_add: self.expansion_add as usize,
            expansion_search: self.expansion_search as usize,
            quantization: self.quantization,
        }
    }
}
