#!/usr/bin/env bash
# The GPU check of issue 4: images/s of the ViT-L/14-336 image tower in fp16 at batch 64, 128 and 256, dsmake
# (candle, CUDA) against transformers (SDPA and eager attention) on the same card in the same run, where
# torch is importable there. Two halves, because the GPU machine has no compiler and no network:
#
#   tests/bench/clip_gpu.sh build     # here: builds the CUDA benchmark binary into gpu-bench/ (gitignored): the
#                                     # integration-test binary (tests/it/), whose ignored clip_bench test it runs
#   tests/bench/clip_gpu.sh run       # on the GPU machine, with gpu-bench/ carried: prints one JSON line per run
#
# `build` needs nvcc (README: Debian's non-free nvidia-cuda-toolkit, CUDA 11.8, kernels as compute_80 PTX that
# the driver compiles for the card at load time).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=gpu-bench

case "${1:-}" in
build)
  export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$HOME/.cache/dsmake-cuda-target}"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
  bin=$(cargo test --release --features cuda --test it --no-run --message-format json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')
  mkdir -p "$OUT_DIR"
  cp "$bin" "$OUT_DIR/clip_bench"
  strip "$OUT_DIR/clip_bench"
  cp -r tests/fixtures/clip-golden/tiny-clip "$OUT_DIR/"
  ls -la "$OUT_DIR"
  ;;
run)
  [ -x "$OUT_DIR/clip_bench" ] || { echo "$OUT_DIR/clip_bench is missing: run '$0 build' where nvcc is" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  for batch in 64 128 256; do
    CLIP_BENCH_FIXTURE=$OUT_DIR/tiny-clip CLIP_BENCH_MODEL=l14-336 CLIP_BENCH_DEVICE=cuda CLIP_BENCH_BATCH=$batch CLIP_BENCH_ITERS=${ITERS:-10} \
      "$OUT_DIR/clip_bench" --ignored --nocapture --test-threads 1 --exact clip_bench::image_tower_throughput 2>&1 | grep '^{' || echo "{\"impl\": \"dsmake\", \"batch\": $batch, \"error\": \"failed\"}"
  done
  if python3 -c 'import torch, transformers' 2>/dev/null; then
    python3 - <<'EOF'
import json, time, torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
           image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
for attn in ["sdpa", "eager"]:
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg, attn_implementation=attn)).half().cuda().eval()
    for batch in [64, 128, 256]:
        x = torch.randn(batch, 3, 336, 336, device="cuda", dtype=torch.float16)
        with torch.inference_mode():
            model(pixel_values=x)
            torch.cuda.synchronize()
            iters, t = 10, time.perf_counter()
            for _ in range(iters):
                model(pixel_values=x)
            torch.cuda.synchronize()
        s = time.perf_counter() - t
        print(json.dumps({"impl": f"transformers {attn}", "batch": batch, "images_per_s": round(batch * iters / s, 1)}))
    del model
    torch.cuda.empty_cache()
EOF
  else
    echo '{"impl": "transformers", "error": "torch is not importable on this machine: compare with the issue'"'"'s H200 figures (SDPA 1,019 images/s)"}'
  fi
  ;;
*)
  echo "usage: $0 build|run" >&2
  exit 2
  ;;
esac
