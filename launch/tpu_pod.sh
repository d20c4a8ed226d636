#!/usr/bin/env bash
# A TPU VM pod slice: runs the same command on every worker; jax.distributed finds the
# other hosts itself, each host reads its own shard of the input, process 0 writes.
# The workdir must be on storage every worker sees: gs://bucket/path or NFS. So must the
# data: an image folder or npz file may be gs://...; a prepared TFDS data_dir must be a
# local path (NFS, or a bucket mounted at the same path on every worker with gcsfuse).
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]
# Example (ResNet-50, ImageNet, 90%):
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b paper/resnet50_imagenet_s90_e30 \
#     gs://bucket/jackpots/r50_s90 --config.model.checkpoint=gs://bucket/resnet50.pth \
#     --config.data.data_dir=/mnt/bucket/tfds --config.search.batch_size=1024
# Each launch copies this checkout (the files git tracks or does not ignore, as they are
# now; JACKPOT_REF=<git ref> copies that commit instead) to REPO_DIR on every worker
# (default: jackpot_jax, under the worker's home), runs `launch/setup.sh tpu` there (which
# reuses the worker's .venv once it is set up) and starts the search detached from the ssh
# session, each worker logging to REPO_DIR/logs/search-<time>-<pid>.log on its own disk.
# CONFIG is a shipped config's name, or a file inside this checkout.
set -euo pipefail
usage="usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
# Relative to the worker's home: ssh commands start there, and nothing here expands a
# path on this machine.
repo_dir=${REPO_DIR:-jackpot_jax}
launch_id=$(date -u +%Y%m%d-%H%M%S)-$$
archive=jackpot_jax-$launch_id.tar.gz
log=logs/search-$launch_id.log

# A config file is sent with the checkout: name it by its path inside the checkout.
if [ -f "$config" ]; then
  config_abs=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
  case "$config_abs" in
    "$root"/*) config=${config_abs#"$root"/} ;;
    *) echo "launch/tpu_pod.sh: error: $config is outside $root, so the workers do not get it; put it in the checkout or name a shipped config" >&2
       exit 2 ;;
  esac
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${JACKPOT_REF:-}" ]; then
  if ! git -C "$root" rev-parse --verify --quiet "$JACKPOT_REF^{commit}" > /dev/null; then
    echo "launch/tpu_pod.sh: error: JACKPOT_REF=$JACKPOT_REF names no commit of $root" >&2
    exit 2
  fi
  git -C "$root" archive --format=tar.gz -o "$tmp/$archive" "$JACKPOT_REF"
else
  # Tracked files deleted from the working tree are left out.
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
     while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done |
     tar -czf "$tmp/$archive" --null -T -)
fi

printf -v q_dir '%q' "$repo_dir"
printf -v q_search ' %q' --distributed "--config=$config" "--workdir=$workdir" "$@"
# The old package directory goes first, so a module deleted since the last launch cannot
# be imported; .venv, logs and anything else in REPO_DIR stay.
remote="set -e
mkdir -p $q_dir
rm -rf $q_dir/jackpot_jax
tar -xzf $archive -C $q_dir
rm -f $archive
cd $q_dir
bash launch/setup.sh tpu
mkdir -p logs
setsid nohup .venv/bin/python -m jackpot_jax search$q_search > $log 2>&1 < /dev/null &
echo \"\$(hostname): search started, pid \$!, log \$PWD/$log\""

gcloud compute tpus tpu-vm scp "$tmp/$archive" "$tpu:$archive" --zone="$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote"

echo "Follow a worker's log (worker 0 reports): gcloud compute tpus tpu-vm ssh $tpu --zone=$zone --worker=0 --command='tail -f $repo_dir/$log'"
