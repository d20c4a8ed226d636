"""Shared fixtures: a tiny ResNet-20 with non-trivial weights, built once per session."""

from __future__ import annotations

import functools
import os

# Tests run on the CPU with 8 simulated devices available for the multi-device cases;
# single-device tests use only the first.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jackpot_jax import models, optim, scores as scores_lib, sparsity, steps


def sgd_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine", momentum=0.9,
                nesterov=False, weight_decay=5e-4)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


class TinySearch:
  """A ResNet-20 on 8x8x3 inputs, 90% l1 plan, magnitude scores and a jitted step."""

  def __init__(self, bn_mode: str = "recalibrate", score_init: str = "magnitude",
               optimizer_config=None, target: float = 0.9):
    self.spec = models.get_model_spec("resnet20")
    self.model = self.spec.build(num_classes=10)
    rng = jax.random.PRNGKey(0)
    self.batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3)),
                  "label": jnp.array([0, 3, 5, 9])}
    variables = self.model.init(rng, self.batch["image"], train=False)
    self.params, self.batch_stats = variables["params"], variables["batch_stats"]
    self.plan = sparsity.build_sparsity_plan(self.params, sparsity=target, spec=self.spec)
    self.keep_counts = self.plan.keep_counts()
    self.tx = optim.make_optimizer(optimizer_config or sgd_config(), 100)
    self.scores = scores_lib.init_scores(self.params, self.plan, score_init,
                                         jax.random.PRNGKey(2))
    self.state = steps.init_search_state(self.scores, self.keep_counts, self.batch_stats,
                                         self.tx, jax.random.PRNGKey(3))
    self.step = jax.jit(functools.partial(
        steps.search_step, model=self.model, keep_counts=self.keep_counts, tx=self.tx,
        bn_mode=bn_mode))


@pytest.fixture(scope="session")
def tiny_search() -> TinySearch:
  return TinySearch()
