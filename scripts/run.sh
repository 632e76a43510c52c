#!/usr/bin/env bash
# The README's first command: install into .venv, then run the main job on the embedded default:
# the paper's study (builds the miniature world on first use; resumable: run it again to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh base  # the package alone: the test extra (torch, transformers, lm-eval) is not needed here
export TF_CPP_MIN_LOG_LEVEL=3
source scripts/cpu_env.sh  # huge pages for malloc's large mappings (glibc)
exec .venv/bin/mergejax-study --config=configs/study_tiny.py --workdir="${WORKDIR:-runs/tiny}" "$@"
