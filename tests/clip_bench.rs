//! Throughput of the CLIP image tower on this machine, run by `tests/bench/clip_cpu.sh` (ignored by
//! `cargo test`). `CLIP_BENCH_MODEL`: `tiny` (the fixture's tiny CLIP, real weights), `b32` (ViT-B/32
//! geometry) or `l14-336` (ViT-L/14 at 336 px); the last two use zero weights, since the time of a dense
//! forward pass does not depend on the values. `CLIP_BENCH_BATCH` (default 8) and `CLIP_BENCH_ITERS`
//! (default 3) size the run; threads are rayon's (`RAYON_NUM_THREADS`). Prints one JSON line.

use candle_nn::VarBuilder;
use dsmake::clip::config::ClipConfig;
use dsmake::clip::tokenizer::ClipTokenizer;
use dsmake::clip::{Clip, device};
use std::path::PathBuf;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "a benchmark: run tests/bench/clip_cpu.sh"]
fn image_tower_throughput() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden/tiny-clip");
    let which = std::env::var("CLIP_BENCH_MODEL").unwrap_or_else(|_| "tiny".into());
    let dev = device(&std::env::var("CLIP_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap();
    let dtype = dsmake::clip::default_dtype(&dev);
    let clip = match which.as_str() {
        "tiny" => Clip::load(&fixture, &dev, dtype).unwrap(),
        geometry => {
            let config = match geometry {
                "b32" => ClipConfig::vit_b_32(),
                "l14-336" => ClipConfig::vit_l_14_336(),
                other => panic!("CLIP_BENCH_MODEL={other}: expected tiny, b32 or l14-336"),
            };
            let tokenizer = ClipTokenizer::from_file(&fixture.join("tokenizer.json"), 77).unwrap();
            Clip::from_var_builder(config, tokenizer, VarBuilder::zeros(dtype, &dev)).unwrap()
        }
    };
    let (batch, iters) = (env("CLIP_BENCH_BATCH", 8), env("CLIP_BENCH_ITERS", 3));
    let size = clip.config.vision.image_size;
    let mut rng = fastrand::Rng::with_seed(7);
    let pixels: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.f32() * 4.0 - 2.0).collect();
    clip.embed_pixels(pixels.clone(), batch).unwrap(); // warm-up: allocations, lazy initialisation
    let started = Instant::now();
    for _ in 0..iters {
        clip.embed_pixels(pixels.clone(), batch).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "bench": "clip image tower",
        "model": which,
        "device": if dev.is_cuda() { "cuda" } else { "cpu" },
        "dtype": format!("{dtype:?}"),
        "threads": rayon::current_num_threads(),
        "batch": batch,
        "images": batch * iters,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "images_per_s": ((batch * iters) as f64 / seconds * 10.0).round() / 10.0,
    });
    println!("{line}");
}
