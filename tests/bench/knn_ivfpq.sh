#!/usr/bin/env bash
# dsmake's `knn-index` building an IVF-PQ index in faiss's format vs faiss-cpu's Python path building the same
# index_factory string, on the same machine, the same vectors, in one run. Prints for each: build seconds and
# peak RSS (the whole process, /usr/bin/time), index bytes, recall@10 against exact search (faiss IndexFlatIP)
# and single-thread queries/s, both measured by faiss on each file with the same nprobe and queries; plus
# dsmake's own search figures from image.json.
#
#   tests/bench/knn_ivfpq.sh                                  # 1,000,000 x 768, IVF1024,PQ64x8, nprobe 16
#   N=200000 FACTORY=IVF512,PQ96x8 NPROBE=32 tests/bench/knn_ivfpq.sh
#   DSMAKE=/tmp/my-dsmake tests/bench/knn_ivfpq.sh           # a release binary built beforehand
#
# Run it under the bench lock on a shared machine: flock /tmp/dsmake-bench.lock tests/bench/knn_ivfpq.sh
#
# The vectors: f16 clip-retrieval parts (img_emb/img_emb_N.npy + metadata/metadata_N.parquet) of unit vectors
# clustered at two scales, as CLIP embeddings cluster (tests/bench/knn_vectors.py, numpy in .venv). Both sides
# train on the same number of vectors (dsmake's sample: 64 per list, at least 10,000) with 10 coarse k-means
# iterations (faiss's cp.niter set to dsmake's), add every part, and write the index file; faiss reads the
# parts one at a time (not all at once) so that its peak memory is not inflated.
#
# Measured on the 2-core machine (shared with other builds), 10^6 x 768, nprobe 16 / 32:
#                                   build s  peak RSS MB  index MB  recall@10  queries/s (faiss search)
#   IVF1024,PQ64x8          dsmake     95.1          444      72.4      0.207       1314
#                           faiss     259.4          904      72.4      0.215       1407
#   IVF1024_HNSW32,PQ256x8  dsmake    218.3          508     255.8      0.551        168
#                           faiss     713.6         1143     255.8      0.548        189
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
D=${D:-768}
PARTS=${PARTS:-8}
FACTORY=${FACTORY:-IVF1024,PQ64x8}
NPROBE=${NPROBE:-16}
# OpenMP threads that spin while waiting for work lose to any other process on a shared machine (faiss took
# 9x longer than with passive waiting while compilers ran beside it); passive waiting, as rayon's threads do.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ ! -x /usr/bin/time ]; then
  echo "error: /usr/bin/time (GNU time) measures peak memory: install it (apt-get install time)" >&2
  exit 3
fi
PY_MODULES="faiss, numpy, pyarrow"
. tests/bench/knn_setup.sh

cat >> "$WORK/knn.toml" <<EOF
[steps.knn]
kind = "knn-index"
from = "emb"
embeddings = "image"
index_key = "$FACTORY"
nprobe = $NPROBE
max_index_memory_usage = "64G"
EOF

echo "== dsmake knn-index ($FACTORY)"
(cd "$WORK" && /usr/bin/time -f "%e %M" -o "$WORK/dsmake.time" "$DSMAKE" build knn.toml --store "$WORK/store" -q)

echo "== faiss-cpu $("$PY" -c 'import faiss; print(faiss.__version__)') ($FACTORY)"
/usr/bin/time -f "%e %M" -o "$WORK/faiss.time" "$PY" - "$WORK" "$FACTORY" <<'EOF'
import glob, sys
import faiss, numpy as np
work, factory = sys.argv[1], sys.argv[2]
parts = sorted(glob.glob(f"{work}/emb/img_emb/*.npy"))
d = np.load(parts[0], mmap_mode="r").shape[1]
index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
ivf = faiss.extract_index_ivf(index)
ivf.cp.niter = 10
train_rows = max(64 * ivf.nlist, 10000)
sample, have = [], 0
for p in parts:
    if have >= train_rows:
        break
    x = np.load(p, mmap_mode="r")[: train_rows - have].astype(np.float32)
    sample.append(x); have += len(x)
index.train(np.concatenate(sample))
del sample
for p in parts:
    index.add(np.load(p).astype(np.float32))
faiss.write_index(index, f"{work}/faiss.index")
EOF

echo "== measuring both with faiss"
"$PY" - "$WORK" "$NPROBE" <<'EOF'
import glob, json, os, sys, time
import faiss, numpy as np
work, nprobe = sys.argv[1], int(sys.argv[2])
q = np.load(f"{work}/emb/queries.npy")
exact = None
for p in sorted(glob.glob(f"{work}/emb/img_emb/*.npy")):
    x = np.load(p).astype(np.float32)
    if exact is None:
        exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
n, d = exact.ntotal, exact.d
_, truth = exact.search(q, 10)
del exact
threads = faiss.omp_get_max_threads()

def measure(path):
    index = faiss.read_index(path)
    faiss.extract_index_ivf(index).nprobe = nprobe
    _, found = index.search(q, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for row in q[:200]:
        index.search(row[None, :], 10)
    qps = 200 / (time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    return recall, qps, os.path.getsize(path)

infos = json.load(open(f"{work}/store/knn/knn/image.json"))
rows = []
for name, path, timing in [("dsmake knn-index", f"{work}/store/knn/knn/image.index", "dsmake.time"),
                           ("faiss-cpu (Python)", f"{work}/faiss.index", "faiss.time")]:
    seconds, kb = open(f"{work}/{timing}").read().split()
    rows.append((name, float(seconds), int(kb) / 1024, *measure(path)))
print(f"\n{n} x {d} vectors, {infos['index_key']}, nprobe {nprobe}; build on {threads} threads, queries on 1 thread")
print(f"{'':20} {'build s':>8} {'peak RSS MB':>12} {'index MB':>9} {'recall@10':>10} {'queries/s':>10}")
for name, seconds, mb, recall, qps, size in rows:
    print(f"{name:20} {seconds:8.1f} {mb:12.0f} {size / 2**20:9.1f} {recall:10.3f} {qps:10.0f}")
ds, fa = rows
print(f"dsmake / faiss: build time {ds[1] / fa[1]:.2f}x, peak RSS {ds[2] / fa[2]:.2f}x, index bytes {ds[5] / fa[5]:.3f}x")
print(f"dsmake's own search (image.json, its 100 probe queries, 1 thread): {infos['avg_search_speed_ms']:.2f} ms a "
      f"query, recall@10 {infos['10-recall@10']:.3f}; dsmake's build split: add {infos['add_seconds']:.1f} s, "
      f"train {infos['train_seconds']:.1f} s")
EOF
