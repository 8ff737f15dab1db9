//! Helpers every layer may use. They import nothing from the rest of the crate.

pub mod cache;
pub mod digest;
pub mod files;
mod glob;
pub mod memory;
pub mod named_file;
pub mod secret;
pub mod simd;
pub mod sized_names;
pub mod stat_cache;
pub mod suggest;
pub mod text_order;
pub mod walk;

pub use cache::cache_dir;
pub use files::{hash_file, write_atomically};
pub use glob::glob;
pub use named_file::find_named_file;
#[cfg(test)]
pub mod fuzz;

/// Prints `message` to stderr once per process: plans run again during a build, and a note such as "this
/// revision is pinned to that commit" is said once.
pub fn say_once(message: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !said.contains(&message) {
        eprintln!("{message}");
        said.push(message);
    }
}
