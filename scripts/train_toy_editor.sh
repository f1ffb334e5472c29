#!/usr/bin/env bash
# Reproduce the embedded toy editor (data/toy_editor) and its attribute reader (data/toy_reader) from a
# seed, on CPU with 2 threads (30 min measured from scratch on 2 cores, evaluation included; docs/TOY.md). Extra arguments go to
# `python -m decontext.toy.train` (e.g. --resume to continue an interrupted run from runs/toy_train).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=2
"$PY" -m decontext.toy.train --seed "${SEED:-0}" --threads 2 "$@"
"$PY" -m decontext.toy.evaluate --threads 2 --json runs/toy_train/eval.json
