//! dsmake: a declarative build system for datasets. The binary is a thin shell over this library.
//!
//! Layout: `pipeline` parses files, `plan` expands steps into keyed shard targets and compares them with the
//! `store`, `exec` runs what is missing or stale through the worker, and `kinds` holds each step kind.

pub mod cli;
pub mod clip;
pub mod exec;
pub mod formats;
pub mod kinds;
pub mod pipeline;
pub mod plan;
pub mod remote;
pub mod retry;

pub mod store;
