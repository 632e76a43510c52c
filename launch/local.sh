#!/usr/bin/env bash
# Run the study on this machine (CPU or one GPU), installing into .venv first.
#   launch/local.sh [CONFIG] [WORKDIR] [extra flags...]
#   launch/local.sh configs/study_tiny.py runs/tiny --config.methods='("ties", "task_arithmetic")'
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/study_tiny.py}"
WORKDIR="${2:-runs/tiny}"
shift $(( $# > 2 ? 2 : $# ))
bash scripts/bootstrap.sh test
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/mergejax-study --config="$CONFIG" --workdir="$WORKDIR" "$@"
