#!/usr/bin/env bash
# Protect images against Step1X-Edit with DeContext. Every flag of attack/attack_step1x.py has a shell
# variable of the same name; set them in the environment, e.g.
#   MODEL=tiny INPUT=photos/ OUTPUT=protected/ bash scripts/attack_step1x.sh
#   MODEL=/models/Step1X-Edit/step1x-edit-v1p1-official.safetensors PREFIX_FILE=step1x_prefix.txt \
#     INPUT=photos/ OUTPUT=protected/ bash scripts/attack_step1x.sh
# Defaults are the official Step1X attack's: eps 25.5/255 and step 1.275/255 (the official script's 0.10
# and 0.005 on [0, 1] pixels), 800 steps, single blocks 0-25 of 38, sigma = 1 every 10th step.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

MODEL=${MODEL:-tiny}
OUTPUT=${OUTPUT:-outputs/protected_step1x}
EPS=${EPS:-25.5}
ALPHA=${ALPHA:-1.275}
if [ "$MODEL" = tiny ]; then  # the random-weight smoke model: short run at a small size
  STEPS=${STEPS:-20}; RESOLUTION=${RESOLUTION:-128}
else
  STEPS=${STEPS:-800}; RESOLUTION=${RESOLUTION:-auto}
fi
T_ONE_EVERY=${T_ONE_EVERY:-10}
VLM_REFRESH=${VLM_REFRESH:-1}
PREFIX_FILE=${PREFIX_FILE:-}
VAE=${VAE:-}
VLM=${VLM:-}

attack_args  # SEED PROMPTS BLOCKS T_RANGE DEVICE DTYPE INPUT (scripts/lib.sh)
args+=(--t-one-every "$T_ONE_EVERY" --vlm-refresh "$VLM_REFRESH")
[ -n "$PREFIX_FILE" ] && args+=(--prefix-file "$PREFIX_FILE")
[ -n "$VAE" ] && args+=(--vae "$VAE")
[ -n "$VLM" ] && args+=(--vlm "$VLM")
exec "$PYTHON" "$ROOT/attack/attack_step1x.py" "${args[@]}" "$@"
