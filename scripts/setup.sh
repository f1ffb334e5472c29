#!/usr/bin/env bash
# Create (or reuse) the project virtualenv in .venv and install everything the library, the CLIs and
# the tests need. Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt -r requirements-dev.txt
# facenet-pytorch 2.6.0 (MTCNN face detection with its weights in the wheel, FaceNet for ISM) pins
# torch<2.3, numpy<2 and Pillow<10.3, which would downgrade the whole stack. The parts decontext uses
# work with our torch and numpy 2 (tests/test_metrics_identity.py proves it), so install it without
# its pins; its real dependencies (torch, torchvision, numpy, Pillow, requests, tqdm) come from above.
python -m pip install -q --no-deps facenet-pytorch==2.6.0
python -m pip install -q --no-deps -e .
