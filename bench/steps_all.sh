#!/usr/bin/env bash
# The evidence behind the fast preset (docs/EVIDENCE.md, "Fewer PGD steps"): bench/steps.py on the tiny
# FLUX.1-Kontext at 256 and 512 px, the tiny Step1X-Edit (with its VLM re-read interval), and the toy.
# About 100 minutes on a 2-core CPU (the 800-step reference dominates); one JSON and one log per model in
# OUT (default runs/steps). ROWS="tiny256 toy" runs only those.
set -euo pipefail
OUT=${1:-runs/steps}
PY=${PYTHON:-python}
mkdir -p "$OUT"
ROWS=${ROWS:-tiny256 toy step1x256 tiny512}
run() { name=$1; shift; case " $ROWS " in *" $name "*) ;; *) return 0 ;; esac
        "$PY" -m bench.steps "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"; }
run tiny256 --model tiny --size 256 --images 8 --snapshots 50 100 200 400 --budgets 60 80 100 --rules fast "fast without stopping"
run toy --model toy --images 12 --snapshots 100 200 400 --budgets 60 100 --rules fast "fast without stopping"
run step1x256 --model tiny --family step1x_edit --size 256 --images 8 --snapshots 100 200 --budgets 100 --rules fast --vlm-refresh 1 10 0
run tiny512 --model tiny --size 512 --images 8 --snapshots 100 200 400 --budgets 100 --rules fast
