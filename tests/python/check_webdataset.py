"""Reads an img2dataset step's folder the way img2dataset users do (webdataset over *.tar, pyarrow over the
parquet files) and checks it field by field against the parquet and the stats. Prints one `ok:` line."""

import glob
import io
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import webdataset as wds

REQUIRED = ["key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256"]
STATUSES = {"success", "failed_to_download", "failed_to_resize"}


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def main(folder):
    tars = sorted(glob.glob(os.path.join(folder, "*.tar")))
    if not tars:
        fail(f"no *.tar in {folder}")
    samples = rows = 0
    for tar in tars:
        stem = tar[: -len(".tar")]
        table = pq.read_table(stem + ".parquet")
        for column in REQUIRED:
            if column not in table.column_names:
                fail(f"{stem}.parquet has no column {column}")
        records = table.to_pylist()
        rows += len(records)
        by_key = {r["key"]: r for r in records}
        if len(by_key) != len(records):
            fail(f"{stem}.parquet has duplicate keys")
        for r in records:
            if r["status"] not in STATUSES:
                fail(f"row {r['key']}: unknown status {r['status']}")
            if (r["status"] == "success") != (r["error_message"] is None):
                fail(f"row {r['key']}: status {r['status']} with error {r['error_message']!r}")
        with open(stem + "_stats.json") as f:
            stats = json.load(f)
        successes = [r for r in records if r["status"] == "success"]
        for field, want in [
            ("count", len(records)),
            ("successes", len(successes)),
            ("failed_to_download", sum(r["status"] == "failed_to_download" for r in records)),
            ("failed_to_resize", sum(r["status"] == "failed_to_resize" for r in records)),
        ]:
            if stats[field] != want:
                fail(f"{stem}_stats.json: {field} = {stats[field]}, the parquet says {want}")
        if sum(stats["status_dict"].values()) != len(records):
            fail(f"{stem}_stats.json: status_dict does not add up to count")

        seen = set()
        dataset = wds.WebDataset(tar, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "txt", "json")
        for key, image, caption, meta in dataset:
            samples += 1
            seen.add(key)
            row = by_key.get(key)
            if row is None or row["status"] != "success":
                fail(f"sample {key} is not a success row of the parquet")
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
                fail(f"sample {key}: the image does not decode to an HxWx3 uint8 array")
            if (image.shape[1], image.shape[0]) != (row["width"], row["height"]):
                fail(f"sample {key}: image {image.shape[1]}x{image.shape[0]}, parquet {row['width']}x{row['height']}")
            if caption != row["caption"]:
                fail(f"sample {key}: caption {caption!r}, parquet {row['caption']!r}")
            for field in REQUIRED + ["url", "caption"]:
                if meta.get(field) != row.get(field):
                    fail(f"sample {key}: json {field} = {meta.get(field)!r}, parquet {row.get(field)!r}")
        if seen != {r["key"] for r in successes}:
            fail(f"{tar}: the tar's samples are not the parquet's successes")
    print(f"ok: {len(tars)} shards, {samples} samples, {rows} rows")


if __name__ == "__main__":
    main(sys.argv[1])
