#!/usr/bin/env bash
# Sets up this checkout for jackpot_jax: a virtualenv (.venv) with the pinned packages and
# the package itself with the extras for the accelerator named, the data preparation and
# the tests. Needs no root.
#   bash launch/setup.sh [cpu|cuda12|cuda13|tpu] [--with-fashion-mnist]    (default: cpu)
# A second run reuses .venv when the accelerator, requirements.txt, pyproject.toml and this
# script are unchanged (a stamp in .venv records them).
# Fashion-MNIST, the built-in data, is prepared for TFDS offline from Debian's
# dataset-fashion-mnist files when they are present ($JACKPOT_FASHION_MNIST_DIR, default
# /usr/share/datasets/fashion-mnist); --with-fashion-mnist installs that package first
# when they are missing (apt-get, as root or through sudo).
# torch is only used to read and write checkpoints, so every variant installs its CPU
# build; on accelerators it comes from PyTorch's CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."

accelerator=cpu
with_fashion_mnist=0
for arg in "$@"; do
  case "$arg" in
    cpu|cuda12|cuda13|tpu) accelerator=$arg ;;
    --with-fashion-mnist) with_fashion_mnist=1 ;;
    *) echo "launch/setup.sh: error: unknown argument '$arg'; use cpu, cuda12, cuda13 or tpu, and optionally --with-fashion-mnist" >&2
       exit 2 ;;
  esac
done
fashion_mnist_dir=${JACKPOT_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}

install_fashion_mnist() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    command -v sudo > /dev/null &&
      sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist
  fi
}

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/jackpot-setup.stamp
wanted="accelerator=$accelerator $(cksum < requirements.txt) $(cksum < pyproject.toml) $(cksum < launch/setup.sh)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "launch/setup.sh: .venv is already set up for $accelerator; nothing to install"
else
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  if [ "$accelerator" = cpu ]; then
    "${pip[@]}" -r requirements.txt -e ".[cpu,prepare,test]"
  else
    # The same pins with JAX for the accelerator (same version) and torch's CPU build.
    jax_version=$(sed -n 's/^jax\[cpu\]==//p' requirements.txt)
    torch_version=$(sed -n 's/^torch==//p' requirements.txt)
    grep -v -e '^jax\[cpu\]==' -e '^torch==' requirements.txt > ".venv/requirements-$accelerator.txt"
    "${pip[@]}" "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
    "${pip[@]}" -r ".venv/requirements-$accelerator.txt" "jax[$accelerator]==$jax_version" \
      -e ".[$accelerator,prepare,test]"
  fi
  echo "$wanted" > "$stamp"
fi

if [ ! -f "$fashion_mnist_dir/train-images-idx3-ubyte.gz" ]; then
  if [ "$with_fashion_mnist" = 0 ]; then
    echo "launch/setup.sh: Fashion-MNIST not prepared (no files in $fashion_mnist_dir); rerun with --with-fashion-mnist to install Debian's dataset-fashion-mnist"
    exit 0
  fi
  if ! install_fashion_mnist; then
    echo "launch/setup.sh: error: could not install Debian's dataset-fashion-mnist (needs root); ask an administrator to install it, or put its four *-ubyte.gz files in a folder and rerun with JACKPOT_FASHION_MNIST_DIR=FOLDER" >&2
    exit 2
  fi
fi
.venv/bin/python -m jackpot_jax.data.prepare --source_dir="$fashion_mnist_dir"
