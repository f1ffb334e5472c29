#!/usr/bin/env bash
# Set up the test environment (.venv-test, requirements/full.lock; see scripts/setup.sh) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv-test/bin/activate
python -m pytest -q "$@"
