"""Search-step images/s against device count, on whatever devices JAX sees.

On a CPU-only machine run it with simulated devices; they share the same cores, so the
figures show the sharding's overhead, not a speed-up. On a GPU/TPU host it measures the
real scaling.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py
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

from jackpot_jax import models, optim, parallel, scores as scores_lib, sparsity, steps

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "registry name")
flags.DEFINE_integer("batch_size", 128, "global batch size")
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("steps", 10, "timed steps per device count")
flags.DEFINE_list("device_counts", [], "device counts to try (default: 1, 2, 4, ... all)")


def images_per_second(num_devices: int) -> float:
  spec = models.get_model_spec(FLAGS.model)
  model = spec.build(num_classes=10)
  mesh = parallel.make_mesh(num_devices=num_devices)
  parallel.check_batch_size(FLAGS.batch_size, mesh)
  rng = jax.random.PRNGKey(0)
  shape = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3)
  batch = parallel.put_batch({"image": np.random.default_rng(0).normal(size=shape).astype(np.float32),
                              "label": np.arange(FLAGS.batch_size, dtype=np.int32) % 10}, mesh)
  variables = model.init(rng, jnp.zeros((2,) + shape[1:]), train=False)
  params = jax.device_put(variables["params"], parallel.replicated(mesh))
  plan = sparsity.build_sparsity_plan(variables["params"], sparsity=0.9, method="uniform", spec=spec)
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(ml_collections.ConfigDict(dict(
      optimizer="sgd", learning_rate=0.1, lr_schedule="cosine", momentum=0.9, nesterov=False,
      weight_decay=5e-4)), 1000)
  state = steps.init_search_state(scores_lib.init_scores(params, plan, "magnitude", rng),
                                  keep_counts, variables["batch_stats"], tx, rng)
  state = jax.device_put(state, parallel.replicated(mesh))
  step = jax.jit(functools.partial(steps.search_step, model=model, keep_counts=keep_counts,
                                   tx=tx, bn_mode="recalibrate"), donate_argnums=(1,))
  for _ in range(2):
    state, metrics = step(params, state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(params, state, batch)
  jax.block_until_ready(metrics)
  return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  available = jax.device_count()
  counts = ([int(c) for c in FLAGS.device_counts] if FLAGS.device_counts else
            [2 ** i for i in range(available.bit_length()) if 2 ** i <= available])
  result = {"model": FLAGS.model, "global_batch": FLAGS.batch_size,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "machine": platform.machine(), "images_per_s": {}}
  for count in counts:
    result["images_per_s"][count] = round(images_per_second(count), 1)
    print(f"{count} device(s): {result['images_per_s'][count]} images/s", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
