#!/usr/bin/env bash
# Create .venv (Python 3.11) and install mergejax with the given extras ("test" if none is given; "base"
# for the package alone, what the main job needs). Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.mergejax-installed-${extras}"
if [[ ! -f "$stamp" || setup.py -nt "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # --no-compile: Python compiles each module when first imported, only those a run needs (the main job's
  # installation takes ~45 s instead of ~75 s; docs/BENCHMARKS.md).
  if [[ "$extras" == base ]]; then
    .venv/bin/python -m pip install -q --no-compile -e .
  else
    .venv/bin/python -m pip install -q --no-compile -e ".[${extras}]"
  fi
  touch "$stamp"
fi
