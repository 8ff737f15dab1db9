#!/usr/bin/env bash
# dsmake's `knn-index` (usearch HNSW, f16) vs faiss's HNSW (faiss-cpu from PyPI: IndexHNSWFlat, and
# IndexHNSWSQ fp16 which stores vectors as dsmake does) on the same machine, the same vectors and the same
# graph settings (M=16, efConstruction=128, efSearch=768, inner product), in one run. Prints build seconds,
# single-thread queries/s and recall@10 of each (recall against faiss's exact IndexFlatIP), and the ratios.
#
#   tests/bench/knn.sh                 # 200,000 x 768 (1e6 takes too long on 2 cores; N=1000000 runs it)
#   N=50000 tests/bench/knn.sh
#   DSMAKE=/tmp/my-dsmake tests/bench/knn.sh    # a release binary built beforehand
#
# The vectors: f16 clip-retrieval parts (img_emb/img_emb_N.npy + metadata/metadata_N.parquet) of unit vectors
# clustered at two scales as CLIP embeddings cluster (tests/bench/knn_vectors.py); made with numpy in .venv
# (tests/run.sh creates it with faiss-cpu, usearch, numpy and pyarrow). dsmake builds them with a
# `files` step → `knn-index` pipeline (`usearch = true`, beside an exact image.index) through the release
# binary; its build time is the side's build time in the manifest (reading the parts, adding, saving), its
# queries/s are measured on its file from Python like faiss's. Both sides use every core for building and one
# thread for queries. tests/bench/knn_ivfpq.sh compares the faiss-format IVF-PQ index with faiss's own.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200000}
D=${D:-768}
PARTS=${PARTS:-4}
PY_MODULES="faiss, usearch, numpy, pyarrow"
. tests/bench/knn_setup.sh

cat >> "$WORK/knn.toml" <<'EOF'
[steps.knn]
kind = "knn-index"
from = "emb"
embeddings = "image"
index_key = "Flat"
usearch = true
connectivity = 16
expansion_add = 128
expansion_search = 768
quantization = "f16"
EOF

echo "== dsmake knn-index"
(cd "$WORK" && "$DSMAKE" build knn.toml --store "$WORK/store" -q)
INFOS="$WORK/store/knn/knn/image.json"
MANIFEST="$WORK/store/knn/knn/_dsmake/all.json"

echo "== faiss (faiss-cpu $("$PY" -c 'import faiss; print(faiss.__version__)'))"
"$PY" - "$WORK" "$INFOS" "$MANIFEST" <<'EOF'
import glob, json, sys, time
import faiss, numpy as np
from usearch.index import Index
work, infos, manifest = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
x = np.concatenate([np.load(p) for p in sorted(glob.glob(f"{work}/emb/img_emb/*.npy"))]).astype(np.float32)
q = np.load(f"{work}/emb/queries.npy")
n, d = x.shape
threads = faiss.omp_get_max_threads()
exact = faiss.IndexFlatIP(d); exact.add(x)
_, truth = exact.search(q, 10)

def recall(found):
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))

def single_thread_qps(search):
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for row in q:
        search(row[None, :])
    faiss.omp_set_num_threads(threads)
    return len(q) / (time.perf_counter() - t)

rows = []
for name, make in [("faiss IndexHNSWFlat", lambda: faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)),
                   ("faiss IndexHNSWSQ fp16", lambda: faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, 16,
                                                                        faiss.METRIC_INNER_PRODUCT))]:
    index = make()
    index.hnsw.efConstruction = 128
    t = time.perf_counter()
    index.train(x); index.add(x)
    build = time.perf_counter() - t
    index.hnsw.efSearch = 768
    qps = single_thread_qps(lambda r: index.search(r, 10))
    rows.append((name, build, qps, recall(index.search(q, 10)[1])))

# dsmake's own file, searched from Python with the same queries for recall on the same footing.
usearch_index = Index.restore(f"{work}/store/knn/knn/image.usearch", view=True)
usearch_index.expansion_search = 768
found = usearch_index.search(q, 10, threads=threads).keys
t = time.perf_counter()
for row in q:
    usearch_index.search(row, 10, threads=1)
ds = ("dsmake knn-index (usearch f16)", manifest["stats"]["image"]["add_seconds"], len(q) / (time.perf_counter() - t),
      recall(found))
print(f"\n{n} x {d} vectors, M=16 efConstruction=128 efSearch=768, build on {threads} threads, queries on 1 thread")
print(f"{'':34} {'build s':>9} {'queries/s':>10} {'recall@10':>10}")
for name, build, qps, rec in [ds] + rows:
    print(f"{name:34} {build:9.1f} {qps:10.0f} {rec:10.3f}")
for name, build, qps, _ in rows:
    print(f"dsmake / {name} (above 1: dsmake faster): build {build / ds[1]:.2f}x, queries {ds[2] / qps:.2f}x")
EOF
