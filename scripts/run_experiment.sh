#!/usr/bin/env bash
# One experiment in one run folder: sources -> DeContext protection -> edits of clean and protected.
#   runs/<NAME>/{run.json, source/, protected/, edits/clean/, edits/protected/}
#   (+ purified/<breaker>/protected/ and edits/protected@<breaker>/ with BREAKERS="jpeg resize ...")
# then score it with:  python eval/compute_metrics.py --run runs/<NAME>
#
# EDITOR picks the editor family: kontext (FLUX.1-Kontext, default), step1x, ip2p, flux2, qwen, or any
# family name of `python -m decontext attack --help`; every other variable means the same for all, is passed
# only when set, and defaults to that family's (and that model's) own settings where unset.
# Example (CPU smoke run, tiny random-weight model):
#   NAME=smoke MODEL=tiny INPUT=photos/ PROMPT_INDICES="0 10 20" SEEDS="42 43" bash scripts/run_experiment.sh
#   EDITOR=step1x NAME=smoke1x MODEL=tiny INPUT=photos/ PROMPT_INDICES="0" bash scripts/run_experiment.sh
# Variables: NAME INPUT MODEL RUNS EDITOR DEVICE DTYPE PREFIX_FILE (Step1X-Edit), EPS ALPHA ATTACK_STEPS
#   ATTACK_RESOLUTION METHOD PROMPTS, SEEDS EDIT_STEPS GUIDANCE EDIT_RESOLUTION BATCH_SIZE PROMPT_INDICES, BREAKERS
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NAME=${NAME:?set NAME (the run folder is runs/NAME)}
INPUT=${INPUT:?set INPUT (an image or a folder of images)}
MODEL=${MODEL:-tiny}
RUNS=${RUNS:-runs}
RUN="$RUNS/$NAME"
EDITOR=${EDITOR:-kontext}
# attack: only what is set is passed (ATTACK_STEPS -> --steps, ATTACK_RESOLUTION -> --resolution)
STEPS=${ATTACK_STEPS:-}
RESOLUTION=${ATTACK_RESOLUTION:-}
# robustness: purified copies of protected/ (decontext/purify.py specs, e.g. "jpeg resize blur"), each
# edited into edits/protected@<breaker>; compute_metrics reports them beside the unpurified numbers
BREAKERS=${BREAKERS:-}

common=(--family "$EDITOR" --model "$MODEL")
args=(); set_flags DEVICE DTYPE PREFIX_FILE; common+=("${args[@]}")
"$PYTHON" -m decontext runs init --input "$INPUT" --run "$RUN" --model "$MODEL" --editor "$EDITOR"

args=(); set_flags EPS ALPHA STEPS RESOLUTION METHOD PROMPTS
"$PYTHON" -m decontext attack "${common[@]}" --input "$RUN/source" --output "$RUN/protected" "${args[@]}" \
  || echo "warning: some images failed to protect (see $RUN/protected/manifest.json)"

# editing: SEEDS EDIT_STEPS GUIDANCE EDIT_RESOLUTION BATCH_SIZE PROMPTS PROMPT_INDICES, each passed only when set
args=(); STEPS=${EDIT_STEPS:-}; RESOLUTION=${EDIT_RESOLUTION:-}; set_flags SEEDS STEPS GUIDANCE RESOLUTION BATCH_SIZE PROMPTS PROMPT_INDICES
edit=("${common[@]}" "${args[@]}")
status=0
"$PYTHON" -m decontext edit "${edit[@]}" --images "$RUN/source" --output "$RUN/edits/clean" || status=1
"$PYTHON" -m decontext edit "${edit[@]}" --images "$RUN/protected" --output "$RUN/edits/protected" || status=1
if [ -n "$BREAKERS" ]; then
  "$PYTHON" -m decontext purify --run "$RUN" --breakers $BREAKERS || status=1
  for label in $("$PYTHON" -c 'import sys; from decontext.purify import parse_breakers; print(" ".join(b.label for b in parse_breakers(sys.argv[1:])))' $BREAKERS); do
    "$PYTHON" -m decontext edit "${edit[@]}" --images "$RUN/purified/$label/protected" --output "$RUN/edits/protected@$label" || status=1
  done
fi
echo "run folder: $RUN"
exit $status
