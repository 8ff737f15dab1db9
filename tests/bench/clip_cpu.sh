#!/usr/bin/env bash
# Images per second of CLIP's image tower on this machine's CPU, dsmake (candle) vs PyTorch (transformers'
# CLIPVisionModelWithProjection, fp32, torch.inference_mode) on the same architecture, the same weights, the
# same batch of pixels and the same number of threads, in one run; prints both, the ratio dsmake ÷ torch and
# the smallest cosine between their embeddings of the batch (the comparison is honest only if it is ~1).
#
#   tests/bench/clip_cpu.sh              # the fixture's tiny CLIP (real weights) and ViT-B/32 (random weights)
#   tests/bench/clip_cpu.sh --large      # also ViT-L/14-336 (random weights: 1.7 GB to write once; slow)
#   THREADS=1 ROUNDS=5 tests/bench/clip_cpu.sh
#
# THREADS (default: every core) sets both sides' threads (RAYON_NUM_THREADS, torch.set_num_threads).
# Each of ROUNDS (default 3) runs dsmake then torch, each one warm-up pass and ITERS timed passes over a
# batch of BATCH images; the figures are each side's best round, since other work on a shared machine only
# ever slows a round down (all rounds are printed too). Compare on an idle machine: when other processes
# compete for the cores, PyTorch's OpenMP threads lose far more (up to 10x at 2 threads) than candle's.
#
# The PyTorch side lives in a venv of its own under ~/.cache/dsmake/bench-clip, made here from PyPI with
# pinned versions (PyPI's torch is the CUDA build, a large download once; it runs on the CPU here). Random
# weights are made once with transformers' initialisation (seed 0) and saved there as a Hugging Face CLIP
# folder, which dsmake loads as the `model_path` setting does (tests/it/clip_bench.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake/target}"
CORES=$(nproc)  # before OMP_NUM_THREADS is set, which nproc obeys
THREADS=${THREADS:-$CORES}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-8}
ITERS=${ITERS:-3}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

CACHE="$HOME/.cache/dsmake/bench-clip"
VENV="$CACHE/venv"
REQUIREMENTS="torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0"
if ! "$VENV/bin/python" - $REQUIREMENTS 2>/dev/null <<'EOF'; then
import importlib.metadata as m, sys
sys.exit(any(m.version(name) != version for name, version in (r.split("==") for r in sys.argv[1:])))
EOF
  echo "== creating $VENV with $REQUIREMENTS" >&2
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
fi
PY="$VENV/bin/python"
TORCH_BENCH="$PWD/tests/bench/clip_torch.py"
TOKENIZER="$PWD/tests/fixtures/clip-golden/tiny-clip/tokenizer.json"

echo "== building the candle benchmark (release)" >&2
# The integration-test binary (tests/it/), of which the benchmark is one ignored test.
BENCH=$(cargo test --release --quiet --test it --no-run --message-format=json |
  jq -r 'select(.executable != null and .target.name == "it") | .executable')

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

models=(tiny b32)
[[ "${1:-}" == "--large" ]] && models+=(l14-336)
for model in "${models[@]}"; do
  batch=$BATCH iters=$ITERS
  case $model in
    tiny) dir="$PWD/tests/fixtures/clip-golden/tiny-clip" ;;
    b32) dir="$CACHE/vit-b-32-random" ;;
    l14-336) dir="$CACHE/vit-l-14-336-random" batch=2 iters=1 ;;
  esac
  if [[ ! -d $dir ]]; then
    echo "== random $model weights → $dir" >&2
    "$PY" "$TORCH_BENCH" model "$model" "$dir" "$TOKENIZER"
  fi
  "$PY" "$TORCH_BENCH" pixels "$dir" "$batch" "$WORK/pixels.npy"
  for round in $(seq "$ROUNDS"); do
    CLIP_BENCH_MODEL="$dir" CLIP_BENCH_PIXELS="$WORK/pixels.npy" CLIP_BENCH_EMBEDDINGS="$WORK/dsmake.npy" \
      CLIP_BENCH_ITERS=$iters "$BENCH" --ignored --nocapture --exact clip_bench::image_tower_throughput 2>"$WORK/dsmake.log" |
      grep '^{' >>"$WORK/$model.dsmake.jsonl" || { cat "$WORK/dsmake.log" >&2; exit 1; }
    "$PY" "$TORCH_BENCH" bench "$dir" "$WORK/pixels.npy" "$iters" "$THREADS" "$WORK/dsmake.npy" \
      >>"$WORK/$model.torch.jsonl"
    echo "   $model round $round: dsmake $(jq -r .images_per_s <(tail -1 "$WORK/$model.dsmake.jsonl")) images/s," \
      "torch $(jq -r .images_per_s <(tail -1 "$WORK/$model.torch.jsonl")) images/s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
  jq -n -c --arg model "$model" --argjson threads "$THREADS" --argjson batch "$batch" --argjson iters "$iters" \
    --slurpfile d "$WORK/$model.dsmake.jsonl" --slurpfile t "$WORK/$model.torch.jsonl" '
    ([$d[].images_per_s] | max) as $dm | ([$t[].images_per_s] | max) as $tm |
    {bench: "clip image tower, dsmake vs torch", model: $model, threads: $threads, batch: $batch,
     iters: $iters, dsmake_images_per_s: $dm, torch_images_per_s: $tm,
     ratio_dsmake_over_torch: (($dm / $tm * 100 | round) / 100),
     cosine_min: ([$t[].cosine_min] | min), torch_attention: $t[0].attention,
     dsmake_rounds: [$d[].images_per_s], torch_rounds: [$t[].images_per_s]}'
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $CORES cores" >&2
