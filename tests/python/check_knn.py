"""Reads a knn-index step's outputs with the Python tools people use, and checks them against the clip-embed
parts they were built from:

- `knn.index` with faiss-cpu: an IndexFlatIP (inner product) holding every row of img_emb/ (or text_emb/)
  in part order, exactly (float16 → float32);
- the usearch file with `usearch`: restored memory-mapped, inner product, one key per row, each row's
  nearest neighbour is itself;
- `metadata.parquet` with pyarrow: image_path, caption, url of every row, in the same order as the parts'
  metadata;
- `index_infos.json`: autofaiss's fields.

Usage: check_knn.py INDEX_DIR CLIP_DIR [image|text]
"""

import glob
import json
import os
import sys

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import usearch
from usearch.index import Index, MetricKind


def main() -> None:
    index_dir, clip_dir = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "image"
    prefix, index_file = ("text_emb", "text.usearch") if kind == "text" else ("img_emb", "image.usearch")

    parts = sorted(glob.glob(os.path.join(clip_dir, prefix, f"{prefix}_*.npy")))
    assert parts, f"no {prefix} parts in {clip_dir}"
    vectors = np.concatenate([np.load(p) for p in parts]).astype(np.float32)
    metas = [pq.read_table(p.replace(f"{prefix}/{prefix}_", "metadata/metadata_").replace(".npy", ".parquet"))
             for p in parts]
    n, d = vectors.shape

    flat = faiss.read_index(os.path.join(index_dir, "knn.index"))
    assert isinstance(flat, faiss.IndexFlatIP), type(flat)
    assert flat.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (flat.ntotal, flat.d, flat.is_trained) == (n, d, True), (flat.ntotal, flat.d)
    np.testing.assert_array_equal(flat.reconstruct_n(0, n), vectors)
    scores, ids = flat.search(vectors, 1)
    assert (ids[:, 0] == np.arange(n)).all(), ids[:, 0]
    np.testing.assert_allclose(scores[:, 0], (vectors * vectors).sum(1), rtol=1e-5)

    hnsw = Index.restore(os.path.join(index_dir, index_file), view=True)
    assert (len(hnsw), hnsw.ndim, hnsw.metric) == (n, d, MetricKind.IP), hnsw
    assert sorted(int(k) for k in hnsw.keys) == list(range(n))
    found = hnsw.search(vectors, 1)
    assert (np.asarray(found.keys).reshape(n) == np.arange(n)).all(), found.keys

    meta = pq.read_table(os.path.join(index_dir, "metadata.parquet"))
    assert meta.column_names == ["image_path", "caption", "url"], meta.column_names
    assert meta.num_rows == n
    want = pa.concat_tables([t.select(["image_path", "caption", "url"]) for t in metas])
    for column in meta.column_names:
        assert meta[column].to_pylist() == want[column].to_pylist(), column

    infos = json.load(open(os.path.join(index_dir, "index_infos.json")))
    for key in ["index_key", "index_param", "index_path", "size in bytes", "avg_search_speed_ms",
                "99p_search_speed_ms", "nb vectors", "vectors dimension", "compression ratio"]:
        assert key in infos, key
    assert (infos["nb vectors"], infos["vectors dimension"], infos["index_path"]) == (n, d, index_file), infos

    print(f"check_knn: ok: {n} vectors of {d} ({kind}); faiss {faiss.__version__} IndexFlatIP, "
          f"usearch {usearch.__version__} (memory-mapped), metadata rows aligned")


if __name__ == "__main__":
    main()
