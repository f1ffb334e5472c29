#!/usr/bin/env bash
# Set up the test environment (.venv-test, requirements/full.lock; see scripts/setup.sh), lint, and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv-test/bin/activate
# The house's lint and format (pyproject.toml [tool.ruff]) first: a second, not worth a suite run to find.
ruff check --quiet .
ruff format --check --quiet .
python -m pytest -q "$@"
