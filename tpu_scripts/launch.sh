#!/usr/bin/env bash
# Launch a pcomp training run on a Cloud TPU VM (single host or pod slice).
#
#   TPU_NAME=pcomp-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#     bash tpu_scripts/launch.sh create                 # create the TPU VM (once)
#   TPU_NAME=... ZONE=... bash tpu_scripts/launch.sh setup            # install pcomp on every worker
#   TPU_NAME=... ZONE=... bash tpu_scripts/launch.sh train --config 370m data.source=tfds:c4/en:3.1.0 \
#        data.data_dir=gs://BUCKET/tfds training.workdir=runs/370m-patch \
#        training.checkpoint_dir=gs://BUCKET/runs/370m-patch training.patch_size=4 mesh.data=1 mesh.fsdp=-1
#   TPU_NAME=... ZONE=... bash tpu_scripts/launch.sh delete
#
# `train` runs the same command on all workers with PCOMP_DISTRIBUTED=1, so every host calls
# jax.distributed.initialize() and loads its own shard of the data; only process 0 logs. Put the
# checkpoints on GCS (training.checkpoint_dir=gs://...; orbax writes model, optimizer and every
# host's grain iterator state there): when a preempted slice is recreated, `setup` + the identical
# `train` command resume from the latest checkpoint (the local workdir's config and tokenizer are
# rebuilt deterministically from the same config).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${TPU_SOFTWARE:-tpu-ubuntu2204-base}"
REPO="${PCOMP_REPO:-https://github.com/pcomp/pcomp.git}"
BRANCH="${PCOMP_BRANCH:-main}"

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
}

cmd="${1:?usage: launch.sh create|setup|train ARGS...|delete}"
shift || true
case "$cmd" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" \
      --version "$VERSION" ${SPOT:+--spot}
    ;;
  setup)
    ssh_all "set -e; rm -rf ~/pcomp; git clone --depth 1 -b $BRANCH $REPO ~/pcomp && cd ~/pcomp && \
      python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
      .venv/bin/pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  train)
    args=$(printf '%q ' "$@")
    ssh_all "cd ~/pcomp && PCOMP_DISTRIBUTED=1 nohup .venv/bin/pcomp train $args > ~/pcomp-train.log 2>&1 &"
    echo "started; follow with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f ~/pcomp-train.log'"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
    ;;
  *)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
