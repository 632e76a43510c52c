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
  if [[ "$extras" == base ]]; then
    # The main job: uv resolves and unpacks in parallel (~20 s from nothing against ~50 s for pip, the same
    # versions; docs/BENCHMARKS.md) and compiles nothing: its one process compiles the modules it imports.
    # pip is the fallback where uv cannot be had.
    if ! { .venv/bin/python -m pip install -q uv==0.13.9 && .venv/bin/uv pip install -q --python .venv/bin/python -e .; }; then
      echo "bootstrap: uv unavailable, installing with pip" >&2
      .venv/bin/python -m pip install -q --no-compile -e .
    fi
  else
    # The test suite starts many processes: each would compile every module again where
    # PYTHONDONTWRITEBYTECODE is set, so pip compiles them once here. pip, not uv: torch's CPU build comes
    # from the machine's wheel directory, which only pip's configuration names.
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[${extras}]"
  fi
  touch "$stamp"
fi
