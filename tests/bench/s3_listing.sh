#!/usr/bin/env bash
# Benchmark: listing one step folder of N targets (2N + 1 objects) on S3, in parallel key ranges and as one
# paginated listing, against a real S3-compatible server behind the test suite's fault proxy with LATENCY_MS
# added to every request (a far-away server's round trip). Prints the wall time, requests and CPU (client and
# proxy; the server's where known) of each. See tests/it/s3_listing_bench.rs.
#
# Run:  tests/bench/s3_listing.sh                          (s3s-fs, N=20000 LATENCY_MS=30)
#       SERVER=garage N=100000 tests/bench/s3_listing.sh   (Garage; GARAGE=path/to/garage if not on PATH)
# The test binary is built in the test profile (unoptimised); PROFILE=release builds it optimised (long).
#
# SERVER=s3s-fs (the test suite's server, as tests/run.sh installs it): its objects are written straight into
# its folder. It answers each ListObjectsV2 page by walking and stat-ing every object under the prefix, so a
# page costs O(objects) there (~1 s of its CPU at N=20000, minutes at 10⁵): its figures measure s3s-fs.
# SERVER=garage: Garage (LMDB metadata, one node, no fsync, in a temporary folder removed afterwards), filled
# with real PUTs. Its listing is a range scan of the ordered object table, so a page costs the same at any N,
# as on S3. A bench-only tool, never needed by the test suite or CI; install it with the command in INSTALL
# below (the script then finds it in ~/.cache/garage-bin/bin).
#
# Figures, 2026-11-30, on the 2-core dev machine shared with other work (load: 1-min load average over the
# run), LATENCY_MS=30, Garage 2.5.0 (lmdb), s3s-fs 0.14.1. Seconds and requests of one StepState::load; CPU:
# seconds the client (with the proxy) and the server used during it. Run as
#   flock /tmp/dsmake-bench.lock env SERVER=garage N=100000 PROFILE=release tests/bench/s3_listing.sh
# (here: the test binary that builds, run directly as the script runs it, so no build lock was held).
#   server  N        profile  sequential: s  req  CPU c/s    ranges(16): s  req  CPU c/s    load
#   garage  100000   release          8.57  202  1.15/1.53          1.81  268  1.37/1.93    1.2-3.9
#   garage  100000   release          9.00  202  1.29/1.85          1.91  268  1.46/2.07    4.2-4.7
#   garage  100000   release          8.75  202  1.18/1.45          4.08  268  1.42/1.96    5.8 (other tests)
#   garage  100000   test            13.29  202  6.13/1.53          5.13  268  7.58/2.03    4.0-7.7
#   garage  100000   test            14.93  202  5.91/1.57          9.04  268  7.64/2.07    5.8-9.5
#   garage   20000   release          1.75   42  0.24/0.28          0.57   55  0.28/0.39    2.3-3.5
#   garage   20000   test             2.64   42  1.18/0.29          1.08   55  1.51/0.40    4.5-9.5
#   s3s-fs   20000   release         36.46   42  0.25/ -           17.74   55  0.23/ -      1.8-3.8
#   s3s-fs   20000   test            75.66   42  0.87/ -           26.07   55  1.11/ -      3.5-7.7
# Filling Garage: 2×10⁵ PUTs at ~3,100/s (release; ~900/s in the test profile), 32 at a time; the step index
# after reading 10⁵ manifests: 25 s (release).
# Reading them: sequential is pages × (latency + a page's server and client time): 201 pages × ~43 ms at 10⁵.
# Ranges: the index's split points cut 2×10⁵ + 1 objects into 267 ranges of ~750 expected objects, each listed
# in one request (268 = 267 + the index's GET), 16 at a time; the latency alone would take 17 rounds × 30 ms.
# What holds them at ~1.8 s on this machine is CPU: server and client used ~3.3 s of it in those 1.8 s, both
# cores busy (Garage ~7 ms per 1000-key page, the client ~5 µs per object, mostly the SDK's XML parsing).
# Each range's page of 1000 keys runs past the range's ~750 (the margin for the sampled split points), so
# ranges read ~1.33× the objects a single listing reads: that share of the CPU is the price of one round trip
# per range. In the test profile the client's CPU (7.6 s) decides both figures: measure with PROFILE=release.
# s3s-fs's figures are its own walks (a page costs O(objects in the prefix) of its CPU), not the listing's.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export N=${N:-20000} LATENCY_MS=${LATENCY_MS:-30} SERVER=${SERVER:-s3s-fs}
INSTALL="cargo install garage --version 2.5.0 --no-default-features --features bundled-libs,lmdb --root ~/.cache/garage-bin"
if [[ $SERVER = garage ]]; then
  GARAGE=${GARAGE:-$(command -v garage || echo "$HOME/.cache/garage-bin/bin/garage")}
  if ! "$GARAGE" --version >/dev/null 2>&1; then
    echo "no garage at $GARAGE (GARAGE, else \`garage\` on PATH, else ~/.cache/garage-bin/bin/garage); install it with" >&2
    echo "  $INSTALL" >&2
    echo "or point GARAGE at a garage binary." >&2
    exit 1
  fi
  export GARAGE
  echo "== $("$GARAGE" --version 2>&1 | head -1)"
fi
profile=()
[[ ${PROFILE:-} = release ]] && profile=(--release)
cd "$ROOT"
cargo test "${profile[@]}" --test it s3_listing_bench -- --ignored --nocapture --test-threads 1 2>&1 \
    | grep -E '^(==|   |test result|thread|panicked)'
