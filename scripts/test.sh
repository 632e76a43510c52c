#!/usr/bin/env bash
# The README's test command: install into .venv, then run the whole suite on both cores (8 simulated CPU devices
# are forced inside the tests that need them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
export TF_CPP_MIN_LOG_LEVEL=3
source scripts/cpu_env.sh  # huge pages for malloc's large mappings (glibc)
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests "$@"
