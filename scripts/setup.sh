#!/usr/bin/env bash
# Create (or reuse) a virtual environment with the exact versions of a lock file (requirements/*.lock):
#   bash scripts/setup.sh          # .venv: the library and the demo. Without a CUDA GPU, a CPU build of torch
#                                  #   (requirements/cpu.lock, ~1.4 GB); with one, requirements/full.lock.
#   bash scripts/setup.sh test     # .venv-test: everything, with the test tools and the optional metrics
#                                  #   (LPIPS and MTCNN need torchvision, hence torch's CUDA build, which runs on CPUs
#                                  #   too; requirements/full.lock, ~6 GB): what CI runs.
# The installer is uv (fast, parallel); the machine's pip settings (find-links, extra indexes) are passed on,
# and PyTorch's CPU index is added when the CPU build is found nowhere else. A re-run with the same lock
# file and pyproject.toml does nothing (a stamp in the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-app}
PY=${PYTHON:-python3}
case "$PROFILE" in
  app)
    VENV=.venv
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then LOCK=requirements/full.lock; else LOCK=requirements/cpu.lock; fi ;;
  test) VENV=.venv-test; LOCK=requirements/full.lock ;;
  *) echo "usage: bash scripts/setup.sh [app|test]" >&2; exit 2 ;;
esac
STAMP="$VENV/.decontext-setup"
WANT="$(cat "$LOCK" pyproject.toml "$0" | sha256sum | cut -c1-16) $LOCK"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"

. scripts/uv_flags.sh  # the machine's pip settings as uv flags

install_lock() {  # $@: extra uv flags
  # Byte-compiled at install (as pip does): with PYTHONDONTWRITEBYTECODE set, nothing would ever cache the
  # compiled modules, and every start-up would compile torch, diffusers and transformers again (~10 s).
  "$VENV/bin/uv" pip sync --python "$VPY" --compile-bytecode "${uv_flags[@]}" "$@" "$LOCK"
}
if "$VPY" -m pip install -q --disable-pip-version-check "uv==0.13.9"; then
  if ! install_lock 2>/tmp/decontext-setup.$$; then
    if grep -q "torch" /tmp/decontext-setup.$$; then  # the CPU build of torch lives on PyTorch's own index
      install_lock --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
    else
      cat /tmp/decontext-setup.$$ >&2; rm -f /tmp/decontext-setup.$$; exit 1
    fi
  fi
  rm -f /tmp/decontext-setup.$$
  "$VENV/bin/uv" pip install --python "$VPY" --no-deps -e .
  pip_install() { "$VENV/bin/uv" pip install --python "$VPY" "$@"; }
else  # no uv wheel reachable: pip does the same, slower
  echo "note: uv could not be installed; installing with pip (slower)" >&2
  "$VPY" -m pip install -q --disable-pip-version-check -r "$LOCK"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps -e .
  pip_install() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
fi
if [ "$LOCK" = requirements/full.lock ]; then
  # facenet-pytorch 2.6.0 (MTCNN face detection with its weights in the wheel, FaceNet for ISM) pins torch<2.3,
  # numpy<2 and Pillow<10.3, which would downgrade the whole stack. The parts decontext uses work with our
  # torch and numpy 2 (tests/test_metrics_identity.py proves it), so it goes in without its pins.
  pip_install --no-deps facenet-pytorch==2.6.0
fi
if [ "$PROFILE" = test ] && ! command -v chromium >/dev/null 2>&1; then
  # The app's browser test (tests/test_app.py) drives the system Chromium with Playwright (no browser download).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -q --no-install-recommends chromium || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; } >/dev/null \
      || echo "note: chromium could not be installed; the app's browser test will be skipped" >&2
  else
    echo "note: no chromium on PATH (install your distribution's chromium); the app's browser test will be skipped" >&2
  fi
fi
echo "$WANT" > "$STAMP"
