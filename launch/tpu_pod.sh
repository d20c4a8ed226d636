#!/usr/bin/env bash
# A TPU VM pod slice: runs the same command on every worker; jax.distributed finds the
# other hosts itself, each host reads its own shard of the input, process 0 writes.
# The workdir must be on storage every worker sees: gs://bucket/path or NFS. So must the
# data: an image folder or npz file may be gs://...; a prepared TFDS data_dir must be a
# local path (NFS, or a bucket mounted at the same path on every worker with gcsfuse).
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]
# Example (ResNet-50, ImageNet, 90%):
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/paper/resnet50_imagenet_s90_e30.py \
#     gs://bucket/jackpots/r50_s90 --config.model.checkpoint=gs://bucket/resnet50.pth \
#     --config.data.data_dir=/mnt/bucket/tfds --config.search.batch_size=1024
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
repo_dir=${REPO_DIR:-~/jackpot_jax}
printf -v overrides ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="\
cd $repo_dir && bash launch/setup.sh tpu && \
.venv/bin/python -m jackpot_jax search --distributed \
  --config=$config --workdir=$workdir$overrides"
