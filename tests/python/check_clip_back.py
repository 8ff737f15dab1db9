"""Serves a knn-index step's folder with clip-retrieval's own clip_back code and checks what it answers.

The index folder is loaded exactly as clip_back's `load_clip_index` loads `indice_folder`
(clip_retrieval/clip_back.py, clip-retrieval 2.44.0): `os.path.exists(folder + "/image.index")` and
`"/text.index"`, each read by `load_index(path, enable_faiss_memory_mapping)` (both settings are tried:
`faiss.read_index(path)` and `faiss.read_index(path, IO_FLAG_MMAP | IO_FLAG_READ_ONLY)`), the metadata by
`load_metadata_provider(folder, enable_hdf5=False, reorder_metadata_by_ivf_index=False, ...)`, i.e.
`ParquetMetadataProvider(folder + "/metadata")`. Queries go through `KnnService.query(embedding_input=...,
modality=...)`, clip_back's own request path: `compute_query` → `knn_search` (`index.search_and_reconstruct`) →
`map_to_metadata`. Only the CLIP model is left out: clip_back's package `__init__` imports its inference
stack, and `compute_query` imports torch before looking at `embedding_input`, so both are stand-ins here
(nothing of either is called on the embedding path).

Usage:
  check_clip_back.py INDEX_DIR self CLIP_DIR
      every row of every clip-embed part, as an image query on image.index and as a text query on text.index,
      finds its own sample first (an exact index);
  check_clip_back.py INDEX_DIR agree SIDE QUERY.npy DSMAKE_RESULTS.json KEY
      faiss reads SIDE.index as the faiss index KEY (its nprobe the one in SIDE.json), and faiss's search and
      clip_back's answer agree with `dsmake search --embedding QUERY.npy --format json`;
  check_clip_back.py INDEX_DIR count N
      faiss reads image.index and text.index, N vectors each.
"""

import glob
import importlib.util
import json
import os
import sys
import types

import faiss
import numpy as np
import pyarrow.parquet as pq

spec = importlib.util.find_spec("clip_retrieval")
package = types.ModuleType("clip_retrieval")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["clip_retrieval"] = package
sys.modules.setdefault("torch", types.ModuleType("torch"))
from clip_retrieval import clip_back  # noqa: E402

COLUMNS = ["url", "caption", "image_path"]


def serve(folder: str, mmap: bool):
    """clip_back's load_clip_index without the model."""
    image_present = os.path.exists(folder + "/image.index")
    text_present = os.path.exists(folder + "/text.index")
    image_index = clip_back.load_index(folder + "/image.index", mmap) if image_present else None
    text_index = clip_back.load_index(folder + "/text.index", mmap) if text_present else None
    metadata_provider, _ = clip_back.load_metadata_provider(folder, False, False, image_index, COLUMNS, False)
    no_model = ("model", "preprocess", "tokenizer", "model_txt_mclip", "safety_model", "violence_detector")
    resource = clip_back.ClipResource(
        device="cpu",
        **dict.fromkeys(no_model, None),
        metadata_provider=metadata_provider,
        image_index=image_index,
        text_index=text_index,
        ivf_old_to_new_mapping=None,
        columns_to_return=COLUMNS,
        metadata_is_ordered_by_ivf=False,
        aesthetic_embeddings=None,
    )
    return clip_back.KnnService(clip_resources={"dsmake": resource})


def ask(service, embedding, modality: str, k: int):
    return service.query(
        embedding_input=embedding.tolist(),
        modality=modality,
        num_images=k,
        num_result_ids=k,
        indice_name="dsmake",
        deduplicate=False,
    )


def check_self(folder: str, clip_dir: str) -> None:
    metas = sorted(glob.glob(os.path.join(clip_dir, "metadata", "metadata_*.parquet")))
    assert metas, f"no metadata parts in {clip_dir}"
    copied = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "metadata", "*.parquet")))
    assert copied == [os.path.basename(p) for p in metas], (copied, metas)
    queries = 0
    for mmap in (False, True):
        service = serve(folder, mmap)
        for meta in metas:
            number = os.path.basename(meta)[len("metadata_") : -len(".parquet")]
            keys = pq.read_table(meta).column("image_path").to_pylist()
            for modality, prefix in (("image", "img_emb"), ("text", "text_emb")):
                emb = np.load(os.path.join(clip_dir, prefix, f"{prefix}_{number}.npy")).astype("float32")
                assert emb.shape[0] == len(keys)
                for row, key in zip(emb, keys):
                    found = ask(service, row, modality, 3)
                    assert found[0]["image_path"] == key, (modality, key, found)
                    assert abs(found[0]["similarity"] - float(row @ row)) < 1e-3, found[0]
                    queries += 1
    for side in ("image", "text"):
        infos = json.load(open(os.path.join(folder, f"{side}.json")))
        assert infos["index_key"] == "Flat" and infos["index_path"] == f"{side}.index", infos
        index = faiss.read_index(os.path.join(folder, f"{side}.index"))
        assert isinstance(faiss.downcast_index(index), faiss.IndexFlatIP) and index.ntotal == infos["nb vectors"]
    print(f"check_clip_back: ok: {queries} queries answered by clip_back on image.index and text.index")


