#!/usr/bin/env bash
# Sweep protection settings against Step1X-Edit (variables: scripts/sweep.sh; a real checkpoint also
# needs ATTACK_ARGS="--prefix-file FILE" as in README "Step1X-Edit").
#   NAME=s1x MODEL=tiny INPUT=photos/ EPS="8 16" bash scripts/sweep_step1x.sh
EDITOR=step1x exec bash "$(dirname "$0")/sweep.sh" "$@"
