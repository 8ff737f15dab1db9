//! Helpers every layer may use. They import nothing from the rest of the crate.

pub mod cache;
pub mod files;
mod glob;
pub mod memory;
pub mod named_file;
pub mod secret;
pub mod stat_cache;
pub mod suggest;

pub use cache::cache_dir;
pub use files::{hash_file, write_atomically};
pub use glob::glob;
pub use named_file::find_named_file;
#[cfg(test)]
pub mod fuzz;
