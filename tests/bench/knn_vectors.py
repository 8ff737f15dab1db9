"""Clip-retrieval parts for the knn benchmarks: OUT/img_emb/img_emb_N.npy (float16 unit vectors) and
OUT/metadata/metadata_N.parquet (image_path, caption), N vectors of D dimensions in PARTS parts, plus
OUT/queries.npy (1,000 more, float32, not in the index).

The vectors cluster at two scales, as CLIP embeddings do: 1,000 centres, 10 sub-centres around each, then
noise around a sub-centre. KIND says how the variance spreads over the dimensions:

- `iso` (the default, the data every figure before OPQ was measured on): centres, sub-centres and noise are
  isotropic, every one of the D directions carries the same variance. The noise then dominates which of a
  sub-cluster's ~100 points are nearest (they are all about equally far), which no quantiser can resolve.
- `spectrum`: the same construction in a space whose i-th direction (in a random basis) has variance
  proportional to 1/i, for centres, sub-centres and noise alike: half the variance in ~20 directions, 90% in
  ~370. Learned embeddings (CLIP's among them) are far from isotropic, their variance falling off over the
  principal directions; 1/i is an assumption chosen for that shape, not a fit to measured CLIP embeddings.

Usage: knn_vectors.py OUT N D PARTS [iso|spectrum]
"""

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out, n, d, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kind = sys.argv[5] if len(sys.argv) > 5 else "iso"
if kind not in ("iso", "spectrum"):
    sys.exit(f"unknown KIND {kind}: iso or spectrum")
rng = np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


if kind == "iso":
    scale = np.ones(d, dtype=np.float32)
    basis = None
else:
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)


def gauss(count):
    """Directions drawn with the chosen spectrum (unit length for iso, as before)."""
    return unit(rng.standard_normal((count, d)).astype(np.float32) * scale)


def place(x):
    return unit(x if basis is None else x @ basis)


centres = gauss(1000)
subs = unit(np.repeat(centres, 10, axis=0) + 0.7 * gauss(10000))


def draw(count):
    noise = gauss(count)  # before the sub-centres, the order of draws that made the iso figures
    return place(subs[rng.integers(0, len(subs), count)] + 0.5 * noise)


os.makedirs(f"{out}/img_emb")
os.makedirs(f"{out}/metadata")
for p, rows in enumerate(np.array_split(np.arange(n), parts)):
    np.save(f"{out}/img_emb/img_emb_{p:05d}.npy", draw(len(rows)).astype(np.float16))
    keys = [f"{i:09d}" for i in rows]
    table = pa.table({"image_path": keys, "caption": [f"caption {k}" for k in keys]})
    pq.write_table(table, f"{out}/metadata/metadata_{p:05d}.parquet")
np.save(f"{out}/queries.npy", draw(1000))
