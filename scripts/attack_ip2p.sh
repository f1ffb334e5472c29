#!/usr/bin/env bash
# Protect images against InstructPix2Pix (variables as scripts/attack_kontext.sh), e.g.
#   MODEL=timbrooks/instruct-pix2pix METHOD=flow_loss INPUT=photos/ OUTPUT=protected/ bash scripts/attack_ip2p.sh
# METHOD: encoder (PhotoGuard's encoder attack, the default), flow_loss, danp, tdae, diffusion, noise, or a
# composition such as encoder+danp (docs/METHODS.md). DeContext does not apply: the source is not attended to.
# Defaults: 16/255, step 1/255, 200 steps (the usual SD-immunisation budget; no official DANP/TDAE figures).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
attack instruct_pix2pix outputs/protected_ip2p -- "$@"
