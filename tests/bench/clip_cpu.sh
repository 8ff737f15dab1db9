#!/usr/bin/env bash
# Images per second of dsmake's CLIP image tower (candle) on this machine's CPU: the fixture's tiny CLIP and
# ViT-B/32 always, ViT-L/14-336 with `--large` (slow on a few cores: about a minute on 2). Prints one JSON
# line per model. The PyTorch half of the comparison (open_clip or transformers from PyPI on the same
# geometry, same threads) is a later step; set THREADS to pin both to the same count.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake/target}"
export RAYON_NUM_THREADS="${THREADS:-$(nproc)}"

models=(tiny b32)
[[ "${1:-}" == "--large" ]] && models+=(l14-336)
cargo test --release --quiet --test clip_bench --no-run
for model in "${models[@]}"; do
  batch=8; iters=3
  [[ $model == l14-336 ]] && { batch=2; iters=1; }
  CLIP_BENCH_MODEL=$model CLIP_BENCH_BATCH=$batch CLIP_BENCH_ITERS=$iters \
    cargo test --release --quiet --test clip_bench -- --ignored --nocapture 2>/dev/null | grep '^{'
done
