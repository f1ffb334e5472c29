#!/usr/bin/env bash
# Protect images against Step1X-Edit with DeContext (variables as scripts/attack_kontext.sh, plus
# PREFIX_FILE VAE VLM VLM_REFRESH), e.g.
#   MODEL=/models/Step1X-Edit/step1x-edit-v1p1-official.safetensors PREFIX_FILE=step1x_prefix.txt \
#     INPUT=photos/ OUTPUT=protected/ bash scripts/attack_step1x.sh
# Defaults are the official Step1X attack's: eps 25.5/255 and step 1.275/255 (the official script's 0.10
# and 0.005 on [0, 1] pixels), 800 steps, single blocks 0-25 of 38, sigma = 1 every 10th step.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
attack step1x_edit outputs/protected_step1x PREFIX_FILE VAE VLM VLM_REFRESH -- "$@"
