"""Bounded dispatch: no loop queues more than two jitted steps, so XLA's CPU client cannot
deadlock in a collective (the cause of "Fatal Python error: Aborted" in long searches)."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import pytest

from jackpot_jax import dispatch
from jackpot_jax.run import job
from conftest import REPO, tiny_config

def test_a_window_keeps_at_most_its_limit_of_steps_outstanding():
  window = dispatch.DispatchWindow(limit=2)
  outputs = [jnp.arange(4) * i for i in range(5)]
  for output in outputs:
    window.admit(output)
  assert len(window._outstanding) == 2
  assert all(output.is_ready() for output in outputs[:3])
  with pytest.raises(ValueError, match="at least one step"):
    dispatch.DispatchWindow(limit=0)


def test_thousands_of_collective_programs_through_the_window_never_deadlock():
  """scripts/collective_deadlock.py with --in_flight=64 aborts within seconds (XLA's
  watchdog, after its 40 s); with the window's two in flight it must finish."""
  finished = subprocess.run(
      [sys.executable, "scripts/collective_deadlock.py", "--programs=3000",
       f"--in_flight={dispatch.STEPS_IN_FLIGHT}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert "finished 3000 programs" in finished.stdout


def test_every_search_step_and_eval_batch_passes_through_a_window(tiny_job, tmp_path,
                                                                  monkeypatch):
  admitted = []
  real_admit = dispatch.DispatchWindow.admit

  def counting_admit(self, outputs):
    admitted.append(self.limit)
    real_admit(self, outputs)

  monkeypatch.setattr(dispatch.DispatchWindow, "admit", counting_admit)
  config = tiny_config(tiny_job)
  config.eval.every_epochs = 0.0
  report = job.search_and_evaluate(config, tmp_path / "run")
  eval_batches = -(-20 // config.eval.batch_size)  # 20 test examples
  recalibration_batches = report["recalibration_images"] // config.search.batch_size
  # Dense, magnitude and re-estimated magnitude baselines (and the re-estimation's
  # batches), the search's steps, the jackpot's evaluation.
  assert recalibration_batches == 4
  assert len(admitted) == (4 * eval_batches + recalibration_batches
                           + report["search"]["steps"])
  assert set(admitted) == {dispatch.STEPS_IN_FLIGHT}
