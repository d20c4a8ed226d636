"""What the benchmarks share: `--config` and `--config.a.b=value` as the CLI takes them, and
a search over random weights built from that config.

The search settings (sparsity, plan, score init, optimizer, BN mode) come from the config
(default configs/default.py); --model, --batch_size and --num_classes are shorthands for
--config.model.name, --config.search.batch_size and --config.model.num_classes. The weights
are random, so the plan is 'uniform' unless --config.search.sparsity_plan names one: a
global l1 threshold would empty the widest layers of an untrained network.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from jackpot_jax import entrypoint, models
from jackpot_jax.search import optim, scores as scores_lib, sparsity, steps

FLAGS = flags.FLAGS
entrypoint.define_config_flag()
flags.DEFINE_string("model", None, "shorthand for --config.model.name")
flags.DEFINE_integer("batch_size", None, "shorthand for --config.search.batch_size")
flags.DEFINE_integer("num_classes", None, "shorthand for --config.model.num_classes")


def main(entry: Callable[[list[str]], None]) -> None:
  entrypoint.run(entry, default_config=entrypoint.DEFAULT_CONFIG)


def settings() -> ml_collections.ConfigDict:
  """The command line's config with the shorthands applied."""
  config = copy.deepcopy(FLAGS.config)
  if "search.sparsity_plan" not in config_flags.get_override_values(FLAGS["config"]):
    config.search.sparsity_plan = "uniform"
  if FLAGS.model is not None:
    config.model.name = FLAGS.model
  if FLAGS.batch_size is not None:
    config.search.batch_size = FLAGS.batch_size
  if FLAGS.num_classes is not None:
    config.model.num_classes = FLAGS.num_classes
  return config


@dataclasses.dataclass
class RandomSearch:
  """A search set-up over random weights: its pure step (statics bound) and first state."""

  model: Any
  params: Any
  batch_stats: Any
  keep_counts: Any
  tx: Any
  step: Callable
  state: steps.SearchState


def random_network(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                   rng: jax.Array) -> tuple[Any, models.ModelSpec, Any, Any]:
  """`config`'s model with random weights: (model, spec, params, batch_stats)."""
  spec = models.get_model_spec(config.model.name)
  model = spec.build(num_classes=config.model.num_classes, **dict(config.model.kwargs))
  variables = model.init(rng, jnp.zeros((2, *input_shape)), train=False)
  return model, spec, variables["params"], variables.get("batch_stats", {})


def random_search(config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                  rng: jax.Array) -> RandomSearch:
  """`config`'s model with random weights, its plan, scores, optimizer and search step."""
  model, spec, params, batch_stats = random_network(config, input_shape, rng)
  search = config.search
  plan = sparsity.plan_for(params, search, spec)
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(search, 1000)
  by_magnitude = scores_lib.ranks_by_magnitude(search.score_init)
  state = steps.init_search_state(scores_lib.init_scores(params, plan, search.score_init, rng),
                                  keep_counts, batch_stats, tx, by_magnitude)
  step = functools.partial(steps.search_step, model=model, keep_counts=keep_counts, tx=tx,
                           bn_mode=search.bn_mode, label_smoothing=search.label_smoothing,
                           rank_by_magnitude=by_magnitude)
  return RandomSearch(model=model, params=params, batch_stats=batch_stats,
                      keep_counts=keep_counts, tx=tx, step=step, state=state)


def dense_training(model: Any, params: Any, batch_stats: Any,
                   tx: Any) -> tuple[Callable, steps.TuneState]:
  """Dense training of the network (the tuning step without a mask), jitted, and its
  first state (its own copy of the weights, which it trains): the step every search
  step is measured against."""
  step = jax.jit(functools.partial(steps.tune_step, model=model, tx=tx), donate_argnums=(1,))
  state = steps.TuneState(step=jnp.zeros((), jnp.int32),
                          params=jax.tree.map(jnp.copy, params),
                          opt_state=tx.init(params),
                          batch_stats=jax.tree.map(jnp.copy, batch_stats))
  return step, state


def interleaved_medians(rounds: dict[str, Callable[[], None]], repeats: int,
                        warmup: int) -> dict[str, float]:
  """Median seconds of each named round, the rounds run interleaved (one of each per
  repeat), so drifting machine load hits all of them alike."""
  for _ in range(warmup):
    for run_round in rounds.values():
      run_round()
  times: dict[str, list[float]] = {name: [] for name in rounds}
  for _ in range(repeats):
    for name, run_round in rounds.items():
      start = time.perf_counter()
      run_round()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(values)) for name, values in times.items()}
