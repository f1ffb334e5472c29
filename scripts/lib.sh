# Shared by the shell drivers: the project's Python, a default sample input, and the flags a user set.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -n "${VIRTUAL_ENV:-}" ] && echo "$VIRTUAL_ENV/bin/python" || { [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python"; } || echo python3 )}

# sample_input: a folder holding scikit-image's public-domain astronaut portrait (the smoke default).
sample_input() {
  local folder="$ROOT/outputs/sample_inputs"
  mkdir -p "$folder"
  "$PYTHON" -c "import sys; from PIL import Image; from skimage.data import astronaut; Image.fromarray(astronaut()).save(sys.argv[1])" "$folder/astronaut.png"
  echo "$folder"
}

# set_flags VAR... : appends to the array `args` "--var value" for every shell variable that is set and
# not empty (MODEL -> --model, T_RANGE -> --t-range; a list-valued one, e.g. T_RANGE="0 1", is split).
# Nothing else is passed: every default is the command's own (the editor family's, the method's, the
# model's), stated once in the library.
set_flags() {
  local var value flag
  for var in "$@"; do
    value=${!var:-}
    [ -n "$value" ] || continue
    flag="--$(echo "$var" | tr 'A-Z_' 'a-z-')"
    # shellcheck disable=SC2206
    args+=("$flag" $value)
  done
}

ATTACK_VARS="MODEL EPS ALPHA STEPS RESOLUTION SEED DEVICE DTYPE METHOD PROMPTS BLOCKS T_RANGE T_ONE_EVERY MOMENTUM SCHEDULE UPDATE START PSNR_FLOOR"

# attack FAMILY DEFAULT_OUTPUT [FAMILY_VARS...] -- [extra flags]: protect INPUT (default: the sample
# portrait) into OUTPUT with `python -m decontext attack --family FAMILY`, passing the variables set.
attack() {
  local family=$1 output=$2
  shift 2
  local extra=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do extra+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  [ -n "${INPUT:-}" ] || INPUT=$(sample_input)
  args=(--family "$family" --input "$INPUT" --output "${OUTPUT:-$output}")
  # shellcheck disable=SC2086
  set_flags $ATTACK_VARS "${extra[@]}"
  exec "$PYTHON" -m decontext attack "${args[@]}" "$@"
}
