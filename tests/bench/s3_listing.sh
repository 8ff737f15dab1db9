#!/usr/bin/env bash
# Benchmark: listing one step folder of N targets (2N + 1 objects) on S3, in parallel key ranges and as one
# paginated listing, against s3s-fs behind the test suite's fault proxy with LATENCY_MS added to every request
# (a far-away server's round trip). Prints the wall time and requests of each. See tests/it/s3_listing_bench.rs.
#
# Run:  tests/bench/s3_listing.sh                 (N=20000 LATENCY_MS=30; needs s3s-fs, as tests/run.sh installs)
#       N=5000 LATENCY_MS=50 tests/bench/s3_listing.sh
# The test binary is built in the test profile (unoptimised): the client's share of the time is small beside
# the server's and the latency; PROFILE=release builds it optimised (long).
#
# s3s-fs answers each ListObjectsV2 page by walking every file of the bucket and sorting them, so a page
# costs O(objects in the bucket) there: at N=20000 a page takes ~1 s of its CPU. That server cost, not the
# client, is most of what both figures show at large N; the latency's share is what ranges remove.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export N=${N:-20000} LATENCY_MS=${LATENCY_MS:-30}
profile=()
[[ ${PROFILE:-} = release ]] && profile=(--release)
cd "$ROOT"
cargo test "${profile[@]}" --test it s3_listing_bench -- --ignored --nocapture --test-threads 1 2>&1 \
    | grep -E '^(==|   |test result|thread|panicked)'
