//! File formats that more than one step kind writes.

pub mod columns;
pub mod parquet;
