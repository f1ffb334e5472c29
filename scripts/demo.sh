#!/usr/bin/env bash
# The main job on the embedded default (the trained toy FLUX.1-Kontext, CPU, a few minutes):
#   20 held-out toy faces -> protected with DeContext (paper defaults, blocks scaled to the toy's depth)
#   and with random +-eps noise of the same budget -> edited (clean / noise / protected) with the toy
#   editor over its six edit prompts -> scored -> runs/demo/{summary.md, report.html}.
# Variables: RUN (runs/demo), COUNT (20), EPS (12.75), STEPS (PGD steps, 200), SEED (42), SETUP (1),
#   EDITOR (kontext, or ip2p: the toy InstructPix2Pix), MODEL (toy / toy-ip2p, or another toy by name),
#   METHOD (decontext on kontext, encoder on ip2p, where DeContext does not apply).
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
case "$EDITOR" in
  kontext) FAMILY=flux_kontext; ATTACK=attack/attack_kontext.py; INFER=inference/kontext_inference.py; MODEL=${MODEL:-toy}; METHOD=${METHOD:-decontext} ;;
  ip2p) FAMILY=instruct_pix2pix; ATTACK=attack/attack_ip2p.py; INFER=inference/ip2p_inference.py; MODEL=${MODEL:-toy-ip2p}; METHOD=${METHOD:-encoder} ;;
  *) echo "EDITOR must be kontext or ip2p, got '$EDITOR'" >&2; exit 2 ;;
esac
PROMPTS=data/prompts/toy_prompts.txt
PROMPT_INDICES="0 2 4 6 8 10"   # one phrasing of each of the six toy edits

"$PY" -m decontext.toy.export --count "$COUNT" --out "$RUN/source"
"$PY" -m decontext.runs init --input "$RUN/source" --run "$RUN" --model "$MODEL" --editor "$FAMILY"
attack=(--model "$MODEL" --input "$RUN/source" --eps "$EPS" --resolution native --prompts "$PROMPTS" --seed "$SEED" --no-progress)
"$PY" "$ATTACK" "${attack[@]}" --method "$METHOD" --steps "$STEPS" --output "$RUN/protected"
"$PY" "$ATTACK" "${attack[@]}" --method noise --output "$RUN/noise"
for condition in clean noise protected; do
  images="$RUN/$condition"; [ "$condition" = clean ] && images="$RUN/source"
  "$PY" "$INFER" --model "$MODEL" --images "$images" --output "$RUN/edits/$condition" \
      --prompts "$PROMPTS" --prompt-indices $PROMPT_INDICES --seeds "$SEED" --batch-size 6 --no-progress
done
"$PY" eval/compute_metrics.py --run "$RUN"
echo
cat "$RUN/summary.md"
echo
echo "report: $RUN/report.html"
