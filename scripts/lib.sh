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
