#!/usr/bin/env bash
# Run the study on the GPUs of one machine (all visible GPUs form one mesh).
#   launch/gpu.sh [CONFIG] [WORKDIR] [extra flags...]
# Installs jax with CUDA wheels into .venv (jax[cuda12]==0.10.2), keeps TensorFlow on the CPU (the
# program hides GPUs from TF), lets XLA use most of the GPU memory, then runs launch/local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
if ! .venv/bin/python -c 'import jax,sys; sys.exit(jax.default_backend()!="gpu")' 2>/dev/null; then
  .venv/bin/python -m pip install -q "jax[cuda12]==0.10.2"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
nvidia-smi -L || true
exec bash launch/local.sh "${1:-configs/study_paper.py}" "${2:-runs/paper}" "${@:3}"
