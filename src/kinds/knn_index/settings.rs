//! knn-index's and knn-train's settings.

use super::factory::{self, IndexKey};
use super::hnsw::{self, Quantization};
use crate::kind::SettingError;
use crate::kind::settings::Settings as _;
use anyhow::anyhow;
use serde_json::Value;

crate::setting_enum! {
    /// Which embeddings of the clip-embed parts are indexed.
    pub enum Embeddings {
        /// `image.index` and `text.index`, the folder clip_back serves.
        Both = "both",
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
        /// which embeddings to index: "both" (image.index and text.index, as clip-retrieval's index step), "image"
        /// (img_emb/) or "text" (text_emb/)
        embeddings: Embeddings = Embeddings::Both,
        /// "ip" (inner product: cosine similarity for clip-embed's normalised vectors)
        metric: Metric = Metric::Ip,
        /// the faiss index_factory string of image.index/text.index ("Flat", "IVF4096,PQ64x8"); default: chosen
        /// from the vector count and max_index_memory_usage as autofaiss does. A knn-train step it reads decides
        /// instead.
        index_key: Option<String>,
        /// the most memory the index may take (autofaiss's setting; B, K, M, G, T)
        max_index_memory_usage: String = "4G".into(),
        /// memory for training and adding (autofaiss's setting): bounds the training sample
        current_memory_available: String = "16G".into(),
        /// IVF lists scanned per query, written into the index (clip_back uses it as is); default: the fewest
        /// that reach the best recall@10 measured on sample queries
        nprobe: Option<i64>,
        /// also write a usearch HNSW graph per side (`image.usearch`, `text.usearch`)
        usearch: bool = false,
        /// usearch HNSW neighbours per node (M)
        connectivity: i64 = 16,
        /// usearch HNSW candidates while building (efConstruction)
        expansion_add: i64 = 128,
        /// usearch HNSW candidates per query (efSearch); `dsmake search --hnsw` uses at least k
        expansion_search: i64 = 768,
        /// how the usearch graph stores vectors: "f16", "bf16", "f32" or "i8"
        quantization: Quantization = Quantization::F16,
        /// true: an exact IndexFlatIP whatever its size (index_key = "Flat"); false: approximate (autofaiss's
        /// quantized key) even where autofaiss keeps the vectors; default: as autofaiss's choice decides
        exact_faiss: Option<bool>,
    }
}

crate::settings! {
    pub struct TrainSettings {
        /// which embeddings to train for: "both", "image" or "text" (as the knn-index step reading it)
        embeddings: Embeddings = Embeddings::Both,
        /// the faiss index_factory string ("IVF4096,PQ64x8"); default: chosen from the vector count and
        /// max_index_memory_usage as autofaiss does
        index_key: Option<String>,
        /// the most memory the index may take (autofaiss's setting; B, K, M, G, T)
        max_index_memory_usage: String = "4G".into(),
        /// memory for training (autofaiss's setting): bounds the training sample
        current_memory_available: String = "16G".into(),
        /// the embeddings' dimension, which the plan needs before anything is read (768: CLIP ViT-L/14)
        dimensions: i64 = 768,
    }
}

crate::settings! {
    pub struct EncodeSettings {
        /// which embeddings to encode: "both", "image" or "text" (as the knn-train step it reads)
        embeddings: Embeddings = Embeddings::Both,
    }
}

/// A knn-index step's settings, from its effective settings (for `dsmake search`).
pub fn settings(value: &Value) -> anyhow::Result<Settings> {
    let map = value.as_object().ok_or_else(|| anyhow!("knn-index settings are not a table"))?;
    Ok(Settings::from_effective(map)?)
}

/// What decides the index type, common to both kinds.
#[derive(Debug, Clone)]
pub struct Choice {
    pub index_key: Option<IndexKey>,
    pub exact: Option<bool>,
    pub budget: u64,
    pub memory: u64,
}

impl Choice {
    pub fn new(
        index_key: Option<&str>,
        exact: Option<bool>,
        budget: &str,
        memory: &str,
    ) -> Result<Choice, SettingError> {
        let index_key =
            index_key.map(IndexKey::parse).transpose().map_err(|e| SettingError::new("index_key", format!("{e:#}")))?;
        let budget =
            factory::parse_memory(budget).map_err(|e| SettingError::new("max_index_memory_usage", format!("{e:#}")))?;
        let memory = factory::parse_memory(memory)
            .map_err(|e| SettingError::new("current_memory_available", format!("{e:#}")))?;
        if let (Some(key), Some(exact)) = (index_key, exact)
            && (key == IndexKey::Flat) != exact
        {
            return Err(SettingError::new(
                "exact_faiss",
                format!("exact_faiss = {exact} contradicts index_key `{key}`"),
            ));
        }
        Ok(Choice { index_key, exact, budget, memory })
    }

    /// The index for `n` vectors of `d`.
    pub fn key(&self, n: u64, d: usize) -> anyhow::Result<IndexKey> {
        let key = match (self.index_key, self.exact) {
            (Some(key), _) => key,
            (None, Some(true)) => IndexKey::Flat,
            (None, Some(false)) => factory::choose_approximate(n, d, self.budget)?,
            (None, None) => factory::choose(n, d, self.budget)?,
        };
        key.check(n, d)?;
        Ok(key)
    }
}

impl Embeddings {
    /// The sides indexed: (name, parts' prefix).
    pub fn sides(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Embeddings::Both => &[("image", "img_emb"), ("text", "text_emb")],
            Embeddings::Image => &[("image", "img_emb")],
            Embeddings::Text => &[("text", "text_emb")],
        }
    }
}

impl Settings {
    pub fn choice(&self) -> Result<Choice, SettingError> {
        Choice::new(
            self.index_key.as_deref(),
            self.exact_faiss,
            &self.max_index_memory_usage,
            &self.current_memory_available,
        )
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

impl TrainSettings {
    pub fn choice(&self) -> Result<Choice, SettingError> {
        Choice::new(self.index_key.as_deref(), None, &self.max_index_memory_usage, &self.current_memory_available)
    }
}
