"""Reads a clip-embed step's outputs with numpy and pyarrow, as clip-retrieval's users do, and checks them
against the WebDataset shards they were made from (read with webdataset) and the golden reference:

- img_emb/img_emb_N.npy, text_emb/text_emb_N.npy: float16, 2-D, C order, finite, the same width in every
  part, every row of L2 norm 1 (to float16's precision);
- metadata/metadata_N.parquet: image_path and caption first, as strings, one row per embedding row;
- alignment: part N holds, in shard order, the samples of shard N whose image Pillow decodes. Row r's
  image_path is its sample's key, its caption the .txt member ("" without one), its other columns the
  sample's json fields; its image embedding is the reference embedding of the fixture photo its image
  is (found by content), its text embedding that of its caption where the reference has one (cosine >=
  0.999), and rows with the same caption have the same text embedding.

Usage: check_clip_embed.py CLIP_DIR FIXTURE_DIR SHARD... (the shards in part order, one per part)
Prints `check_clip_embed: ok: P parts, R rows of D`.
"""

import glob
import hashlib
import io
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def fail(message: str) -> None:
    print(f"check_clip_embed: FAIL: {message}")
    sys.exit(1)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def samples(shard: str) -> list[dict]:
    """The shard's samples whose image decodes, in order: key, image bytes, caption, json."""
    kept = []
    for sample in wds.WebDataset(shard, shardshuffle=False):
        image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        try:
            Image.open(io.BytesIO(image)).load()
        except Exception:  # what Pillow cannot decode, clip-embed counts as a failure and leaves out
            continue
        caption = sample["txt"].decode("utf-8") if "txt" in sample else ""
        meta = json.loads(sample["json"]) if "json" in sample else {}
        kept.append({"key": sample["__key__"], "image": image, "caption": caption, "json": meta})
    return kept


def load_npy(path: str, width: int | None) -> np.ndarray:
    array = np.load(path)
    if array.dtype != np.float16 or array.ndim != 2 or not array.flags.c_contiguous:
        fail(f"{path}: {array.dtype} {array.shape}, expected float16 rows in C order")
    if width is not None and array.shape[1] != width:
        fail(f"{path}: rows of {array.shape[1]}, other parts have {width}")
    if not np.isfinite(array).all():
        fail(f"{path}: not finite")
    norms = np.linalg.norm(array.astype(np.float32), axis=1)
    if not np.allclose(norms, 1.0, atol=2e-3):
        fail(f"{path}: L2 norms {norms}, expected 1")
    return array


def main(clip_dir: str, fixture: str, shards: list[str]) -> None:
    with open(os.path.join(fixture, "expected", "expected.json")) as f:
        expected = json.load(f)
    photos = {}
    for name in expected["images"]:
        with open(os.path.join(fixture, "images", name), "rb") as f:
            photos[hashlib.sha256(f.read()).hexdigest()] = expected["images"].index(name)
    image_refs = unit(np.array(expected["image_embeds_normalized"], dtype=np.float32))
    text_refs = unit(np.array(expected["text_embeds_normalized"], dtype=np.float32))

    parts = sorted(glob.glob(os.path.join(clip_dir, "img_emb", "img_emb_*.npy")))
    if len(parts) != len(shards):
        fail(f"{len(parts)} parts in {clip_dir} for {len(shards)} shards")
    width, rows, by_caption = None, 0, {}
    for part, shard in zip(parts, shards):
        n = os.path.basename(part)[len("img_emb_") : -len(".npy")]
        images = load_npy(part, width)
        width = images.shape[1]
        texts = load_npy(os.path.join(clip_dir, "text_emb", f"text_emb_{n}.npy"), width)
        meta = pq.read_table(os.path.join(clip_dir, "metadata", f"metadata_{n}.parquet"))
        if meta.column_names[:2] != ["image_path", "caption"]:
            fail(f"metadata_{n}: columns {meta.column_names}")
        for column in ("image_path", "caption"):
            if meta.schema.field(column).type != pa.string():
                fail(f"metadata_{n}: {column} is {meta.schema.field(column).type}")
        want = samples(shard)
        if not len(want) == len(images) == len(texts) == meta.num_rows:
            fail(f"part {n}: {len(images)} image rows, {len(texts)} text rows, {meta.num_rows} metadata rows; "
                 f"{shard} has {len(want)} decodable samples")
        records = meta.to_pylist()
        for r, (sample, record) in enumerate(zip(want, records)):
            where = f"part {n} row {r} ({sample['key']})"
            if (record["image_path"], record["caption"]) != (sample["key"], sample["caption"]):
                fail(f"{where}: image_path, caption = {record['image_path']!r}, {record['caption']!r}")
            for field, value in sample["json"].items():
                if field not in ("image_path", "caption") and record.get(field) != value:
                    fail(f"{where}: {field} = {record.get(field)!r}, the sample's json has {value!r}")
            photo = photos.get(hashlib.sha256(sample["image"]).hexdigest())
            if photo is None:
                fail(f"{where}: the image is none of the fixture's photos")
            cosine = float(images[r].astype(np.float32) @ image_refs[photo])
            if cosine < 0.999:
                fail(f"{where}: image cosine {cosine} with {expected['images'][photo]}'s reference")
            if sample["caption"] in expected["texts"]:
                cosine = float(texts[r].astype(np.float32) @ text_refs[expected["texts"].index(sample["caption"])])
                if cosine < 0.999:
                    fail(f"{where}: text cosine {cosine} with the reference for {sample['caption']!r}")
            same = by_caption.setdefault(sample["caption"], texts[r])
            if not np.array_equal(same, texts[r]):
                fail(f"{where}: caption {sample['caption']!r} has another text embedding in an earlier row")
        rows += len(images)
    print(f"check_clip_embed: ok: {len(parts)} parts, {rows} rows of {width}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