def check_agree(folder: str, side: str, query_path: str, results_path: str, key: str) -> None:
    infos = json.load(open(os.path.join(folder, f"{side}.json")))
    assert infos["index_key"] == key, (infos["index_key"], key)
    index = faiss.read_index(os.path.join(folder, f"{side}.index"))
    assert index.ntotal == infos["nb vectors"], (index.ntotal, infos)
    ivf = faiss.extract_index_ivf(index)
    pq_m = faiss.downcast_index(ivf).pq.M
    outer = faiss.downcast_index(index)
    opq = ""
    if isinstance(outer, faiss.IndexPreTransform):
        # OPQ: faiss's IndexPreTransform holding one orthonormal linear transform, then the IVF-PQ.
        assert outer.chain.size() == 1, outer.chain.size()
        lt = faiss.downcast_VectorTransform(outer.chain.at(0))
        assert isinstance(lt, faiss.LinearTransform) and lt.is_orthonormal and not lt.have_bias
        assert lt.d_in == index.d and lt.d_out == ivf.d, (lt.d_in, lt.d_out, ivf.d)
        opq = f"OPQ{pq_m}_{lt.d_out},"
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSWFlat):
        # The HNSW coarse quantizer: its efSearch is clip_back's 2·nprobe (at least 16), as index_param says.
        coarse = f"IVF{ivf.nlist}_HNSW{quantizer.hnsw.nb_neighbors(0) // 2}"
        assert quantizer.hnsw.efSearch == max(2 * ivf.nprobe, 16), quantizer.hnsw.efSearch
        assert quantizer.ntotal == ivf.nlist and quantizer.metric_type == faiss.METRIC_INNER_PRODUCT
    else:
        assert isinstance(quantizer, faiss.IndexFlatIP), type(quantizer)
        coarse = f"IVF{ivf.nlist}"
    assert f"{opq}{coarse},PQ{pq_m}x8" == key, (opq, coarse, pq_m, key)
    assert ivf.nprobe == infos["nprobe"] and infos["index_param"].startswith(f"nprobe={ivf.nprobe},"), infos
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT

    query = np.load(query_path).astype("float32")
    query /= np.linalg.norm(query)
    dsmake = json.load(open(results_path))["results"]
    k = len(dsmake)
    scores, ids = index.search(query, k)
    ids, scores = ids[0].tolist(), scores[0].tolist()
    ours = [r["id"] for r in dsmake]
    # Same ranking; ties at float rounding may swap neighbours, so compare scores rank by rank.
    for rank, (r, s) in enumerate(zip(dsmake, scores)):
        assert abs(r["score"] - s) < 1e-3, (rank, r, s)
    assert len(set(ours) & set(ids)) >= k - 1, (ours, ids)

    served = ask(serve(folder, True), query[0], side, k)
    assert [r["id"] for r in served][: k // 2] == ours[: k // 2], ([r["id"] for r in served], ours)
    assert served[0]["image_path"] == dsmake[0]["image_path"]
    print(
        f"check_clip_back: ok: faiss reads {side}.index as {key} (nprobe {ivf.nprobe}, {index.ntotal} vectors); "
        f"faiss, clip_back and dsmake agree on the top {k}"
    )


def main() -> None:
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "self":
        check_self(folder, sys.argv[3])
    elif mode == "count":
        # faiss reads both indices of the folder with the given vector count.
        for side in ("image", "text"):
            index = faiss.read_index(os.path.join(folder, f"{side}.index"))
            assert index.ntotal == int(sys.argv[3]), (side, index.ntotal)
        print(f"check_clip_back: ok: faiss reads image.index and text.index, {sys.argv[3]} vectors each")
    elif mode == "agree":
        check_agree(folder, *sys.argv[3:7])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
