#!/usr/bin/env bash
# One experiment in one run folder: sources -> DeContext protection -> edits of clean and protected.
#   runs/<NAME>/{run.json, source/, protected/, edits/clean/, edits/protected/}
#   (+ purified/<breaker>/protected/ and edits/protected@<breaker>/ with BREAKERS="jpeg resize ...")
# then score it with:  python eval/compute_metrics.py --run runs/<NAME>
#
# EDITOR picks the editor: kontext (FLUX.1-Kontext, default), step1x (Step1X-Edit) or ip2p
# (InstructPix2Pix, protected with its default method, the encoder attack; METHOD overrides); every other
# variable means the same for both, and defaults to that editor's own settings where unset.
# Example (CPU smoke run, tiny random-weight model):
#   NAME=smoke MODEL=tiny INPUT=photos/ PROMPT_INDICES="0 10 20" SEEDS="42 43" bash scripts/run_experiment.sh
#   EDITOR=step1x NAME=smoke1x MODEL=tiny INPUT=photos/ PROMPT_INDICES="0" bash scripts/run_experiment.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}

NAME=${NAME:?set NAME (the run folder is runs/NAME)}
INPUT=${INPUT:?set INPUT (an image or a folder of images)}
MODEL=${MODEL:-tiny}
RUNS=${RUNS:-runs}
RUN="$RUNS/$NAME"
EDITOR=${EDITOR:-kontext}
case "$EDITOR" in
  kontext) FAMILY=flux_kontext; ATTACK="$ROOT/attack/attack_kontext.py"; INFER="$ROOT/inference/kontext_inference.py" ;;
  step1x) FAMILY=step1x_edit; ATTACK="$ROOT/attack/attack_step1x.py"; INFER="$ROOT/inference/step1x_inference.py" ;;
  ip2p) FAMILY=instruct_pix2pix; ATTACK="$ROOT/attack/attack_ip2p.py"; INFER="$ROOT/inference/ip2p_inference.py" ;;
  *) echo "EDITOR must be kontext, step1x or ip2p, got '$EDITOR'" >&2; exit 2 ;;
esac
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-auto}
# attack
if [ "$MODEL" = tiny ]; then ATTACK_STEPS=${ATTACK_STEPS:-30}; ATTACK_RESOLUTION=${ATTACK_RESOLUTION:-native}
else ATTACK_STEPS=${ATTACK_STEPS:-800}; ATTACK_RESOLUTION=${ATTACK_RESOLUTION:-auto}; fi
EPS=${EPS:-}      # empty: the editor's official default (kontext 12.75, step1x 25.5, ip2p 16)
ALPHA=${ALPHA:-}
METHOD=${METHOD:-}  # empty: the editor's default (kontext/step1x decontext, ip2p encoder)
# inference
PROMPTS=${PROMPTS:-}
PROMPT_INDICES=${PROMPT_INDICES:-}
SEEDS=${SEEDS:-42}
EDIT_STEPS=${EDIT_STEPS:-}      # empty: the editor's default (kontext 20, step1x 28, ip2p 100)
GUIDANCE=${GUIDANCE:-}          # empty: the editor's default (kontext 3.5, step1x 6.0, ip2p 7.5 text)
EDIT_RESOLUTION=${EDIT_RESOLUTION:-}
BATCH_SIZE=${BATCH_SIZE:-1}
# robustness: purified copies of protected/ (decontext/purify.py specs, e.g. "jpeg resize blur"), each
# edited into edits/protected@<breaker>; compute_metrics reports them beside the unpurified numbers
BREAKERS=${BREAKERS:-}

PREFIX_FILE=${PREFIX_FILE:-}   # step1x with a real checkpoint: the official conditioning prefix (see README)
common=(--model "$MODEL" --device "$DEVICE" --dtype "$DTYPE")
[ -n "$PREFIX_FILE" ] && common+=(--prefix-file "$PREFIX_FILE")
"$PYTHON" -m decontext.runs init --input "$INPUT" --run "$RUN" --model "$MODEL" --editor "$FAMILY"

attack=("${common[@]}" --input "$RUN/source" --output "$RUN/protected" --steps "$ATTACK_STEPS" --resolution "$ATTACK_RESOLUTION")
[ -n "$EPS" ] && attack+=(--eps "$EPS")
[ -n "$ALPHA" ] && attack+=(--alpha "$ALPHA")
[ -n "$METHOD" ] && attack+=(--method "$METHOD")
[ -n "$PROMPTS" ] && attack+=(--prompts "$PROMPTS")
"$PYTHON" "$ATTACK" "${attack[@]}" || echo "warning: some images failed to protect (see $RUN/protected/manifest.json)"

edit=("${common[@]}" --seeds $SEEDS --batch-size "$BATCH_SIZE")
[ -n "$EDIT_STEPS" ] && edit+=(--steps "$EDIT_STEPS")
[ -n "$GUIDANCE" ] && edit+=(--guidance "$GUIDANCE")
[ -n "$EDIT_RESOLUTION" ] && edit+=(--resolution "$EDIT_RESOLUTION")
[ -n "$PROMPTS" ] && edit+=(--prompts "$PROMPTS")
[ -n "$PROMPT_INDICES" ] && edit+=(--prompt-indices $PROMPT_INDICES)
status=0
"$PYTHON" "$INFER" "${edit[@]}" --images "$RUN/source" --output "$RUN/edits/clean" || status=1
"$PYTHON" "$INFER" "${edit[@]}" --images "$RUN/protected" --output "$RUN/edits/protected" || status=1
if [ -n "$BREAKERS" ]; then
  "$PYTHON" -m decontext.purify --run "$RUN" --breakers $BREAKERS || status=1
  for label in $("$PYTHON" -c 'import sys; from decontext.purify import parse_breakers; print(" ".join(b.label for b in parse_breakers(sys.argv[1:])))' $BREAKERS); do
    "$PYTHON" "$INFER" "${edit[@]}" --images "$RUN/purified/$label/protected" --output "$RUN/edits/protected@$label" || status=1
  done
fi
echo "run folder: $RUN"
exit $status
