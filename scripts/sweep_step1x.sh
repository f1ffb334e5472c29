#!/usr/bin/env bash
# Sweep protection settings against Step1X-Edit (variables: scripts/sweep.sh; a real checkpoint also
# needs PREFIX_FILE=FILE, given to the attack and the edits, as in README "Step1X-Edit").
#   NAME=s1x MODEL=tiny INPUT=photos/ EPS="8 16" bash scripts/sweep_step1x.sh
EDITOR=step1x exec bash "$(dirname "$0")/sweep.sh" "$@"
