#!/usr/bin/env bash
# Sets up a machine for jackpot_jax: a virtualenv with the pinned packages and JAX for the
# accelerator named, and Fashion-MNIST from Debian's dataset-fashion-mnist package
# prepared for TFDS, offline.
#   bash launch/setup.sh [cpu|cuda12|cuda13|tpu]     (default: cpu)
# torch is only used to read and write checkpoints, so every variant installs its CPU
# build; on accelerators it comes from PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."

accelerator=${1:-cpu}
case "$accelerator" in
  cpu|cuda12|cuda13|tpu) ;;
  *) echo "launch/setup.sh: error: unknown accelerator '$accelerator'; use cpu, cuda12, cuda13 or tpu" >&2
     exit 2 ;;
esac

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/pip install -q --disable-pip-version-check)
if [ "$accelerator" = cpu ]; then
  "${pip[@]}" -r requirements.txt
else
  # The same pins with JAX for the accelerator (same version) and torch's CPU build.
  jax_version=$(sed -n 's/^jax\[cpu\]==//p' requirements.txt)
  torch_version=$(sed -n 's/^torch==//p' requirements.txt)
  grep -v -e '^jax\[cpu\]==' -e '^torch==' requirements.txt > .venv/requirements-$accelerator.txt
  "${pip[@]}" "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
  "${pip[@]}" -r .venv/requirements-$accelerator.txt "jax[$accelerator]==$jax_version"
fi
"${pip[@]}" --no-deps -e .
.venv/bin/python -m jackpot_jax.data.prepare
