#!/usr/bin/env bash
# Re-compile the lock files from their inputs (requirements/*.in, pyproject.toml) with uv, holding every
# package at the version the current test environment has (the versions the suite and the benchmarks ran
# with); run it after changing a dependency, then run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv-test/bin/uv}
held=$(mktemp)
.venv-test/bin/python -m pip freeze --exclude-editable | grep -v "^facenet-pytorch==" | grep -v "^torch==\|^torchvision==" > "$held"
. scripts/uv_flags.sh  # the machine's pip settings as uv flags
for name in cpu full; do
  "$UV" pip compile "requirements/$name.in" "${uv_flags[@]}" --python-version 3.11 --no-emit-package decontext --no-annotate -c "$held" \
    --custom-compile-command "bash scripts/lock.sh" -o "requirements/$name.lock"
done
rm -f "$held"
