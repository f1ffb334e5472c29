#!/usr/bin/env bash
# A hyperparameter sweep (decontext/sweep.py), shared by scripts/sweep_<editor>.sh. Shell variables:
#   NAME (the folder runs/NAME), INPUT (images), MODEL, EDITOR (any editor family or short name: kontext, step1x, ip2p, flux2, qwen)
#   grid axes, each a space-separated list: EPS ALPHA STEPS METHOD MOMENTUM SCHEDULE UPDATE,
#     BLOCKS and T_RANGE (values separated by ';', e.g. T_RANGE="0.98,1.0;0,1"), or GRID (a JSON file)
#   PROMPTS PROMPT_INDICES SEEDS METRICS DEVICES (auto: every visible GPU, one point each; cpu) DTYPE
#   ATTACK_ARGS (more attack flags for every point), EDITOR_ARGS (model-loading flags for the attack and the
#   edits), PREFIX_FILE (Step1X-Edit with a real checkpoint: its conditioning prefix, see README)
# A re-run skips finished points; the table (table.md / table.csv) and plots (plot_<axis>.svg) are rewritten.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
NAME=${NAME:?set NAME (the sweep folder is runs/NAME)}
MODEL=${MODEL:-toy}
EDITOR=${EDITOR:-kontext}
[ -n "${INPUT:-}" ] || INPUT=$(sample_input)
args=(--name "$NAME" --editor "$EDITOR" --model "$MODEL" --input "$INPUT" --devices "${DEVICES:-auto}" --dtype "${DTYPE:-auto}"
      --seeds ${SEEDS:-42} --runs "${RUNS:-runs}")
[ -n "${GRID:-}" ] && args+=(--grid "$GRID")
for axis in EPS ALPHA STEPS METHOD MOMENTUM SCHEDULE UPDATE; do
  value=${!axis:-}
  [ -n "$value" ] && args+=(--"$(echo "$axis" | tr 'A-Z' 'a-z')" $value)
done
for axis in BLOCKS T_RANGE; do
  value=${!axis:-}
  if [ -n "$value" ]; then
    IFS=';' read -r -a parts <<< "$value"
    args+=(--"$(echo "$axis" | tr 'A-Z_' 'a-z-')" "${parts[@]}")
  fi
done
[ -n "${PROMPTS:-}" ] && args+=(--prompts "$PROMPTS")
[ -n "${PROMPT_INDICES:-}" ] && args+=(--prompt-indices $PROMPT_INDICES)
[ -n "${METRICS:-}" ] && args+=(--metrics "$METRICS")
editor_args=${EDITOR_ARGS:-}
[ -n "${PREFIX_FILE:-}" ] && editor_args="$editor_args --prefix-file $(printf %q "$PREFIX_FILE")"
[ -n "$editor_args" ] && args+=(--editor-args "$editor_args")
[ -n "${ATTACK_ARGS:-}" ] && args+=(--attack-args $ATTACK_ARGS)
exec "$PYTHON" -m decontext sweep "${args[@]}"
