#!/usr/bin/env bash
# Fills benchmarks/gpu_wheels/ with the wheels that benchmarks/gpu_suite.sh installs on a GPU
# machine that cannot reach a package registry.
#
#   bash benchmarks/gpu_wheels.sh        # here, where PyPI is reachable
#
# The GPU image (Python 3.12, jax/jaxlib 0.11 with CUDA, flax, optax, orbax-checkpoint, torch
# 2.11 with CUDA, absl-py, PyYAML) lacks only ml-collections of what the benchmarks import;
# its own needs (absl-py, PyYAML) are there. The folder is not committed (.gitignore): it
# travels to the GPU machine with the working tree, so it must stay within 30 MB.
set -euo pipefail

# Exact versions, one of each: requirements.txt's pins, where it has one.
WHEELS=(ml-collections==1.1.0)
MAX_BYTES=30000000

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/benchmarks/gpu_wheels"
python="${PYTHON:-python3}"

mkdir -p "$dest"
rm -f "$dest"/*.whl
# --no-deps: the GPU image has the dependencies; the platform tags let binary wheels in too.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --dest "$dest" "${WHEELS[@]}"

bytes="$(du -sb "$dest" | cut -f1)"
if (( bytes > MAX_BYTES )); then
  echo "gpu_wheels: $dest holds $bytes bytes, over the $MAX_BYTES the GPU machine takes" >&2
  exit 1
fi
echo "gpu_wheels: $(find "$dest" -maxdepth 1 -name '*.whl' | wc -l) wheel(s), $bytes bytes in $dest"
