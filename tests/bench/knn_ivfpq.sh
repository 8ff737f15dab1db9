#!/usr/bin/env bash
# dsmake's `knn-index` building IVF-PQ indices in faiss's format vs faiss-cpu's Python path building the same
# index_factory strings, on the same machine, the same vectors, in one run. Prints for each factory string and
# tool: build seconds (wall, and CPU: user + system, which a shared machine does not inflate as much) and peak RSS
# (the whole process, /usr/bin/time), index bytes, and for each nprobe the
# recall figures below and single-thread queries/s, all measured by faiss on each file with the same queries.
#
#   tests/bench/knn_ivfpq.sh                 # 1,000,000 x 768, IVF1024,PQ64x8 and OPQ64_768,IVF1024,PQ64x8
#   N=200000 FACTORIES="IVF512,PQ96x8" NPROBES="16 64" tests/bench/knn_ivfpq.sh
#   DATA=spectrum tests/bench/knn_ivfpq.sh  # vectors whose variance falls off over the directions
#   DSMAKE=/tmp/my-dsmake tests/bench/knn_ivfpq.sh           # a release binary built beforehand
#   BASELINE=/tmp/old-dsmake tests/bench/knn_ivfpq.sh        # also another dsmake binary (before a change)
#
# Run it under the bench lock on a shared machine: flock /tmp/dsmake-bench.lock tests/bench/knn_ivfpq.sh
# 10^7 x 768 does not fit this 24 GB machine on faiss's Python path (the f32 vectors alone are 30 GB, the
# exact search that gives the truth needs them too), so the benchmark stops at 10^6.
#
# Recall, named as the tools name it (1,000 queries that are not in the index, truth from faiss IndexFlatIP):
# - 10-recall@10: |index top 10 ∩ true top 10| / 10, the figure dsmake's image.json reports;
# - 1-recall@10: the fraction of queries whose true nearest neighbour is in the index's top 10: faiss's own
#   benchmarks' "R@10" (faiss/benchs, 1-recall@R); the issue's goal (recall@10 >= 0.9) is read as this one;
# - autofaiss's score_index (autofaiss/external/scores.py, compute_medium_metrics): "1-recall@20" (its
#   one_recall_at_r: the index's FIRST result is among the true top 20; note the direction, the reverse of
#   faiss's) and "20-recall@20" (|index top 20 ∩ true top 20| / 20). autofaiss queries with 500 vectors of the
#   index itself; here the queries are held out.
# nprobe: autofaiss picks the largest nprobe whose query takes under max_index_query_time_ms (10 ms) on one
# query at a time (optimize.py, get_optimal_hyperparameters); NPROBES sweeps it, the ms/query column says which
# nprobe fits 10 ms here.
#
# The vectors: f16 clip-retrieval parts (img_emb/img_emb_N.npy + metadata/metadata_N.parquet) of unit vectors
# clustered at two scales (tests/bench/knn_vectors.py, numpy in .venv); DATA=iso (default, isotropic: the data
# of the figures before OPQ) or DATA=spectrum (variance 1/i over the directions; see the generator). Both
# tools train on the same number of vectors (dsmake's sample: 64 per list, at least 10,000) with 10 coarse
# k-means iterations (faiss's cp.niter set to dsmake's) and 20 OPQ rounds (faiss's OPQMatrix niter set to
# dsmake's), add every part, and write the index file; faiss reads the parts one at a time (not all at once)
# so that its peak memory is not inflated.
#
# Measured on the 2-core machine, shared with other builds and tests while it ran (wall times are noisy; CPU
# seconds less so), N=200000 PARTS=4 DATA=spectrum NPROBES="16 64", BASELINE = dsmake before assignment
# stopped allocating a fresh score block per 1,024 rows (page faults were ~40% of OPQ training) and searched
# each row's best down SIMD lanes:
#                       build s   CPU s  RSS MB  index MB  nprobe  10-recall@10  1-recall@10  af 1-recall@20  af 20-recall@20
#   IVF1024,PQ64x8
#     dsmake               34.6    33.4     419      17.5      16         0.789        0.966           0.999            0.872
#     baseline            113.7   102.4     417      17.5      16         0.789        0.966           0.999            0.872
#     faiss               159.7   147.8     647      17.5      16         0.790        0.958           1.000            0.871
#   OPQ64_768,IVF1024,PQ64x8
#     dsmake              146.3   158.1     821      19.7      16         0.850        0.994           1.000            0.912
#     baseline            354.6   520.1     811      19.7      16         0.852        0.994           1.000            0.914
#     faiss               318.6   422.4    1297      19.7      16         0.847        0.987           1.000            0.909
# (nprobe 64: the same recall to 0.002. dsmake's OPQ build: 137.8 s training, 8.3 s adding.) With variance that
# falls off over the directions, 1-recall@10 passes 0.9 with plain PQ64 and OPQ lifts every figure; dsmake's
# recall matches faiss's on the same factory string. Queries/s (single thread, measured by faiss on each file):
# 2,700-4,100 at nprobe 16, alike for all three.
#
# After it, 10^6 x 768, DATA=spectrum, NPROBES=16, one run each (load 2-6: CI ran beside it), 1-recall@10:
#   IVF1024,PQ64x8   dsmake  98.8 s (CPU  58.6), 420 MB, 72.4 MB index, 0.765; faiss 333.8 s (CPU 232.4),  904 MB, 0.761
#   IVF1024,PQ128x8  dsmake  55.5 s (CPU  64.6), 417 MB, 133.5 MB,      0.914; faiss 537.3 s (CPU 424.4),  986 MB, 0.914
#   IVF1024,PQ256x8  dsmake 120.6 s (CPU  85.2), 456 MB, 255.5 MB,      0.991; faiss 588.0 s (CPU 754.1), 1155 MB, 0.995
# A million vectors are denser than 2*10^5: 64 bytes a vector no longer reach 0.9 there, 128 do (both tools).
#
# Before that change, 10^6 x 768, DATA=iso, default FACTORIES, NPROBES="16 64 256" (build s, RSS MB, index MB,
# 1-recall@10 at nprobe 16): IVF1024,PQ64x8 dsmake 201.8 s, 420, 72.4, 0.285; faiss 327.3 s, 905, 72.4, 0.271.
# OPQ64_768,IVF1024,PQ64x8 dsmake 798.6 s, 814, 74.7, 0.290; faiss 509.5 s, 1338, 74.7, 0.273. Recall does not
# move from nprobe 16 to 256 there: on isotropic data the ceiling is PQ64's quantisation error, not the lists
# scanned, and no rotation (OPQ) lowers it. 12 ms a query at nprobe 256 is about autofaiss's 10 ms.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
D=${D:-768}
PARTS=${PARTS:-8}
DATA=${DATA:-iso}
FACTORIES=${FACTORIES:-"IVF1024,PQ64x8 OPQ64_768,IVF1024,PQ64x8"}
NPROBES=${NPROBES:-"16 64 256"}
# OpenMP threads that spin while waiting for work lose to any other process on a shared machine (faiss took
# 9x longer than with passive waiting while compilers ran beside it); passive waiting, as rayon's threads do.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ ! -x /usr/bin/time ]; then
  echo "error: /usr/bin/time (GNU time) measures peak memory: install it (apt-get install time)" >&2
  exit 3
