# Sourced by the knn benchmarks (knn.sh, knn_ivfpq.sh) from the repository root, with N, D, PARTS and the
# Python modules they need in PY_MODULES: checks .venv, finds or builds the release binary ($DSMAKE), makes a
# work folder ($WORK, removed on exit), the vectors in $WORK/emb (tests/bench/knn_vectors.py) and
# $WORK/knn.toml with the `files` step over them (`emb`), to which each benchmark appends its knn-index step.
PY="$PWD/.venv/bin/python"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake/target}"
if ! "$PY" -c "import $PY_MODULES" 2>/dev/null; then
  echo "error: $PY cannot import $PY_MODULES: run tests/run.sh once (it creates .venv)" >&2
  exit 3
fi
if [ -z "${DSMAKE:-}" ]; then
  echo "== building dsmake (release)"
  cargo build --release --quiet
  DSMAKE="$CARGO_TARGET_DIR/release/dsmake"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "== vectors: $N x $D in $PARTS parts"
"$PY" tests/bench/knn_vectors.py "$WORK/emb" "$N" "$D" "$PARTS" "${DATA:-iso}"
cat > "$WORK/knn.toml" <<'EOF'
[steps.emb]
kind = "files"
paths = ["emb/img_emb/*.npy", "emb/metadata/*.parquet"]

EOF
