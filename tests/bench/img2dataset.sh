#!/usr/bin/env bash
# img2dataset vs dsmake's `img2dataset` kind, on the same machine, the same URL list and the same local image
# server, with the same output settings (256 px, border, jpg quality 95), in one run. Prints images/s and peak
# RSS of both, and the ratio.
#
#   tests/bench/img2dataset.sh                  # 1,000 images (a few minutes on 2 cores)
#   N=2640 tests/bench/img2dataset.sh
#   DSMAKE=/path/to/dsmake tests/bench/img2dataset.sh   # that binary instead of a release build of this tree
#   PROGRESSIVE=0.25 N=2640 tests/bench/img2dataset.sh    # a quarter of the JPEGs progressive (default none)
#
# The corpus: real photographs from scikit-image's samples (tests/fixtures/clip-golden/images) re-encoded at a
# LAION-like size mix (longest side mostly 200–1,500 px, about 1 in 10 up to 4,000), and, for WALLPAPERS of the
# rows (default 0.3), wallpaper-sized photos (1920×1080 up to 3840×2400) made here from smooth colour fields,
# texture and sensor-like noise so that they compress like photographs (about 1.6 bits a pixel in JPEG at
# quality 90); nothing is downloaded. 80 % JPEG, 10 % PNG, 10 % WebP, served by a threaded Python server on
# 127.0.0.1. img2dataset comes from PyPI in its own venv (under $BENCH_DIR), and also builds the corpus.
#
# img2dataset runs with PROCESSES × THREADS; dsmake with its defaults, as a user runs it (one target per shard,
# --net-jobs 16 shards at once, `concurrency` 64 per shard, its build-wide memory budget), unless
# DSMAKE_ARGS (extra `dsmake build` flags, e.g. "--net-jobs 2 --memory 256MiB") or CONCURRENCY are set.
#
# Figures (N=2640, 2 cores, 2026-11-30, a shared machine at load 3.7–4.5): img2dataset 36.7–37.3 s (66–67 s CPU,
# 540–580 MB); dsmake 14.2–14.6 s (25.2–25.6 s CPU, 1.76 cores, 235–260 MB, budget peak 77 of 128 MiB): 2.5–2.6×
# its images/s. Both are CPU-bound; dsmake's CPU is mostly entropy decoding (libjpeg-turbo's Huffman decoding
# 30 %, libwebp's coefficient parsing 16 %, PNG inflate and unfiltering 15 %), then SHA-256 (the sha256 column)
# 4.7 % and the kernel 8 %.
# With progressive JPEGs (2026-12-01, load 2–2.4): PROGRESSIVE=0.25, img2dataset 39.0 s (71 s CPU, 558 MB), dsmake
# 15.5 s (27.6 s CPU, 295 MB): 2.52×; PROGRESSIVE=0.5, 42.5 s against 16.8 s (30.0 s CPU, 334 MB): 2.53×. Before
# dsmake decoded them from their DC scans and kept glibc's malloc to one arena: 17.9 s and 666–717 MB at 0.25,
# 21.7 s and 805 MB at 0.5.
# 2026-12-01, load 0: the default corpus 36.5 s (65.7 s CPU, 562 MB) against 14.1 s (25.0 s CPU, 274 MB): 2.58×;
# WALLPAPERS=0, 21.9 s against 6.0 s (10.3 s CPU, 286 MB): 3.63×; N=600 WALLPAPERS=1 PER_SHARD=60 (wallpapers
# only), 19.5 s (35.2 s CPU) against 7.7 s (13.9 s CPU, 200 MB): 2.53×.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-1000}
PROCESSES=${PROCESSES:-2}
THREADS=${THREADS:-32}
PER_SHARD=${PER_SHARD:-250}
WALLPAPERS=${WALLPAPERS:-0.3}
PROGRESSIVE=${PROGRESSIVE:-0}
DSMAKE_ARGS=${DSMAKE_ARGS:-}
CONCURRENCY=${CONCURRENCY:-}
I2D_VERSION=${I2D_VERSION:-1.47.0}
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/dsmake/bench-img2dataset}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake/target}"
mkdir -p "$BENCH_DIR"

if ! "$BENCH_DIR/venv/bin/img2dataset" --help >/dev/null 2>&1; then
  echo "== installing img2dataset $I2D_VERSION in $BENCH_DIR/venv"
  python3 -m venv "$BENCH_DIR/venv"
  "$BENCH_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "img2dataset==$I2D_VERSION" pillow
fi
PY="$BENCH_DIR/venv/bin/python"

if [ -z "${DSMAKE:-}" ]; then
  echo "== building dsmake (release)"
  cargo build --release --quiet
  DSMAKE="$CARGO_TARGET_DIR/release/dsmake"
fi

WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

