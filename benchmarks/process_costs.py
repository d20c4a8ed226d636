"""What a search process pays before and around its steps: its imports, and each of
several searches of one model run in one process (as a sweep, a ladder or a test session
runs them), on a tiny ResNet with random weights and random 8x8 images.

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


def _tiny_job(root: Path, depth: int):
  """An npz of 80 training and 20 test 8x8 images and a random CIFAR ResNet checkpoint."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch_reference.torch_models import CifarResNet  # pylint: disable=import-outside-toplevel
  from jackpot_jax import config_defaults  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  np.savez(root / "data.npz", x_train=rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8),
           y_train=np.arange(80) % 10, x_test=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8),
           y_test=np.arange(20) % 10)
  torch.manual_seed(0)
  torch.save(CifarResNet(depth, num_classes=10, in_channels=1).state_dict(), root / "model.pth")
  config = config_defaults.base_config()
  config.model.name = f"resnet{depth}"
  config.model.checkpoint = str(root / "model.pth")
  config.data.name = f"npz:{root / 'data.npz'}"
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.data.holdout_images = 16
  config.search.sparsity_plan = "uniform"
  config.search.batch_size = 16
  config.search.num_epochs = 1.5
  config.eval.batch_size = 8
  config.checkpoint.every_steps = 2
  config.progress_bar = False
  return config


def main(argv) -> None:
  del argv
  result = _imports()
  from jackpot_jax.run import job  # pylint: disable=import-outside-toplevel
  runs = []
  with tempfile.TemporaryDirectory() as folder:
    config = _tiny_job(Path(folder), _DEPTH.value)
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
