"""Evaluation compiles its programs once per process, whichever run, split and masks it
measures."""

from __future__ import annotations

import jax
import numpy as np

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.run import evaluation, setup as setup_lib
from jackpot_jax.run.setup import magnitude_masks
from jackpot_jax.search import steps

from conftest import setup_of, tiny_config


def test_every_split_every_re_estimation_and_every_later_run_reuse_the_compiled_programs(
    tiny_job, monkeypatch):
  # A process that has built no program yet.
  monkeypatch.setattr(setup_lib, "_programs", BoundedCache(16))
  setup = setup_of(tiny_config(tiny_job))
  test, holdout = evaluation.Evaluator(setup), evaluation.Evaluator(setup, evaluation.HOLDOUT)
  assert test.accumulate is holdout.accumulate
  traced = []
  real = steps.batch_statistics

  def counted(*args, **kwargs):
    traced.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(steps, "batch_statistics", counted)
  masks = magnitude_masks(setup)
  first = evaluation.recalibrated_batch_stats(setup, masks)
  traces = len(traced)
  assert traces > 0
  again = evaluation.recalibrated_batch_stats(setup, masks)
  assert len(traced) == traces  # run again, not traced again
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)
  # A later run of the same model (a new set-up, as a sweep's next run builds) reuses them.
  later = setup_of(tiny_config(tiny_job))
  assert later.model is not setup.model and later.model == setup.model
  assert evaluation.Evaluator(later).accumulate is test.accumulate
  evaluation.recalibrated_batch_stats(later, magnitude_masks(later))
  assert len(traced) == traces
  # Another model is another program.
  other = setup_of(tiny_config(tiny_job, model="resnet20"))
  assert evaluation.Evaluator(other).accumulate is not test.accumulate
