//! The built-in step kinds, each a unit behind the kind API (`crate::kind`): its settings, its shard mapping,
//! its work and its tests. Adding a kind means a file (or folder) here and one line in [`ALL`].

pub mod clip_embed;
pub mod command;
pub mod files;
pub mod hf_dataset;
pub mod hub;
pub mod img2dataset;
pub mod knn_index;

use crate::kind::DynKind;

/// Every built-in kind.
pub const ALL: &[&dyn DynKind] = &[
    &files::Files,
    &command::Command,
    &clip_embed::ClipEmbed,
    &hf_dataset::HfDataset,
    &img2dataset::Img2Dataset,
    &knn_index::KnnIndex,
    &knn_index::KnnTrain,
    &knn_index::KnnEncode,
];

pub fn lookup(name: &str) -> Option<&'static dyn DynKind> {
    ALL.iter().copied().find(|k| k.name() == name)
}

pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|k| k.name()).collect()
}

pub fn names_for_help() -> String {
    names().iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}
