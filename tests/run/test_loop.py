"""The loop compiles a stage's step once per process: a later run whose step binds equal
statics gets the same program, and any difference in what the step binds another."""

from __future__ import annotations

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.run import job, loop, parallel

from conftest import setup_of, tiny_config


def test_a_later_runs_equal_stage_gets_the_same_compiled_step_and_any_change_another(
    tiny_job, tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "_compiled_steps", BoundedCache(8))

  def compiled_step(config):
    setup = setup_of(config)
    stage = job.search_stage(setup, tmp_path, holdout=None)
    shardings = parallel.config_shardings(stage.fresh_state, setup.mesh, config.mesh)
    return loop._compile(stage, stage.step, setup.mesh, shardings)  # pylint: disable=protected-access

  first = compiled_step(tiny_config(tiny_job))
  assert compiled_step(tiny_config(tiny_job)) is first  # new set-up, model and optimizer
  changes = {"search.learning_rate": 0.05, "search.sparsity": 0.8, "search.bn_mode": "frozen",
             "search.label_smoothing": 0.1, "search.distill_weight": 0.5}
  others = []
  for field, value in changes.items():
    config = tiny_config(tiny_job)
    section, name = field.split(".")
    config[section][name] = value
    others.append(compiled_step(config))
    assert others[-1] is not first, field
  assert len({id(step) for step in others}) == len(changes)
  assert len(loop._compiled_steps) == len(changes) + 1  # pylint: disable=protected-access
