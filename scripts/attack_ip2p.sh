#!/usr/bin/env bash
# Protect images against InstructPix2Pix. Every flag of attack/attack_ip2p.py has a shell variable of
# the same name; set them in the environment, e.g.
#   MODEL=tiny INPUT=photos/ OUTPUT=protected/ bash scripts/attack_ip2p.sh
#   MODEL=timbrooks/instruct-pix2pix METHOD=flow_loss INPUT=photos/ OUTPUT=protected/ bash scripts/attack_ip2p.sh
# METHOD: encoder (PhotoGuard's encoder attack, default), flow_loss (the noise-prediction loss over
# all timesteps, or T_RANGE), danp, tdae, diffusion, noise, or a composition such as encoder+danp
# (docs/METHODS.md). DeContext does not apply: the source is not attended to.
# Defaults: 16/255, step 1/255, 200 steps (the usual SD-immunisation budget; no official DANP/TDAE figures).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

MODEL=${MODEL:-tiny}
OUTPUT=${OUTPUT:-outputs/protected_ip2p}
EPS=${EPS:-16}
ALPHA=${ALPHA:-1}
METHOD=${METHOD:-encoder}
if [ "$MODEL" = tiny ]; then  # the random-weight smoke model: short run at a small size
  STEPS=${STEPS:-20}; RESOLUTION=${RESOLUTION:-128}
else
  STEPS=${STEPS:-200}; RESOLUTION=${RESOLUTION:-auto}
fi

attack_args  # SEED PROMPTS BLOCKS T_RANGE DEVICE DTYPE INPUT (scripts/lib.sh)
exec "$PYTHON" "$ROOT/attack/attack_ip2p.py" "${args[@]}" --method "$METHOD" "$@"
