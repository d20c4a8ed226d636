"""What a long run shows: window-averaged metrics, speed and learning rate for the search
and the tuning stage, and a profiler trace of chosen steps."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jackpot_jax.run import profiling, job
from conftest import REPO, TINY_CHECKPOINT, TINY_MODEL, tiny_config


def test_search_and_tuning_log_speed_learning_rate_and_window_means(tiny_job, tmp_path):
  config = tiny_config(tiny_job)  # 6 search steps of 16 examples
  config.log_every_steps = 3
  config.tune.num_epochs = 1.0
  config.tune.batch_size = 16
  config.profile_steps = "2,3"
  workdir = tmp_path / "run"
  job.search_and_evaluate(config, workdir)

  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  tags = set(events.Tags()["scalars"])
  for phase in ("search", "tune"):
    for name in ("loss", "accuracy", "steps_per_second", "images_per_second",
                 "learning_rate", "input_wait_fraction"):
      assert f"{phase}/{name}" in tags, (phase, name)
  assert [e.step for e in events.Scalars("search/loss")] == [3, 6]
  # Cosine from 0.1 over 6 steps: the rate the step just taken used.
  rates = [e.value for e in events.Scalars("search/learning_rate")]
  assert rates[0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 6)), rel=1e-4)
  assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("search/input_wait_fraction"))
  assert all(e.value > 0 for e in events.Scalars("search/images_per_second"))
  assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace written"


@pytest.mark.parametrize("text", ["3", "0,2", "5,4", "a,b"])
def test_profile_steps_must_be_a_range_of_steps(text):
  with pytest.raises(ValueError, match="profile_steps"):
    profiling.parse_profile_steps(text)


def test_the_search_commands_their_event_writer_and_a_masks_export_do_without_torch(
    tiny_job, tmp_path):
  """A search process reads its checkpoint and writes its events without importing torch
  (1.5 s a process), though torch is installed: only an export in PyTorch's formats needs
  it, not a masks file."""
  script = f"""
import sys
from pathlib import Path
from flax import traverse_util
from jackpot_jax import cli, pytorch
from jackpot_jax.run import job, progress, workdir_export
with progress.ProgressLogger(Path({str(tmp_path)!r}), 2, 0, False) as logger:
  logger.scalars(1, {{"search/loss": 0.5}})
assert "tensorboardX" in sys.modules
imported = pytorch.import_torch({str(tiny_job / TINY_CHECKPOINT)!r}, {TINY_MODEL!r}, 10)
flat = traverse_util.flatten_dict(imported.variables["params"])
masks = traverse_util.unflatten_dict({{k: v > 0 for k, v in flat.items() if k[-1] == "kernel"}})
pytorch.export_torch(imported, imported.variables, masks, {str(tmp_path / "masks.npz")!r},
                     format="masks")
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"
  assert list((tmp_path / "tensorboard").iterdir())
  assert (tmp_path / "masks.npz").stat().st_size > 0
