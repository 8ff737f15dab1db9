"""Clip-retrieval parts for the knn benchmarks: OUT/img_emb/img_emb_N.npy (float16 unit vectors) and
OUT/metadata/metadata_N.parquet (image_path, caption), N vectors of D dimensions in PARTS parts, plus
OUT/queries.npy (1,000 more, float32, not in the index).

The vectors cluster at two scales, as CLIP embeddings do: 1,000 centres, 10 sub-centres around each, then
noise around a sub-centre.

Usage: knn_vectors.py OUT N D PARTS
"""

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out, n, d, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


centres = unit(rng.standard_normal((1000, d)).astype(np.float32))
subs = unit(np.repeat(centres, 10, axis=0) + 0.7 * unit(rng.standard_normal((10000, d)).astype(np.float32)))


def draw(count):
    noise = unit(rng.standard_normal((count, d)).astype(np.float32))
    return unit(subs[rng.integers(0, len(subs), count)] + 0.5 * noise)


os.makedirs(f"{out}/img_emb")
os.makedirs(f"{out}/metadata")
for p, rows in enumerate(np.array_split(np.arange(n), parts)):
    np.save(f"{out}/img_emb/img_emb_{p:05d}.npy", draw(len(rows)).astype(np.float16))
    keys = [f"{i:09d}" for i in rows]
    table = pa.table({"image_path": keys, "caption": [f"caption {k}" for k in keys]})
    pq.write_table(table, f"{out}/metadata/metadata_{p:05d}.parquet")
np.save(f"{out}/queries.npy", draw(1000))
