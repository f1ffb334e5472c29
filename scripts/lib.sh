# Shared by the shell drivers: the project's Python and a default sample input.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}

# sample_input: a folder holding scikit-image's public-domain astronaut portrait (the smoke default).
sample_input() {
  local folder="$ROOT/outputs/sample_inputs"
  mkdir -p "$folder"
  "$PYTHON" -c "import sys; from PIL import Image; from skimage.data import astronaut; Image.fromarray(astronaut()).save(sys.argv[1])" "$folder/astronaut.png"
  echo "$folder"
}

# attack_args: fills the array `args` with the flags every attack driver passes, from the shell variables
# of the same names. The driver sets its editor's defaults (MODEL OUTPUT EPS ALPHA STEPS RESOLUTION) first
# and appends its own flags after. BLOCKS and T_RANGE are passed only when set: unset, each method keeps
# its own defaults (DeContext: the paper's single 0-25/38 and 0.98-1.0; DANP, TDAE, flow_loss: their own).
attack_args() {
  SEED=${SEED:-0}
  PROMPTS=${PROMPTS:-}
  BLOCKS=${BLOCKS:-}
  T_RANGE=${T_RANGE:-}
  DEVICE=${DEVICE:-auto}
  DTYPE=${DTYPE:-auto}
  [ -n "${INPUT:-}" ] || INPUT=$(sample_input)
  args=(--model "$MODEL" --input "$INPUT" --output "$OUTPUT" --eps "$EPS" --alpha "$ALPHA" --steps "$STEPS"
        --resolution "$RESOLUTION" --seed "$SEED" --device "$DEVICE" --dtype "$DTYPE")
  [ -z "$PROMPTS" ] || args+=(--prompts "$PROMPTS")
  [ -z "$BLOCKS" ] || args+=(--blocks "$BLOCKS")
  [ -z "$T_RANGE" ] || args+=(--t-range $T_RANGE)
}
