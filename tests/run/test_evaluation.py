"""Evaluation compiles its programs once per run, whichever split and masks it measures."""

from __future__ import annotations

import jax
import numpy as np

from jackpot_jax.run import evaluation
from jackpot_jax.run.setup import magnitude_masks
from jackpot_jax.search import steps

from conftest import setup_of, tiny_config


def test_every_split_and_every_re_estimation_reuse_the_runs_compiled_programs(
    tiny_job, monkeypatch):
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
