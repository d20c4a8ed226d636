"""What a search process pays before and around its steps: its imports, and each of
several searches of one model run in one process (as a sweep, a ladder or a test session
runs them), on the tests' tiny job (`torch_reference/tiny_job.py`: a CIFAR ResNet with
random weights, random 8x8 images, six steps).

Printed: the search command's import seconds in a fresh child process and whether they
pulled in torch or TFDS; then per run, wall and CPU seconds. The first run traces and
compiles every program (or loads it from the persistent compilation cache, as a
`JAX_COMPILATION_CACHE_DIR` given here makes it do); the later ones reuse what the
process kept.

  python benchmarks/process_costs.py [--runs=3] [--depth=8]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_RUNS = flags.DEFINE_integer("runs", 3, "searches of the same model in this process")
_DEPTH = flags.DEFINE_integer("depth", 8, "CIFAR ResNet depth (8, 20, 32, ...)")

_IMPORTS = """
import sys, time
began = time.perf_counter()
from jackpot_jax import cli
from jackpot_jax.run import job, workdir_export
print(time.perf_counter() - began, "torch" in sys.modules, "tensorflow_datasets" in sys.modules)
"""


def _imports() -> dict:
  done = subprocess.run([sys.executable, "-c", _IMPORTS], cwd=REPO, capture_output=True,
                        text=True, check=True)
  seconds, torch, tfds = done.stdout.split()[-3:]
  return {"import_seconds": round(float(seconds), 2), "imports_torch": torch == "True",
          "imports_tfds": tfds == "True"}


def main(argv) -> None:
  del argv
  result = _imports()
  from jackpot_jax.run import job  # pylint: disable=import-outside-toplevel
  from torch_reference import tiny_job  # pylint: disable=import-outside-toplevel
  runs = []
  with tempfile.TemporaryDirectory() as folder:
    tiny_job.write_tiny_job(Path(folder), (_DEPTH.value,))
    config = tiny_job.tiny_config(Path(folder), f"resnet{_DEPTH.value}")
    for index in range(_RUNS.value):
      wall, cpu = time.perf_counter(), time.process_time()
      job.search_and_evaluate(config, Path(folder) / f"run{index}")
      runs.append({"wall_seconds": round(time.perf_counter() - wall, 2),
                   "cpu_seconds": round(time.process_time() - cpu, 2)})
      print(f"run {index}: {runs[-1]['wall_seconds']} s wall, {runs[-1]['cpu_seconds']} s CPU",
            flush=True)
  result.update(model=f"resnet{_DEPTH.value}", runs=runs)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
