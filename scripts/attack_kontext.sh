#!/usr/bin/env bash
# Protect images against FLUX.1-Kontext with DeContext. Every flag of attack/attack_kontext.py has a
# shell variable of the same name; set them in the environment, e.g.
#   MODEL=tiny INPUT=photos/ OUTPUT=protected/ RESOLUTION=native STEPS=30 bash scripts/attack_kontext.sh
#   MODEL=black-forest-labs/FLUX.1-Kontext-dev INPUT=photos/ OUTPUT=protected/ bash scripts/attack_kontext.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"

MODEL=${MODEL:-tiny}
OUTPUT=${OUTPUT:-outputs/protected}
EPS=${EPS:-12.75}
ALPHA=${ALPHA:-0.6375}
if [ "$MODEL" = tiny ]; then  # the random-weight smoke model: short run at the image's own size
  STEPS=${STEPS:-30}; RESOLUTION=${RESOLUTION:-native}
else
  STEPS=${STEPS:-800}; RESOLUTION=${RESOLUTION:-auto}
fi
GUIDANCE=${GUIDANCE:-3.5}

attack_args  # SEED PROMPTS BLOCKS T_RANGE DEVICE DTYPE INPUT (scripts/lib.sh)
args+=(--guidance "$GUIDANCE")
exec "$PYTHON" "$ROOT/attack/attack_kontext.py" "${args[@]}" "$@"
