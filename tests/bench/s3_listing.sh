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
# as on S3. A bench-only tool, never needed by the test suite or CI; install it with
#   cargo install garage --version 2.5.0 --no-default-features --features bundled-libs,lmdb --root ~/.cache/garage-bin
# (the script then finds it in ~/.cache/garage-bin/bin).
#
# FIGURES: see the end of this header.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export N=${N:-20000} LATENCY_MS=${LATENCY_MS:-30} SERVER=${SERVER:-s3s-fs}
if [[ $SERVER = garage ]]; then
  GARAGE=${GARAGE:-$(command -v garage || echo "$HOME/.cache/garage-bin/bin/garage")}
  if ! "$GARAGE" --version >/dev/null 2>&1; then
    echo "garage is missing (looked for \`garage\` on PATH and $HOME/.cache/garage-bin/bin/garage); install it with" >&2
    echo "  cargo install garage --version 2.5.0 --no-default-features --features bundled-libs,lmdb --root ~/.cache/garage-bin" >&2
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
