#!/usr/bin/env bash
# Sweep protection settings against FLUX.1-Kontext (variables: scripts/sweep.sh). Examples:
#   NAME=eps_toy MODEL=toy INPUT=faces/ EPS="8 16" STEPS="50 100" PROMPT_INDICES="0 2 4" METRICS=toy bash scripts/sweep_kontext.sh
#   NAME=blocks MODEL=black-forest-labs/FLUX.1-Kontext-dev INPUT=photos/ BLOCKS="single:0-25;double" bash scripts/sweep_kontext.sh
EDITOR=kontext exec bash "$(dirname "$0")/sweep.sh" "$@"
