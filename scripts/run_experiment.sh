#!/usr/bin/env bash
# One experiment in one run folder: sources -> DeContext protection -> edits of clean and protected.
#   runs/<NAME>/{run.json, source/, protected/, edits/clean/, edits/protected/}
# then score it with:  python eval/compute_metrics.py --run runs/<NAME>
#
# Example (CPU smoke run, tiny random-weight model):
#   NAME=smoke MODEL=tiny INPUT=photos/ PROMPT_INDICES="0 10 20" SEEDS="42 43" bash scripts/run_experiment.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}

NAME=${NAME:?set NAME (the run folder is runs/NAME)}
INPUT=${INPUT:?set INPUT (an image or a folder of images)}
MODEL=${MODEL:-tiny}
RUNS=${RUNS:-runs}
RUN="$RUNS/$NAME"
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-auto}
# attack
if [ "$MODEL" = tiny ]; then ATTACK_STEPS=${ATTACK_STEPS:-30}; ATTACK_RESOLUTION=${ATTACK_RESOLUTION:-native}
else ATTACK_STEPS=${ATTACK_STEPS:-800}; ATTACK_RESOLUTION=${ATTACK_RESOLUTION:-auto}; fi
EPS=${EPS:-12.75}
ALPHA=${ALPHA:-0.6375}
# inference
PROMPTS=${PROMPTS:-}
PROMPT_INDICES=${PROMPT_INDICES:-}
SEEDS=${SEEDS:-42}
EDIT_STEPS=${EDIT_STEPS:-20}
GUIDANCE=${GUIDANCE:-3.5}
EDIT_RESOLUTION=${EDIT_RESOLUTION:-512}
BATCH_SIZE=${BATCH_SIZE:-1}

common=(--model "$MODEL" --device "$DEVICE" --dtype "$DTYPE")
"$PYTHON" -m decontext.runs init --input "$INPUT" --run "$RUN" --model "$MODEL"

attack=("${common[@]}" --input "$RUN/source" --output "$RUN/protected" --eps "$EPS" --alpha "$ALPHA"
        --steps "$ATTACK_STEPS" --resolution "$ATTACK_RESOLUTION")
[ -n "$PROMPTS" ] && attack+=(--prompts "$PROMPTS")
"$PYTHON" "$ROOT/attack/attack_kontext.py" "${attack[@]}" || echo "warning: some images failed to protect (see $RUN/protected/manifest.json)"

edit=("${common[@]}" --seeds $SEEDS --steps "$EDIT_STEPS" --guidance "$GUIDANCE" --resolution "$EDIT_RESOLUTION" --batch-size "$BATCH_SIZE")
[ -n "$PROMPTS" ] && edit+=(--prompts "$PROMPTS")
[ -n "$PROMPT_INDICES" ] && edit+=(--prompt-indices $PROMPT_INDICES)
status=0
"$PYTHON" "$ROOT/inference/kontext_inference.py" "${edit[@]}" --images "$RUN/source" --output "$RUN/edits/clean" || status=1
"$PYTHON" "$ROOT/inference/kontext_inference.py" "${edit[@]}" --images "$RUN/protected" --output "$RUN/edits/protected" || status=1
echo "run folder: $RUN"
exit $status
