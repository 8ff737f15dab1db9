//! The integration tests: one test binary with a module per area (`cargo test --test it AREA::`), so that the
//! dsmake library, candle, the AWS SDK and arrow are linked once, not once per area (each link is about
//! 600 MB of debug binary). Shared helpers are in `common`.

// The allocator the dsmake binary runs clip-embed with (src/main.rs), for `clip_bench`: each op's output is a
// fresh buffer, and the system allocator hands large ones back to the kernel, to be page-faulted in again on the
// next pass. A binary has one global allocator, so it is declared here for every area; the other tests run
// dsmake as a child process and do not depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[macro_use]
mod common;

mod architecture;
mod clip_bench;
mod clip_embed;
mod clip_hub;
mod clip_parity;
mod engine;
mod hf_dataset;
mod img2dataset;
mod interrupt;
mod knn_index;
mod malformed_pipelines;
mod openclip_parity;
mod plan_fixture;
mod publish;
mod recipes;
mod remote_databricks;
mod remote_spark;
mod s3_listing_bench;
mod s3_store;
mod unavailable;
