//! dsmake: a declarative build system for datasets. The binary is a thin shell over this library.
//!
//! Layers, bottom up (a module imports only from layers below it; ARCHITECTURE.md has the rules):
//! `util`, `error`, `formats` → `kind` (the kind API) → `clip`, `store` → `kinds` (each step kind) →
//! `pipeline` (files → steps) → `plan` (steps → keyed targets, compared with the store) → `exec` (the build
//! loop, jobs, the worker) → `remote` (Spark, Databricks) → `cli`.

pub mod cli;
pub mod clip;
pub mod error;
pub mod exec;
pub mod formats;
pub mod kind;
pub mod kinds;
pub mod pipeline;
pub mod plan;
pub mod remote;
pub mod retry;
pub mod store;
pub mod util;
