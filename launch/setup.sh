#!/usr/bin/env bash
# Sets up a fresh machine for jackpot_jax: a virtualenv with the pinned packages, and
# Fashion-MNIST from Debian's dataset-fashion-mnist package prepared for TFDS, offline.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
.venv/bin/python -m jackpot_jax.data.prepare
