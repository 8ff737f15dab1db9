#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI runs it. Idempotent: installs what the tests need,
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/system-packages.sh

# A real S3-compatible server for the S3 store tests (they start it themselves on 127.0.0.1).
S3S_VERSION=0.14.1
if ! s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then
  echo "== installing s3s-fs $S3S_VERSION (the S3 server the tests run against)"
  cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked
fi

# Python readers for the compatibility tests (webdataset, pyarrow, numpy and Pillow, which webdataset decodes images with): a venv in
# .venv (gitignored), created once and reused; the tests fail, rather than skip, without it.
PY_REQUIREMENTS="webdataset==1.0.2 pyarrow==22.0.0 numpy==2.3.5 pillow==12.0.0"
# The remote executors' tests: pyspark (local mode, Java 17) runs remotes/spark_driver.py, boto3 fetches
# from the S3 server as the driver does on Databricks, pyyaml loads the Jobs API spec in the mock server.
# checkov scans terraform/ (it pins boto3, hence that version).
PY_REQUIREMENTS="$PY_REQUIREMENTS pyspark==3.5.5 boto3==1.35.49 pyyaml==6.0.4 checkov==3.2.500"
# knn-index: faiss-cpu reads image.index/text.index and usearch the HNSW file; tests/bench/ compares with faiss.
PY_REQUIREMENTS="$PY_REQUIREMENTS faiss-cpu==1.15.1 usearch==2.26.6"
# moto's S3 server lists ETags as S3 does (s3s-fs lists none): tests/it/common/moto.rs. Its server runs on flask.
PY_REQUIREMENTS="$PY_REQUIREMENTS moto[s3]==5.2.5"
# clip-retrieval's clip_back serves the knn-index folder in tests/python/check_clip_back.py: the package itself
# without its dependencies (torch, its CLIP stack: the test queries by embedding), and what clip_back.py imports.
CLIP_BACK="clip-retrieval==2.44.0"
PY_REQUIREMENTS="$PY_REQUIREMENTS flask==3.1.3 flask-restful==0.3.10 flask-cors==6.0.5 fire==0.7.1 fsspec==2026.9.0"
PY_REQUIREMENTS="$PY_REQUIREMENTS h5py==3.16.0 pandas==3.1.1 prometheus-client==0.26.0"
# CLIP caption cleaning: open_clip runs ftfy.fix_text on every caption (tests/python/ftfy_clean_cases.py).
PY_REQUIREMENTS="$PY_REQUIREMENTS ftfy==6.3.1"
if ! .venv/bin/python -c "import webdataset, pyarrow, numpy, PIL, pyspark, boto3, yaml, checkov, faiss, usearch, ftfy, flask, flask_restful, flask_cors, fire, fsspec, h5py, pandas, prometheus_client, moto.server" 2>/dev/null \
   || ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('clip_retrieval')" 2>/dev/null \
   || [ "$(cat .venv/.dsmake-requirements 2>/dev/null)" != "$PY_REQUIREMENTS $CLIP_BACK" ]; then
  echo "== creating .venv with $PY_REQUIREMENTS $CLIP_BACK"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check $PY_REQUIREMENTS
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps $CLIP_BACK
  echo "$PY_REQUIREMENTS $CLIP_BACK" > .venv/.dsmake-requirements
fi

# Terraform (terraform/): formatting, and checkov's static scan with every suppression justified in place.
# Providers cannot be downloaded here, so no `terraform validate` (README.md says how, where they can).
if command -v terraform >/dev/null; then
  echo "== terraform fmt -check"
  terraform fmt -check -recursive terraform
fi
echo "== checkov (terraform/)"
.venv/bin/checkov -d terraform --framework terraform --skip-download --compact --quiet

# Heavy crates make clean builds slow: keep the target folder outside the clone so that CI reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake-target}"

cargo test --locked --all-targets
