#!/usr/bin/env bash
# Builds the CUDA worker binary for Databricks' GPU instances: A10G (g5, compute capability 8.6) and A100
# (p4d, 8.0), and newer cards.
#
#   scripts/build-cuda-worker.sh [OUT]          # default OUT: target/cuda-worker/dsmake-cuda
#
# candle compiles its CUDA kernels to PTX for one compute capability (CUDA_COMPUTE_CAP); the driver compiles
# PTX for the card it loads on, for that capability and every newer one. So one build for 8.0 runs on A100
# (8.0), A10G (8.6), L4/L40S (8.9) and H100/H200 (9.0), where a build for 8.6 would not load on an A100; the
# matrix products go to cuBLAS, which ships kernels for every card. CUDA_COMPUTE_CAP=86 builds for 8.6 and newer
# only (A10G fleets).
#
# Needs nvcc (CUDA 12.x toolkit) and a glibc no newer than the clusters': Databricks Runtime 15.4 ML GPU is
# Ubuntu 22.04 (glibc 2.35), so build there or in `nvidia/cuda:12.4.1-devel-ubuntu22.04` (DOCKER=1 does that).
# Then point `gpu_binary` in remotes/databricks.toml at OUT (uploaded by content hash) or at an s3:// copy.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/target/cuda-worker/dsmake-cuda}"
cap="${CUDA_COMPUTE_CAP:-80}"
image="${CUDA_IMAGE:-nvidia/cuda:12.4.1-devel-ubuntu22.04}"

case "$cap" in
  80|86|89|90) ;;
  *) echo "CUDA_COMPUTE_CAP=$cap: expected 80 (A100 and newer, the default), 86, 89 or 90" >&2; exit 2 ;;
esac

if [ "${DOCKER:-0}" = 1 ]; then
  command -v docker >/dev/null || { echo "DOCKER=1 needs docker" >&2; exit 2; }
  mkdir -p "$(dirname "$out")"
  # The toolchain, cmake and nasm (libjpeg-turbo), g++ (usearch), then the same build inside the image.
  docker run --rm -v "$root:/src" -v "$(dirname "$out"):/out" -w /src -e CUDA_COMPUTE_CAP="$cap" "$image" bash -c '
    set -euo pipefail
    apt-get update -qq && apt-get install -y -qq curl build-essential cmake nasm pkg-config >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    . "$HOME/.cargo/env"
    CARGO_TARGET_DIR=/tmp/target cargo build --release --features cuda --locked
    cp /tmp/target/release/dsmake /out/'"$(basename "$out")"
else
  command -v nvcc >/dev/null || {
    echo "nvcc is not on PATH: install the CUDA 12 toolkit, or run with DOCKER=1 to build in $image" >&2
    exit 2
  }
  (cd "$root" && CUDA_COMPUTE_CAP="$cap" cargo build --release --features cuda --locked)
  mkdir -p "$(dirname "$out")"
  cp "${CARGO_TARGET_DIR:-$root/target}/release/dsmake" "$out"
fi
echo "CUDA worker for compute capability ${cap:0:1}.${cap:1} and newer: $out"
echo "Ship it to GPU steps with gpu_binary = \"$out\" under [executor] in remotes/databricks.toml"
