//! Throughput of the CLIP image tower on this machine, run by `tests/bench/clip_cpu.sh` (ignored by
//! `cargo test`). `CLIP_BENCH_MODEL`: `tiny` (the fixture's tiny CLIP, real weights), `b32` (ViT-B/32
//! geometry) or `l14-336` (ViT-L/14 at 336 px) with zero weights (the time of a dense forward pass does not
//! depend on the values), or a model folder, loaded as the `model_path` setting loads it. The input is
//! `CLIP_BENCH_PIXELS` (a float32 .npy [batch, 3, size, size], so that another implementation can run the
//! same batch) or else `CLIP_BENCH_BATCH` (default 8) random images; `CLIP_BENCH_EMBEDDINGS` names a .npy
//! to write the batch's embeddings to (float32, not normalised). `CLIP_BENCH_ITERS` (default 3) timed
//! passes follow one warm-up; threads are rayon's (`RAYON_NUM_THREADS`). Prints one JSON line.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use dsmake::clip::config::ClipConfig;
use dsmake::clip::npy;
use dsmake::clip::tokenizer::ClipTokenizer;
use dsmake::clip::{Clip, device};
use std::path::{Path, PathBuf};
use std::time::Instant;

// Runs with mimalloc, the allocator the dsmake binary runs clip-embed with: see main.rs.

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "a benchmark: run tests/bench/clip_cpu.sh"]
fn image_tower_throughput() {
    // CLIP_BENCH_FIXTURE: where the tiny CLIP is when the binary runs away from its source tree (the GPU check).
    let fixture = std::env::var_os("CLIP_BENCH_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden/tiny-clip"));
    let which = std::env::var("CLIP_BENCH_MODEL").unwrap_or_else(|_| "tiny".into());
    let dev = device(&std::env::var("CLIP_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap();
    let dtype = dsmake::clip::default_dtype(&dev);
    let clip = match which.as_str() {
        "tiny" => Clip::load(&fixture, &dev, dtype).unwrap(),
        "b32" | "l14-336" => {
            let config = if which == "b32" { ClipConfig::vit_b_32() } else { ClipConfig::vit_l_14_336() };
            let tokenizer = ClipTokenizer::from_file(&fixture.join("tokenizer.json"), 77).unwrap();
            Clip::from_var_builder(config, tokenizer, VarBuilder::zeros(dtype, &dev)).unwrap()
        }
        dir if Path::new(dir).is_dir() => Clip::load(Path::new(dir), &dev, dtype).unwrap(),
        other => panic!("CLIP_BENCH_MODEL={other}: expected tiny, b32, l14-336 or a model folder"),
    };
    let size = clip.config.vision.image_size;
    let (pixels, batch) = match std::env::var("CLIP_BENCH_PIXELS") {
        Ok(path) => {
            let a = npy::read(Path::new(&path)).unwrap();
            assert_eq!(&a.shape[1..], [3, size, size], "{path}: pixels for a {size}x{size} model");
            (a.data, a.shape[0])
        }
        Err(_) => {
            let batch = env("CLIP_BENCH_BATCH", 8);
            let mut rng = fastrand::Rng::with_seed(7);
            ((0..batch * 3 * size * size).map(|_| rng.f32() * 4.0 - 2.0).collect(), batch)
        }
    };
    let iters = env("CLIP_BENCH_ITERS", 3);
    // The tower on a tensor made once, as PyTorch's side gets it (embed_pixels would time a copy of the batch).
    let input = Tensor::from_vec(pixels, (batch, 3, size, size), &dev).unwrap().to_dtype(dtype).unwrap();
    // Warm-up: allocations, lazy initialisation (candle's thread pool).
    let embeddings = clip.vision.forward(&input).unwrap().to_dtype(DType::F32).unwrap();
    let started = Instant::now();
    for _ in 0..iters {
        clip.vision.forward(&input).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(path) = std::env::var("CLIP_BENCH_EMBEDDINGS") {
        let mut out = npy::RowWriter::create(Path::new(&path), npy::Dtype::F32, clip.config.projection_dim).unwrap();
        out.push(&embeddings.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
        out.finish().unwrap();
    }
    let line = serde_json::json!({
        "bench": "clip image tower",
        "impl": "dsmake (candle)",
        "model": which,
        "device": if dev.is_cuda() { "cuda" } else { "cpu" },
        "dtype": format!("{dtype:?}"),
        "threads": candle_core::utils::get_num_threads(),
        "batch": batch,
        "images": batch * iters,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "images_per_s": ((batch * iters) as f64 / seconds * 100.0).round() / 100.0,
    });
    println!("{line}");
}
