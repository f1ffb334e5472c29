#!/usr/bin/env bash
# The main job on the embedded default (the trained toy FLUX.1-Kontext, CPU, a few minutes):
#   20 held-out toy faces -> protected with DeContext (paper defaults, blocks scaled to the toy's depth)
#   and with random +-eps noise of the same budget -> edited (clean / noise / protected) with the toy
#   editor over its six edit prompts -> scored -> runs/demo/{summary.md, report.html}.
# Variables: RUN (runs/demo), COUNT (20), EPS (12.75), STEPS (PGD steps, 200), SEED (42), SETUP (1),
#   EDITOR (kontext, or ip2p: the toy InstructPix2Pix; any family with a toy), MODEL (toy, or another toy
#   by name), METHOD (the family's default: decontext on kontext, encoder on ip2p).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ "${SETUP:-1}" = 1 ] && bash scripts/setup.sh
PY="$ROOT/.venv/bin/python"
RUN=${RUN:-runs/demo}
COUNT=${COUNT:-20}
EPS=${EPS:-12.75}
STEPS=${STEPS:-200}
SEED=${SEED:-42}
EDITOR=${EDITOR:-kontext}
MODEL=${MODEL:-toy}
METHOD=${METHOD:-}
PROMPTS=data/prompts/toy_prompts.txt
PROMPT_INDICES="0 2 4 6 8 10"   # one phrasing of each of the six toy edits

"$PY" -m decontext toy-faces --count "$COUNT" --out "$RUN/source"
"$PY" -m decontext runs init --input "$RUN/source" --run "$RUN" --model "$MODEL" --editor "$EDITOR"
attack=(--family "$EDITOR" --model "$MODEL" --input "$RUN/source" --eps "$EPS" --resolution native --prompts "$PROMPTS" --seed "$SEED" --no-progress)
"$PY" -m decontext attack "${attack[@]}" ${METHOD:+--method "$METHOD"} --steps "$STEPS" --output "$RUN/protected"
"$PY" -m decontext attack "${attack[@]}" --method noise --output "$RUN/noise"
for condition in clean noise protected; do
  images="$RUN/$condition"; [ "$condition" = clean ] && images="$RUN/source"
  "$PY" -m decontext edit --family "$EDITOR" --model "$MODEL" --images "$images" --output "$RUN/edits/$condition" \
      --prompts "$PROMPTS" --prompt-indices $PROMPT_INDICES --seeds "$SEED" --batch-size 6 --no-progress
done
"$PY" -m decontext eval --run "$RUN"
echo
cat "$RUN/summary.md"
echo
echo "report: $RUN/report.html"
