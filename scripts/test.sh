#!/usr/bin/env bash
# Set up the test environment (.venv-test, requirements/full.lock; see scripts/setup.sh), lint, and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv-test/bin/activate
# The house's lint and format (pyproject.toml [tool.ruff]) first: a second, not worth a suite run to find.
ruff check --quiet .
ruff format --check --quiet .
# Two test processes (-n: pytest-xdist; a file stays in one process, so its module fixtures are built once;
# tests/conftest.py hands the files out longest first and --no-loadscope-reorder keeps that order). torch keeps
# its own thread count in each process: the golden values depend on it. Idle OpenMP threads sleep instead of
# spinning, so the two processes do not steal each other's cores. DECONTEXT_TEST_WORKERS=1 runs the suite in one
# process, as before.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
python -m pytest -q -n "${DECONTEXT_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
