#!/usr/bin/env bash
# Reproduce a toy editor version and its attribute reader (data/toy_reader, v3: data/toy_reader_v3) from a seed, on CPU with 2
# threads, then evaluate it on the held-out identities (docs/TOY.md has the measured times):
#   bash scripts/train_toy_editor.sh                          # toy-v1 -> data/toy_editor (~30 min)
#   VERSION=toy-v2 bash scripts/train_toy_editor.sh           # -> data/toy_editor_v2
#   VERSION=toy-v2-early bash scripts/train_toy_editor.sh     # -> data/toy_editor_v2_early (labelled bias)
#   VERSION=toy-v2-fine bash scripts/train_toy_editor.sh      # -> data/toy_editor_v2_fine (2x VAE, 256 tokens; ~43 min)
#   VERSION=toy-v3 bash scripts/train_toy_editor.sh           # world v3 (identity is shape) -> data/toy_editor_v3 + data/toy_reader_v3 (~60 min)
# Extra arguments go to `python -m experiments.toy_train` (e.g. --resume to continue an interrupted run,
# --vae-reader-from data/toy_editor to reuse v1's VAE and reader, which the recipe would retrain bit for bit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_NUM_THREADS=2
VERSION=${VERSION:-toy-v1}
mkdir -p runs
"$PY" -m experiments.toy_train --version "$VERSION" --seed "${SEED:-0}" --threads 2 "$@"
"$PY" -m decontext toy-eval --model "$VERSION" --threads 2 --json "runs/eval_$VERSION.json"
