#!/usr/bin/env bash
# The README's first command: install into .venv, then run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/mergejax-demo "$@"