GENERATOR=$(cat <<'EOF'
import os, random, sys
import numpy as np
from PIL import Image
out, n, share, source = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
os.makedirs(out, exist_ok=True)
photos = [Image.open(os.path.join(source, f)).convert("RGB") for f in sorted(os.listdir(source))]
print(f"   {len(photos)} photographs from {source}")
rng = random.Random(42)
noise = np.random.default_rng(42)
SIZES = [(1920, 1080), (2560, 1440), (2560, 1600), (3840, 2160), (3840, 2400), (2400, 3840)]

def wallpaper(w, h):
    """A photo-like picture: smooth colour fields, texture at two scales and sensor noise."""
    def layer(gw, gh):
        small = Image.fromarray(noise.integers(0, 256, (gh, gw, 3), dtype=np.uint8))
        return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) - 128
    img = 128 + 0.9 * layer(12, 8) + 0.35 * layer(w // 40, h // 40) + 0.15 * layer(w // 6, h // 6)
    img += noise.normal(0, 3, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

cache, walls = {}, {}
for i in range(n):
    fmt = rng.choices(["jpg", "png", "webp"], [8, 1, 1])[0]
    name = f"{i:06d}.{fmt}"
    if rng.random() < share:
        # 12 distinct wallpapers per size, each written once per format and linked after.
        size, variant = rng.choice(SIZES), rng.randrange(12)
        key = ("wall", size, variant, fmt)
        def make(size=size, variant=variant):
            if (size, variant) not in walls:
                walls[(size, variant)] = wallpaper(*size)
            return walls[(size, variant)]
    else:
        side = rng.randint(1500, 4000) if rng.random() < 0.1 else rng.randint(200, 1500)
        p = i % len(photos)
        key = (p, side // 50, fmt)
        def make(p=p, side=side):
            img = photos[p]
            scale = side / max(img.size)
            return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    if key not in cache:
        path = os.path.join(out, name)
        make().save(path, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], **({"quality": 90} if fmt != "png" else {}))
        cache[key] = name
    else:
        os.link(os.path.join(out, cache[key]), os.path.join(out, name))
    if len(walls) > 24:
        walls.clear()
EOF
)
# Made once per size, share and generator, then kept under $BENCH_DIR (wallpapers take a few minutes).
CORPUS="$BENCH_DIR/corpus-$N-$WALLPAPERS-$(echo "$GENERATOR" | sha256sum | cut -c1-12)"
if [ ! -d "$CORPUS" ]; then
  echo "== corpus: $N images, $WALLPAPERS of them wallpaper-sized, into $CORPUS"
  rm -rf "$CORPUS.tmp"
  "$PY" -c "$GENERATOR" "$CORPUS.tmp" "$N" "$WALLPAPERS" "$ROOT/tests/fixtures/clip-golden/images"
  mv "$CORPUS.tmp" "$CORPUS"
fi
# PROGRESSIVE (default 0) of the JPEGs re-saved as progressive JPEGs (Pillow, keeping their quantisation tables
# and subsampling), in a copy of the corpus kept beside it: web servers send both kinds, and a progressive file
# costs a decoder more (libjpeg-turbo has no fast path for its Huffman decoding).
if [ "$PROGRESSIVE" != 0 ]; then
  BASE="$CORPUS"
  CORPUS="$BASE-progressive-$PROGRESSIVE"
  if [ ! -d "$CORPUS" ]; then
    echo "== corpus: $PROGRESSIVE of the JPEGs progressive, into $CORPUS"
    rm -rf "$CORPUS.tmp"
    "$PY" - "$BASE" "$CORPUS.tmp" "$PROGRESSIVE" <<'EOF'
import os, random, sys
from PIL import Image
base, out, share = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.makedirs(out)
rng, done = random.Random(7), {}
for name in sorted(os.listdir(base)):
    src = os.path.join(base, name)
    ino = os.stat(src).st_ino
    if ino not in done:  # files linked to one another stay one file
        dst = os.path.join(out, name)
        if name.endswith(".jpg") and rng.random() < share:
            Image.open(src).save(dst, "JPEG", quality="keep", progressive=True)
        else:
            os.link(src, dst)
        done[ino] = dst
    else:
        os.link(done[ino], os.path.join(out, name))
EOF
    mv "$CORPUS.tmp" "$CORPUS"
  fi
fi
ln -s "$CORPUS" "$WORK/www"
du -shL "$WORK/www" | sed 's/^/   corpus size: /'

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" - "$WORK/www" "$PORT" <<'EOF' &
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    def handle_error(self, request, client_address): pass  # a client that gave up (a timeout) is not news
handler = functools.partial(Quiet, directory=sys.argv[1])
Server(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
EOF
SERVER=$!
"$PY" - "$WORK" "$PORT" <<'EOF'
import os, sys, time, urllib.request
import pyarrow as pa, pyarrow.parquet as pq
work, port = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(os.path.join(work, "www")))
urls = [f"http://127.0.0.1:{port}/{n}" for n in names]
pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(len(urls))]}), os.path.join(work, "urls.parquet"))
for _ in range(100):
    try:
        urllib.request.urlopen(urls[0], timeout=1).read(); break
    except Exception:
        time.sleep(0.1)
EOF

peak_rss() { # kB, from GNU time's report
  grep "Maximum resident set size" "$1" | awk '{print $NF}'
}
cpu_s() { # user + system seconds, from GNU time's report (children included)
  awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$1"
}
server_cpu() { # the image server's user + system seconds so far
  awk '{print ($14 + $15) / 100}' "/proc/$SERVER/stat"
}

