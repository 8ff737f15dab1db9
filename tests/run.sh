#!/usr/bin/env bash
# The whole test suite, as README.md gives it and CI runs it. Idempotent: installs what the tests need
# (nothing beyond cargo today) and then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Heavy crates make clean builds slow: keep the target folder outside the clone so that CI reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dsmake/target}"

cargo test --locked --all-targets
