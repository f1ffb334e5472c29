#!/usr/bin/env bash
# The main job on the embedded default (the trained toy FLUX.1-Kontext, CPU): set up, then
#   20 held-out toy faces -> protected with DeContext (the fast preset: docs/EVIDENCE.md, "Fewer PGD steps")
#   and with random +-eps noise of the same budget -> edited (clean / noise / protected) with the toy
#   editor over its six edit prompts -> scored -> runs/demo/{summary.md, report.html}.
# One process runs every stage (python -m decontext demo); each stage resumes, so a re-run only re-scores.
# Variables: PRESET (fast, or paper: the official 800 steps), RUN (runs/demo), COUNT (20), EPS, STEPS,
#   SEED (42), SETUP (1), EDITOR (kontext, or ip2p: the toy InstructPix2Pix), MODEL (toy, or another toy
#   by name), METHOD (the family's default: decontext on kontext, encoder on ip2p).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ "${SETUP:-1}" = 1 ] && bash scripts/setup.sh
flags=(--run "${RUN:-runs/demo}" --count "${COUNT:-20}" --preset "${PRESET:-fast}" --seed "${SEED:-42}"
       --editor "${EDITOR:-kontext}" --model "${MODEL:-toy}" --no-progress)
[ -n "${EPS:-}" ] && flags+=(--eps "$EPS")
[ -n "${STEPS:-}" ] && flags+=(--steps "$STEPS")
[ -n "${METHOD:-}" ] && flags+=(--method "$METHOD")
exec "$ROOT/.venv/bin/python" -m decontext demo "${flags[@]}"
