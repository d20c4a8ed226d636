"""`search`, `evaluate` and `export` run in a process where TensorFlow is not installed,
and `search` and `evaluate` where PyTorch is not either.

TensorFlow brings its own runtime thread pools into the process that runs XLA, and GPU
images do not ship it; only `python -m jackpot_jax.data.prepare` may use it. PyTorch costs
a process 1.5 s to import, and only writing its format (`export`) needs it: checkpoints
are read without it. Each command runs in a child process whose import system answers
for those packages as if they were absent, so any import of them on these paths fails
the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_overrides

WITHOUT_TENSORFLOW = """
import importlib.util
import sys


ABSENT = sys.argv.pop(1).split(",")


class _Without:
  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ABSENT:
      return None
    return self.finder.find_spec(name, path, target)

  def __getattr__(self, name):
    return getattr(self.finder, name)


sys.meta_path[:] = [_Without(finder) for finder in sys.meta_path]
assert all(importlib.util.find_spec(name) is None for name in ABSENT)
from jackpot_jax import cli
sys.argv[0] = "jackpot"
cli.run()
"""


def _jackpot(command: str, *args: str) -> subprocess.CompletedProcess:
  """`jackpot command args` without TensorFlow, and without PyTorch unless it exports."""
  absent = "tensorflow" if command == "export" else "tensorflow,torch"
  return subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, absent, command, *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900)


def _search_evaluate_export(workdir: Path, overrides: list[str], export: bool) -> dict:
  """`export` reads the workdir and no data, so one data source runs it."""
  searched = _jackpot("search", "--config=configs/default.py", f"--workdir={workdir}",
                      *overrides)
  assert searched.returncode == 0, searched.stderr[-3000:]
  evaluated = _jackpot("evaluate", f"--workdir={workdir}")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  if export:
    exported = _jackpot("export", f"--workdir={workdir}",
                        f"--output={workdir / 'jackpot.pth'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (workdir / "jackpot.pth").stat().st_size > 0
  assert list((workdir / "tensorboard").iterdir())
  return json.loads((workdir / "report.json").read_text())


def test_a_search_on_fashion_mnist_runs_without_tensorflow(fashion_mnist_dir, tmp_path):
  """The search reads the prepared TFDS dataset's train, held-out and test splits; `evaluate`
  reads the test split through the same reader and `export` reads no data, so those two
  are run on the user-data sources below (the same commands, a smaller network)."""
  workdir = tmp_path / "run"
  searched = _jackpot("search", "--config=configs/default.py", f"--workdir={workdir}",
                      f"--config.data.data_dir={fashion_mnist_dir}",
                      "--config.search.num_epochs=0.01", "--config.data.holdout_images=1000",
                      "--config.data.eval_split=test[:500]",
                      "--config.eval.recalibration_images=512", "--config.eval.every_epochs=0",
                      "--config.progress_bar=False")
  assert searched.returncode == 0, searched.stderr[-3000:]
  report = json.loads((workdir / "report.json").read_text())
  assert report["search"]["steps"] == 5  # 0.01 of 59,000 // 128 (1,000 images held out)
  assert report["accuracy"]["dense"] > 0.88
  assert (report["accuracy_split"], report["accuracy_images"]) == ("test[:500]", 500)
  assert report["recalibration_images"] == 512


def _write_image_folder(root: Path) -> None:
  """8x8 grayscale PNGs of ten classes (the tiny checkpoint's), train and test splits."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 4), ("test", 2)):
    for label in "abcdefghij":
      (root / split / label).mkdir(parents=True)
      for index in range(count):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / label / f"{index}.png")


@pytest.mark.parametrize("data", ["image_folder", "npz"])
def test_a_search_on_user_data_runs_without_tensorflow(data, tiny_job, tmp_path):
  overrides = tiny_overrides(tiny_job)
  if data == "image_folder":
    _write_image_folder(tmp_path / "images")
    overrides = [flag for flag in overrides if not flag.startswith("--config.data.name=")]
    overrides += [f"--config.data.name=image_folder:{tmp_path / 'images'}",
                  "--config.data.channels=1"]
  report = _search_evaluate_export(tmp_path / "run", overrides, export=data == "npz")
  assert report["search"]["steps"] > 0
