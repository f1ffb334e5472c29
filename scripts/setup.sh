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
python -m pip install -q --no-deps -e .
