#!/usr/bin/env bash
# Run the study on every worker of a Cloud TPU VM slice (multi-host), creating the TPU VM if needed.
#
#   TPU_NAME=mj-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 WORKDIR=/mnt/bucket/study \
#     TFDS_DATA_DIR=gs://bucket/tfds launch/tpu_pod.sh configs/study_paper.py \
#     --config.models=/mnt/bucket/models.yaml [extra flags...]
#
# Every worker gets the same copy of this repository and runs the same command; the program calls
# jax.distributed.initialize() (--distributed), every process joins the same jitted computations, and
# only process 0 writes results and the report. WORKDIR (and world_dir) must be storage every worker
# sees at the same path, e.g. a bucket mounted with GCSFuse on each worker, since every process reads
# the checkpoints and process 0 writes the results.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared by all workers)}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${1:-configs/study_paper.py}"
shift $(( $# > 0 ? 1 : 0 ))

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" >/dev/null 2>&1; then
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR) in $ZONE"
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME"
fi

# Copy this checkout to every worker and install it (jax with TPU support, pinned for Python 3.11). The
# TPU VM images ship Python 3.10, so python3.11 comes from Ubuntu's packages. Only the runtime
# dependencies: the test extra's torch would pull CUDA wheels (gigabytes) that a TPU never uses.
bundle="$(mktemp -d)/mergejax.tgz"
tar czf "$bundle" --exclude=.venv --exclude=runs --exclude=.git .
gcloud compute tpus tpu-vm scp "$bundle" "$TPU_NAME":~/mergejax.tgz --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; mkdir -p ~/mergejax && tar xzf ~/mergejax.tgz -C ~/mergejax && cd ~/mergejax &&
  if ! command -v python3.11 >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv; fi &&
  python3.11 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' \
    -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# The same command on all workers, at once (flags quoted for the remote shell; TFDS_DATA_DIR passed on,
# e.g. a bucket holding the T0 datasets built with `tfds build`, docs/TASKS.md).
flags=$(printf ' %q' "$@")
tfds_env=""
[[ -n "${TFDS_DATA_DIR:-}" ]] && tfds_env="TFDS_DATA_DIR=$(printf '%q' "$TFDS_DATA_DIR")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/mergejax && TF_CPP_MIN_LOG_LEVEL=3 $tfds_env \
    .venv/bin/mergejax-study --distributed --config=$(printf '%q' "$CONFIG") \
    --workdir=$(printf '%q' "$WORKDIR")$flags"
