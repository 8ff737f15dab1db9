#!/usr/bin/env bash
# Benchmark of the S3 store against a real S3-compatible server (s3s-fs) on 127.0.0.1, in one run:
#   1. Plan time and S3 requests for a pipeline of N built targets (default 20,000) that are all fresh in the
#      bucket, against the requests a HEAD-per-target design needs (one HEAD per manifest and per output).
#   2. Upload throughput of one 1 GiB output (a multipart upload) against `aws s3 cp` of the same file to
#      the same server.
#
# Run:  tests/bench/s3_store.sh            (N=20000 SIZE_MB=1024; needs s3s-fs, python3; installs awscli in
#                                           a venv inside the work folder when `aws` is missing)
#       N=2000 SIZE_MB=256 tests/bench/s3_store.sh   (a quick run)
# The N targets are first built on a local store and their files copied into the bucket's folder (s3s-fs
# keeps each object as a file), so the benchmark does not spend minutes on N shell commands; the first S3
# plan then reads every manifest once (their versions differ from the local index) and a no-op build
# rewrites the step index, as after any migration. The measured plans are the ones after that.
set -euo pipefail

N=${N:-20000}
SIZE_MB=${SIZE_MB:-1024}
REPEAT=${REPEAT:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d)
S3_PID=""
trap 'kill $S3_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== building dsmake (release)"
(cd "$ROOT" && cargo build --release --quiet)
DSMAKE="${CARGO_TARGET_DIR:-$ROOT/target}/release/dsmake"
command -v s3s-fs >/dev/null || { echo "s3s-fs is missing: cargo install s3s-fs --version 0.14.1 --features binary --locked"; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$WORK/s3/bench"
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 &
S3_PID=$!
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_EC2_METADATA_DISABLED=true DSMAKE_CACHE_DIR="$WORK/cache"
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null; do sleep 0.1; done

cd "$WORK"
echo "== generating $N sources and building them on a local store"
python3 - "$N" <<'PY'
import os, sys
n = int(sys.argv[1]); os.makedirs("src", exist_ok=True)
for i in range(n):
    with open(f"src/{i:06d}.txt", "w") as f: f.write(f"row {i}\n")
PY
cat > pipeline.toml <<'TOML'
[pipeline]
name = "bench-s3"
[steps.src]
kind = "files"
paths = "src/*.txt"
[steps.copy]
kind = "command"
from = "src"
run = "cp {input} {output}"
TOML
"$DSMAKE" build pipeline.toml --store local-store -q
mkdir -p s3/bench/store && cp -r local-store/bench-s3 s3/bench/store/
STORE=s3://bench/store
"$DSMAKE" build pipeline.toml --store $STORE -q   # reads each manifest once, rewrites the index

echo "== plan of $N fresh built targets in S3 ($REPEAT runs)"
for i in $(seq "$REPEAT"); do
  start=$(date +%s.%N)
  "$DSMAKE" plan pipeline.toml --store $STORE --format json > plan.json
  end=$(date +%s.%N)
  python3 - "$start" "$end" "$N" <<'PY'
import json, sys
start, end, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
plan = json.load(open("plan.json"))
stats = plan["stats"]
fresh = sum(1 for t in plan["targets"] if t["action"] == "fresh")
assert fresh == n, f"{fresh} fresh targets, wanted {n}"
head = 2 * n  # one HEAD per manifest and one per output
print(f"   plan {end - start:.2f} s wall, {stats['store_requests']} S3 requests "
      f"(HEAD per target: {head}, {head / max(stats['store_requests'], 1):.0f}x more), "
      f"{stats['objects_listed']} objects listed, {stats['manifests_read']} manifests read")
PY
done

echo "== upload of one ${SIZE_MB} MiB output"
mkdir -p big && head -c $((SIZE_MB * 1024 * 1024)) /dev/urandom > big/blob.bin
cat > upload.toml <<'TOML'
[pipeline]
name = "bench-upload"
[steps.blob]
kind = "files"
paths = "big/blob.bin"
[steps.up]
kind = "command"
from = "blob"
run = "ln {input} {output} 2>/dev/null || cp {input} {output}"
outputs = "blob.bin"
TOML
start=$(date +%s.%N)
"$DSMAKE" build upload.toml --store $STORE -q
end=$(date +%s.%N)
DSMAKE_S=$(python3 -c "print($end - $start)")

AWS=aws
if ! command -v aws >/dev/null; then
  python3 -m venv awsvenv && awsvenv/bin/pip install -q awscli && AWS=awsvenv/bin/aws
fi
start=$(date +%s.%N)
$AWS s3 cp big/blob.bin s3://bench/aws-cp/blob.bin --endpoint-url "$AWS_ENDPOINT_URL" --only-show-errors
end=$(date +%s.%N)
AWS_S=$(python3 -c "print($end - $start)")
python3 - "$SIZE_MB" "$DSMAKE_S" "$AWS_S" <<'PY'
import sys
mb, d, a = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"   dsmake build (plan + hash + multipart upload + manifest): {d:.2f} s, {mb / d:.0f} MiB/s")
print(f"   aws s3 cp:                                             {a:.2f} s, {mb / a:.0f} MiB/s")
print(f"   ratio dsmake / aws s3 cp throughput: {a / d:.2f}")
PY
