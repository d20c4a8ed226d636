"""Search-step time over dense-training-step time for the same model and batch.

The search step adds a straight-through top-k per masked layer and an elementwise W*M
to a dense step; this prints how much that costs. Goal (issue 2): <= 1.05 for
ResNet-20 at batch 128 on the CPU.

  python benchmarks/step_overhead.py --model=resnet20 --batch_size=128
"""

from __future__ import annotations

import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from jackpot_jax import models, optim, scores as scores_lib, sparsity, steps

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "registry name")
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("num_classes", 10, "classes")
flags.DEFINE_float("sparsity", 0.9, "target conv sparsity")
flags.DEFINE_integer("warmup", 3, "untimed steps after compilation")
flags.DEFINE_integer("repeats", 5, "timed rounds; the median round is reported")
flags.DEFINE_integer("steps_per_round", 10, "steps per timed round")


def _optimizer_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine",
                                        momentum=0.9, nesterov=False, weight_decay=5e-4))


def _time_rounds(run_round) -> float:
  """Median seconds per step over `repeats` rounds (rounds interleaved by the caller)."""
  start = time.perf_counter()
  run_round()
  return (time.perf_counter() - start) / FLAGS.steps_per_round


def main(argv):
  del argv
  spec = models.get_model_spec(FLAGS.model)
  model = spec.build(num_classes=FLAGS.num_classes)
  shape = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  rng = jax.random.PRNGKey(0)
  batch = {"image": jax.random.normal(rng, shape),
           "label": jax.random.randint(rng, (FLAGS.batch_size,), 0, FLAGS.num_classes)}
  variables = model.init(rng, batch["image"][:2], train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  plan = sparsity.build_sparsity_plan(params, sparsity=FLAGS.sparsity, spec=spec)
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(_optimizer_config(), 1000)

  search = jax.jit(functools.partial(steps.search_step, model=model, keep_counts=keep_counts,
                                     tx=tx, bn_mode="recalibrate"), donate_argnums=(1,))
  state = steps.init_search_state(scores_lib.init_scores(params, plan, "magnitude", rng),
                                  keep_counts, batch_stats, tx, rng)
  dense = jax.jit(functools.partial(steps.dense_train_step, model=model, tx=tx),
                  donate_argnums=(0, 1, 2))
  dense_params = jax.tree.map(jnp.copy, params)
  dense_opt, dense_stats = tx.init(dense_params), jax.tree.map(jnp.copy, batch_stats)

  def search_round():
    nonlocal state
    for _ in range(FLAGS.steps_per_round):
      state, metrics = search(params, state, batch)
    jax.block_until_ready(metrics)

  def dense_round():
    nonlocal dense_params, dense_opt, dense_stats
    for _ in range(FLAGS.steps_per_round):
      dense_params, dense_opt, dense_stats, loss = dense(dense_params, dense_opt, dense_stats, batch)
    jax.block_until_ready(loss)

  for _ in range(FLAGS.warmup):
    search_round()
    dense_round()
  search_times, dense_times = [], []
  for _ in range(FLAGS.repeats):  # interleaved, so drifting machine load hits both alike
    search_times.append(_time_rounds(search_round))
    dense_times.append(_time_rounds(dense_round))
  search_s, dense_s = float(np.median(search_times)), float(np.median(dense_times))
  print(json.dumps({
      "model": FLAGS.model, "batch_size": FLAGS.batch_size, "input": list(shape[1:]),
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "machine": platform.processor() or platform.machine(),
      "search_step_ms": round(search_s * 1e3, 2), "dense_step_ms": round(dense_s * 1e3, 2),
      "search_over_dense": round(search_s / dense_s, 4),
  }))


if __name__ == "__main__":
  app.run(main)