echo "== img2dataset $I2D_VERSION ($PROCESSES processes × $THREADS threads)"
SERVER_BEFORE=$(server_cpu)
START=$(date +%s.%N)
/usr/bin/time -v "$BENCH_DIR/venv/bin/img2dataset" --url_list "$WORK/urls.parquet" --input_format parquet \
  --url_col url --caption_col caption --output_format webdataset --output_folder "$WORK/i2d" \
  --image_size 256 --resize_mode border --encode_quality 95 --processes_count "$PROCESSES" \
  --thread_count "$THREADS" --number_sample_per_shard "$PER_SHARD" --disallowed_header_directives '[]' \
  --timeout 30 --retries 0 --enable_wandb False >"$WORK/i2d.log" 2>"$WORK/i2d.time" || { tail -20 "$WORK/i2d.log" "$WORK/i2d.time"; exit 1; }
I2D_S=$(echo "$(date +%s.%N) - $START" | bc)
I2D_OK=$(cat "$WORK"/i2d/*_stats.json | "$PY" -c 'import sys,json,re; print(sum(json.loads(m)["successes"] for m in re.findall(r"\{.*?\n\}", sys.stdin.read(), re.S)))')
# img2dataset's processes are children of its main process: GNU time reports the largest one.
I2D_RSS=$(peak_rss "$WORK/i2d.time")
I2D_CPU=$(cpu_s "$WORK/i2d.time")
I2D_SERVER=$(echo "$(server_cpu) - $SERVER_BEFORE" | bc)

echo "== dsmake (img2dataset kind; flags: ${DSMAKE_ARGS:-none}; concurrency: ${CONCURRENCY:-default})"
mkdir -p "$WORK/ds"
cat >"$WORK/ds/bench.toml" <<EOF
[steps.urls]
kind = "files"
paths = "../urls.parquet"

[steps.images]
kind = "img2dataset"
from = "urls"
caption_col = "caption"
image_size = 256
resize_mode = "border"
encode_quality = 95
number_sample_per_shard = $PER_SHARD
${CONCURRENCY:+concurrency = $CONCURRENCY}
disallowed_header_directives = []
timeout = 30
allow_hosts = ["127.0.0.1"]
EOF
SERVER_BEFORE=$(server_cpu)
START=$(date +%s.%N)
DSMAKE_CACHE_DIR="$WORK/ds/cache" /usr/bin/time -v "$DSMAKE" build "$WORK/ds/bench.toml" --store "$WORK/ds/store" \
  $DSMAKE_ARGS >"$WORK/ds.log" 2>"$WORK/ds.time" || { tail -20 "$WORK/ds.log" "$WORK/ds.time"; exit 1; }
DS_S=$(echo "$(date +%s.%N) - $START" | bc)
DS_OK=$(cat "$WORK"/ds/store/bench/images/*_stats.json | "$PY" -c 'import sys,json,re; print(sum(json.loads(m)["successes"] for m in re.findall(r"\{.*?\n\}", sys.stdin.read(), re.S)))')
DS_RSS=$(peak_rss "$WORK/ds.time")
DS_CPU=$(cpu_s "$WORK/ds.time")
DS_SERVER=$(echo "$(server_cpu) - $SERVER_BEFORE" | bc)
# The summary's last line says how much of its memory budget the build held at most.
DS_BUDGET=$(grep -o "memory budget [^)]*" "$WORK/ds.time" || echo "memory budget: not reported")

"$PY" - "$N" "$I2D_S" "$I2D_OK" "$I2D_RSS" "$DS_S" "$DS_OK" "$DS_RSS" "$(nproc)" "$I2D_CPU" "$DS_CPU" "$I2D_SERVER" "$DS_SERVER" <<'EOF'
import sys
n, i_s, i_ok, i_rss, d_s, d_ok, d_rss, cores, i_cpu, d_cpu, i_srv, d_srv = sys.argv[1:]
n, i_s, i_ok, i_rss, d_s, d_ok, d_rss = int(n), float(i_s), int(i_ok), int(i_rss), float(d_s), int(d_ok), int(d_rss)
i_cpu, d_cpu, i_srv, d_srv = float(i_cpu), float(d_cpu), float(i_srv), float(d_srv)
print(f"\n{n} images, {cores} cores (CPU: the tool's user+system seconds; server: the image server's, same run)")
print(f"  img2dataset  {i_ok:6d} ok  {i_s:7.1f} s  {i_ok / i_s:8.1f} images/s  peak RSS {i_rss / 1024:7.0f} MB  "
      f"CPU {i_cpu:6.1f} s  server {i_srv:5.1f} s")
print(f"  dsmake       {d_ok:6d} ok  {d_s:7.1f} s  {d_ok / d_s:8.1f} images/s  peak RSS {d_rss / 1024:7.0f} MB  "
      f"CPU {d_cpu:6.1f} s  server {d_srv:5.1f} s")
print(f"  ratio        {(d_ok / d_s) / (i_ok / i_s):.2f}x images/s")
EOF
echo "  dsmake's $DS_BUDGET"