fi
PY_MODULES="faiss, numpy, pyarrow"
. tests/bench/knn_setup.sh

i=0
for FACTORY in $FACTORIES; do
  cp "$WORK/knn.toml" "$WORK/knn$i.toml"
  cat >> "$WORK/knn$i.toml" <<EOF
[steps.knn$i]
kind = "knn-index"
from = "emb"
embeddings = "image"
index_key = "$FACTORY"
nprobe = 16
max_index_memory_usage = "64G"
EOF
  for tool in dsmake ${BASELINE:+baseline}; do
    bin=$DSMAKE
    [ "$tool" = baseline ] && bin=$BASELINE
    echo "== $tool knn-index ($FACTORY)"
    (cd "$WORK" && /usr/bin/time -f "%e %U %S %M" -o "$WORK/$tool$i.time" "$bin" build "knn$i.toml" --store "$WORK/store$i" -q)
    mv "$WORK/store$i/knn$i/knn$i/image.index" "$WORK/$tool$i.index"
    mv "$WORK/store$i/knn$i/knn$i/image.json" "$WORK/$tool$i.json"
    rm -rf "$WORK/store$i"
  done

  echo "== faiss-cpu $("$PY" -c 'import faiss; print(faiss.__version__)') ($FACTORY)"
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/faiss$i.time" "$PY" - "$WORK" "$FACTORY" "$i" <<'EOF'
import glob, sys
import faiss, numpy as np
work, factory, i = sys.argv[1], sys.argv[2], sys.argv[3]
parts = sorted(glob.glob(f"{work}/emb/img_emb/*.npy"))
d = np.load(parts[0], mmap_mode="r").shape[1]
index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
ivf = faiss.extract_index_ivf(index)
ivf.cp.niter = 10
if isinstance(index, faiss.IndexPreTransform):
    faiss.downcast_VectorTransform(index.chain.at(0)).niter = 20
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
faiss.write_index(index, f"{work}/faiss{i}.index")
EOF
  i=$((i + 1))
