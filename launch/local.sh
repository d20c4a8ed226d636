#!/usr/bin/env bash
# One host, all of its local devices (CPU, GPUs or a single TPU VM).
#   bash launch/local.sh configs/default.py workdirs/default [--config.search.sparsity=0.95 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
exec .venv/bin/python -m jackpot_jax search --config="$config" --workdir="$workdir" "$@"
