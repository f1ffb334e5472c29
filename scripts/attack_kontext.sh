#!/usr/bin/env bash
# Protect images against FLUX.1-Kontext with DeContext. Every flag of `decontext attack` has a shell
# variable of the same name, passed only when set (the defaults are the library's: the paper's official
# settings, the model's own working size); e.g.
#   MODEL=toy INPUT=faces/ OUTPUT=protected/ bash scripts/attack_kontext.sh
#   MODEL=black-forest-labs/FLUX.1-Kontext-dev INPUT=photos/ OUTPUT=protected/ bash scripts/attack_kontext.sh
# Unset, MODEL is the tiny random-weight model (a smoke test) and INPUT the sample portrait.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
attack flux_kontext outputs/protected GUIDANCE QUANTIZE -- "$@"