done

echo "== measuring every file with faiss"
"$PY" - "$WORK" "$NPROBES" "$DATA" $FACTORIES <<'EOF'
import glob, json, os, sys, time
import faiss, numpy as np
work, nprobes, data, factories = sys.argv[1], [int(n) for n in sys.argv[2].split()], sys.argv[3], sys.argv[4:]
q = np.load(f"{work}/emb/queries.npy")
exact = None
for p in sorted(glob.glob(f"{work}/emb/img_emb/*.npy")):
    x = np.load(p).astype(np.float32)
    if exact is None:
        exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
n, d = exact.ntotal, exact.d
_, truth = exact.search(q, 20)
del exact
threads = faiss.omp_get_max_threads()

def set_nprobe(index, nprobe):
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(2 * nprobe, 16)  # as clip_back and autofaiss set it

def measure(path, nprobe):
    index = faiss.read_index(path)
    set_nprobe(index, nprobe)
    _, found = index.search(q, 20)
    r10 = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(found, truth)])
    one10 = np.mean([b[0] in a[:10] for a, b in zip(found, truth)])
    af_one20 = np.mean([a[0] in b[:20] for a, b in zip(found, truth)])
    af_r20 = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, truth)])
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for row in q[:200]:
        index.search(row[None, :], 10)
    ms = (time.perf_counter() - t) / 200 * 1e3
    faiss.omp_set_num_threads(threads)
    return r10, one10, af_one20, af_r20, 1e3 / ms, ms

print(f"\n{n} x {d} vectors (DATA={data}); build on {threads} threads, queries on 1 thread, 1,000 held-out queries")
head = (f"{'':8} {'build s':>7} {'CPU s':>7} {'RSS MB':>7} {'index MB':>8} {'nprobe':>6} {'10-recall@10':>12} {'1-recall@10':>11} "
        f"{'af 1-recall@20':>14} {'af 20-recall@20':>15} {'queries/s':>9} {'ms/query':>8}")
for i, factory in enumerate(factories):
    print(f"\n{factory}")
    print(head)
    for tool in ("dsmake", "baseline", "faiss"):
        path = f"{work}/{tool}{i}.index"
        if not os.path.exists(path):
            continue
        seconds, user, system, kb = open(f"{work}/{tool}{i}.time").read().split()
        cpu = float(user) + float(system)
        for j, nprobe in enumerate(nprobes):
            r10, one10, af1, af20, qps, ms = measure(path, nprobe)
            if j == 0:
                lead = f"{tool:8} {float(seconds):7.1f} {cpu:7.1f} {int(kb) / 1024:7.0f} {os.path.getsize(path) / 2**20:8.1f}"
            else:
                lead = f"{'':8} {'':>7} {'':>7} {'':>7} {'':>8}"
            print(f"{lead} {nprobe:6d} {r10:12.3f} {one10:11.3f} {af1:14.3f} {af20:15.3f} {qps:9.0f} {ms:8.2f}")
    for tool in ("dsmake", "baseline"):
        if os.path.exists(f"{work}/{tool}{i}.json"):
            infos = json.load(open(f"{work}/{tool}{i}.json"))
            print(f"{tool}'s build split: train {infos['train_seconds']:.1f} s, add {infos['add_seconds']:.1f} s")
EOF
