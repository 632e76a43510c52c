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
  if [[ "$extras" == base ]]; then
    .venv/bin/python -m pip install -q -e .
  else
    .venv/bin/python -m pip install -q -e ".[${extras}]"
  fi
  touch "$stamp"
fi
