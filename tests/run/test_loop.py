"""The loop compiles a stage's step once per process: a later run of an equal stage reuses
the program, and any difference in what the step binds compiles another."""

from __future__ import annotations

import collections

import jax
import numpy as np

from jackpot_jax.run import job, loop
from jackpot_jax.search import steps

from conftest import final_search_state, tiny_config


def test_a_later_run_reuses_an_equal_stages_step_and_ends_where_a_fresh_one_does(
    tiny_job, tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "_compiled_steps", collections.OrderedDict())
  traced = []
  real = steps.search_step

  def counted(*args, **kwargs):
    traced.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(steps, "search_step", counted)
  config = tiny_config(tiny_job)
  config.search.num_epochs = 0.5  # 2 steps
  config.eval.every_epochs = 0
  job.search_and_evaluate(config, tmp_path / "first")
  assert len(traced) == 1
  job.search_and_evaluate(config, tmp_path / "second")
  assert len(traced) == 1  # an equal stage: the same program, not traced again
  first, second = (final_search_state(config, tmp_path / name) for name in ("first", "second"))
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
    np.testing.assert_array_equal(a, b)
  config.search.learning_rate = 0.05  # another optimizer: another program
  job.search_and_evaluate(config, tmp_path / "third")
  config.search.sparsity = 0.8  # other keep counts: another program
  job.search_and_evaluate(config, tmp_path / "fourth")
  assert len(traced) == 3
  assert len(loop._compiled_steps) == 3  # pylint: disable=protected-access
